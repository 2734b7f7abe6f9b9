package health

import (
	"errors"
	"fmt"
	"testing"
)

// outcomes turns a string of 's' (success), 'f' (soft failure) and 'h'
// (hard failure) into probe results.
func outcomes(sequence string) []error {
	results := make([]error, len(sequence))
	for i, outcome := range sequence {
		switch outcome {
		case 'f':
			results[i] = fmt.Errorf("probe %d failed", i)
		case 'h':
			results[i] = hardFailure{fmt.Errorf("probe %d refused", i)}
		}
	}
	return results
}

func TestTrackerSequences(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		initial    State
		sequence   string
		// changes lists, for each result that changes the state, its
		// index in sequence.
		changes []int
		final   State
	}{
		{"up stays up on successes", 2, 3, Up, "ssss", nil, Up},
		{"down stays down on failures", 2, 3, Down, "ffff", nil, Down},
		{"unhealthy after fall soft failures", 2, 3, Up, "sfff", []int{3}, Unhealthy},
		{"down at once on a hard failure", 2, 3, Up, "sh", []int{1}, Down},
		{"unhealthy then down on a hard failure", 2, 2, Up, "ffh", []int{1, 2}, Down},
		{"soft failures leave a down backend down", 2, 2, Down, "fffsfff", nil, Down},
		{"hard failures while down change nothing", 1, 1, Down, "hhh", nil, Down},
		{"unhealthy comes up after rise successes", 2, 2, Unhealthy, "sfss", []int{3}, Up},
		{"unhealthy stays unhealthy on soft failures", 2, 2, Unhealthy, "ffff", nil, Unhealthy},
		{"isolated failures never fall", 2, 3, Up, "ffsffsffs", nil, Up},
		{"rises after rise successes", 2, 3, Down, "fss", []int{2}, Up},
		{"isolated successes never rise", 3, 3, Down, "ssfssfssf", nil, Down},
		{"full cycle", 2, 3, Up, "fffssfffss", []int{2, 4, 7, 9}, Up},
		{"flapping from up", 2, 2, Up, "fsfsfsfsfsfsfsfs", nil, Up},
		{"flapping from down", 2, 2, Down, "sfsfsfsfsfsfsfsf", nil, Down},
		{"flapping pairs under rise and fall 3", 3, 3, Up, "ffssffssffss", nil, Up},
		{"rise and fall 1 follow every change", 1, 1, Down, "sfsh", []int{0, 1, 2, 3}, Down},
		{"rise and fall below 1 act as 1", 0, -5, Up, "fs", []int{0, 1}, Up},
		{"unknown initial state counts as down", 1, 1, State(7), "f", nil, Down},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			tracker := NewTracker(test.rise, test.fall, test.initial)
			var changes []int
			for i, err := range outcomes(test.sequence) {
				before := tracker.State()
				changed, state, reason := tracker.Observe(err)
				if state != tracker.State() {
					t.Fatalf("result %d: Observe returned %s, State() = %s", i, state, tracker.State())
				}
				if changed != (state != before) {
					t.Fatalf("result %d: changed = %t but state went from %s to %s", i, changed, before, state)
				}
				if changed != (reason != "") {
					t.Fatalf("result %d: changed = %t with reason %q", i, changed, reason)
				}
				if changed {
					changes = append(changes, i)
				}
			}
			if fmt.Sprint(changes) != fmt.Sprint(test.changes) {
				t.Errorf("state changed at results %v, want %v", changes, test.changes)
			}
			if tracker.State() != test.final {
				t.Errorf("final state %s, want %s", tracker.State(), test.final)
			}
		})
	}
}

func TestTrackerReasons(t *testing.T) {
	tracker := NewTracker(2, 3, Up)
	refused := errors.New("dial tcp 198.18.0.3:3000: connect: connection refused")
	for range 2 {
		tracker.Observe(refused)
	}
	changed, state, reason := tracker.Observe(refused)
	want := "3 consecutive failures, last: dial tcp 198.18.0.3:3000: connect: connection refused"
	if !changed || state != Unhealthy || reason != want {
		t.Errorf("third failure: Observe = %t, %s, %q; want true, unhealthy, %q", changed, state, reason, want)
	}
	if got := tracker.ConsecutiveFailures(); got != 3 {
		t.Errorf("ConsecutiveFailures() = %d, want 3", got)
	}

	tracker.Observe(nil)
	changed, state, reason = tracker.Observe(nil)
	if !changed || state != Up || reason != "2 consecutive successes" {
		t.Errorf("second success: Observe = %t, %s, %q; want true, up, %q", changed, state, reason, "2 consecutive successes")
	}
	if tracker.ConsecutiveSuccesses() != 2 || tracker.ConsecutiveFailures() != 0 {
		t.Errorf("counters = %d successes, %d failures; want 2, 0", tracker.ConsecutiveSuccesses(), tracker.ConsecutiveFailures())
	}

	single := NewTracker(1, 1, Down)
	if _, _, reason := single.Observe(nil); reason != "1 consecutive success" {
		t.Errorf("rise 1 reason = %q, want %q", reason, "1 consecutive success")
	}
	if _, _, reason := single.Observe(refused); reason != "1 consecutive failure, last: "+refused.Error() {
		t.Errorf("fall 1 reason = %q", reason)
	}
}

func TestStateString(t *testing.T) {
	for state, want := range map[State]string{Up: "up", Down: "down", Unhealthy: "unhealthy", State(9): "State(9)"} {
		if got := state.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(state), got, want)
		}
	}
}
