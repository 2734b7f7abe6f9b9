package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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

// checkIDPrefix names the health check of a backend: checkIDPrefix + id.
const checkIDPrefix = "backend-"

func backendCheckID(id maps.BackendID) string {
	return checkIDPrefix + strconv.FormatUint(uint64(id), 10)
}

// checkedBackend is the backend whose check backendCheckID named id.
func checkedBackend(id string) (maps.BackendID, bool) {
	digits, ok := strings.CutPrefix(id, checkIDPrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 32)
	return maps.BackendID(n), err == nil
}

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

// plan is planVIP of v, with the VIP's mass-failure guard brought up to
// date first: the end of a guard restarts every session grace.
func (d *Daemon) plan(v VIP) vipPlan {
	facts := d.facts(v)
	if d.noteGuard(v, guarded(v, facts)) {
		facts = d.facts(v) // the graces start again
	}
	return planVIP(v, facts)
}

// facts collects what planVIP needs to know of v's backends.
func (d *Daemon) facts(v VIP) map[maps.BackendID]backendFacts {
	now := d.opts.Now()
	out := make(map[maps.BackendID]backendFacts, len(v.Backends))
	for _, b := range v.Backends {
		rt := d.backends[b.ID]
		f := backendFacts{Reachable: rt.resolveErr == nil && rt.nextHop.MAC != nil, Checked: rt.checked,
			Health: rt.health, Failing: rt.failing, Datapath: rt.datapath}
		if rt.health == health.Unhealthy {
			// The grace runs from when it became unhealthy, or from the
			// end of a mass failure, whichever is later.
			since := rt.unhealthySince
			if vrt := d.vips[v.ID]; vrt != nil && vrt.guardEnded.After(since) {
				since = vrt.guardEnded
			}
			f.Unhealthy = now.Sub(since)
		}
		out[b.ID] = f
	}
	return out
}

// backendWrite is one backends map entry to write.
type backendWrite struct {
	id    maps.BackendID
	entry maps.Backend
}

// installVIP makes the datapath serve v as planVIP decides. Usable
// backends are written before the table swap (with the devmap port they
// need), so the new table never points at an unwritten entry; backends
// going down are written after it, so the old table never points at a
// down entry either.
func (d *Daemon) installVIP(v VIP, seed uint32) error {
	started := time.Now()
	plan := d.plan(v)
	usable, goingDown := d.entries(v, plan)
	if err := d.writeBackends(usable); err != nil {
		return err
	}
	d.adoptPlan(plan)
	swapped, err := d.swapTable(v, plan, seed)
	if err != nil {
		return err
	}
	if swapped {
		d.opts.Observer.TableBuilt(v.VIPRef.String(), time.Since(started))
	}
	return d.writeBackends(goingDown)
}

// entries are the backend entries plan asks for, usable ones and those
// going down apart.
func (d *Daemon) entries(v VIP, plan vipPlan) (usable, goingDown []backendWrite) {
	for i, p := range plan.Backends {
		rt := d.backends[p.ID]
		generation := rt.generation
		if p.NewGeneration {
			generation++
		}
		w := backendWrite{id: p.ID, entry: maps.Backend{
			MAC:        rt.nextHop.MAC,
			SourceMAC:  rt.nextHop.SourceMAC,
			Generation: generation,
			Addr:       v.Backends[i].Addr,
			State:      p.State,
		}}
		if rt.nextHop.Ifindex != d.opts.IngressIfindex {
			w.entry.Ifindex = uint32(rt.nextHop.Ifindex)
		}
		if p.State == maps.BackendDown {
			goingDown = append(goingDown, w)
		} else {
			usable = append(usable, w)
		}
	}
	return usable, goingDown
}

// adoptPlan records plan in the backends' runtime, once the usable
// entries are written: a write that fails leaves every generation as it
// was, so undoing the change moves no client.
func (d *Daemon) adoptPlan(plan vipPlan) {
	for _, p := range plan.Backends {
		rt := d.backends[p.ID]
		if p.NewGeneration {
			rt.generation++
		}
		rt.datapath, rt.failingOpen = p.State, p.FailingOpen
	}
}

// writeBackends writes backend entries, each usable one after the devmap
// port it is forwarded through.
func (d *Daemon) writeBackends(writes []backendWrite) error {
	for _, w := range writes {
		if w.entry.State.Usable() && w.entry.Ifindex != 0 {
			if err := d.addTxPort(w.entry.Ifindex); err != nil {
				return err
			}
		}
		if err := d.opts.Maps.PutBackend(w.id, w.entry); err != nil {
			return err
		}
	}
	return nil
}

// swapTable builds v's Maglev table from plan and installs it with its
// settings, unless both are what the daemon installed last; it reports
// whether it installed one. After a failed install the next call installs
// whatever it builds.
func (d *Daemon) swapTable(v VIP, plan vipPlan, seed uint32) (bool, error) {
	built, err := maglev.Build(plan.Maglev, v.TableSize, seed)
	if err != nil {
		return false, fmt.Errorf("building Maglev table of %s: %w", v.VIPRef, err)
	}
	table := make([]maps.BackendID, len(built))
	for i, id := range built {
		table[i] = maps.BackendID(id)
	}
	rt := d.vipRuntime(v.ID)
	if rt.failingOpen != plan.FailingOpen {
		if plan.FailingOpen {
			d.log.Error("ALL BACKENDS DOWN: failing open, forwarding to the last backends anyway", "vip", v.VIPRef.String())
		} else {
			d.log.Info("backends available again, no longer failing open", "vip", v.VIPRef.String())
		}
	}
	rt.failingOpen = plan.FailingOpen
	info := maps.VIP{
		ID:              v.ID,
		NoBackendPass:   v.NoBackend == NoBackendPass,
		AffinityTimeout: v.AffinityTimeout,
		TableSize:       v.TableSize,
		Prefix4:         uint8(v.Prefix4),
		Prefix6:         uint8(v.Prefix6),
		TableSlot:       rt.info.TableSlot,
	}
	if rt.table != nil && slices.Equal(rt.table, table) && rt.info == info {
		return false, nil
	}
	installed, err := maps.InstallTable(d.opts.Maps, v.key(), info, table)
	if err != nil {
		rt.table = nil
		return false, err
	}
	rt.info, rt.table = installed, table
	rt.tableVersion++
	return true, nil
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
		if !key.IsFragmentAlias() {
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

// vipRuntime returns what the daemon installed for VIP id, new if nothing.
func (d *Daemon) vipRuntime(id uint32) *vipRuntime {
	rt := d.vips[id]
	if rt == nil {
		rt = &vipRuntime{}
		d.vips[id] = rt
	}
	return rt
}

// noteGuard records whether v is guarded against a mass failure, and says
// so loudly when that changes; it reports whether a guard just ended.
func (d *Daemon) noteGuard(v VIP, guarded bool) (ended bool) {
	rt := d.vipRuntime(v.ID)
	if rt.guarded == guarded {
		return false
	}
	rt.guarded = guarded
	if guarded {
		d.log.Error("MASS FAILURE: most backends fail at once, likely the LB's own fault or fleet-wide; every pinned client stays where it is (gone nodes still lose theirs)",
			"vip", v.VIPRef.String(), "threshold_percent", v.MassFailurePercent)
		return false
	}
	rt.guardEnded = d.opts.Now()
	d.log.Info("mass failure over: unhealthy backends lose their pinned clients after the session grace again", "vip", v.VIPRef.String())
	return true
}
