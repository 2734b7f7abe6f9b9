package health

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Result is the outcome of one probe of a target, as passed to the
// Scheduler's callback.
type Result struct {
	ID      string
	Target  netip.AddrPort // as given to Set, before Check.Port is applied
	State   State          // the target's state after this result
	Changed bool           // this result moved State
	Reason  string         // why State changed; empty when Changed is false
	Latency time.Duration  // how long the probe took
	Late    time.Duration  // how long after its due time the probe started
	Err     error          // nil when the probe succeeded; see IsHard
	// Inconclusive: the probe timed out while this process could not run
	// on time, so it says nothing of the backend and was not counted.
	Inconclusive bool
}

// Status is a target's health as seen by the Scheduler at one moment.
type Status struct {
	ID                   string
	Target               netip.AddrPort
	State                State
	LastError            error         // error of the latest probe; nil if it succeeded
	LastLatency          time.Duration // duration of the latest probe
	LastCheck            time.Time     // start of the latest probe; zero before the first
	ConsecutiveSuccesses int           // successes in a row up to the latest probe
	ConsecutiveFailures  int           // failures in a row up to the latest probe
}

// Scheduler probes a changing set of targets, each on its own interval, with
// at most a fixed number of probes in flight. One goroutine keeps the
// targets ordered by their next due time and hands due ones to a pool of
// workers; when all workers are busy, due probes wait instead of piling up.
//
// Each target's first probe falls at a uniformly random point within its
// interval after Set, so that targets added together spread out; later
// probes follow at whole intervals. A probe that is still running (or whose
// result callback is) when its target falls due again is not started a
// second time: that round is skipped, as are rounds missed while all workers
// were busy.
//
// Create a Scheduler with NewScheduler. Set, Remove and Snapshot may be
// called from any goroutine, before and while Run runs.
type Scheduler struct {
	workers int
	stalls  stallMonitor

	// runSlot holds a token while Run runs, so runs never overlap.
	runSlot chan struct{}
	// wake tells the timer loop that the queue changed.
	wake chan struct{}

	mu      sync.Mutex
	targets map[string]*scheduledTarget
	queue   dueQueue // targets waiting for their next probe; never those being probed
}

// scheduledTarget is a target's configuration and health, owned by the
// Scheduler and guarded by its mutex.
type scheduledTarget struct {
	id      string
	target  netip.AddrPort
	address netip.AddrPort // target with Check.Port applied
	check   Check          // defaults applied, valid
	tracker Tracker
	// generation counts configuration changes, so that the result of a
	// probe started before a change is dropped.
	generation uint64

	nextDue    time.Time
	queueIndex int  // position in the queue; -1 when not queued
	probing    bool // a probe or its callback is running

	lastError   error
	lastLatency time.Duration
	lastCheck   time.Time
}

// probeJob is one probe handed from the timer loop to a worker. It carries
// copies of what the worker needs, so the worker reads no shared state.
type probeJob struct {
	scheduled  *scheduledTarget
	generation uint64
	id         string
	target     netip.AddrPort
	address    netip.AddrPort // target with Check.Port applied
	check      Check
	due        time.Time
}

// NewScheduler returns a Scheduler that runs at most workers probes at a
// time (values below 1 mean 1).
func NewScheduler(workers int) *Scheduler {
	return &Scheduler{
		workers: max(workers, 1),
		runSlot: make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		targets: make(map[string]*scheduledTarget),
	}
}

// Set adds the target id, or replaces its configuration. check gets its
// defaults applied and must then be valid; target is the backend's address
// and service port (see Probe).
//
// initial is the state a new target starts in (see NewTracker for how to
// choose it). When id already exists with the same target and check, Set
// changes nothing and initial is ignored: state, counters and schedule carry
// on. Otherwise the target starts afresh in initial, as if it were new, and
// the result of a probe already running for the old configuration is
// dropped. Set itself never calls onResult.
func (s *Scheduler) Set(id string, target netip.AddrPort, check Check, initial State) error {
	if id == "" {
		return errors.New("setting health check: target id is empty")
	}
	check = check.WithDefaults()
	if err := check.Validate(); err != nil {
		return fmt.Errorf("setting health check of %q: %w", id, err)
	}
	address, err := probeAddress(check, target)
	if err != nil {
		return fmt.Errorf("setting health check of %q: %w", id, err)
	}
	if initial != Up && initial != Down && initial != Unhealthy {
		return fmt.Errorf("setting health check of %q: initial state %s must be up, unhealthy or down", id, initial)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	scheduled, exists := s.targets[id]
	if exists && scheduled.target == target && scheduled.check == check {
		return nil
	}
	if !exists {
		scheduled = &scheduledTarget{id: id, queueIndex: -1}
		s.targets[id] = scheduled
	}
	scheduled.target = target
	scheduled.address = address
	scheduled.check = check
	scheduled.tracker = NewTracker(check.Rise, check.Fall, initial)
	scheduled.generation++
	scheduled.lastError = nil
	scheduled.lastLatency = 0
	scheduled.lastCheck = time.Time{}
	scheduled.nextDue = time.Now().Add(rand.N(check.Interval))
	switch {
	case scheduled.probing:
		// The worker queues it when the running probe is done.
	case scheduled.queueIndex >= 0:
		heap.Fix(&s.queue, scheduled.queueIndex)
	default:
		heap.Push(&s.queue, scheduled)
	}
	s.wakeTimerLoop()
	return nil
}

// Remove stops probing id; it does nothing if id is unknown. The result of
// a probe of id that is running is dropped, but a call of onResult already
// under way may still be running when Remove returns.
func (s *Scheduler) Remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	scheduled, exists := s.targets[id]
	if !exists {
		return
	}
	delete(s.targets, id)
	if scheduled.queueIndex >= 0 {
		heap.Remove(&s.queue, scheduled.queueIndex)
	}
}

// Snapshot returns the status of every target, sorted by id.
func (s *Scheduler) Snapshot() []Status {
	s.mu.Lock()
	statuses := make([]Status, 0, len(s.targets))
	for _, scheduled := range s.targets {
		statuses = append(statuses, Status{
			ID:                   scheduled.id,
			Target:               scheduled.target,
			State:                scheduled.tracker.State(),
			LastError:            scheduled.lastError,
			LastLatency:          scheduled.lastLatency,
			LastCheck:            scheduled.lastCheck,
			ConsecutiveSuccesses: scheduled.tracker.ConsecutiveSuccesses(),
			ConsecutiveFailures:  scheduled.tracker.ConsecutiveFailures(),
		})
	}
	s.mu.Unlock()
	slices.SortFunc(statuses, func(a, b Status) int { return strings.Compare(a.ID, b.ID) })
	return statuses
}

// Run probes the targets until ctx is done, then cancels the probes in
// flight, waits for them and returns. Their results are dropped; targets
// keep their state, and a later Run carries on where this one stopped. Runs
// do not overlap: a call made while another runs waits for it to return.
//
// Run calls onResult with the result of every probe. onResult is called
// from the worker goroutines, so calls for different targets may run
// concurrently and a slow onResult occupies a worker; calls for one target
// never overlap and arrive in probe order (unless the target is removed
// and added again under the same id). A probe result is dropped, without a
// call, when its target was removed or reconfigured while the probe ran,
// or when ctx ended. onResult may call the Scheduler's methods. A nil
// onResult is allowed; Snapshot still reports the results.
func (s *Scheduler) Run(ctx context.Context, onResult func(Result)) {
	select {
	case s.runSlot <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-s.runSlot }()

	monitorCtx, stopMonitor := context.WithCancel(ctx)
	defer stopMonitor()
	go s.stalls.run(monitorCtx)
	jobs := make(chan probeJob)
	var workers sync.WaitGroup
	for range s.workers {
		workers.Go(func() {
			for job := range jobs {
				s.runJob(ctx, job, onResult)
			}
		})
	}
	s.dispatch(ctx, jobs)
	close(jobs)
	workers.Wait()
}

// dispatch is the timer loop: it sends each target to jobs when it falls
// due, blocking while all workers are busy, until ctx is done.
func (s *Scheduler) dispatch(ctx context.Context, jobs chan<- probeJob) {
	timer := time.NewTimer(0)
	timer.Stop()
	defer timer.Stop()
	for {
		job, ready, nextDue := s.takeDue(time.Now())
		if ready {
			select {
			case jobs <- job:
			case <-ctx.Done():
				s.requeue(job, false)
				return
			}
			continue
		}
		var timerFired <-chan time.Time
		if !nextDue.IsZero() {
			timer.Reset(time.Until(nextDue))
			timerFired = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timerFired:
		}
	}
}

// takeDue removes the first target from the queue and returns its job if it
// is due at now. Otherwise it returns when the first target falls due, or
// the zero time if the queue is empty.
func (s *Scheduler) takeDue(now time.Time) (job probeJob, ready bool, nextDue time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return probeJob{}, false, time.Time{}
	}
	first := s.queue[0]
	if first.nextDue.After(now) {
		return probeJob{}, false, first.nextDue
	}
	heap.Pop(&s.queue)
	first.probing = true
	return probeJob{
		scheduled:  first,
		generation: first.generation,
		id:         first.id,
		target:     first.target,
		address:    first.address,
		check:      first.check,
		due:        first.nextDue,
	}, true, time.Time{}
}

// runJob probes, records and reports one job, then queues its target for
// its next probe.
func (s *Scheduler) runJob(ctx context.Context, job probeJob, onResult func(Result)) {
	started := time.Now()
	err := probe(ctx, job.check, job.address)
	if IsHard(err) {
		// Confirmed by one more probe at once: a single lost race with a
		// restarting process must not take the node down.
		err = probe(ctx, job.check, job.address)
	}
	latency := time.Since(started)
	if ctx.Err() != nil {
		s.requeue(job, false)
		return
	}
	inconclusive := err != nil && isTimeout(err) && s.stalls.stalled(started, time.Now()) >= job.check.Timeout/4
	result, current := s.record(job, err, inconclusive, started, latency)
	if current && onResult != nil {
		onResult(result)
	}
	s.requeue(job, true)
}

// record applies the outcome of a probe to its target and returns the
// Result to report, or false if the target was removed or reconfigured
// since the probe started.
func (s *Scheduler) record(job probeJob, err error, inconclusive bool, started time.Time, latency time.Duration) (Result, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	scheduled := job.scheduled
	if s.targets[job.id] != scheduled || scheduled.generation != job.generation {
		return Result{}, false
	}
	scheduled.lastError = err
	scheduled.lastLatency = latency
	scheduled.lastCheck = started
	result := Result{ID: job.id, Target: job.target, State: scheduled.tracker.State(), Latency: latency,
		Late: max(started.Sub(job.due), 0), Err: err, Inconclusive: inconclusive}
	if !inconclusive {
		result.Changed, result.State, result.Reason = scheduled.tracker.Observe(err)
	}
	return result, true
}

// requeue puts a probed target back in the queue unless it was removed.
// completed says the probe ran to the end, so the target's next probe is
// one interval after this one's due time; otherwise the target keeps its
// due time and is probed as soon as the scheduler runs again. A target
// reconfigured meanwhile keeps the due time Set gave it.
func (s *Scheduler) requeue(job probeJob, completed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	scheduled := job.scheduled
	scheduled.probing = false
	if s.targets[job.id] != scheduled {
		return
	}
	if completed && scheduled.generation == job.generation {
		scheduled.nextDue = followingDue(job.due, job.check.Interval, time.Now())
	}
	heap.Push(&s.queue, scheduled)
	s.wakeTimerLoop()
}

// followingDue returns the first time after now that lies a whole number of
// intervals (at least one) after due.
func followingDue(due time.Time, interval time.Duration, now time.Time) time.Time {
	next := due.Add(interval)
	if next.After(now) {
		return next
	}
	missed := now.Sub(next)/interval + 1
	return next.Add(missed * interval)
}

// wakeTimerLoop makes the timer loop look at the queue again. The caller
// holds s.mu.
func (s *Scheduler) wakeTimerLoop() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// dueQueue is a min-heap of targets by next due time, for container/heap.
type dueQueue []*scheduledTarget

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].nextDue.Before(q[j].nextDue) }

func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].queueIndex = i
	q[j].queueIndex = j
}

func (q *dueQueue) Push(x any) {
	scheduled := x.(*scheduledTarget)
	scheduled.queueIndex = len(*q)
	*q = append(*q, scheduled)
}

func (q *dueQueue) Pop() any {
	old := *q
	last := old[len(old)-1]
	old[len(old)-1] = nil
	last.queueIndex = -1
	*q = old[:len(old)-1]
	return last
}
