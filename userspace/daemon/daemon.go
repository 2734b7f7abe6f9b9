// Package daemon is tether's composition root: it builds the datapath,
// the control daemon, the health checker, the watchers, the control socket
// and the metrics from one typed Config, runs them until the context ends,
// and takes nothing from the command line itself.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/metrics"
)

// DefaultStateDir is where the desired state is saved unless told otherwise.
const DefaultStateDir = "/var/lib/tether"

// Config is everything tether run is told.
type Config struct {
	Interface       string
	Mode            loader.Mode
	ConfigFile      string // YAML VIPs and backends, re-read on reload; "" for none
	StateDir        string
	Socket          string // the control socket's path
	SocketGID       int    // a group allowed on the socket besides root; -1 for none
	MetricsAddr     string // ADDR:PORT for /metrics and /healthz; "" for none
	BPFFS           string // bpffs mount point of the pins
	Loader          loader.Options
	WatchdogTimeout time.Duration // 0: off
	CheckWorkers    int           // health checks in flight at most
	// DiscardPinned starts even when pinned VIPs exist but the state file
	// does not, and removes them.
	DiscardPinned bool
}

// check refuses what Run cannot start with, before anything is touched.
func (c Config) check() error {
	if c.WatchdogTimeout < 0 {
		return fmt.Errorf("watchdog timeout %s is negative, expected 0 (off) or a duration such as 30s", c.WatchdogTimeout)
	}
	// The heartbeat comes every second: a shorter watchdog would turn
	// forwarding off while the daemon is healthy.
	if c.WatchdogTimeout != 0 && (c.WatchdogTimeout < 3*time.Second || c.WatchdogTimeout > 24*time.Hour) {
		return fmt.Errorf("watchdog timeout %s is out of range, expected 0 (off) or 3s to 24h (the heartbeat comes every second)", c.WatchdogTimeout)
	}
	if c.CheckWorkers < 1 {
		return fmt.Errorf("check workers %d is out of range, expected at least 1", c.CheckWorkers)
	}
	return nil
}

// Run runs the daemon until ctx ends or a part of it fails, re-reading the
// config file whenever reload delivers. The XDP program keeps forwarding
// after Run returns.
func Run(ctx context.Context, cfg Config, log *slog.Logger, reload <-chan os.Signal) error {
	started := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	iface, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("interface %q: %w", cfg.Interface, err)
	}
	if err := cfg.check(); err != nil {
		return err
	}
	var metricsListener net.Listener
	if cfg.MetricsAddr != "" {
		if metricsListener, err = listenMetrics(cfg.MetricsAddr); err != nil {
			return err
		}
		defer metricsListener.Close()
	}
	if err := checkCapabilities(); err != nil {
		return err
	}
	// Everything that can refuse does so before anything is written: the
	// state directory, the pins and the control socket are this daemon's
	// alone, or it stops here.
	release, err := control.LockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer release()
	state, found, err := loadState(cfg)
	if err != nil {
		return err
	}
	if err := mountBPFFS(cfg.BPFFS, log); err != nil {
		return err
	}
	releasePins, err := loader.LockPinDir(loader.PinDir(cfg.BPFFS, cfg.Interface))
	if err != nil {
		return err
	}
	defer releasePins()
	ln, err := control.Listen(cfg.Socket, cfg.SocketGID)
	if err != nil {
		return err
	}
	defer ln.Close()
	h, err := open(ctx, cfg, state, found, iface.Index, log)
	if err != nil {
		return err
	}
	defer h.close()
	if err := h.start(iface.Index); err != nil {
		return err
	}
	var registry *metricsRegistry
	if metricsListener != nil {
		registry = &metricsRegistry{listener: metricsListener,
			registry: metrics.New(h.maps, h.daemon, h.events, log, h.datapath.Options.AffinityCapacity, started)}
	}
	return h.serve(ctx, cancel, iface.Index, ln, registry, reload)
}

// mountBPFFS lifts the memlock limit and mounts bpffs at dir if none is.
func mountBPFFS(dir string, log *slog.Logger) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("lifting the memlock limit for BPF maps: %w", err)
	}
	mounted, err := loader.EnsureBPFFS(dir)
	if err != nil {
		return err
	}
	if mounted {
		log.Info("no bpffs was mounted: mounted one", "path", dir)
	}
	return nil
}

func checkCapabilities() error {
	missing, err := missingCapabilities()
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("tether run lacks %s: it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run as root or grant them; see deploy/tether.service)", strings.Join(missing, " and "))
	}
	return nil
}

// host is one running tether: its datapath and the parts that manage it.
type host struct {
	cfg       Config
	log       *slog.Logger
	statePath string
	pinDir    string
	datapath  *loader.Datapath
	maps      *maps.Kernel
	events    *metrics.Events // nil without /metrics
	checker   *health.Scheduler
	daemon    *control.Daemon
	programID uint32
}

// loadState reads the state file, if found, and merges the config file
// into it: nothing is written.
func loadState(cfg Config) (state control.State, found bool, err error) {
	state, found, err = control.LoadState(filepath.Join(cfg.StateDir, "state.json"))
	if err != nil {
		return control.State{}, false, err
	}
	if cfg.ConfigFile != "" {
		if state, err = control.MergeConfigFile(state, cfg.ConfigFile); err != nil {
			return control.State{}, false, err
		}
	}
	return state, found, nil
}

// open loads or adopts the datapath and writes the desired state into it;
// found says the state came from a state file.
func open(ctx context.Context, cfg Config, state control.State, found bool, ifindex int, log *slog.Logger) (*host, error) {
	h := &host{cfg: cfg, log: log, statePath: filepath.Join(cfg.StateDir, "state.json"),
		pinDir: loader.PinDir(cfg.BPFFS, cfg.Interface), checker: health.NewScheduler(cfg.CheckWorkers)}
	var observer control.Observer // events are dropped without /metrics
	if cfg.MetricsAddr != "" {
		h.events = metrics.NewEvents()
		observer = h.events
	}
	adopted, err := h.openDatapath()
	if err != nil {
		return nil, err
	}
	if !found && adopted {
		if err := h.unknownPins(); err != nil {
			h.close()
			return nil, err
		}
	}
	if h.daemon, err = control.New(control.Options{
		Maps: h.maps, Resolver: neighResolver{}, Checker: h.checker, StatePath: h.statePath,
		IngressIfindex: ifindex, Log: log, Observer: observer,
	}, state); err != nil {
		h.close()
		return nil, err
	}
	if err := h.daemon.Start(ctx); err != nil {
		h.close()
		return nil, fmt.Errorf("writing the desired state into the datapath: %w", err)
	}
	if err := h.daemon.SetWatchdogTimeout(cfg.WatchdogTimeout); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// unknownPins refuses pinned VIPs that no state file knows, unless told to
// discard them: they are another daemon's, or a lost state directory's,
// and starting would stop their forwarding.
func (h *host) unknownPins() error {
	vips, err := h.maps.VIPs()
	if err != nil {
		return fmt.Errorf("reading pinned VIPs: %w", err)
	}
	if len(vips) == 0 {
		return nil
	}
	if !h.cfg.DiscardPinned {
		return fmt.Errorf("the pins in %s hold %d VIP entries but %s does not exist: start with the state directory that goes with them, or with --discard-pinned to remove them", h.pinDir, len(vips), h.statePath)
	}
	h.log.Warn("no state file but pinned VIPs exist: --discard-pinned removes them", "state", h.statePath, "pinned_vip_entries", len(vips))
	return nil
}

// watchPins checks every interval that the pins the datapath needs are
// still there, and says so in the log, status and metrics when one goes.
func (h *host) watchPins(ctx context.Context, every time.Duration) {
	reported := ""
	control.Every(ctx, every, func() {
		problem := loader.PinsIntact(h.pinDir)
		if problem == reported {
			return
		}
		if problem != "" {
			h.log.Error("DATAPATH PINS REMOVED: a detach or another tool removed them; forwarding or client affinity may be lost", "problem", problem)
		} else {
			h.log.Info("datapath pins are back", "pins", h.pinDir)
		}
		reported = problem
		h.daemon.SetDatapathProblem(problem)
	})
}

// openDatapath loads the program and maps, or adopts the pinned ones; it
// reports whether it adopted them.
func (h *host) openDatapath() (adopted bool, err error) {
	if h.datapath, adopted, err = loader.Open(h.pinDir, h.cfg.Loader); err != nil {
		return false, err
	}
	if adopted {
		h.log.Info("adopted pinned maps: forwarding state kept", "pins", h.pinDir)
	}
	if h.maps, err = maps.NewKernel(&h.datapath.Maps, maps.LimitsOf(h.datapath.Options)); err != nil {
		h.datapath.Close()
		h.datapath = nil
		return false, err
	}
	return adopted, nil
}

// close lets go of the maps and program; the pins keep them alive.
func (h *host) close() {
	if h.maps != nil {
		h.maps.Close()
	}
	if h.datapath != nil {
		h.datapath.Close()
	}
}

// start learns the program's id and attaches it, or replaces the program
// running on ifindex with it.
func (h *host) start(ifindex int) error {
	info, err := h.datapath.Program.Info()
	if err != nil {
		return fmt.Errorf("reading program info: %w", err)
	}
	id, _ := info.ID()
	h.programID = uint32(id)
	attachment, err := h.attach(ifindex)
	if err != nil {
		return err
	}
	h.log.Info("XDP program attached", "iface", h.cfg.Interface, "mode", attachment.Mode.String(), "program_id", id, "replaced_running_program", attachment.Replaced)
	return nil
}

// attach attaches the pinned program to ifindex and tells the daemon
// where it runs.
func (h *host) attach(ifindex int) (loader.Attachment, error) {
	attachment, err := h.datapath.AttachPinned(h.pinDir, ifindex, h.cfg.Mode)
	if err != nil {
		return attachment, err
	}
	h.daemon.SetDatapathInfo(control.DatapathInfo{Interface: h.cfg.Interface, Mode: attachment.Mode.String(), ProgramID: h.programID, PinDir: h.pinDir})
	return attachment, nil
}

// metricsRegistry is what /metrics serves, and where.
type metricsRegistry struct {
	listener net.Listener
	registry *prometheus.Registry
}

// serve runs every part until ctx ends or one fails, re-reading the config
// file on reload.
func (h *host) serve(ctx context.Context, cancel context.CancelFunc, ifindex int, ln net.Listener, m *metricsRegistry, reload <-chan os.Signal) error {
	server := control.NewServer(h.daemon, h.log, h.cfg.SocketGID)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	spawn := func(f func() error) {
		wg.Go(func() {
			if err := f(); err != nil {
				errs <- err
			}
		})
	}
	spawn(func() error { return server.Serve(ctx, ln) })
	spawn(func() error { h.checker.Run(ctx, h.daemon.HealthResult); return nil })
	spawn(func() error { h.daemon.Maintain(ctx, time.Second); return nil })
	spawn(func() error { h.daemon.Heartbeat(ctx, time.Second); return nil })
	spawn(func() error { h.watchPins(ctx, time.Second); return nil })
	spawn(func() error { return watchNeighbours(ctx, h.daemon, h.log) })
	spawn(func() error {
		return watchInterface(ctx, h.cfg.Interface, ifindex, func(ifindex int) error {
			_, err := h.attach(ifindex)
			return err
		}, h.daemon, h.log)
	})
	if m != nil {
		spawn(func() error { return serveMetrics(ctx, m.listener, m.registry) })
	}
	h.log.Info("tether running", "socket", h.cfg.Socket, "state", h.statePath)
	runErr := h.loop(ctx, errs, reload)
	cancel()
	wg.Wait()
	h.log.Info("tether stopped; the XDP program keeps forwarding (tether detach removes it)")
	return runErr
}

// loop waits for the end, a failed part or a reload.
func (h *host) loop(ctx context.Context, errs <-chan error, reload <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return err
		case <-reload:
			if h.cfg.ConfigFile == "" {
				h.log.Info("reload without a config file: nothing to re-read")
				continue
			}
			if err := h.daemon.ReloadConfig(ctx, h.cfg.ConfigFile); err != nil {
				h.log.Error("re-reading config: keeping the current state", "error", err)
			} else {
				h.log.Info("config re-read", "path", h.cfg.ConfigFile)
			}
		}
	}
}
