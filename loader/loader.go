package loader

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Options size the datapath's maps. They are fixed for the life of the
// loaded maps.
type Options struct {
	MaxVIPs          uint32 // VIPs the datapath can hold; vip_id < MaxVIPs
	TableStride      uint32 // largest Maglev table size M any VIP may use
	MaxBackends      uint32 // backend ids 1..MaxBackends-1 (0 means none)
	AffinityCapacity uint32 // clients the affinity table is sized for, see AffinityBuckets
	MaxTxPorts       uint32 // egress interfaces other than the ingress one
}

// DefaultOptions are the sizes a daemon uses unless told otherwise.
func DefaultOptions() Options {
	return Options{
		MaxVIPs:          64,
		TableStride:      65537,
		MaxBackends:      4096,
		AffinityCapacity: 1 << 20,
		MaxTxPorts:       64,
	}
}

// Limits the datapath's encodings put on the options: an affinity entry
// holds the VIP id in 15 bits (the 16th is the probation flag) and the
// backend id in 16, and VIP id 0x7fff marks a way being written (ROUTE_BUSY
// in bpf/affinity.h).
const (
	MaxVIPsLimit          = 0x7fff
	MaxBackendsLimit      = 0x10000
	AffinityCapacityLimit = 1 << 26
)

// AffinityBuckets is the number of buckets of the affinity table for
// capacity clients: three buckets for every four clients, that is three
// ways (entries) per client. At capacity a bucket has 4/3 clients on
// average for its AFFINITY_WAYS = 4 ways and about 1 % of the clients find
// their bucket full (0.1 % at half the capacity); the table holds up to
// three times its capacity, evicting more and more.
func AffinityBuckets(capacity uint32) uint32 {
	return uint32((3*uint64(capacity) + 3) / 4)
}

// AffinityCapacityOf inverts AffinityBuckets for a table's bucket count.
func AffinityCapacityOf(buckets uint32) uint32 {
	return uint32(4 * uint64(buckets) / 3)
}

// Validate reports the first option out of range.
func (o Options) Validate() error {
	switch {
	case o.MaxVIPs == 0 || o.MaxVIPs > MaxVIPsLimit:
		return fmt.Errorf("max VIPs %d is out of range, expected 1..%d", o.MaxVIPs, MaxVIPsLimit)
	case o.TableStride < 3:
		return fmt.Errorf("table size %d is too small, expected a prime of at least 3", o.TableStride)
	case uint64(o.MaxVIPs)*2*uint64(o.TableStride) > math.MaxUint32:
		return fmt.Errorf("max VIPs %d x 2 x table size %d does not fit the 32-bit Maglev index", o.MaxVIPs, o.TableStride)
	case o.MaxBackends < 2 || o.MaxBackends > MaxBackendsLimit:
		return fmt.Errorf("max backends %d is out of range, expected 2..%d (id 0 is reserved)", o.MaxBackends, MaxBackendsLimit)
	case o.AffinityCapacity == 0 || o.AffinityCapacity > AffinityCapacityLimit:
		return fmt.Errorf("affinity capacity %d is out of range, expected 1..%d clients", o.AffinityCapacity, AffinityCapacityLimit)
	case o.MaxTxPorts == 0:
		return errors.New("max tx ports is 0, expected at least 1")
	}
	return nil
}

// Datapath is the loaded program with its maps.
type Datapath struct {
	Program *ebpf.Program
	Maps    TetherMaps
	Options Options
}

// Spec returns the program's collection spec sized and configured by opts.
func Spec(opts Options) (*ebpf.CollectionSpec, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("checking datapath options: %w", err)
	}
	spec, err := LoadTether()
	if err != nil {
		return nil, fmt.Errorf("reading embedded BPF object: %w", err)
	}
	sizes := map[string]uint32{
		TetherMapVips:     2 * opts.MaxVIPs, // each VIP may have a fragment alias
		TetherMapMaglev:   opts.MaxVIPs * 2 * opts.TableStride,
		TetherMapBackends: opts.MaxBackends,
		TetherMapAffinity: AffinityBuckets(opts.AffinityCapacity),
		TetherMapCounters: 1 + opts.MaxVIPs + opts.MaxBackends,
		TetherMapTxPorts:  opts.MaxTxPorts,
	}
	for name, size := range sizes {
		spec.Maps[name].MaxEntries = size
	}
	constants := map[string]uint32{
		TetherVarMaxVips:         opts.MaxVIPs,
		TetherVarTableStride:     opts.TableStride,
		TetherVarAffinityBuckets: AffinityBuckets(opts.AffinityCapacity),
	}
	for name, value := range constants {
		if err := spec.Variables[name].Set(value); err != nil {
			return nil, fmt.Errorf("setting %s to %d: %w", name, value, err)
		}
	}
	return spec, nil
}

// Load loads the program and creates its maps, sized by opts. The datapath
// starts inactive (settings.active = 0): it passes every packet until the
// caller fills the maps and switches it on.
func Load(opts Options) (*Datapath, error) {
	spec, err := Spec(opts)
	if err != nil {
		return nil, err
	}
	var objs TetherObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("loading XDP program: %+v", verr)
		}
		return nil, fmt.Errorf("loading XDP program: %w", err)
	}
	d := &Datapath{Program: objs.TetherLb, Maps: objs.TetherMaps, Options: opts}
	if err := d.saltAffinity(); err != nil {
		return nil, errors.Join(err, d.Close())
	}
	return d, nil
}

// saltAffinity gives a new affinity table its random hash salt. Only a new
// (empty) table: the salt places every entry.
func (d *Datapath) saltAffinity() error {
	var salt [8]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return fmt.Errorf("drawing the affinity table's salt: %w", err)
	}
	if err := d.Maps.AffinitySalt.Put(uint32(0), binary.LittleEndian.Uint64(salt[:])); err != nil {
		return fmt.Errorf("writing the affinity table's salt: %w", err)
	}
	return nil
}

// Close releases the program and maps held by this process. Pinned objects
// and attached links stay.
func (d *Datapath) Close() error {
	return errors.Join(d.Program.Close(), d.Maps.Close())
}

// Mode is how the program is attached to an interface.
type Mode int

const (
	// ModeAuto tries native (driver) mode and falls back to generic.
	ModeAuto Mode = iota
	// ModeNative runs the program in the NIC driver's receive path.
	ModeNative
	// ModeGeneric runs the program after the stack allocated an skb: works on
	// every interface, much slower.
	ModeGeneric
)

func (m Mode) String() string {
	switch m {
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	default:
		return "auto"
	}
}

// ParseMode parses "native", "generic" or "auto".
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{ModeAuto, ModeNative, ModeGeneric} {
		if s == m.String() {
			return m, nil
		}
	}
	return ModeAuto, fmt.Errorf("attach mode %q is not known, expected native, generic or auto", s)
}

// Attach attaches prog to the interface with index ifindex and returns the
// link and the mode actually used (never ModeAuto).
func Attach(prog *ebpf.Program, ifindex int, mode Mode) (link.Link, Mode, error) {
	try := func(m Mode) (link.Link, error) {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flags})
	}
	if mode != ModeAuto {
		l, err := try(mode)
		if err != nil {
			return nil, mode, fmt.Errorf("attaching XDP program to ifindex %d in %s mode: %w", ifindex, mode, err)
		}
		return l, mode, nil
	}
	l, nativeErr := try(ModeNative)
	if nativeErr == nil {
		return l, ModeNative, nil
	}
	l, err := try(ModeGeneric)
	if err != nil {
		return nil, ModeGeneric, fmt.Errorf("attaching XDP program to ifindex %d: native mode: %v; generic mode: %w", ifindex, nativeErr, err)
	}
	return l, ModeGeneric, nil
}
