package health

import (
	"context"
	"sync"
	"time"
)

// stallTick is how often the stall monitor checks that it runs on time.
const stallTick = 10 * time.Millisecond

// stallWindow is how long the monitor remembers a stall.
const stallWindow = time.Minute

// stallMonitor notices when this process could not run on time: a
// CPU-starved LB host reads a probe's answer late, and the probe times out
// through no fault of the backend. It wakes every stallTick and records
// each wake-up that came late.
type stallMonitor struct {
	mu     sync.Mutex
	stalls []stall // oldest first, none older than stallWindow
}

// stall is one late wake-up: the process could not run from start to end
// although it was due at start.
type stall struct {
	start, end time.Time
}

// run watches until ctx ends.
func (m *stallMonitor) run(ctx context.Context) {
	timer := time.NewTimer(stallTick)
	defer timer.Stop()
	due := time.Now().Add(stallTick)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-timer.C:
			if late := now.Sub(due); late > stallTick {
				m.record(stall{start: due, end: now})
			}
			due = now.Add(stallTick)
			timer.Reset(stallTick)
		}
	}
}

func (m *stallMonitor) record(s stall) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := 0
	for keep < len(m.stalls) && s.end.Sub(m.stalls[keep].end) > stallWindow {
		keep++
	}
	m.stalls = append(m.stalls[keep:], s)
}

// longest returns the longest stall that overlaps [from, to].
func (m *stallMonitor) longest(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var worst time.Duration
	for _, s := range m.stalls {
		if s.end.After(from) && s.start.Before(to) {
			worst = max(worst, s.end.Sub(s.start))
		}
	}
	return worst
}
