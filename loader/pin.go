package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Pinned objects live in one directory per interface:
//
//	<bpffs>/tether/<iface>/{vips,vip_epoch,maglev,backends,affinity,affinity_salt,tx_ports}
//	<bpffs>/tether/<iface>/prog   the running program
//	<bpffs>/tether/<iface>/link   the XDP link; forwarding survives the daemon
const (
	progPin = "prog"
	linkPin = "link"
)

// pinnedMaps are the maps adopted across daemon restarts and upgrades. The
// VIP epoch goes with the VIPs (whoever changes them bumps it, whichever
// program reads them), the salt with the affinity table it places entries in.
var pinnedMaps = []string{TetherMapVips, TetherMapVipEpoch, TetherMapMaglev, TetherMapBackends, TetherMapAffinity, TetherMapAffinitySalt, TetherMapTxPorts}

// ErrLayoutChanged means pinned maps were made by a tether whose map layout
// differs from this one's. tether never recreates them silently: that would
// drop every client's affinity.
var ErrLayoutChanged = errors.New("pinned maps have a different layout")

// DefaultBPFFS is where bpffs is mounted on systemd hosts.
const DefaultBPFFS = "/sys/fs/bpf"

// PinDir is the directory of the objects tether pins for iface.
func PinDir(bpffs, iface string) string { return filepath.Join(bpffs, "tether", iface) }

// EnsureBPFFS mounts a bpffs at dir unless one is there already, creating
// dir if needed. It reports whether it mounted one.
func EnsureBPFFS(dir string) (mounted bool, err error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err == nil && fs.Type == unix.BPF_FS_MAGIC {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("creating bpffs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mounting bpffs at %s: %w", dir, err)
	}
	return true, nil
}

// pinnedOptions reads the sizes of maps already pinned in dir, so a new
// program is built to match them. ok is false when nothing is pinned.
func pinnedOptions(dir string) (opts Options, ok bool, err error) {
	sizes := map[string]uint32{}
	for _, name := range pinnedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			if len(sizes) == 0 {
				continue
			}
			return Options{}, false, fmt.Errorf("%w: pinned map %s is missing from %s while others exist (pinned by another tether version?): run tether detach to start over; that drops all client affinity", ErrLayoutChanged, name, dir)
		}
		if err != nil {
			return Options{}, false, fmt.Errorf("opening pinned map %s: %w", name, err)
		}
		sizes[name] = m.MaxEntries()
		m.Close()
	}
	if len(sizes) == 0 {
		return Options{}, false, nil
	}
	if len(sizes) != len(pinnedMaps) {
		return Options{}, false, fmt.Errorf("only some maps are pinned in %s: run tether detach to start over", dir)
	}
	opts = Options{
		MaxVIPs:          sizes[TetherMapVips] / 2,
		MaxBackends:      sizes[TetherMapBackends],
		AffinityCapacity: AffinityCapacityOf(sizes[TetherMapAffinity]),
		MaxTxPorts:       sizes[TetherMapTxPorts],
	}
	if opts.MaxVIPs > 0 {
		opts.TableStride = sizes[TetherMapMaglev] / (2 * opts.MaxVIPs)
	}
	if err := opts.Validate(); err != nil {
		return Options{}, false, fmt.Errorf("pinned maps in %s: %w: %w", dir, ErrLayoutChanged, err)
	}
	return opts, true, nil
}

// Open loads the program with its maps pinned in dir. Maps pinned there
// already are adopted as they are, with their contents, and their sizes win
// over opts (adopted reports it); the others are created from opts and
// pinned. A pinned map whose layout differs is ErrLayoutChanged.
func Open(dir string, opts Options) (d *Datapath, adopted bool, err error) {
	if existing, ok, err := pinnedOptions(dir); err != nil {
		return nil, false, err
	} else if ok {
		opts, adopted = existing, true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("creating pin directory: %w", err)
	}
	spec, err := Spec(opts)
	if err != nil {
		return nil, false, err
	}
	// Only maps holding state that must outlive a daemon or program are
	// pinned and adopted. Counters and settings go with each program: the
	// daemon rewrites the settings at start, and a counter added by a new
	// version must not make the maps incompatible (Prometheus handles the
	// reset). .rodata holds this program's constants.
	for _, name := range pinnedMaps {
		spec.Maps[name].Pinning = ebpf.PinByName
	}
	var objs TetherObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, false, fmt.Errorf("%w: %w (run tether detach to start over; that drops all client affinity)", ErrLayoutChanged, err)
	}
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, false, fmt.Errorf("loading XDP program: %+v", verr)
		}
		return nil, false, fmt.Errorf("loading XDP program with maps pinned in %s: %w", dir, err)
	}
	d = &Datapath{Program: objs.TetherLb, Maps: objs.TetherMaps, Options: opts}
	if !adopted {
		if err := d.saltAffinity(); err != nil {
			return nil, false, errors.Join(err, d.Close())
		}
	}
	return d, adopted, nil
}

// pinProgram pins the running program in dir, replacing the previous one,
// so bpftool and operators see which program is attached.
func (d *Datapath) pinProgram(dir string) error {
	path := filepath.Join(dir, progPin)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replacing pinned program: %w", err)
	}
	if err := d.Program.Pin(path); err != nil {
		return fmt.Errorf("pinning program: %w", err)
	}
	return nil
}

// Attachment describes how the program is attached.
type Attachment struct {
	Mode    Mode
	Ifindex int
	// Replaced is true when an existing pinned link got the new program
	// with link.Update: no packet saw a detached interface.
	Replaced bool
}

// AttachPinned attaches the program to ifindex and pins the link in dir, or,
// when a link is pinned there already, swaps the program of that link in
// place. The mode of an existing link is kept; asking for another mode is
// an error that says how to change it.
func (d *Datapath) AttachPinned(dir string, ifindex int, mode Mode) (Attachment, error) {
	attachment, err := d.attachPinned(dir, ifindex, mode)
	if err != nil {
		return Attachment{}, err
	}
	return attachment, d.pinProgram(dir)
}

func (d *Datapath) attachPinned(dir string, ifindex int, mode Mode) (Attachment, error) {
	path := filepath.Join(dir, linkPin)
	l, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		defer l.Close()
		if live, err := attachedTo(l, ifindex); err != nil {
			return Attachment{}, err
		} else if live {
			current, err := AttachedMode(ifindex)
			if err != nil {
				return Attachment{}, err
			}
			if mode != ModeAuto && mode != current {
				return Attachment{}, fmt.Errorf("the program is attached in %s mode and %s was asked for: run tether detach first to change the mode", current, mode)
			}
			if err := l.Update(d.Program); err != nil {
				return Attachment{}, fmt.Errorf("replacing the attached program: %w", err)
			}
			return Attachment{Mode: current, Ifindex: ifindex, Replaced: true}, nil
		}
		// The interface went away (and may be back with another index):
		// the old link is defunct. Drop it and attach afresh; the maps stay.
		if err := l.Unpin(); err != nil {
			return Attachment{}, fmt.Errorf("removing defunct XDP link %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return Attachment{}, fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	l, used, err := Attach(d.Program, ifindex, mode)
	if err != nil {
		return Attachment{}, err
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return Attachment{}, fmt.Errorf("pinning XDP link: %w", err)
	}
	return Attachment{Mode: used, Ifindex: ifindex}, nil
}

// attachedTo reports whether a pinned XDP link still holds ifindex.
func attachedTo(l link.Link, ifindex int) (bool, error) {
	info, err := l.Info()
	if err != nil {
		return false, fmt.Errorf("reading pinned XDP link: %w", err)
	}
	xdp := info.XDP()
	return xdp != nil && int(xdp.Ifindex) == ifindex, nil
}

// AttachedMode asks the kernel how an XDP program is attached to ifindex.
func AttachedMode(ifindex int) (Mode, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return ModeAuto, fmt.Errorf("looking up ifindex %d: %w", ifindex, err)
	}
	xdp := l.Attrs().Xdp
	if xdp == nil || !xdp.Attached {
		return ModeAuto, fmt.Errorf("no XDP program attached to %s", l.Attrs().Name)
	}
	switch xdp.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return ModeNative, nil
	case nl.XDP_ATTACHED_SKB:
		return ModeGeneric, nil
	default:
		return ModeAuto, fmt.Errorf("XDP program on %s attached in unsupported mode %d", l.Attrs().Name, xdp.AttachMode)
	}
}

// Detach removes the pinned link (which detaches the program), the program
// and map pins, and the directory. Forwarding stops; all state is gone.
func Detach(dir string) error {
	path := filepath.Join(dir, linkPin)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		unpinErr := l.Unpin()
		closeErr := l.Close()
		if err := errors.Join(unpinErr, closeErr); err != nil {
			return fmt.Errorf("detaching XDP link %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing pins in %s: %w", dir, err)
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("removing pin: %w", err)
		}
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("removing pin directory: %w", err)
	}
	// The tether directory goes too once no interface has pins in it.
	_ = os.Remove(filepath.Dir(dir))
	return nil
}

// ErrPinsInUse means another process, a running tether daemon, holds the
// pin directory's lock.
var ErrPinsInUse = errors.New("the pins are in use by a running tether daemon")

// LockPinDir takes an exclusive lock on the pin directory dir, creating it
// if needed. The daemon holds it for its whole life, so that a second
// daemon, or a detach, refuses before it touches the pins; release drops
// it. The lock is on the directory itself: a directory deleted behind a
// daemon's back is noticed by PinsIntact, not by the lock.
func LockPinDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("opening pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrPinsInUse, dir)
		}
		return nil, fmt.Errorf("locking pin directory %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// PinsIntact reports what is missing of the pins in dir that a running
// datapath needs: its link and its state maps. "" means nothing.
func PinsIntact(dir string) string {
	var missing []string
	for _, name := range append([]string{linkPin}, pinnedMaps...) {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("pins missing from %s: %s (removed behind the daemon's back)", dir, strings.Join(missing, ", "))
}
