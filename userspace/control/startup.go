package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

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
	if opts.Now == nil {
		opts.Now = time.Now
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
	d.setState(d.state)
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
	switch {
	case entry.State == maps.BackendDown:
		rt.health = health.Down
	case entry.State == maps.BackendDraining && !b.Drained:
		// Unhealthy when the last daemon stopped: its session grace
		// starts again.
		rt.health, rt.unhealthySince = health.Unhealthy, d.opts.Now()
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
	return d.save(d.state)
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
		if key.IsFragmentAlias() || !known || want == info.ID {
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

// removeStrays deletes datapath entries the state does not know: VIPs,
// and backends still marked usable. A daemon started after its state file
// was lost thus never serves stale configuration.
func (d *Daemon) removeStrays() error {
	known := map[maps.VIPKey]bool{}
	knownIDs := map[uint32]bool{}
	for _, v := range d.state.VIPs {
		known[v.key()] = true
		knownIDs[v.ID] = true
	}
	current, err := d.opts.Maps.VIPs()
	if err != nil {
		return err
	}
	strayIDs := map[uint32]bool{}
	for key, info := range current {
		if !key.IsFragmentAlias() && !known[key] {
			d.log.Warn("removing a VIP the state does not know", "vip", key.String())
			if err := d.opts.Maps.DeleteVIP(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
				return err
			}
			if !knownIDs[info.ID] {
				strayIDs[info.ID] = true
			}
		}
	}
	if err := d.forgetClients(strayIDs); err != nil {
		return err
	}
	limits := d.opts.Maps.Limits()
	for id := maps.BackendID(1); uint32(id) < limits.MaxBackends; id++ {
		if d.backends[id] != nil {
			continue
		}
		entry, err := d.opts.Maps.Backend(id)
		if err != nil {
			return err
		}
		if entry.State.Usable() {
			if err := d.opts.Maps.PutBackend(id, maps.Backend{Generation: entry.Generation + 1, State: maps.BackendDown}); err != nil {
				return err
			}
		}
	}
	return nil
}

// forgetClients deletes the affinity entries of the VIP ids removed from
// the datapath without removeVIP, so that a VIP given one of those ids
// later does not inherit their clients.
func (d *Daemon) forgetClients(vipIDs map[uint32]bool) error {
	if len(vipIDs) == 0 {
		return nil
	}
	var stale []maps.AffinityKey
	if err := d.opts.Maps.ForEachAffinity(func(key maps.AffinityKey, _ maps.Affinity) {
		if vipIDs[key.VIPID] {
			stale = append(stale, key)
		}
	}); err != nil {
		return fmt.Errorf("reading affinity entries: %w", err)
	}
	for _, key := range stale {
		if err := d.opts.Maps.DeleteAffinity(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("forgetting clients of a removed VIP: %w", err)
		}
	}
	return nil
}
