package control

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
	if p.Guarded {
		parts = append(parts, "guarded")
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
			got := planned(planVIP(VIP{AllDown: c.allDown, Backends: c.backends, SessionGrace: time.Minute, MassFailurePercent: 50}, facts))
			if got != c.want {
				t.Errorf("plan %q, want %q", got, c.want)
			}
		})
	}
}

// TestPlanVIPSessionGrace: a slow node keeps its pinned clients for the
// session grace and takes no new ones; past the grace they move, unless
// so many backends fail at once that the VIP is guarded; a gone node's
// clients move at once whatever the guard says. Durations stand for a
// fake clock.
func TestPlanVIPSessionGrace(t *testing.T) {
	const grace = time.Minute
	up := backendFacts{Reachable: true, Checked: true, Health: health.Up, Datapath: maps.BackendUp}
	failingUp := backendFacts{Reachable: true, Checked: true, Health: health.Up, Failing: true, Datapath: maps.BackendUp}
	unhealthy := func(for_ time.Duration) backendFacts {
		return backendFacts{Reachable: true, Checked: true, Health: health.Unhealthy, Failing: true, Unhealthy: for_, Datapath: maps.BackendDraining}
	}
	gone := backendFacts{Reachable: true, Checked: true, Health: health.Down, Failing: true, Datapath: maps.BackendUp}
	unchecked := backendFacts{Reachable: true, Health: health.Up, Datapath: maps.BackendUp}
	openBefore := func(f backendFacts) backendFacts { f.Datapath = maps.BackendUp; return f }
	for _, c := range []struct {
		name    string
		percent int
		facts   []backendFacts
		want    string
	}{
		{"just unhealthy: draining, pinned clients stay", 50,
			[]backendFacts{up, up, unhealthy(0)}, "1:up 2:up 3:draining maglev=1*1,2*1"},
		{"unhealthy within the grace: still draining", 50,
			[]backendFacts{up, up, unhealthy(grace - time.Second)}, "1:up 2:up 3:draining maglev=1*1,2*1"},
		{"unhealthy past the grace: its clients move", 50,
			[]backendFacts{up, up, unhealthy(grace)}, "1:up 2:up 3:down+gen maglev=1*1,2*1"},
		{"two of three failing at 50%: guarded, nobody moves", 50,
			[]backendFacts{up, failingUp, unhealthy(10 * grace)}, "1:up 2:up 3:draining maglev=1*1,2*1 guarded"},
		{"two of three failing at 70%: not guarded", 70,
			[]backendFacts{up, failingUp, unhealthy(10 * grace)}, "1:up 2:up 3:down+gen maglev=1*1,2*1"},
		{"one failing is never a mass failure", 1,
			[]backendFacts{up, up, unhealthy(10 * grace)}, "1:up 2:up 3:down+gen maglev=1*1,2*1"},
		{"unchecked backends do not count", 50,
			[]backendFacts{unchecked, unchecked, unchecked, failingUp, unhealthy(10 * grace)}, "1:up 2:up 3:up 4:up 5:draining maglev=1*1,2*1,3*1,4*1 guarded"},
		{"a gone node loses its clients even when guarded", 50,
			[]backendFacts{failingUp, unhealthy(0), gone}, "1:up 2:draining 3:down+gen maglev=1*1 guarded"},
		{"all unhealthy: failing open, nobody voided", 50,
			[]backendFacts{unhealthy(0), unhealthy(0), unhealthy(0)}, "1:up+open 2:up+open 3:up+open maglev=1*1,2*1,3*1 failing-open guarded"},
		{"leaving fail-open: the still unhealthy drain, nobody voided", 50,
			[]backendFacts{up, openBefore(unhealthy(0)), openBefore(unhealthy(0))}, "1:up 2:draining 3:draining maglev=1*1 guarded"},
		{"recovered: up again, nobody voided", 50,
			[]backendFacts{up, up, {Reachable: true, Checked: true, Health: health.Up, Datapath: maps.BackendDraining}}, "1:up 2:up 3:up maglev=1*1,2*1,3*1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := VIP{AllDown: AllDownFailOpen, SessionGrace: grace, MassFailurePercent: c.percent}
			facts := map[maps.BackendID]backendFacts{}
			for i, f := range c.facts {
				id := maps.BackendID(i + 1)
				v.Backends = append(v.Backends, Backend{Name: fmt.Sprintf("b%d", id), ID: id, Weight: 1})
				facts[id] = f
			}
			if got := planned(planVIP(v, facts)); got != c.want {
				t.Errorf("plan %q, want %q", got, c.want)
			}
		})
	}
}
