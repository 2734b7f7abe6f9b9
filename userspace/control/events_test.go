package control

import (
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
