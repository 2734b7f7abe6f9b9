package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
)

// ControlConfig sizes the control-plane measurements.
type ControlConfig struct {
	Rounds          int
	HealthTargets   int
	HealthInterval  time.Duration
	HealthWarmup    time.Duration
	HealthWindow    time.Duration
	HealthWorkers   int      // the daemon's default --check-workers
	HealthKinds     []string // check kinds to measure
	ChildExecutable string   // this program, run again as the health child
}

// HealthResult is the CPU one checker process used for its targets.
type HealthResult struct {
	Kind         string
	Targets      int
	Interval     time.Duration
	Busy         bool    // every core ran a busy loop meanwhile
	CoresUsed    float64 // CPU seconds per second of the checking process
	ProbesPerSec float64
	Failures     int64
	Inconclusive int64   // timeouts while the checker itself stalled
	LateP50Ms    float64 // how long after its due time a probe started
	LateP99Ms    float64
}

// ControlResults are the control-plane measurements.
type ControlResults struct {
	MaglevBuildMs map[int]float64 // by backend count, M = 65537
	SwapMs        float64         // InstallTable of a 65537-slot table into the kernel maps
	// Affinity map memory as the kernel accounts it (memlock), for its
	// capacity, and scaled to one million entries.
	AffinityCapacity   uint32
	AffinityMemlock    uint64
	AffinityPerMillion float64
	// ScanMs is one count of the affinity table's entries, as a scrape of
	// /metrics and a drain --wait make; ScanEntries is what it counted.
	ScanMs              float64
	ScanEntries         int
	Health              []HealthResult
	Rounds              int
	MaglevBackendCounts []int
}

// maglevBackendCounts are the backend set sizes the build is timed for.
var maglevBackendCounts = []int{10, 100, 1000}

func maglevBackends(n int) []maglev.Backend {
	set := make([]maglev.Backend, n)
	for i := range set {
		set[i] = maglev.Backend{Name: fmt.Sprintf("node-%04d", i+1), ID: uint32(i + 1), Weight: 1}
	}
	return set
}

// measureControlPlane times table builds and swaps, reads the affinity
// map's memory and measures health-check CPU.
func measureControlPlane(l *lab, dp *benchDatapath, cfg ControlConfig, progress io.Writer) (*ControlResults, error) {
	results := &ControlResults{MaglevBuildMs: map[int]float64{}, Rounds: cfg.Rounds, MaglevBackendCounts: maglevBackendCounts}
	fmt.Fprintln(progress, "control plane: Maglev builds and table swaps")
	build := samples{}
	for round := range cfg.Rounds + 1 { // round 0 warms up
		for _, n := range maglevBackendCounts {
			set := maglevBackends(n)
			start := time.Now()
			_, err := maglev.Build(set, maglev.DefaultTableSize, benchSeed)
			elapsed := time.Since(start)
			if err != nil {
				return nil, fmt.Errorf("building a Maglev table of %d backends: %w", n, err)
			}
			if round > 0 {
				build.add(fmt.Sprint(n), float64(elapsed.Microseconds())/1e3)
			}
		}
	}
	for _, n := range maglevBackendCounts {
		results.MaglevBuildMs[n] = build.median(fmt.Sprint(n))
	}

	// Swaps alternate between the tables of 1000 and 999 backends, as a
	// backend change would, mapped onto the bench datapath's backend ids.
	var tables [2][]maps.BackendID
	for i, n := range []int{1000, 999} {
		table, err := maglev.Build(maglevBackends(n), maglev.DefaultTableSize, benchSeed)
		if err != nil {
			return nil, fmt.Errorf("building a Maglev table of %d backends: %w", n, err)
		}
		tables[i] = make([]maps.BackendID, len(table))
		for j, id := range table {
			tables[i][j] = maps.BackendID(id%benchBackends + 1)
		}
	}
	swap := samples{}
	key := dp.families[0].vipKey()
	vip, err := dp.kernel.VIP(key)
	if err != nil {
		return nil, err
	}
	for round := range cfg.Rounds + 1 {
		start := time.Now()
		if vip, err = maps.InstallTable(dp.kernel, key, vip, tables[round%2]); err != nil {
			return nil, err
		}
		if round > 0 {
			swap.add("swap", float64(time.Since(start).Microseconds())/1e3)
		}
	}
	results.SwapMs = swap.median("swap")

	info, err := dp.Maps.Affinity.Info()
	if err != nil {
		return nil, fmt.Errorf("reading the affinity map's info: %w", err)
	}
	memlock, ok := info.Memlock()
	if !ok {
		return nil, fmt.Errorf("the kernel reports no memlock for the affinity map")
	}
	results.AffinityCapacity = dp.Options.AffinityCapacity
	results.AffinityMemlock = memlock
	results.AffinityPerMillion = float64(memlock) / float64(dp.Options.AffinityCapacity) * 1e6

	scan := samples{}
	for round := range cfg.Rounds + 1 {
		start := time.Now()
		n, err := dp.kernel.AffinityCount()
		if err != nil {
			return nil, err
		}
		if round > 0 {
			scan.add("scan", float64(time.Since(start).Microseconds())/1e3)
		}
		results.ScanEntries = n.Entries
	}
	results.ScanMs = scan.median("scan")

	// Each kind on an idle machine, then the last with both cores busy.
	var runs []healthRun
	for _, kind := range cfg.HealthKinds {
		runs = append(runs, healthRun{kind: kind})
	}
	runs = append(runs, healthRun{kind: cfg.HealthKinds[len(cfg.HealthKinds)-1], busy: true})
	for _, run := range runs {
		fmt.Fprintf(progress, "control plane: %s health checks of %d backends every %s (busy cores: %t)\n", run.kind, cfg.HealthTargets, cfg.HealthInterval, run.busy)
		r, err := measureHealthCPU(l, cfg, run.kind, run.busy)
		if err != nil {
			return nil, fmt.Errorf("measuring %s health checks: %w", run.kind, err)
		}
		results.Health = append(results.Health, r)
	}
	return results, nil
}

// healthRun is one measurement of the health checker.
type healthRun struct {
	kind string
	busy bool // a busy loop on every core while it runs
}

// measureHealthCPU serves cfg.HealthTargets backends on loopback in a
// namespace of its own and runs the checker as a separate process there,
// so its CPU time holds the checks and nothing of the backends' side.
func measureHealthCPU(l *lab, cfg ControlConfig, kind string, busy bool) (HealthResult, error) {
	ns, err := l.netns("health-" + kind)
	if err != nil {
		return HealthResult{}, err
	}
	var targets bytes.Buffer
	var listeners []net.Listener
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}()
	err = ns.Do(func() error {
		for range cfg.HealthTargets {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return fmt.Errorf("listening for health checks: %w", err)
			}
			listeners = append(listeners, ln)
			fmt.Fprintln(&targets, ln.Addr().String())
		}
		return nil
	})
	if err != nil {
		return HealthResult{}, err
	}
	server := &http.Server{Handler: http.HandlerFunc(fakeBackend)}
	for _, ln := range listeners {
		if kind == string(health.KindTCP) {
			go acceptAndClose(ln)
		} else {
			go server.Serve(ln)
		}
	}
	defer server.Close()

	child := exec.Command("ip", "netns", "exec", ns.Name, cfg.ChildExecutable, healthChildFlag,
		"-kind", kind, "-interval", cfg.HealthInterval.String(), "-warmup", cfg.HealthWarmup.String(),
		"-window", cfg.HealthWindow.String(), "-workers", fmt.Sprint(cfg.HealthWorkers), fmt.Sprintf("-busy=%t", busy))
	child.Stdin = &targets
	var stderr bytes.Buffer
	child.Stderr = &stderr
	out, err := child.Output()
	if err != nil {
		return HealthResult{}, fmt.Errorf("health check process: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var r HealthResult
	if err := json.Unmarshal(out, &r); err != nil {
		return HealthResult{}, fmt.Errorf("reading the health check process's result %q: %w", out, err)
	}
	return r, nil
}

func acceptAndClose(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		conn.Close()
	}
}

// fakeBackend answers an http check with 200, and the two requests of an
// engineio check (open a polling session, send it the close packet) the way
// an Engine.IO v4 server does.
func fakeBackend(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("EIO") == "" {
		fmt.Fprintln(w, "ok")
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	if r.Method == http.MethodPost {
		fmt.Fprint(w, "ok")
		return
	}
	fmt.Fprint(w, `0{"sid":"bench","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`)
}

// healthChildFlag makes the benchmark program run as the health checker.
const healthChildFlag = "-health-child"

// IsHealthChild reports whether args ask for the health checker.
func IsHealthChild(args []string) bool {
	return len(args) > 0 && args[0] == healthChildFlag
}

// RunHealthChild is the health checker process: it reads target addresses,
// one per line, from in, probes them all with a health.Scheduler as the
// daemon does, and writes a HealthResult for the measuring window to out.
func RunHealthChild(args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("health-child", flag.ContinueOnError)
	kind := fs.String("kind", "tcp", "check kind")
	interval := fs.Duration("interval", time.Second, "check interval")
	warmup := fs.Duration("warmup", 2*time.Second, "time before measuring")
	window := fs.Duration("window", 10*time.Second, "time measured")
	workers := fs.Int("workers", 32, "checks in flight at most")
	busy := fs.Bool("busy", false, "run a busy loop on every core while measuring")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	parsedKind, err := health.ParseKind(*kind)
	if err != nil {
		return err
	}
	var probes, failures, inconclusive atomic.Int64
	var measuring atomic.Bool
	var lateMu sync.Mutex
	late := samples{}
	scheduler := health.NewScheduler(*workers)
	lines := bufio.NewScanner(in)
	targets := 0
	for lines.Scan() {
		target, err := netip.ParseAddrPort(strings.TrimSpace(lines.Text()))
		if err != nil {
			return fmt.Errorf("reading target %q: %w", lines.Text(), err)
		}
		check := health.Check{Kind: parsedKind, Interval: *interval}
		if err := scheduler.Set(fmt.Sprintf("backend-%d", targets), target, check, health.Up); err != nil {
			return err
		}
		targets++
	}
	if err := lines.Err(); err != nil {
		return fmt.Errorf("reading targets: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go scheduler.Run(ctx, func(r health.Result) {
		if !measuring.Load() {
			return
		}
		probes.Add(1)
		switch {
		case r.Inconclusive:
			inconclusive.Add(1)
		case r.Err != nil:
			failures.Add(1)
		}
		lateMu.Lock()
		late.add("late", float64(r.Late.Microseconds())/1e3)
		lateMu.Unlock()
	})
	time.Sleep(*warmup)
	if *busy {
		stop, err := busyLoops(*window)
		if err != nil {
			return err
		}
		defer stop()
	}
	before, err := ownCPU()
	if err != nil {
		return err
	}
	start := time.Now()
	measuring.Store(true)
	time.Sleep(*window)
	measuring.Store(false)
	elapsed := time.Since(start)
	after, err := ownCPU()
	if err != nil {
		return err
	}
	lateMu.Lock()
	defer lateMu.Unlock()
	return json.NewEncoder(out).Encode(HealthResult{
		Kind: *kind, Targets: targets, Interval: *interval, Busy: *busy,
		CoresUsed:    (after - before).Seconds() / elapsed.Seconds(),
		ProbesPerSec: float64(probes.Load()) / elapsed.Seconds(),
		Failures:     failures.Load(),
		Inconclusive: inconclusive.Load(),
		LateP50Ms:    late.quantile("late", 0.5),
		LateP99Ms:    late.quantile("late", 0.99),
	})
}

// busyLoops keeps every core busy for at most limit, in processes of
// their own; stop ends them sooner.
func busyLoops(limit time.Duration) (stop func(), err error) {
	var loops []*exec.Cmd
	// SIGTERM, which timeout passes on to its shell; a SIGKILL would leave
	// the shell spinning.
	stop = func() {
		for _, loop := range loops {
			_ = loop.Process.Signal(syscall.SIGTERM)
			_ = loop.Wait()
		}
	}
	for range runtime.NumCPU() {
		loop := exec.Command("timeout", fmt.Sprint(int(limit.Seconds())+1), "sh", "-c", "while :; do :; done")
		if err := loop.Start(); err != nil {
			stop()
			return nil, fmt.Errorf("starting a busy loop: %w", err)
		}
		loops = append(loops, loop)
	}
	return stop, nil
}

// ownCPU is the user and system time of this process.
func ownCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
