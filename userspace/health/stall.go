package health

import (
	"context"
	"sync"
	"sync/atomic"
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
	// lastWake is when the monitor last ran (Unix ns): a stall still going
	// on shows as a lastWake long past.
	lastWake atomic.Int64
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
	m.lastWake.Store(time.Now().UnixNano())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-timer.C:
			m.lastWake.Store(now.UnixNano())
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

// stalled returns how much of [from, to] this process could not run on
// time: the recorded stalls that overlap it, and one still going on (the
// monitor has not woken for two ticks), which a probe may notice before
// the monitor does.
func (m *stallMonitor) stalled(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var total time.Duration
	overlap := func(start, end time.Time) {
		if start.Before(from) {
			start = from
		}
		if end.After(to) {
			end = to
		}
		if end.After(start) {
			total += end.Sub(start)
		}
	}
	for _, s := range m.stalls {
		overlap(s.start, s.end)
	}
	if wake := m.lastWake.Load(); wake != 0 {
		if since := time.Unix(0, wake).Add(stallTick); to.Sub(since) > stallTick {
			overlap(since, to)
		}
	}
	return total
}
