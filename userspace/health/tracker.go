package health

import "fmt"

// State is what the probes say of a backend.
type State uint8

// The states of a backend. The zero value is Down.
const (
	// Down: hard evidence says the node is gone (see IsHard).
	Down State = iota
	// Up: the probes pass.
	Up
	// Unhealthy: Fall probes in a row failed softly; the node is alive
	// but unwell, and keeps the sessions it holds.
	Unhealthy
)

// String returns "down", "up" or "unhealthy".
func (s State) String() string {
	switch s {
	case Down:
		return "down"
	case Up:
		return "up"
	case Unhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Tracker holds the state of one backend and moves it on probe outcomes:
// Fall soft failures in a row make an Up backend Unhealthy, one hard
// failure (see IsHard; the Scheduler confirms it first) makes any backend
// Down at once, and Rise successes in a row bring an Unhealthy or Down
// backend Up. Soft failures leave a Down backend Down: it comes back only
// by passing its probes. A Tracker is not safe for concurrent use.
type Tracker struct {
	rise, fall int
	state      State
	successes  int // length of the current run of successes
	failures   int // length of the current run of failures
}

// NewTracker returns a Tracker in the initial state. The caller decides
// where to start: Up keeps a backend that is already carrying traffic (for
// instance after a daemon restart) until its probes fail; Down keeps a new
// backend out until Rise probes succeed. Unhealthy is kept; any other value
// counts as Down. rise and fall below 1 act as 1.
func NewTracker(rise, fall int, initial State) Tracker {
	if initial != Up && initial != Unhealthy {
		initial = Down
	}
	return Tracker{rise: rise, fall: fall, state: initial}
}

// Observe records the outcome of one probe (nil for success) and returns
// the resulting state. changed is true when this outcome moved the state,
// and then reason explains why, for example "3 consecutive failures, last:
// context deadline exceeded"; otherwise reason is empty.
func (t *Tracker) Observe(err error) (changed bool, state State, reason string) {
	if err == nil {
		t.successes++
		t.failures = 0
		if t.state != Up && t.successes >= t.rise {
			t.state = Up
			return true, t.state, fmt.Sprintf("%d consecutive %s", t.successes, plural(t.successes, "success", "successes"))
		}
		return false, t.state, ""
	}
	t.failures++
	t.successes = 0
	switch {
	case IsHard(err) && t.state != Down:
		t.state = Down
		return true, t.state, fmt.Sprintf("the node is gone: %v", err)
	case !IsHard(err) && t.state == Up && t.failures >= t.fall:
		t.state = Unhealthy
		return true, t.state, fmt.Sprintf("%d consecutive %s, last: %v", t.failures, plural(t.failures, "failure", "failures"), err)
	}
	return false, t.state, ""
}

// State returns the current state.
func (t *Tracker) State() State { return t.state }

// ConsecutiveSuccesses returns how many probes in a row have succeeded up to
// the latest one; 0 if the latest failed.
func (t *Tracker) ConsecutiveSuccesses() int { return t.successes }

// ConsecutiveFailures returns how many probes in a row have failed up to the
// latest one; 0 if the latest succeeded.
func (t *Tracker) ConsecutiveFailures() int { return t.failures }

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
