package control

import (
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
)

// backendFacts are what the daemon has learnt of a backend at run time,
// all that planVIP needs besides the desired state.
type backendFacts struct {
	Reachable bool              // its next hop is resolved
	Checked   bool              // a health check is configured
	Health    health.State      // the checks' verdict (Up when unchecked)
	Failing   bool              // its latest conclusive probe failed
	Unhealthy time.Duration     // how long it has been Unhealthy
	Datapath  maps.BackendState // what the datapath holds for it now
}

// backendPlan is what the datapath is to be told about one backend.
type backendPlan struct {
	ID    maps.BackendID
	State maps.BackendState
	// FailingOpen: not healthy, but forwarded to because the VIP has no
	// backend that could take a new client.
	FailingOpen bool
	// NewGeneration: it leaves service, so its clients' affinity entries
	// must stop being honoured at once.
	NewGeneration bool
}

// vipPlan is a VIP's backends as the datapath is to see them, and the
// backends its Maglev table is built from.
type vipPlan struct {
	Backends    []backendPlan // in the VIP's order
	Maglev      []maglev.Backend
	FailingOpen bool
	// Guarded: so many checked backends fail at once that no pinned
	// client is moved for soft failures.
	Guarded bool
}

// planVIP decides, from the desired state and what is known of each
// backend, what the datapath holds for a VIP. It changes nothing.
//
// A backend whose next hop is unknown, or that hard evidence says is gone,
// is down: its clients move. An unhealthy one (soft failures) is draining:
// it takes no new client but keeps its pinned ones, until it has been
// unhealthy for the VIP's session grace, and then it is down too, unless
// the VIP is guarded. A drained one is draining. When no backend could
// take a new client and the VIP fails open, the checked ones that are not
// up are forwarded to anyway. Only up backends of weight > 0 are in the
// Maglev table.
func planVIP(v VIP, facts map[maps.BackendID]backendFacts) vipPlan {
	plan := vipPlan{Backends: make([]backendPlan, 0, len(v.Backends)), Guarded: guarded(v, facts)}
	failOpen := v.AllDown == AllDownFailOpen && !takesNewClients(v, facts)
	for _, b := range v.Backends {
		f := facts[b.ID]
		p := planBackend(v, b, f, failOpen, plan.Guarded)
		p.NewGeneration = f.Datapath.Usable() && p.State == maps.BackendDown
		plan.FailingOpen = plan.FailingOpen || p.FailingOpen
		if p.State == maps.BackendUp && b.Weight > 0 {
			plan.Maglev = append(plan.Maglev, maglev.Backend{Name: b.Name, ID: uint32(b.ID), Weight: b.Weight})
		}
		plan.Backends = append(plan.Backends, p)
	}
	return plan
}

// takesNewClients reports whether any backend of v could take a new
// client: reachable, up, not drained, of weight > 0.
func takesNewClients(v VIP, facts map[maps.BackendID]backendFacts) bool {
	for _, b := range v.Backends {
		if f := facts[b.ID]; f.Reachable && f.Health == health.Up && !b.Drained && b.Weight > 0 {
			return true
		}
	}
	return false
}

// planBackend decides one backend's datapath state (see planVIP).
func planBackend(v VIP, b Backend, f backendFacts, failOpen, guarded bool) backendPlan {
	p := backendPlan{ID: b.ID, State: maps.BackendUp}
	graceOver := f.Health == health.Unhealthy && f.Unhealthy >= v.SessionGrace && !guarded
	switch {
	case !f.Reachable:
		p.State = maps.BackendDown
	case f.Health != health.Up && failOpen && !b.Drained:
		p.FailingOpen = true
	case f.Health == health.Down || graceOver:
		p.State = maps.BackendDown
	case f.Health == health.Unhealthy || b.Drained:
		p.State = maps.BackendDraining
	}
	return p
}

// guarded reports whether at least the VIP's mass-failure share of its
// checked backends, and at least two, fail softly at once (their latest
// probe failed, or they are unhealthy): the fault is then more likely the
// LB's own (CPU starvation) or fleet-wide (a reconnect storm) than each
// node's. Backends that hard evidence took down are gone, not failing:
// they count among the checked ones only.
func guarded(v VIP, facts map[maps.BackendID]backendFacts) bool {
	checked, failing := 0, 0
	for _, b := range v.Backends {
		f := facts[b.ID]
		if !f.Checked {
			continue
		}
		checked++
		if f.Health != health.Down && (f.Failing || f.Health == health.Unhealthy) {
			failing++
		}
	}
	return failing >= 2 && failing*100 >= v.MassFailurePercent*checked
}
