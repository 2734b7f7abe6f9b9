package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
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

const unassignedVIP = ^uint32(0)

// backendRuntime is what the daemon knows of a backend beyond its desired
// state.
type backendRuntime struct {
	addr        netip.Addr
	mac         string
	nextHop     NextHop
	resolveErr  error
	health      health.State
	healthNote  string // reason of the last health transition
	checked     bool   // a health check is configured
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
}

// Options configure a Daemon.
type Options struct {
	Maps           maps.Maps
	Resolver       Resolver
	Checker        Checker // nil: no health checks
	StatePath      string  // "" : state is not persisted
	IngressIfindex int     // the interface the program is attached to
	Log            *slog.Logger
	Observer       Observer // nil: events are not reported
}

// Observer hears what metrics count as it happens.
type Observer interface {
	TableBuilt(vip string, took time.Duration)
	HealthChecked(vip, backend string, healthy bool, latency time.Duration)
}

type noObserver struct{}

func (noObserver) TableBuilt(string, time.Duration)                  {}
func (noObserver) HealthChecked(string, string, bool, time.Duration) {}

// Daemon owns the desired state and is the only writer of the maps.
type Daemon struct {
	mu       sync.Mutex
	opts     Options
	log      *slog.Logger
	state    State
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

// New returns a daemon that adopts the datapath's current contents for
// state: backends keep their ids and generations, so clients keep their
// backends across a restart. Call Start to write the state into the maps.
func New(opts Options, state State) (*Daemon, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Observer == nil {
		opts.Observer = noObserver{}
	}
	d := &Daemon{
		opts:     opts,
		log:      opts.Log,
		state:    state,
		backends: map[maps.BackendID]*backendRuntime{},
		vips:     map[uint32]*vipRuntime{},
		txPorts:  map[uint32]bool{},
		dirty:    map[uint32]bool{},
	}
	if d.state.Seed == 0 {
		d.state.Seed = DefaultSeed
	}
	limits := opts.Maps.Limits()
	for i := range d.state.VIPs {
		v := d.state.VIPs[i].withDefaults(limits.TableStride)
		if err := v.validate(limits.TableStride); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		if err := v.validateBackends(); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		for j := range v.Backends {
			v.Backends[j] = v.Backends[j].withDefaults()
		}
		d.state.VIPs[i] = v
	}
	if err := d.assignIDs(&d.state); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if err := d.checkIDs(d.state); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	// Adopt what the datapath holds: generations, and whether a backend
	// was in service, so a restart changes nothing for clients.
	for _, v := range d.state.VIPs {
		if info, err := opts.Maps.VIP(v.key()); err == nil && info.ID == v.ID {
			d.vips[v.ID] = &vipRuntime{info: info}
		}
		for _, b := range v.Backends {
			d.backends[b.ID] = d.adoptBackend(b)
		}
	}
	return d, nil
}

// adoptBackend takes over a backend the datapath already serves: its
// generation (so its clients' affinity entries stay valid), its state and
// its next hop (so a restart needs no neighbour resolution before
// forwarding goes on; the next hop is checked again in the background). An
// entry for another address means the id changed hands: its generation is
// bumped so no old entry matches.
func (d *Daemon) adoptBackend(b Backend) *backendRuntime {
	rt := &backendRuntime{health: health.Up}
	entry, err := d.opts.Maps.Backend(b.ID)
	if err != nil {
		return rt
	}
	if entry.Addr != b.Addr {
		rt.generation = entry.Generation + 1
		return rt
	}
	rt.generation, rt.datapath = entry.Generation, entry.State
	if entry.State == maps.BackendDown {
		rt.health = health.Down
	}
	if isUnicastMAC(entry.MAC) {
		ifindex := int(entry.Ifindex)
		if ifindex == 0 {
			ifindex = d.opts.IngressIfindex
		}
		rt.addr, rt.mac = b.Addr, b.MAC
		rt.nextHop = NextHop{Ifindex: ifindex, SourceMAC: entry.SourceMAC, MAC: entry.MAC}
		rt.recheckAt = time.Now()
	}
	return rt
}

func isUnicastMAC(mac net.HardwareAddr) bool {
	if len(mac) != 6 || mac[0]&1 == 1 {
		return false
	}
	for _, b := range mac {
		if b != 0 {
			return true
		}
	}
	return false
}

func (d *Daemon) checkIDs(s State) error {
	limits := d.opts.Maps.Limits()
	vipIDs := map[uint32]bool{}
	backendIDs := map[maps.BackendID]bool{}
	for _, v := range s.VIPs {
		if v.ID >= limits.MaxVIPs || vipIDs[v.ID] {
			return fmt.Errorf("VIP %s has id %d, which is duplicate or not below %d", v.VIPRef, v.ID, limits.MaxVIPs)
		}
		vipIDs[v.ID] = true
		for _, b := range v.Backends {
			if b.ID == 0 || uint32(b.ID) >= limits.MaxBackends || backendIDs[b.ID] {
				return fmt.Errorf("backend %s of %s has id %d, which is duplicate or not in 1..%d", b.Name, v.VIPRef, b.ID, limits.MaxBackends-1)
			}
			backendIDs[b.ID] = true
		}
	}
	return nil
}

// assignIDs gives new VIPs and backends the lowest free ids.
func (d *Daemon) assignIDs(s *State) error {
	limits := d.opts.Maps.Limits()
	usedVIP := map[uint32]bool{}
	// A VIP removed by this same change keeps its id until the change is
	// in: a new VIP must not write into its live table slot.
	for _, v := range d.state.VIPs {
		usedVIP[v.ID] = true
	}
	usedBackend := map[maps.BackendID]bool{}
	for _, v := range s.VIPs {
		if v.ID != unassignedVIP {
			usedVIP[v.ID] = true
		}
		for _, b := range v.Backends {
			usedBackend[b.ID] = b.ID != 0
		}
	}
	nextVIP := uint32(0)
	nextBackend := maps.BackendID(1)
	for i := range s.VIPs {
		v := &s.VIPs[i]
		if v.ID == unassignedVIP {
			for usedVIP[nextVIP] {
				nextVIP++
			}
			if nextVIP >= limits.MaxVIPs {
				return invalid(fmt.Errorf("no room for VIP %s: all %d VIP slots are used (start the daemon with a larger --max-vips after tether detach)", v.VIPRef, limits.MaxVIPs))
			}
			v.ID = nextVIP
			usedVIP[nextVIP] = true
		}
		for j := range v.Backends {
			b := &v.Backends[j]
			if b.ID != 0 {
				continue
			}
			for usedBackend[nextBackend] || d.backends[nextBackend] != nil {
				nextBackend++
			}
			if uint32(nextBackend) >= limits.MaxBackends {
				return invalid(fmt.Errorf("no room for backend %s: all %d backend slots are used", b.Name, limits.MaxBackends-1))
			}
			b.ID = nextBackend
			usedBackend[nextBackend] = true
		}
	}
	return nil
}

// Start writes the whole desired state into the maps and switches the
// datapath on.
func (d *Daemon) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.removeStrays(); err != nil {
		return fmt.Errorf("removing entries the state does not know: %w", err)
	}
	if err := d.removeMismatchedVIPs(); err != nil {
		return fmt.Errorf("removing VIP entries whose ids changed: %w", err)
	}
	if err := d.apply(ctx, d.state); err != nil {
		return err
	}
	if err := d.updateSettings(func(s *maps.Settings) {
		s.Active = true
		s.Watchdog = monotonicNow()
	}); err != nil {
		return err
	}
	return d.save()
}

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

// Heartbeat refreshes the watchdog timestamp every interval until ctx
// ends. It never waits for the daemon's main lock, so a slow change or
// resolution cannot make the watchdog fire.
func (d *Daemon) Heartbeat(ctx context.Context, every time.Duration) {
	tick(ctx, every, func() {
		if err := d.updateSettings(func(s *maps.Settings) { s.Watchdog = monotonicNow() }); err != nil {
			d.log.Error("writing watchdog heartbeat", "error", err)
		}
	})
}

// tick calls fn every interval until ctx ends.
func tick(ctx context.Context, every time.Duration, fn func()) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			fn()
		}
	}
}

// removeMismatchedVIPs deletes pinned VIP entries whose id differs from the
// state's (a state file rebuilt or restored assigns ids anew) and forgets
// the affinity entries of every id involved: no client of one VIP may be
// sent by another VIP's entries, and no new table may land in a slot that
// another live entry reads.
func (d *Daemon) removeMismatchedVIPs() error {
	wantID := map[maps.VIPKey]uint32{}
	for _, v := range d.state.VIPs {
		wantID[v.key()] = v.ID
	}
	current, err := d.opts.Maps.VIPs()
	if err != nil {
		return err
	}
	voided := map[uint32]bool{}
	for key, info := range current {
		want, known := wantID[key]
		if key.Port == 0 || !known || want == info.ID {
			continue
		}
		d.log.Warn("VIP id changed since the datapath was filled: starting it afresh", "vip", key.String(), "old_id", info.ID, "id", want)
		if err := d.opts.Maps.DeleteVIP(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
			return err
		}
		voided[info.ID], voided[want] = true, true
		delete(d.vips, want)
	}
	return d.forgetClients(voided)
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func (d *Daemon) save() error {
	if d.opts.StatePath == "" {
		return nil
	}
	return SaveState(d.opts.StatePath, d.state)
}

// change applies edit to a copy of the state, validates it, writes it to
// the datapath and saves it. On any error nothing changes: the datapath is
// put back to the old state.
func (d *Daemon) change(ctx context.Context, edit func(s *State) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := cloneState(d.state)
	if err := edit(&next); err != nil {
		return err
	}
	if err := d.assignIDs(&next); err != nil {
		return err
	}
	limits := d.opts.Maps.Limits()
	for _, v := range next.VIPs {
		if err := v.validate(limits.TableStride); err != nil {
			return invalid(err)
		}
		if err := v.validateBackends(); err != nil {
			return invalid(err)
		}
	}
	// apply removes what d.state has and its argument lacks, so d.state is
	// next while previous is restored: what only next had goes away.
	previous := d.state
	if err := d.apply(ctx, next); err != nil {
		d.state = next
		if rollback := d.apply(ctx, previous); rollback != nil {
			d.log.Error("restoring the datapath after a failed change", "error", rollback)
		}
		d.state = previous
		return err
	}
	d.state = next
	if err := d.save(); err != nil {
		if rollback := d.apply(ctx, previous); rollback != nil {
			d.log.Error("restoring the datapath after failing to save state", "error", rollback)
		}
		d.state = previous
		return err
	}
	return nil
}

func cloneState(s State) State {
	out := State{Seed: s.Seed, VIPs: make([]VIP, len(s.VIPs))}
	for i, v := range s.VIPs {
		v.Backends = slices.Clone(v.Backends)
		out.VIPs[i] = v
	}
	return out
}

// apply makes the datapath match s: backends first, so tables never point
// at an unwritten entry; then tables and VIPs; then removals.
func (d *Daemon) apply(ctx context.Context, s State) error {
	wanted := map[maps.BackendID]bool{}
	for _, v := range s.VIPs {
		for _, b := range v.Backends {
			wanted[b.ID] = true
			d.syncBackendRuntime(ctx, v, b)
		}
	}
	// The datapath hashes with the seed the tables are built with.
	if err := d.syncSeed(s.Seed); err != nil {
		return err
	}
	for _, v := range s.VIPs {
		if err := d.installVIP(v, s.Seed); err != nil {
			return err
		}
	}
	wantedVIPs := map[uint32]bool{}
	for _, v := range s.VIPs {
		wantedVIPs[v.ID] = true
	}
	for _, v := range d.state.VIPs {
		if !wantedVIPs[v.ID] || !containsVIP(s, v.VIPRef) {
			if err := d.removeVIP(v, s); err != nil {
				return err
			}
		}
	}
	for id, rt := range d.backends {
		if wanted[id] {
			continue
		}
		// Void the entry and its clients' affinity; the id may be reused
		// later with a higher generation.
		rt.generation++
		if err := d.opts.Maps.PutBackend(id, maps.Backend{Generation: rt.generation, State: maps.BackendDown}); err != nil {
			return err
		}
		if d.opts.Checker != nil {
			d.opts.Checker.Remove(backendCheckID(id))
		}
		delete(d.backends, id)
	}
	if err := d.syncAliases(s); err != nil {
		return err
	}
	return d.syncTxPorts()
}

// syncSeed makes the datapath hash clients with the seed the tables were
// built with.
func (d *Daemon) syncSeed(seed uint32) error {
	return d.updateSettings(func(s *maps.Settings) { s.Seed = seed })
}

func containsVIP(s State, ref VIPRef) bool {
	for _, v := range s.VIPs {
		if v.VIPRef == ref {
			return true
		}
	}
	return false
}

func backendCheckID(id maps.BackendID) string { return fmt.Sprintf("backend-%d", id) }

// syncBackendRuntime resolves a backend's next hop when it is new or its
// address or MAC changed, and keeps its health check in line.
func (d *Daemon) syncBackendRuntime(ctx context.Context, v VIP, b Backend) {
	rt := d.backends[b.ID]
	if rt == nil {
		// A new backend is in service at once; fall failed checks take
		// it out. Starting it down would make a VIP whose backends are all
		// new fail open and then, as the first check passes, void the
		// affinity of clients already sent to the others.
		rt = &backendRuntime{health: health.Up}
		if entry, err := d.opts.Maps.Backend(b.ID); err == nil {
			rt.generation = entry.Generation + 1
		}
		d.backends[b.ID] = rt
	}
	if rt.addr != b.Addr || rt.mac != b.MAC || rt.nextHop.MAC == nil {
		rt.addr, rt.mac = b.Addr, b.MAC
		d.resolve(ctx, b, rt)
		if rt.resolveErr != nil {
			d.log.Warn("backend next hop not resolved; keeping it out of service", "backend", b.Name, "addr", b.Addr, "error", rt.resolveErr)
		}
	}
	check, target := v.checkFor(b)
	rt.checked = d.opts.Checker != nil && check.Kind != health.KindNone
	if !rt.checked {
		// Nothing would ever report it up again.
		rt.health = health.Up
		if d.opts.Checker != nil {
			d.opts.Checker.Remove(backendCheckID(b.ID))
		}
		return
	}
	if err := d.opts.Checker.Set(backendCheckID(b.ID), target, check, rt.health); err != nil {
		d.log.Error("configuring health check", "backend", b.Name, "error", err)
	}
}

func (d *Daemon) resolve(ctx context.Context, b Backend, rt *backendRuntime) {
	var override net.HardwareAddr
	if b.MAC != "" {
		override, _ = ParseMAC(b.MAC)
	}
	// Only the resolution's own timeout ends it: a caller that goes away
	// (SIGTERM at start-up, a CLI timeout) must not turn a reachable
	// backend into an unresolved one in the pinned datapath.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	hop, err := d.opts.Resolver.Resolve(ctx, b.Addr, override)
	rt.recheckAt = time.Now().Add(recheckEvery)
	if err != nil {
		rt.nextHop, rt.resolveErr = NextHop{}, err
		return
	}
	rt.nextHop, rt.resolveErr = hop, nil
}

// datapathState decides what the datapath is told about a backend.
func (d *Daemon) datapathState(b Backend, rt *backendRuntime, allDown bool, v VIP) (maps.BackendState, bool) {
	switch {
	case rt.resolveErr != nil || rt.nextHop.MAC == nil:
		return maps.BackendDown, false
	case rt.health == health.Down && allDown && v.AllDown == AllDownFailOpen && !b.Drained:
		return maps.BackendUp, true
	case rt.health == health.Down:
		return maps.BackendDown, false
	case b.Drained:
		return maps.BackendDraining, false
	}
	return maps.BackendUp, false
}

// installVIP writes a VIP's backends, builds its table and swaps it in.
func (d *Daemon) installVIP(v VIP, seed uint32) error {
	started := time.Now()
	// All down means no backend could take a new client: weight 0 and
	// draining backends take none.
	allDown := true
	for _, b := range v.Backends {
		rt := d.backends[b.ID]
		if rt.resolveErr == nil && rt.nextHop.MAC != nil && rt.health == health.Up && !b.Drained && b.Weight > 0 {
			allDown = false
		}
	}
	// Usable backends are written first (with the devmap port they need),
	// so the new table never points at an unwritten entry; backends going
	// down are written after the swap, so the old table never points at a
	// down entry either.
	var set []maglev.Backend
	var goingDown []maps.BackendID
	entries := map[maps.BackendID]maps.Backend{}
	failingOpen := false
	for _, b := range v.Backends {
		rt := d.backends[b.ID]
		state, open := d.datapathState(b, rt, allDown, v)
		failingOpen = failingOpen || open
		if rt.datapath.Usable() && state == maps.BackendDown {
			// Its clients' affinity entries stop being honoured at once.
			rt.generation++
		}
		rt.datapath, rt.failingOpen = state, open
		entry := maps.Backend{
			MAC:        rt.nextHop.MAC,
			SourceMAC:  rt.nextHop.SourceMAC,
			Generation: rt.generation,
			Addr:       b.Addr,
			State:      state,
		}
		if rt.nextHop.Ifindex != d.opts.IngressIfindex {
			entry.Ifindex = uint32(rt.nextHop.Ifindex)
		}
		entries[b.ID] = entry
		if state == maps.BackendDown {
			goingDown = append(goingDown, b.ID)
			continue
		}
		if entry.Ifindex != 0 {
			if err := d.addTxPort(entry.Ifindex); err != nil {
				return err
			}
		}
		if err := d.opts.Maps.PutBackend(b.ID, entry); err != nil {
			return err
		}
		if state == maps.BackendUp && b.Weight > 0 {
			set = append(set, maglev.Backend{Name: b.Name, ID: uint32(b.ID), Weight: b.Weight})
		}
	}
	writeDown := func() error {
		for _, id := range goingDown {
			if err := d.opts.Maps.PutBackend(id, entries[id]); err != nil {
				return err
			}
		}
		return nil
	}
	built, err := maglev.Build(set, v.TableSize, seed)
	if err != nil {
		return fmt.Errorf("building Maglev table of %s: %w", v.VIPRef, err)
	}
	table := make([]maps.BackendID, len(built))
	for i, id := range built {
		table[i] = maps.BackendID(id)
	}
	info := maps.VIP{
		ID:              v.ID,
		NoBackendPass:   v.NoBackend == NoBackendPass,
		AffinityTimeout: v.AffinityTimeout,
		TableSize:       v.TableSize,
		Prefix4:         uint8(v.Prefix4),
		Prefix6:         uint8(v.Prefix6),
	}
	rt := d.vips[v.ID]
	if rt == nil {
		rt = &vipRuntime{}
		d.vips[v.ID] = rt
	}
	if rt.failingOpen != failingOpen {
		if failingOpen {
			d.log.Error("ALL BACKENDS DOWN: failing open, forwarding to the last backends anyway", "vip", v.VIPRef.String())
		} else {
			d.log.Info("backends available again, no longer failing open", "vip", v.VIPRef.String())
		}
	}
	rt.failingOpen = failingOpen
	info.TableSlot = rt.info.TableSlot
	if rt.table != nil && slices.Equal(rt.table, table) && rt.info == info {
		return writeDown()
	}
	key := v.key()
	if _, err := d.opts.Maps.VIP(key); err == nil {
		info.TableSlot ^= 1 // fill the inactive slot, then flip
	} else if !errors.Is(err, maps.ErrNotFound) {
		return err
	}
	if err := d.opts.Maps.PutTable(v.ID, info.TableSlot, table); err != nil {
		return err
	}
	if err := d.opts.Maps.PutVIP(key, info); err != nil {
		return err
	}
	// Non-first fragments must follow the swap too, whatever caused it.
	alias := maps.FragmentAlias(key)
	aliasInfo, err := d.opts.Maps.VIP(alias)
	switch {
	case err == nil && aliasInfo.ID == info.ID:
		if err := d.opts.Maps.PutVIP(alias, info); err != nil {
			return fmt.Errorf("switching the fragment alias of %s to its new table: %w", v.VIPRef, err)
		}
	case err != nil && !errors.Is(err, maps.ErrNotFound):
		return fmt.Errorf("reading the fragment alias of %s: %w", v.VIPRef, err)
	}
	rt.info, rt.table = info, table
	rt.tableVersion++
	d.opts.Observer.TableBuilt(v.VIPRef.String(), time.Since(started))
	return writeDown()
}

// removeVIP deletes a VIP from the datapath and forgets its clients.
func (d *Daemon) removeVIP(v VIP, next State) error {
	if err := d.opts.Maps.DeleteVIP(v.key()); err != nil && !errors.Is(err, maps.ErrNotFound) {
		return err
	}
	stillUsed := false
	for _, other := range next.VIPs {
		stillUsed = stillUsed || other.ID == v.ID
	}
	if stillUsed {
		return nil
	}
	delete(d.vips, v.ID)
	return d.forgetClients(map[uint32]bool{v.ID: true})
}

// syncAliases keeps a fragment alias for every address and protocol served
// on exactly one port, and none elsewhere.
func (d *Daemon) syncAliases(s State) error {
	type addrProto struct {
		addr  netip.Addr
		proto string
	}
	count := map[addrProto]int{}
	for _, v := range s.VIPs {
		count[addrProto{v.Addr.Addr(), v.Proto}]++
	}
	wanted := map[maps.VIPKey]maps.VIP{}
	for _, v := range s.VIPs {
		if count[addrProto{v.Addr.Addr(), v.Proto}] == 1 {
			wanted[maps.FragmentAlias(v.key())] = d.vips[v.ID].info
		}
	}
	current, err := d.opts.Maps.VIPs()
	if err != nil {
		return err
	}
	for key, info := range current {
		if key.Port != 0 {
			continue
		}
		if want, ok := wanted[key]; !ok {
			if err := d.opts.Maps.DeleteVIP(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
				return err
			}
		} else if want == info {
			delete(wanted, key)
		}
	}
	for key, info := range wanted {
		if err := d.opts.Maps.PutVIP(key, info); err != nil {
			return err
		}
	}
	return nil
}

// addTxPort lets the datapath redirect out of ifindex.
func (d *Daemon) addTxPort(ifindex uint32) error {
	if d.txPorts[ifindex] {
		return nil
	}
	if err := d.opts.Maps.PutTxPort(ifindex); err != nil {
		return err
	}
	d.txPorts[ifindex] = true
	return nil
}

// syncTxPorts lets the datapath redirect to every egress interface a
// backend needs other than the ingress one.
func (d *Daemon) syncTxPorts() error {
	wanted := map[uint32]bool{}
	for _, rt := range d.backends {
		if rt.nextHop.MAC != nil && rt.nextHop.Ifindex != d.opts.IngressIfindex && rt.nextHop.Ifindex != 0 {
			wanted[uint32(rt.nextHop.Ifindex)] = true
		}
	}
	for ifindex := range wanted {
		if err := d.addTxPort(ifindex); err != nil {
			return err
		}
	}
	for ifindex := range d.txPorts {
		if !wanted[ifindex] {
			if err := d.opts.Maps.DeleteTxPort(ifindex); err != nil && !errors.Is(err, maps.ErrNotFound) {
				return err
			}
			delete(d.txPorts, ifindex)
		}
	}
	return nil
}

// HealthResult takes a health check's outcome; a transition rebuilds the
// backend's VIP.
func (d *Daemon) HealthResult(r health.Result) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.state.VIPs {
		for _, b := range v.Backends {
			if backendCheckID(b.ID) != r.ID {
				continue
			}
			d.opts.Observer.HealthChecked(v.VIPRef.String(), b.Name, r.Err == nil, r.Latency)
			if !r.Changed {
				return
			}
			rt := d.backends[b.ID]
			rt.health, rt.healthNote = r.State, r.Reason
			d.log.Info("backend health changed", "vip", v.VIPRef.String(), "backend", b.Name, "state", r.State.String(), "reason", r.Reason)
			if err := d.installVIP(v, d.state.Seed); err != nil {
				d.dirty[v.ID] = true
				d.log.Error("applying health change; will retry", "vip", v.VIPRef.String(), "backend", b.Name, "error", err)
			}
			return
		}
	}
}

// InterfaceChanged records that the interface the program runs on now has
// index ifindex (it was deleted and created again): next hops are looked up
// again and every VIP reinstalled, since XDP_TX or redirect depends on it.
func (d *Daemon) InterfaceChanged(ifindex int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.opts.IngressIfindex = ifindex
	for _, rt := range d.backends {
		rt.recheckAt = time.Time{}
	}
	for _, v := range d.state.VIPs {
		d.dirty[v.ID] = true
	}
}

// NeighbourChanged hears that the kernel learnt a new MAC for addr, on
// ifindex. Backends at addr whose next hop differs are looked up again by
// Maintain, outside the lock.
func (d *Daemon) NeighbourChanged(addr netip.Addr, ifindex int, mac net.HardwareAddr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.state.VIPs {
		for _, b := range v.Backends {
			rt := d.backends[b.ID]
			if b.Addr != addr || b.MAC != "" || (rt.nextHop.MAC.String() == mac.String() && rt.nextHop.Ifindex == ifindex) {
				continue
			}
			d.log.Info("backend next hop changed", "backend", b.Name, "addr", addr, "old", rt.nextHop.MAC.String(), "new", mac.String())
			rt.recheckAt = time.Time{}
		}
	}
}

// recheck is a backend whose next hop Maintain looks up.
type recheck struct {
	vip     VIPRef
	backend Backend
	hop     NextHop
	err     error
}

// Maintain runs the periodic work until ctx ends: looking up next hops
// that are unresolved, reported changed or due, without holding the lock
// while the kernel answers, then installing what changed; and retrying
// VIPs whose last install failed.
func (d *Daemon) Maintain(ctx context.Context, every time.Duration) {
	tick(ctx, every, func() { d.maintainOnce(ctx) })
}

func (d *Daemon) maintainOnce(ctx context.Context) {
	due := d.dueRechecks()
	for i := range due {
		var rt backendRuntime
		d.resolve(ctx, due[i].backend, &rt)
		due[i].hop, due[i].err = rt.nextHop, rt.resolveErr
	}
	d.applyRechecks(due)
}

func (d *Daemon) dueRechecks() []recheck {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	var due []recheck
	for _, v := range d.state.VIPs {
		for _, b := range v.Backends {
			if rt := d.backends[b.ID]; rt.resolveErr != nil || !now.Before(rt.recheckAt) {
				due = append(due, recheck{vip: v.VIPRef, backend: b})
			}
		}
	}
	return due
}

func (d *Daemon) applyRechecks(due []recheck) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range due {
		v, err := findVIP(&d.state, r.vip)
		if err != nil {
			continue
		}
		b, err := findBackend(v, r.backend.Name)
		if err != nil || b.ID != r.backend.ID || b.Addr != r.backend.Addr || b.MAC != r.backend.MAC {
			continue // changed meanwhile; the change resolved it
		}
		rt := d.backends[b.ID]
		rt.recheckAt = time.Now().Add(recheckEvery)
		same := (r.err == nil) == (rt.resolveErr == nil) && rt.nextHop.Ifindex == r.hop.Ifindex &&
			rt.nextHop.MAC.String() == r.hop.MAC.String() && rt.nextHop.SourceMAC.String() == r.hop.SourceMAC.String()
		if same {
			continue
		}
		rt.nextHop, rt.resolveErr = r.hop, r.err
		if r.err != nil {
			d.log.Warn("backend next hop not resolved; keeping it out of service", "backend", b.Name, "addr", b.Addr, "error", r.err)
		}
		d.dirty[v.ID] = true
	}
	for _, v := range d.state.VIPs {
		if !d.dirty[v.ID] {
			continue
		}
		if err := d.installVIP(v, d.state.Seed); err != nil {
			d.log.Error("installing VIP; will retry", "vip", v.VIPRef.String(), "error", err)
			continue
		}
		delete(d.dirty, v.ID)
	}
	if err := d.syncTxPorts(); err != nil {
		d.log.Error("updating tx ports", "error", err)
	}
}
