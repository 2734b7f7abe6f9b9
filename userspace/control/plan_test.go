package control

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

// planned renders a plan as "id:state[+open][+gen]" per backend, then the
// Maglev set as "maglev=id*weight,...", and "failing-open" if the VIP is.
func planned(p vipPlan) string {
	var parts []string
	for _, b := range p.Backends {
		s := fmt.Sprintf("%d:%s", b.ID, b.State)
		if b.FailingOpen {
			s += "+open"
		}
		if b.NewGeneration {
			s += "+gen"
		}
		parts = append(parts, s)
	}
	var set []string
	for _, b := range p.Maglev {
		set = append(set, fmt.Sprintf("%d*%d", b.ID, b.Weight))
	}
	parts = append(parts, "maglev="+strings.Join(set, ","))
	if p.FailingOpen {
		parts = append(parts, "failing-open")
	}
	return strings.Join(parts, " ")
}

func TestPlanVIP(t *testing.T) {
	up := backendFacts{Reachable: true, Health: health.Up, Datapath: maps.BackendUp}
	down := backendFacts{Reachable: true, Health: health.Down, Datapath: maps.BackendUp}
	alreadyDown := backendFacts{Reachable: true, Health: health.Down, Datapath: maps.BackendDown}
	unreachable := backendFacts{Health: health.Up, Datapath: maps.BackendUp}
	draining := backendFacts{Reachable: true, Health: health.Down, Datapath: maps.BackendDraining}
	fresh := backendFacts{Reachable: true, Health: health.Up, Datapath: maps.BackendDown}
	backend := func(id maps.BackendID, weight uint32, drained bool) Backend {
		return Backend{Name: fmt.Sprintf("b%d", id), ID: id, Weight: weight, Drained: drained}
	}
	for _, c := range []struct {
		name     string
		allDown  string
		backends []Backend
		facts    []backendFacts
		want     string
	}{
		{"all up, by weight", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 50, false)}, []backendFacts{up, up},
			"1:up 2:up maglev=1*100,2*50"},
		{"a new backend enters service without a new generation", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, false)}, []backendFacts{up, fresh},
			"1:up 2:up maglev=1*100,2*100"},
		{"weight 0 stays up but takes no new clients", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 0, false)}, []backendFacts{up, up},
			"1:up 2:up maglev=1*100"},
		{"failing checks: down, clients voided", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, false)}, []backendFacts{up, down},
			"1:up 2:down+gen maglev=1*100"},
		{"down again: no second generation", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, false)}, []backendFacts{up, alreadyDown},
			"1:up 2:down maglev=1*100"},
		{"unresolved next hop: down, clients voided", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, false)}, []backendFacts{up, unreachable},
			"1:up 2:down+gen maglev=1*100"},
		{"drained: draining, out of the table, clients kept", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, true)}, []backendFacts{up, up},
			"1:up 2:draining maglev=1*100"},
		{"draining and failing: down, clients voided", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, true)}, []backendFacts{up, draining},
			"1:up 2:down+gen maglev=1*100"},
		{"all down, fail-open: forwarded to anyway", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 50, false)}, []backendFacts{down, alreadyDown},
			"1:up+open 2:up+open maglev=1*100,2*50 failing-open"},
		{"all down, fail-closed: nothing forwarded", AllDownFailClosed,
			[]Backend{backend(1, 100, false), backend(2, 100, false)}, []backendFacts{down, alreadyDown},
			"1:down+gen 2:down maglev="},
		{"fail-open leaves out unreachable and drained backends", AllDownFailOpen,
			[]Backend{backend(1, 100, false), backend(2, 100, false), backend(3, 100, true)}, []backendFacts{down, unreachable, draining},
			"1:up+open 2:down+gen 3:down+gen maglev=1*100 failing-open"},
		{"only weight 0 and drained backends up: all down, fail-open", AllDownFailOpen,
			[]Backend{backend(1, 0, false), backend(2, 100, true), backend(3, 100, false)}, []backendFacts{up, up, alreadyDown},
			"1:up 2:draining 3:up+open maglev=3*100 failing-open"},
		{"no backends", AllDownFailOpen, nil, nil, "maglev="},
	} {
		t.Run(c.name, func(t *testing.T) {
			facts := map[maps.BackendID]backendFacts{}
			for i, b := range c.backends {
				facts[b.ID] = c.facts[i]
			}
			got := planned(planVIP(VIP{AllDown: c.allDown, Backends: c.backends}, facts))
			if got != c.want {
				t.Errorf("plan %q, want %q", got, c.want)
			}
		})
	}
}
