package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/test/testenv"
)

// onPinnedThread runs fn on a locked OS thread bound to cpu, inside the
// network namespace ns unless ns is closed (-1). The thread gets its CPU set
// back afterwards, so the Go runtime can reuse it.
func onPinnedThread(cpu int, ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var previous unix.CPUSet
	if err := unix.SchedGetaffinity(0, &previous); err != nil {
		return fmt.Errorf("reading CPU affinity: %w", err)
	}
	var only unix.CPUSet
	only.Set(cpu)
	if err := unix.SchedSetaffinity(0, &only); err != nil {
		return fmt.Errorf("pinning thread to CPU %d: %w", cpu, err)
	}
	var err error
	if ns.IsOpen() {
		err = testenv.InNetns(ns, fn)
	} else {
		err = fn()
	}
	if restoreErr := unix.SchedSetaffinity(0, &previous); restoreErr != nil && err == nil {
		err = fmt.Errorf("restoring CPU affinity: %w", restoreErr)
	}
	return err
}

// cpuClockSched is the clock id bit that selects the scheduler's precise
// runtime (see clock_getcpuclockid); the pid goes in the bits above.
const cpuClockSched = 2

// processCPUTime is the CPU time all threads of process pid have run, to the
// nanosecond. Linux reads other processes' clocks, but no other process's
// single threads: a kernel thread such as ksoftirqd is a process of one.
func processCPUTime(pid int) (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid)<<3|cpuClockSched, &ts); err != nil {
		return 0, fmt.Errorf("reading CPU time of process %d: %w", pid, err)
	}
	return time.Duration(ts.Nano()), nil
}

// ownThreadCPUTime is the calling thread's CPU time.
func ownThreadCPUTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("reading thread CPU time: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// ksoftirqd returns the thread id of the softirq thread of cpu: softirq work
// that overflows the inline budget runs there, on the same CPU.
func ksoftirqd(cpu int) (int, error) {
	want := fmt.Sprintf("ksoftirqd/%d", cpu)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("listing /proc: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == want {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no %s thread in /proc", want)
}

// benchCPU is the CPU the measured work is pinned to: the last one, away
// from CPU 0 where most housekeeping lands.
func benchCPU() int { return runtime.NumCPU() - 1 }

// monotonicCoarse is the clock bpf_ktime_get_coarse_ns() reads.
func monotonicCoarse() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("reading CLOCK_MONOTONIC_COARSE: %w", err)
	}
	return uint64(ts.Nano()), nil
}
