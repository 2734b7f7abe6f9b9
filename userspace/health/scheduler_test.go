package health

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// resultLog records the results a Scheduler reports.
type resultLog struct {
	mu      sync.Mutex
	results map[string][]Result
	times   map[string][]time.Time
}

func newResultLog() *resultLog {
	return &resultLog{results: make(map[string][]Result), times: make(map[string][]time.Time)}
}

func (l *resultLog) record(result Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.results[result.ID] = append(l.results[result.ID], result)
	l.times[result.ID] = append(l.times[result.ID], time.Now())
}

func (l *resultLog) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.results[id])
}

func (l *resultLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	total := 0
	for _, results := range l.results {
		total += len(results)
	}
	return total
}

// startScheduler runs scheduler, reporting to onResult, until the returned stop function is called
// or the test ends. stop cancels Run and fails the test if Run does not
// return within limit.
func startScheduler(t *testing.T, scheduler *Scheduler, onResult func(Result)) (stop func(limit time.Duration)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		scheduler.Run(ctx, onResult)
	}()
	var once sync.Once
	stop = func(limit time.Duration) {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(limit):
				t.Errorf("Run did not return within %s of cancel", limit)
			}
		})
	}
	t.Cleanup(func() {
		stop(10 * time.Second)
		<-done
	})
	return stop
}

// waitFor polls condition until it holds, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, condition func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !condition() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSchedulerProbesOnSchedule(t *testing.T) {
	const (
		targets  = 300
		backends = 4
		interval = 200 * time.Millisecond
		runFor   = 1500 * time.Millisecond
	)
	addresses := make([]netip.AddrPort, backends)
	for i := range addresses {
		addresses[i], _ = tcpBackend(t, "tcp4")
	}
	log := newResultLog()
	scheduler := NewScheduler(16)
	check := Check{Kind: KindTCP, Interval: interval, Timeout: 150 * time.Millisecond, Rise: 1, Fall: 1}
	started := time.Now()
	for i := range targets {
		if err := scheduler.Set(fmt.Sprintf("target-%03d", i), addresses[i%backends], check, Down); err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	stop := startScheduler(t, scheduler, log.record)
	time.Sleep(runFor)
	stop(2 * time.Second)

	log.mu.Lock()
	defer log.mu.Unlock()
	// Each target is first probed within one interval and then every
	// interval: 7 or 8 probes in 1.5 s. The bounds leave room for a slow,
	// busy machine.
	var firstProbes []time.Duration
	failures, total := 0, 0
	for i := range targets {
		id := fmt.Sprintf("target-%03d", i)
		results := log.results[id]
		if len(results) < 4 || len(results) > 10 {
			t.Errorf("%s was probed %d times in %s at interval %s, want about 7", id, len(results), runFor, interval)
		}
		if len(results) == 0 {
			continue
		}
		firstProbes = append(firstProbes, log.times[id][0].Sub(started))
		for _, result := range results {
			total++
			if result.Err != nil {
				failures++
			}
			if result.Target != addresses[i%backends] {
				t.Fatalf("%s: result for target %s, want %s", id, result.Target, addresses[i%backends])
			}
		}
	}
	if failures*100 > total {
		t.Errorf("%d of %d probes of live loopback listeners failed", failures, total)
	}

	slices.Sort(firstProbes)
	early := 0
	for _, first := range firstProbes {
		if first < 20*time.Millisecond {
			early++
		}
	}
	// Uniform jitter puts about a tenth of the first probes in the first
	// 20 ms and spreads them over the whole interval.
	if early > targets/2 {
		t.Errorf("%d of %d first probes came in the first 20 ms; want them spread over %s", early, targets, interval)
	}
	if spread := firstProbes[len(firstProbes)-1] - firstProbes[0]; spread < interval/2 {
		t.Errorf("first probes spread over %s, want most of the %s interval", spread, interval)
	}

	statuses := scheduler.Snapshot()
	if len(statuses) != targets {
		t.Fatalf("Snapshot has %d targets, want %d", len(statuses), targets)
	}
	for _, status := range statuses {
		if status.LastCheck.IsZero() || status.LastLatency <= 0 {
			t.Errorf("%s: LastCheck %v, LastLatency %s; want a probe recorded", status.ID, status.LastCheck, status.LastLatency)
		}
	}
}

func TestSchedulerBoundsConcurrency(t *testing.T) {
	const workers = 3
	var inFlight, maxInFlight, served atomic.Int64
	server := httpBackend(t, "tcp4", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			seen := maxInFlight.Load()
			if now <= seen || maxInFlight.CompareAndSwap(seen, now) {
				break
			}
		}
		served.Add(1)
		time.Sleep(10 * time.Millisecond)
	}))
	target := serverAddress(t, server)

	log := newResultLog()
	scheduler := NewScheduler(workers)
	// 40 targets every 100 ms, each probe taking at least 10 ms, need 4
	// workers' worth of time: more than the pool has.
	check := Check{Kind: KindHTTP, Interval: 100 * time.Millisecond, Timeout: 80 * time.Millisecond}
	const targets = 40
	for i := range targets {
		if err := scheduler.Set(fmt.Sprintf("target-%02d", i), target, check, Up); err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	stop := startScheduler(t, scheduler, log.record)
	time.Sleep(time.Second)
	stop(2 * time.Second)

	if got := maxInFlight.Load(); got > workers {
		t.Errorf("up to %d probes ran at once, want at most %d workers", got, workers)
	}
	if got := maxInFlight.Load(); got < 2 {
		t.Errorf("at most %d probe ran at once, want the %d workers used in parallel", got, workers)
	}
	if served.Load() < 50 {
		t.Errorf("only %d probes in 1 s with %d workers", served.Load(), workers)
	}
	for i := range targets {
		// A target is never probed twice in one interval, however late
		// the pool gets to it.
		if got := log.count(fmt.Sprintf("target-%02d", i)); got > 11 {
			t.Errorf("target-%02d probed %d times in 1 s at interval 100 ms", i, got)
		}
	}
}

func TestSchedulerSerializesResultsOfATarget(t *testing.T) {
	target, _ := tcpBackend(t, "tcp4")
	var (
		inCallback sync.Map
		overlaps   atomic.Int64
	)
	log := newResultLog()
	scheduler := NewScheduler(8)
	onResult := func(result Result) {
		busy, _ := inCallback.LoadOrStore(result.ID, new(atomic.Bool))
		if !busy.(*atomic.Bool).CompareAndSwap(false, true) {
			overlaps.Add(1)
		}
		// Longer than the interval: the target falls due while its
		// previous result is still being handled.
		time.Sleep(60 * time.Millisecond)
		busy.(*atomic.Bool).Store(false)
		log.record(result)
	}
	check := Check{Kind: KindTCP, Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond}
	for i := range 4 {
		if err := scheduler.Set(fmt.Sprintf("slow-%d", i), target, check, Up); err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	stop := startScheduler(t, scheduler, onResult)
	time.Sleep(600 * time.Millisecond)
	stop(2 * time.Second)

	if overlaps.Load() != 0 {
		t.Errorf("onResult ran %d times while the same target's previous call was running", overlaps.Load())
	}
	for i := range 4 {
		id := fmt.Sprintf("slow-%d", i)
		// At most one result per 60 ms callback, instead of one per 20 ms
		// interval.
		if got := log.count(id); got < 2 || got > 11 {
			t.Errorf("%s: %d results in 600 ms with a 60 ms callback, want between 2 and 11", id, got)
		}
	}
}

func TestSchedulerRemove(t *testing.T) {
	target, _ := tcpBackend(t, "tcp4")
	log := newResultLog()
	scheduler := NewScheduler(4)
	check := Check{Kind: KindTCP, Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond}
	for _, id := range []string{"kept", "gone"} {
		if err := scheduler.Set(id, target, check, Up); err != nil {
			t.Fatalf("Set(%s): %v", id, err)
		}
	}
	stop := startScheduler(t, scheduler, log.record)
	waitFor(t, 5*time.Second, "3 results of each target", func() bool {
		return log.count("kept") >= 3 && log.count("gone") >= 3
	})

	scheduler.Remove("gone")
	scheduler.Remove("never-added")
	removedAt := log.count("gone")
	keptAt := log.count("kept")
	time.Sleep(300 * time.Millisecond)

	// One callback may already have been under way when Remove returned.
	if got := log.count("gone"); got > removedAt+1 {
		t.Errorf("removed target got %d more results", got-removedAt)
	}
	if got := log.count("kept"); got < keptAt+2 {
		t.Errorf("kept target got %d results in 300 ms at interval 50 ms, want more", got-keptAt)
	}
	statuses := scheduler.Snapshot()
	if len(statuses) != 1 || statuses[0].ID != "kept" {
		t.Errorf("Snapshot after Remove = %+v, want only \"kept\"", statuses)
	}
	stop(2 * time.Second)
}

func TestSchedulerStopsPromptly(t *testing.T) {
	release := make(chan struct{})
	var inFlight atomic.Int64
	server := httpBackend(t, "tcp4", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) })
	target := serverAddress(t, server)

	log := newResultLog()
	scheduler := NewScheduler(4)
	check := Check{Kind: KindHTTP, Interval: 3 * time.Second, Timeout: 2 * time.Second, Fall: 1}
	for i := range 20 {
		if err := scheduler.Set(fmt.Sprintf("hanging-%02d", i), target, check, Up); err != nil {
			t.Fatalf("Set: %v", err)
		}
	}
	stop := startScheduler(t, scheduler, log.record)
	waitFor(t, 5*time.Second, "a probe in flight", func() bool { return inFlight.Load() > 0 })

	started := time.Now()
	stop(time.Second)
	t.Logf("Run returned %s after cancel", time.Since(started))

	// Probes cut short by the shutdown are not failures of the backend.
	if got := log.total(); got != 0 {
		t.Errorf("%d results reported for probes canceled by shutdown, want 0", got)
	}
	for _, status := range scheduler.Snapshot() {
		if status.State != Up || !status.LastCheck.IsZero() || status.LastError != nil {
			t.Errorf("%s after shutdown: %s, last check %v, error %v; want up and unprobed", status.ID, status.State, status.LastCheck, status.LastError)
		}
	}
}

func TestSchedulerReportsTransitions(t *testing.T) {
	live, _ := tcpBackend(t, "tcp4")
	dead := closedPort(t)
	log := newResultLog()
	scheduler := NewScheduler(2)
	check := Check{Kind: KindTCP, Interval: 30 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 2, Fall: 2}
	if err := scheduler.Set("backend", dead, check, Up); err != nil {
		t.Fatalf("Set: %v", err)
	}
	stop := startScheduler(t, scheduler, log.record)
	waitFor(t, 5*time.Second, "the dead backend to go down", func() bool {
		statuses := scheduler.Snapshot()
		return len(statuses) == 1 && statuses[0].State == Down
	})
	stop(2 * time.Second)

	log.mu.Lock()
	results := slices.Clone(log.results["backend"])
	log.mu.Unlock()
	var changes []Result
	for _, result := range results {
		if result.Changed {
			changes = append(changes, result)
		}
	}
	if len(changes) != 1 {
		t.Fatalf("got %d state changes, want 1: %+v", len(changes), results)
	}
	down := changes[0]
	if down.State != Down || !strings.HasPrefix(down.Reason, "the node is gone: dial tcp "+dead.String()) || !IsHard(down.Err) {
		t.Errorf("change = %s with reason %q (error %v), want down at once on a refused connection", down.State, down.Reason, down.Err)
	}
	if down.Err == nil || down.Latency <= 0 || down.Target != dead {
		t.Errorf("change carries error %v, latency %s, target %s", down.Err, down.Latency, down.Target)
	}

	// Setting the same target and check again keeps state and counters,
	// whatever the initial state says.
	if err := scheduler.Set("backend", dead, check, Up); err != nil {
		t.Fatalf("Set: %v", err)
	}
	status := scheduler.Snapshot()[0]
	if status.State != Down || status.ConsecutiveFailures < 1 || status.LastError == nil || status.LastCheck.IsZero() {
		t.Errorf("after an unchanged Set: %+v, want the tracker kept", status)
	}

	// A new target starts afresh in the given initial state.
	if err := scheduler.Set("backend", live, check, Down); err != nil {
		t.Fatalf("Set: %v", err)
	}
	status = scheduler.Snapshot()[0]
	want := Status{ID: "backend", Target: live, State: Down}
	if status != want {
		t.Errorf("after changing the target: %+v, want %+v", status, want)
	}

	// So does a changed check.
	changed := check
	changed.Fall = 5
	if err := scheduler.Set("backend", live, changed, Up); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if status := scheduler.Snapshot()[0]; status.State != Up {
		t.Errorf("after changing the check: state %s, want up", status.State)
	}

	stop = startScheduler(t, scheduler, log.record)
	waitFor(t, 5*time.Second, "the live backend to be probed", func() bool {
		status := scheduler.Snapshot()[0]
		return status.ConsecutiveSuccesses >= 2 && status.LastError == nil
	})
	stop(2 * time.Second)
}

func TestSchedulerSetRejectsBadInput(t *testing.T) {
	scheduler := NewScheduler(1)
	live := netip.MustParseAddrPort("127.0.0.1:3000")
	tests := []struct {
		name    string
		id      string
		target  netip.AddrPort
		check   Check
		initial State
		want    string
	}{
		{"empty id", "", live, Check{}, Up, "target id is empty"},
		{"bad check", "a", live, Check{Kind: KindHTTP, Method: "PUT"}, Up, `setting health check of "a": health check method "PUT" must be GET or HEAD`},
		{"no address", "a", netip.AddrPort{}, Check{}, Up, "has no IP address"},
		{"no port", "a", netip.AddrPortFrom(live.Addr(), 0), Check{}, Up, "has port 0"},
		{"bad initial state", "a", live, Check{}, State(3), "initial state State(3) must be up, unhealthy or down"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			err := scheduler.Set(test.id, test.target, test.check, test.initial)
			if err == nil || !strings.Contains(err.Error(), test.want) {
				t.Errorf("Set() = %v, want an error containing %q", err, test.want)
			}
		})
	}
	if statuses := scheduler.Snapshot(); len(statuses) != 0 {
		t.Errorf("rejected Sets left targets behind: %+v", statuses)
	}

	check := Check{Port: 8080}
	if err := scheduler.Set("port-from-check", netip.AddrPortFrom(live.Addr(), 0), check, Down); err != nil {
		t.Errorf("Set with the port in the check: %v", err)
	}
}

func TestFollowingDue(t *testing.T) {
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	const interval = 100 * time.Millisecond
	tests := []struct{ due, now, want int }{
		{0, 30, 100},    // on time
		{0, 99, 100},    // just in time
		{0, 100, 200},   // the next round is already due: skip it
		{0, 250, 300},   // two rounds missed
		{0, 1001, 1100}, // many rounds missed, phase kept
	}
	for _, test := range tests {
		if got := followingDue(at(test.due), interval, at(test.now)); !got.Equal(at(test.want)) {
			t.Errorf("followingDue(%d ms, %s, now %d ms) = %s, want %d ms", test.due, interval, test.now, got.Sub(base), test.want)
		}
	}
}
