package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

// NextHop is how the datapath reaches a backend at L2.
type NextHop struct {
	Ifindex   int
	SourceMAC net.HardwareAddr
	MAC       net.HardwareAddr
}

// Resolver finds a backend's next hop. A non-nil override is the
// operator's MAC, used instead of the neighbour table.
type Resolver interface {
	Resolve(ctx context.Context, addr netip.Addr, override net.HardwareAddr) (NextHop, error)
}

// Checker runs health checks; the daemon tells it what to check and hears
// back through Daemon.HealthResult.
type Checker interface {
	Set(id string, target netip.AddrPort, check health.Check, initial health.State) error
	Remove(id string)
}

// ErrNotFound is returned for a VIP or backend that does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned for a VIP or backend that exists already.
var ErrConflict = errors.New("already exists")

// ErrInvalid wraps errors in the caller's input.
var ErrInvalid = errors.New("invalid")

// kindError marks err as one of the sentinel kinds above without adding
// the sentinel's text to the message the user reads.
type kindError struct {
	kind error
	err  error
}

func (e kindError) Error() string   { return e.err.Error() }
func (e kindError) Unwrap() []error { return []error{e.kind, e.err} }

func invalid(err error) error { return kindError{kind: ErrInvalid, err: err} }

func notFound(format string, args ...any) error {
	return kindError{kind: ErrNotFound, err: fmt.Errorf(format, args...)}
}

func conflict(format string, args ...any) error {
	return kindError{kind: ErrConflict, err: fmt.Errorf(format, args...)}
}

// backendRuntime is what the daemon knows of a backend beyond its desired
// state.
type backendRuntime struct {
	addr       netip.Addr
	mac        string
	nextHop    NextHop
	resolveErr error
	health     health.State
	healthNote string // reason of the last health transition
	checked    bool   // a health check is configured
	// unhealthySince is when health last became Unhealthy.
	unhealthySince time.Time
	// failing: the latest conclusive probe failed.
	failing     bool
	generation  uint32
	datapath    maps.BackendState
	failingOpen bool // down, but forwarded to because all are down
	// recheckAt is when the next hop is looked up again, away from the
	// lock: at once after a neighbour event, periodically otherwise.
	recheckAt time.Time
}

// vipRuntime is what the daemon installed for a VIP.
type vipRuntime struct {
	info         maps.VIP
	table        []maps.BackendID
	tableVersion uint64
	failingOpen  bool
	// guarded: so many of its backends fail that pinned clients stay;
	// guardEnded is when that last stopped.
	guarded    bool
	guardEnded time.Time
}

// Options configure a Daemon.
type Options struct {
	Maps           maps.Maps
	Resolver       Resolver
	Checker        Checker // nil: no health checks
	StatePath      string  // "" : state is not persisted
	IngressIfindex int     // the interface the program is attached to
	Log            *slog.Logger
	Observer       Observer         // nil: events are not reported
	Now            func() time.Time // nil: time.Now
}

// Observer hears what metrics count as it happens.
type Observer interface {
	TableBuilt(vip string, took time.Duration)
	HealthChecked(vip, backend string, result health.Result)
}

type noObserver struct{}

func (noObserver) TableBuilt(string, time.Duration)            {}
func (noObserver) HealthChecked(string, string, health.Result) {}

// Daemon owns the desired state and is the only writer of the maps.
type Daemon struct {
	mu    sync.Mutex
	opts  Options
	log   *slog.Logger
	state State
	// where finds a backend of state by id, for HealthResult.
	where    map[maps.BackendID]backendPos
	backends map[maps.BackendID]*backendRuntime
	vips     map[uint32]*vipRuntime
	txPorts  map[uint32]bool
	info     DatapathInfo
	// dirty VIPs failed to install after a health or next-hop change;
	// Maintain tries them again.
	dirty map[uint32]bool
	// settingsMu serialises read-modify-writes of the settings map, which
	// the heartbeat does without holding mu.
	settingsMu sync.Mutex
}

// recheckEvery is how often a backend's next hop is looked up again when
// nothing told the daemon it changed.
const recheckEvery = 30 * time.Second

// updateSettings changes the settings map in one read-modify-write.
func (d *Daemon) updateSettings(change func(*maps.Settings)) error {
	d.settingsMu.Lock()
	defer d.settingsMu.Unlock()
	settings, err := d.opts.Maps.Settings()
	if err != nil {
		return fmt.Errorf("reading datapath settings: %w", err)
	}
	change(&settings)
	if err := d.opts.Maps.PutSettings(settings); err != nil {
		return fmt.Errorf("writing datapath settings: %w", err)
	}
	return nil
}

// SetWatchdogTimeout makes the datapath pass everything to the stack when
// the heartbeat is older than timeout; 0 turns the watchdog off.
func (d *Daemon) SetWatchdogTimeout(timeout time.Duration) error {
	return d.updateSettings(func(s *maps.Settings) {
		s.WatchdogTimeout = timeout
		s.Watchdog = monotonicNow()
	})
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func (d *Daemon) save(s State) error {
	if d.opts.StatePath == "" {
		return nil
	}
	return SaveState(d.opts.StatePath, s)
}

// backendPos is where a backend is in the state: VIPs[vip].Backends[backend].
type backendPos struct{ vip, backend int }

// setState makes s the daemon's state and indexes its backends.
func (d *Daemon) setState(s State) {
	d.state = s
	d.where = make(map[maps.BackendID]backendPos, len(d.where))
	for i, v := range s.VIPs {
		for j, b := range v.Backends {
			d.where[b.ID] = backendPos{vip: i, backend: j}
		}
	}
}
