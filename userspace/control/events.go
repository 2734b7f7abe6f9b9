package control

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

// Heartbeat refreshes the watchdog timestamp every interval until ctx
// ends. It never waits for the daemon's main lock, so a slow change or
// resolution cannot make the watchdog fire.
func (d *Daemon) Heartbeat(ctx context.Context, every time.Duration) {
	Every(ctx, every, func() {
		if err := d.updateSettings(func(s *maps.Settings) { s.Watchdog = monotonicNow() }); err != nil {
			d.log.Error("writing watchdog heartbeat", "error", err)
		}
	})
}

// Every calls fn every interval until ctx ends.
func Every(ctx context.Context, every time.Duration, fn func()) {
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

// HealthResult takes a health check's outcome; a transition rebuilds the
// backend's VIP.
func (d *Daemon) HealthResult(r health.Result) {
	id, ok := checkedBackend(r.ID)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	pos, ok := d.where[id]
	if !ok {
		return // removed while it was probed
	}
	v := d.state.VIPs[pos.vip]
	b := v.Backends[pos.backend]
	d.opts.Observer.HealthChecked(v.VIPRef.String(), b.Name, r)
	if r.Inconclusive {
		return
	}
	rt := d.backends[b.ID]
	rt.failing = r.Err != nil
	if !r.Changed {
		return
	}
	rt.health, rt.healthNote = r.State, r.Reason
	level := slog.LevelInfo
	switch r.State {
	case health.Unhealthy:
		rt.unhealthySince = d.opts.Now()
		level = slog.LevelWarn
		r.Reason += fmt.Sprintf("; no new clients, pinned ones stay for the session grace (%s)", v.SessionGrace)
	case health.Down:
		level = slog.LevelWarn
		r.Reason += "; its clients move"
	}
	d.log.Log(context.Background(), level, "backend health changed", "vip", v.VIPRef.String(), "backend", b.Name, "state", r.State.String(), "reason", r.Reason)
	if err := d.installVIP(v, d.state.Seed); err != nil {
		d.dirty[v.ID] = true
		d.log.Error("applying health change; will retry", "vip", v.VIPRef.String(), "backend", b.Name, "error", err)
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
	Every(ctx, every, func() { d.maintainOnce(ctx) })
}

func (d *Daemon) maintainOnce(ctx context.Context) {
	due := d.dueRechecks()
	for i := range due {
		var rt backendRuntime
		d.resolve(ctx, due[i].backend, &rt)
		due[i].hop, due[i].err = rt.nextHop, rt.resolveErr
	}
	d.applyRechecks(due)
	d.reviewPlans()
}

// reviewPlans installs every VIP whose plan changed with time alone: a
// session grace that ran out, a mass failure that began or ended.
func (d *Daemon) reviewPlans() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.state.VIPs {
		plan := d.plan(v)
		if !d.planned(plan) {
			continue
		}
		if err := d.installVIP(v, d.state.Seed); err != nil {
			d.dirty[v.ID] = true
			d.log.Error("installing VIP; will retry", "vip", v.VIPRef.String(), "error", err)
		}
	}
}

// planned reports whether plan differs from what the datapath holds.
func (d *Daemon) planned(plan vipPlan) bool {
	for _, p := range plan.Backends {
		if rt := d.backends[p.ID]; rt.datapath != p.State || rt.failingOpen != p.FailingOpen {
			return true
		}
	}
	return false
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
