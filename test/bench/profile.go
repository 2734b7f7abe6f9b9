package bench

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
)

// ProfileResults say where the time of the live native path goes.
type ProfileResults struct {
	Family string
	// ProgramNs is each program's own run time per frame from the kernel's
	// BPF statistics (which add two clock reads per run to every program).
	ProgramNs map[string]float64
	// Symbols are perf's top kernel symbols on the bench CPU while tether
	// forwards, with their share of samples in percent.
	Symbols []SymbolShare
	// HotSymbols are perf's top symbols while prog.Run repeats tether on
	// one hot client: the program's own work, without cache misses.
	HotSymbols []SymbolShare
	// PerfProblem says why there are no symbols, when there are none.
	PerfProblem string
}

// SymbolShare is one line of a perf report.
type SymbolShare struct {
	Percent float64
	Symbol  string
}

// profileLive measures the programs' own run time on the live native path
// of the first family and samples the bench CPU with perf while tether runs
// there. Hardware counters are not needed: perf samples on the cpu-clock
// software event.
func profileLive(l *lab, bed *liveBed, dp *benchDatapath, fl *floors, packets, repeat uint32) (*ProfileResults, error) {
	f := dp.families[0]
	position, err := newCounterMap("bench_prof_pos")
	if err != nil {
		return nil, err
	}
	l.onTeardown("closing the profile generator's position", position.Close)
	generator, err := newRotatingGenerator(position, f.Clients)
	if err != nil {
		return nil, err
	}
	l.onTeardown("closing the profile generator", generator.Close)
	frame := synFrame(f, bed.dut0.HardwareAddr, bed.gen0.HardwareAddr)
	tether := liveProgram{programTether, dp.Program, false}

	results := &ProfileResults{Family: f.Name, ProgramNs: map[string]float64{}}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enabling BPF run time statistics: %w", err)
	}
	for _, p := range []liveProgram{tether, {programMACSwap, fl.MACSwap, false}} {
		before, err := p.prog.Stats()
		if err != nil {
			stats.Close()
			return nil, fmt.Errorf("reading %s's statistics: %w", p.name, err)
		}
		if _, err := bed.run(generator, frame, p, loader.ModeNative, packets); err != nil {
			stats.Close()
			return nil, err
		}
		after, err := p.prog.Stats()
		if err != nil {
			stats.Close()
			return nil, fmt.Errorf("reading %s's statistics: %w", p.name, err)
		}
		results.ProgramNs[p.name] = float64((after.Runtime - before.Runtime).Nanoseconds()) / float64(after.RunCount-before.RunCount)
	}
	if err := stats.Close(); err != nil {
		return nil, fmt.Errorf("disabling BPF run time statistics: %w", err)
	}

	results.Symbols, results.PerfProblem = perfWhile(bed.cpu, func() error {
		_, err := bed.run(generator, frame, tether, loader.ModeNative, packets)
		return err
	})
	if results.PerfProblem == "" {
		hot := synFrame(f, bed.dut0.HardwareAddr, bed.gen0.HardwareAddr)
		results.HotSymbols, results.PerfProblem = perfWhile(bed.cpu, func() error {
			_, _, _, err := benchmarkOnCPU(dp.Program, hot, repeat, bed.cpu)
			return err
		})
	}
	return results, nil
}

// perfWhile samples cpu with perf record while work runs and returns the
// top symbols, or why it could not.
func perfWhile(cpu int, work func() error) ([]SymbolShare, string) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, "perf is not installed (Debian package linux-perf)"
	}
	dir, err := os.MkdirTemp("", "tether-bench-perf-")
	if err != nil {
		return nil, err.Error()
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "perf.data")
	record := exec.Command(perf, "record", "-q", "-e", "cpu-clock", "-C", strconv.Itoa(cpu), "-o", data)
	var recordLog strings.Builder
	record.Stdout, record.Stderr = &recordLog, &recordLog
	if err := record.Start(); err != nil {
		return nil, fmt.Sprintf("perf record did not start: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // perf opens its events
	workErr := work()
	_ = record.Process.Signal(syscall.SIGINT)
	if err := record.Wait(); err != nil && !strings.Contains(err.Error(), "interrupt") {
		return nil, fmt.Sprintf("perf record failed: %v: %s", err, recordLog.String())
	}
	if workErr != nil {
		return nil, fmt.Sprintf("the profiled run failed: %v", workErr)
	}
	out, err := exec.Command(perf, "report", "-i", data, "--stdio", "--sort", "symbol", "--percent-limit", "1").Output()
	if err != nil {
		return nil, fmt.Sprintf("perf report failed: %v", err)
	}
	var symbols []SymbolShare
	lines := bufio.NewScanner(strings.NewReader(string(out)))
	for lines.Scan() {
		line := strings.TrimSpace(lines.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 || !strings.HasSuffix(fields[0], "%") {
			continue
		}
		percent, err := strconv.ParseFloat(strings.TrimSuffix(fields[0], "%"), 64)
		if err != nil {
			continue
		}
		// "12.34%  [k] symbol"
		symbols = append(symbols, SymbolShare{Percent: percent, Symbol: fields[2]})
	}
	if len(symbols) == 0 {
		return nil, "perf recorded no samples"
	}
	return symbols, ""
}
