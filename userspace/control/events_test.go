package control

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

// backendsPerVIP spreads a large inventory over VIPs as an operator would.
const backendsPerVIP = 100

// bigTestBed starts a daemon serving n backends, backendsPerVIP a VIP.
func bigTestBed(t testing.TB, n int) *testBed {
	t.Helper()
	vips := (n + backendsPerVIP - 1) / backendsPerVIP
	limits := maps.Limits{MaxVIPs: uint32(vips), TableStride: 1031, MaxBackends: uint32(n + 1), AffinityBuckets: 64}
	tb := &testBed{t: t, maps: maps.NewFake(limits), resolver: newFakeResolver(), checker: newFakeChecker()}
	var state State
	for i := range vips {
		v := NewVIP(VIPRef{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 80), Proto: "tcp"})
		for j := range min(backendsPerVIP, n-i*backendsPerVIP) {
			addr := netip.AddrFrom4([4]byte{198, 19, byte(j), byte(i)})
			v.Backends = append(v.Backends, Backend{Name: fmt.Sprintf("b%d", j), Addr: addr, Weight: 100})
		}
		state.VIPs = append(state.VIPs, v)
	}
	tb.daemon = tb.start(state, "")
	return tb
}

// TestHealthResultFindsEveryBackend: the index finds each backend's VIP,
// also after changes reorder the state, and ignores checks it does not know.
func TestHealthResultFindsEveryBackend(t *testing.T) {
	tb := bigTestBed(t, 250)
	ref := tb.daemon.state.VIPs[0].VIPRef
	if err := tb.daemon.RemoveBackend(t.Context(), ref, "b0"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"backend-0", "backend-99999", "backend-x", "other-1", ""} {
		tb.daemon.HealthResult(health.Result{ID: id, Changed: true, State: health.Down})
	}
	for _, v := range tb.daemon.state.VIPs {
		for _, b := range v.Backends {
			tb.daemon.HealthResult(health.Result{ID: backendCheckID(b.ID), Changed: true, State: health.Down, Reason: "test"})
		}
	}
	for _, v := range tb.status().VIPs {
		for _, b := range v.Backends {
			if b.HealthNote != "test" {
				t.Fatalf("backend %s of %s did not get its health result: %+v", b.Name, v.VIPRef, b)
			}
		}
	}
}

// BenchmarkHealthResult: one unchanged result (the common case) costs the
// same whatever the number of backends.
func BenchmarkHealthResult(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			tb := bigTestBed(b, n)
			var ids []string
			for _, v := range tb.daemon.state.VIPs {
				for _, be := range v.Backends {
					ids = append(ids, backendCheckID(be.ID))
				}
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				tb.daemon.HealthResult(health.Result{ID: ids[i%len(ids)], State: health.Up, Latency: time.Millisecond})
			}
		})
	}
}

// fakeClock is a clock the test moves.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time           { return c.now }
func (c *fakeClock) advance(by time.Duration) { c.now = c.now.Add(by) }

// TestSlowNodeKeepsSessionsForTheGrace follows one node through soft
// failures, the session grace, a mass failure and a hard failure, with a
// fake clock: its clients' generation changes only when it is gone, or
// unhealthy past the grace while the VIP is not guarded.
func TestSlowNodeKeepsSessionsForTheGrace(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	tb := &testBed{t: t, maps: maps.NewFake(testLimits), resolver: newFakeResolver(), checker: newFakeChecker(), now: clock.Now}
	tb.daemon = tb.start(State{}, "")
	ref := mustRef(t, "198.18.1.1:80", "tcp")
	tb.addVIP(ref, func(v *VIP) {
		v.Check = health.Check{Kind: health.KindTCP}
		v.SessionGrace = 45 * time.Second
	})
	for i, name := range []string{"b1", "b2", "b3", "b4"} {
		tb.addBackend(ref, name, fmt.Sprintf("198.18.0.%d", 10+i), 1)
	}
	id := tb.backendID(ref, "b3")
	generation := tb.backend(id).Generation
	soft := errors.New("context deadline exceeded")
	expect := func(when string, state maps.BackendState, generation uint32, guarded bool) {
		t.Helper()
		entry := tb.backend(id)
		if entry.State != state || entry.Generation != generation {
			t.Fatalf("%s: b3 is %s at generation %d, want %s at %d", when, entry.State, entry.Generation, state, generation)
		}
		if got := tb.vipStatus(ref).MassFailure; got != guarded {
			t.Fatalf("%s: mass failure %t, want %t", when, got, guarded)
		}
		if shares(tb.liveTable(ref))[id] != 0 && state != maps.BackendUp {
			t.Fatalf("%s: b3 is %s but still in the table", when, state)
		}
	}

	tb.daemon.HealthResult(health.Result{ID: backendCheckID(id), State: health.Unhealthy, Changed: true, Err: soft, Reason: "3 consecutive failures"})
	expect("unhealthy", maps.BackendDraining, generation, false)
	if st := tb.backendStatus(ref, "b3"); st.Health != "unhealthy" || st.UnhealthySince == nil || !st.UnhealthySince.Equal(clock.now) {
		t.Fatalf("status of an unhealthy backend: %+v", st)
	}
	clock.advance(44 * time.Second)
	tb.daemon.reviewPlans()
	expect("44 s unhealthy", maps.BackendDraining, generation, false)

	// A second node failing makes half the VIP fail: guarded, past the
	// grace nobody moves.
	other := backendCheckID(tb.backendID(ref, "b1"))
	tb.daemon.HealthResult(health.Result{ID: other, State: health.Up, Err: soft})
	clock.advance(10 * time.Second)
	tb.daemon.reviewPlans()
	expect("54 s unhealthy, guarded", maps.BackendDraining, generation, true)
	// Inconclusive results change nothing.
	tb.daemon.HealthResult(health.Result{ID: other, State: health.Up, Err: soft, Inconclusive: true})
	tb.daemon.reviewPlans()
	expect("inconclusive", maps.BackendDraining, generation, true)

	// A restart keeps it unhealthy, draining, probed from that state.
	tb.daemon = tb.start(tb.daemon.state, "")
	expect("restarted", maps.BackendDraining, generation, false)
	if call, ok := tb.checker.checked(backendCheckID(id)); !ok || call.initial != health.Unhealthy {
		t.Fatalf("after a restart b3's check is %+v (%t), want one starting unhealthy", call, ok)
	}
	tb.daemon.HealthResult(health.Result{ID: other, State: health.Up, Err: soft})

	// The guard ends: the grace starts again from there, then its clients
	// move.
	tb.daemon.HealthResult(health.Result{ID: other, State: health.Up})
	tb.daemon.reviewPlans()
	expect("guard over", maps.BackendDraining, generation, false)
	clock.advance(45 * time.Second)
	tb.daemon.reviewPlans()
	expect("a grace after the guard", maps.BackendDown, generation+1, false)

	// Back up: nobody's generation changes.
	tb.daemon.HealthResult(health.Result{ID: backendCheckID(id), State: health.Up, Changed: true, Reason: "2 consecutive successes"})
	expect("up again", maps.BackendUp, generation+1, false)

	// Hard evidence: down at once, no grace.
	tb.daemon.HealthResult(health.Result{ID: backendCheckID(id), State: health.Down, Changed: true, Err: errors.New("refused"), Reason: "the node is gone"})
	expect("gone", maps.BackendDown, generation+2, false)
}
