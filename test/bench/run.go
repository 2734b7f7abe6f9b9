// Package bench is make bench: tether's speed and cost measured in one run
// against yardsticks run beside it, round-robin, so that the noise of a
// shared machine hits all of them alike. Every result is a ratio to a floor
// (an XDP_DROP and a MAC-swapping XDP_TX program built here), to a real peer
// (nginx's stream module) or to no balancer at all. See Run.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/tether-lb/tether/loader"
)

// Config sizes a run.
type Config struct {
	Quick         bool     // smaller sizes, for a look rather than numbers
	Parts         []string // of Parts; empty: all of them
	Rounds        int      // round-robin rounds of the packet benches
	ProgRunRepeat uint32   // prog.Run repetitions per sample
	LivePackets   uint32   // live frames per sample
	Clients       uint32   // clients in the affinity map, both families
	Conn          ConnConfig
	Control       ControlConfig
}

// DefaultConfig is make bench: about six minutes on two cores.
func DefaultConfig() Config {
	return Config{
		Rounds:        5,
		ProgRunRepeat: 10_000_000,
		LivePackets:   2_000_000,
		Clients:       1_000_000,
		Conn:          ConnConfig{Duration: 3 * time.Second, Connections: 16, Rounds: 5},
		Control: ControlConfig{Rounds: 9, HealthTargets: 1000, HealthInterval: time.Second,
			HealthWarmup: 2 * time.Second, HealthWindow: 8 * time.Second, HealthWorkers: 32,
			HealthKinds: []string{"tcp", "http", "engineio"}},
	}
}

// QuickConfig checks the whole benchmark works in about a minute; its
// numbers are rougher.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Quick = true
	c.Rounds = 2
	c.ProgRunRepeat = 1_000_000
	c.LivePackets = 300_000
	c.Conn.Duration, c.Conn.Rounds = time.Second, 2
	c.Control.Rounds, c.Control.HealthWindow, c.Control.HealthWarmup = 3, 3*time.Second, time.Second
	c.Control.HealthKinds = []string{"tcp"}
	return c
}

// Parts are the benchmark's parts, in the order they run: prog.Run, live
// frames on veth (with the profile), connections and the control plane.
var Parts = []string{"progrun", "live", "connections", "control"}

// Runs reports whether part is to be measured.
func (c Config) Runs(part string) bool {
	return len(c.Parts) == 0 || slices.Contains(c.Parts, part)
}

// Results is everything one run measured, and what it could not.
type Results struct {
	Config      Config
	Started     time.Time
	Took        time.Duration
	Entries     int // affinity entries present after the fill
	ProgRun     *ProgRunResults
	TableSizes  []TableSizeRow
	Live        *LiveResults
	Profile     *ProfileResults
	Connections *ConnResults
	Control     *ControlResults
	// Failures are the parts that could not be measured, with the reason.
	Failures []string
}

// Run measures everything it can. A part that fails is recorded in
// Failures and the run goes on; a cancelled ctx stops it. Everything it set
// up is torn down before it returns.
func Run(ctx context.Context, cfg Config, progress io.Writer) (results *Results, err error) {
	results = &Results{Config: cfg, Started: time.Now()}
	defer func() { results.Took = time.Since(results.Started) }()
	if err := rlimit.RemoveMemlock(); err != nil {
		return results, fmt.Errorf("lifting the memlock limit: %w", err)
	}
	if err := removeLeftoverNamespaces(); err != nil {
		return results, err
	}
	l := &lab{}
	defer func() {
		if teardownErr := l.teardown(); teardownErr != nil {
			err = errors.Join(err, fmt.Errorf("tearing down: %w", teardownErr))
		}
	}()
	fail := func(part string, partErr error) error {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		results.Failures = append(results.Failures, fmt.Sprintf("%s: %v", part, partErr))
		fmt.Fprintf(progress, "%s could not be measured: %v\n", part, partErr)
		return nil
	}

	fl, err := newFloors(loader.DefaultOptions().AffinityCapacity)
	if err != nil {
		return results, err
	}
	l.onTeardown("closing the floors", fl.Close)
	clients4 := min(uint32(maxClients4), cfg.Clients/2)
	fmt.Fprintf(progress, "loading tether and pinning %d clients in its affinity map\n", cfg.Clients)
	placeholder := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	dp, err := newBenchDatapath(loader.DefaultOptions(), families(clients4, cfg.Clients-clients4), placeholder, placeholder)
	if err != nil {
		return results, err
	}
	l.onTeardown("closing the bench datapath", dp.Close)
	counts, err := dp.kernel.AffinityCount()
	if err != nil {
		return results, err
	}
	results.Entries = counts.Entries

	if cfg.Runs("progrun") {
		if results.ProgRun, err = measureProgRun(ctx, dp, fl, cfg.ProgRunRepeat, cfg.Rounds, progress); err != nil {
			if err := fail("prog.Run", err); err != nil {
				return results, err
			}
		}
		if results.TableSizes, err = measureTableSizes(ctx, cfg.ProgRunRepeat/5, min(cfg.Rounds, 3), progress); err != nil {
			if err := fail("prog.Run over table sizes", err); err != nil {
				return results, err
			}
		}
	}
	if cfg.Runs("live") {
		if err := measureLiveAndProfile(ctx, l, dp, fl, cfg, results, progress); err != nil {
			if err := fail("live veth", err); err != nil {
				return results, err
			}
		}
	}
	if cfg.Runs("connections") {
		if results.Connections, err = measureConnections(ctx, l, cfg.Conn, progress); err != nil {
			if err := fail("connections", err); err != nil {
				return results, err
			}
		}
	}
	if cfg.Runs("control") {
		if results.Control, err = measureControlPlane(l, dp, cfg.Control, progress); err != nil {
			if err := fail("control plane", err); err != nil {
				return results, err
			}
		}
	}
	return results, nil
}

// measureLiveAndProfile is the live part: the round-robin rounds, then a
// profile of the native path.
func measureLiveAndProfile(ctx context.Context, l *lab, dp *benchDatapath, fl *floors, cfg Config, results *Results, progress io.Writer) error {
	bed, err := newLiveBed(l)
	if err != nil {
		return err
	}
	if results.Live, err = measureLive(ctx, l, bed, dp, fl, cfg.LivePackets, cfg.Rounds, progress); err != nil {
		return err
	}
	fmt.Fprintln(progress, "profiling the live native path")
	if results.Profile, err = profileLive(l, bed, dp, fl, cfg.LivePackets, 2*cfg.ProgRunRepeat); err != nil {
		return fmt.Errorf("profiling: %w", err)
	}
	return nil
}
