package control

import (
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
)

// backendFacts are what the daemon has learnt of a backend at run time,
// all that planVIP needs besides the desired state.
type backendFacts struct {
	Reachable bool              // its next hop is resolved
	Health    health.State      // the checks' verdict (Up when unchecked)
	Datapath  maps.BackendState // what the datapath holds for it now
}

// backendPlan is what the datapath is to be told about one backend.
type backendPlan struct {
	ID    maps.BackendID
	State maps.BackendState
	// FailingOpen: down, but forwarded to because the VIP has no backend
	// that could take a new client.
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
}

// planVIP decides, from the desired state and what is known of each
// backend, what the datapath holds for a VIP. It changes nothing.
//
// A backend is down when its next hop is unknown or its checks fail; a
// drained one is draining (it keeps its clients, takes no new ones). When
// no backend could take a new client and the VIP fails open, the checked
// down ones are forwarded to anyway. Only up backends of weight > 0 are in
// the Maglev table.
func planVIP(v VIP, facts map[maps.BackendID]backendFacts) vipPlan {
	allDown := true
	for _, b := range v.Backends {
		f := facts[b.ID]
		if f.Reachable && f.Health == health.Up && !b.Drained && b.Weight > 0 {
			allDown = false
		}
	}
	failOpen := allDown && v.AllDown == AllDownFailOpen
	plan := vipPlan{Backends: make([]backendPlan, 0, len(v.Backends))}
	for _, b := range v.Backends {
		f := facts[b.ID]
		p := backendPlan{ID: b.ID, State: maps.BackendUp}
		switch {
		case !f.Reachable:
			p.State = maps.BackendDown
		case f.Health == health.Down && failOpen && !b.Drained:
			p.FailingOpen = true
		case f.Health == health.Down:
			p.State = maps.BackendDown
		case b.Drained:
			p.State = maps.BackendDraining
		}
		p.NewGeneration = f.Datapath.Usable() && p.State == maps.BackendDown
		plan.FailingOpen = plan.FailingOpen || p.FailingOpen
		if p.State == maps.BackendUp && b.Weight > 0 {
			plan.Maglev = append(plan.Maglev, maglev.Backend{Name: b.Name, ID: uint32(b.ID), Weight: b.Weight})
		}
		plan.Backends = append(plan.Backends, p)
	}
	return plan
}
