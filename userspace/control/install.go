package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
)

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
