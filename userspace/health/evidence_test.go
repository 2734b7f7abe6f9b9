package health

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// hangingBackend accepts requests and never answers them until the test
// ends.
func hangingBackend(t *testing.T) netip.AddrPort {
	hang := make(chan struct{})
	server := httpBackend(t, "tcp4", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	t.Cleanup(func() { close(hang) }) // runs before the server's Close
	return serverAddress(t, server)
}

// TestEvidence: a refused connection is hard evidence for every kind of
// check; a node that accepts but answers late, wrongly or not at all is
// soft evidence, and so is a handshake that is not answered in time.
func TestEvidence(t *testing.T) {
	dead := closedPort(t)
	slow := hangingBackend(t)
	failing := serverAddress(t, httpBackend(t, "tcp4", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})))
	for _, c := range []struct {
		name   string
		kind   Kind
		target netip.AddrPort
		hard   bool
	}{
		{"tcp refused", KindTCP, dead, true},
		{"http refused", KindHTTP, dead, true},
		{"engineio refused", KindEngineIO, dead, true},
		{"http late", KindHTTP, slow, false},
		{"engineio late", KindEngineIO, slow, false},
		{"http error status", KindHTTP, failing, false},
		{"engineio error status", KindEngineIO, failing, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			check := Check{Kind: c.kind, Interval: time.Second, Timeout: 200 * time.Millisecond}
			err := Probe(context.Background(), check, c.target)
			if err == nil {
				t.Fatal("probe passed")
			}
			if IsHard(err) != c.hard {
				t.Fatalf("IsHard(%v) = %t, want %t", err, IsHard(err), c.hard)
			}
		})
	}
}

func TestStallMonitor(t *testing.T) {
	var m stallMonitor
	base := time.Now()
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	m.record(stall{start: at(0), end: at(50)})
	m.record(stall{start: at(100), end: at(300)})
	for _, c := range []struct {
		from, to int
		want     time.Duration
	}{
		{-100, -1, 0},
		{10, 20, 10 * time.Millisecond},
		{40, 120, 30 * time.Millisecond},
		{-10, 400, 250 * time.Millisecond},
		{301, 400, 0},
	} {
		if got := m.stalled(at(c.from), at(c.to)); got != c.want {
			t.Errorf("stalled in [%d, %d] ms = %s, want %s", c.from, c.to, got, c.want)
		}
	}
	// A stall still going on: the monitor last woke 300 ms before the end.
	m.lastWake.Store(at(700).UnixNano())
	if got := m.stalled(at(900), at(1000)); got != 100*time.Millisecond {
		t.Errorf("stalled in [900, 1000] ms after a wake-up at 700 = %s, want 100ms", got)
	}
	m.record(stall{start: at(0).Add(2 * stallWindow), end: at(10).Add(2 * stallWindow)})
	if len(m.stalls) != 1 {
		t.Errorf("%d stalls kept, want only the one within %s", len(m.stalls), stallWindow)
	}
}

// TestSchedulerDiscardsTimeoutsWhileStalled: a probe that times out while
// the process could not run is reported inconclusive and moves nothing; a
// hard failure is counted all the same.
func TestSchedulerDiscardsTimeoutsWhileStalled(t *testing.T) {
	slow := hangingBackend(t)
	dead := closedPort(t)
	scheduler := NewScheduler(2)
	now := time.Now()
	scheduler.stalls.record(stall{start: now, end: now.Add(time.Hour)})
	check := Check{Kind: KindHTTP, Interval: 50 * time.Millisecond, Timeout: 20 * time.Millisecond, Fall: 1}
	for id, target := range map[string]netip.AddrPort{"slow": slow, "dead": dead} {
		if err := scheduler.Set(id, target, check, Up); err != nil {
			t.Fatal(err)
		}
	}
	log := newResultLog()
	stop := startScheduler(t, scheduler, log.record)
	waitFor(t, 5*time.Second, "three probes of each", func() bool { return log.count("slow") >= 3 && log.count("dead") >= 1 })
	stop(2 * time.Second)
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, r := range log.results["slow"] {
		if !r.Inconclusive || r.Changed || r.State != Up {
			t.Fatalf("a timeout while stalled was counted: %+v", r)
		}
	}
	if !slices.ContainsFunc(log.results["dead"], func(r Result) bool { return r.Changed && r.State == Down && !r.Inconclusive }) {
		t.Fatalf("the refused backend did not go down: %+v", log.results["dead"])
	}
}
