package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netns"

	"github.com/tether-lb/tether/loader"
)

// Program names as the report shows them.
const (
	programTether     = "tether"
	programDrop       = "XDP_DROP floor"
	programMACSwap    = "MAC-swap XDP_TX floor"
	programBucketRead = "MAC swap + bucket read floor"
)

// floors are the yardstick programs: XDP_DROP, MAC swap with XDP_TX, and the
// MAC swap plus one read of a client's bucket in a table of tether's size.
type floors struct {
	Drop, MACSwap, BucketRead *ebpf.Program
	buckets                   *ebpf.Map
}

// newFloors builds the floors; the bucket read floor's table is as large
// as tether's affinity table for capacity clients.
func newFloors(capacity uint32) (*floors, error) {
	f := &floors{}
	var err error
	if f.Drop, err = newDropFloor(); err != nil {
		return nil, err
	}
	if f.MACSwap, err = newMACSwapFloor(); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	buckets := loader.AffinityBuckets(capacity)
	if f.buckets, err = newBucketTable(buckets); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	if f.BucketRead, err = newBucketReadFloor(f.buckets, buckets); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return f, nil
}

// Close closes what newFloors made (Close of a nil program or map is a
// no-op, so a half-built floors closes too).
func (f *floors) Close() error {
	return errors.Join(f.Drop.Close(), f.MACSwap.Close(), f.BucketRead.Close(), f.buckets.Close())
}

// ProgRunRow is one program on one kind of traffic, medians over rounds.
type ProgRunRow struct {
	Family   string
	Clients  uint32 // 1: the same client every time (hot)
	Program  string
	KernelNs float64 // the kernel's own per-run duration (whole ns)
	ThreadNs float64 // the pinned thread's CPU time / repetitions
	Low      float64 // smallest and largest ThreadNs of the rounds
	High     float64
}

// ProgRunResults are the BPF_PROG_TEST_RUN measurements.
type ProgRunResults struct {
	Rows   []ProgRunRow
	Repeat uint32
	Rounds int
	CPU    int
	// ColdHitRate is the share of affinity lookups that hit during the cold
	// tether runs, by family.
	ColdHitRate map[string]float64
}

// Row returns the row of program on family with clients, if measured.
func (r *ProgRunResults) Row(familyName string, clients uint32, program string) (ProgRunRow, bool) {
	for _, row := range r.Rows {
		if row.Family == familyName && row.Clients == clients && row.Program == program {
			return row, true
		}
	}
	return ProgRunRow{}, false
}

type progRunVariant struct {
	row     ProgRunRow
	prog    *ebpf.Program
	target  *ebpf.Program // cold: what the rotator tail-calls
	slot    *ebpf.Map     // cold: the rotator's program array
	frame   []byte
	verdict uint32 // what the program must return, or the numbers are of the wrong path
}

func (v progRunVariant) key() string {
	return fmt.Sprintf("%s/%d/%s", v.row.Family, v.row.Clients, v.row.Program)
}

// measureProgRun runs tether and the floors with prog.Run, round-robin, on
// a hot frame (one client, affinity hit every time) and behind a rotator
// that gives every repetition the next client of the family's cycle (cold:
// every lookup another entry of the full affinity map).
func measureProgRun(ctx context.Context, dp *benchDatapath, fl *floors, repeat uint32, rounds int, progress io.Writer) (*ProgRunResults, error) {
	var variants []progRunVariant
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	lbMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	clientMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	for _, f := range dp.families {
		frame := synFrame(f, lbMAC, clientMAC)
		position, err := newCounterMap("bench_position")
		if err != nil {
			return nil, err
		}
		closers = append(closers, position)
		slot, err := newTailCallArray()
		if err != nil {
			return nil, err
		}
		closers = append(closers, slot)
		rotator, err := newRotatingTailCaller(position, slot, f.Clients)
		if err != nil {
			return nil, err
		}
		closers = append(closers, rotator)
		programs := []struct {
			name    string
			prog    *ebpf.Program
			verdict uint32
		}{{programTether, dp.Program, xdpTX}, {programDrop, fl.Drop, xdpDrop}, {programMACSwap, fl.MACSwap, xdpTX},
			{programBucketRead, fl.BucketRead, xdpTX}}
		for _, p := range programs {
			variants = append(variants,
				progRunVariant{row: ProgRunRow{Family: f.Name, Clients: 1, Program: p.name}, prog: p.prog, frame: frame, verdict: p.verdict},
				progRunVariant{row: ProgRunRow{Family: f.Name, Clients: f.Clients.Count, Program: p.name}, prog: rotator,
					target: p.prog, slot: slot, frame: frame, verdict: p.verdict})
		}
	}

	cpu := benchCPU()
	kernel, thread := samples{}, samples{}
	coldTally := map[string]affinityTally{}
	for round := range rounds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "prog.Run round %d/%d\n", round+1, rounds)
		for _, v := range variants {
			if v.target != nil {
				if err := v.slot.Put(uint32(0), v.target); err != nil {
					return nil, fmt.Errorf("putting %s behind the rotator: %w", v.row.Program, err)
				}
			}
			before, err := dp.affinityTally()
			if err != nil {
				return nil, err
			}
			kernelNs, threadNs, verdict, err := benchmarkOnCPU(v.prog, v.frame, repeat, cpu)
			if err != nil {
				return nil, fmt.Errorf("prog.Run of %s: %w", v.key(), err)
			}
			if verdict != v.verdict {
				return nil, fmt.Errorf("prog.Run of %s returned verdict %d, want %d: the benchmark does not measure the path it names", v.key(), verdict, v.verdict)
			}
			if v.target == dp.Program {
				after, err := dp.affinityTally()
				if err != nil {
					return nil, err
				}
				coldTally[v.row.Family] = coldTally[v.row.Family].plus(after.minus(before))
			}
			kernel.add(v.key(), kernelNs)
			thread.add(v.key(), threadNs)
		}
	}

	results := &ProgRunResults{Repeat: repeat, Rounds: rounds, CPU: cpu, ColdHitRate: map[string]float64{}}
	for _, v := range variants {
		row := v.row
		row.KernelNs = kernel.median(v.key())
		row.ThreadNs = thread.median(v.key())
		row.Low, row.High = thread.spread(v.key())
		results.Rows = append(results.Rows, row)
	}
	for name, tally := range coldTally {
		results.ColdHitRate[name] = tally.hitRate()
	}
	return results, nil
}

// benchmarkOnCPU runs prog repeat times on frame with BPF_PROG_TEST_RUN from
// a thread pinned to cpu. It returns the kernel's per-run duration, the
// thread's CPU time per run, which resolves below a nanosecond, and the
// program's verdict.
func benchmarkOnCPU(prog *ebpf.Program, frame []byte, repeat uint32, cpu int) (kernelNs, threadNs float64, verdict uint32, err error) {
	err = onPinnedThread(cpu, netns.None(), func() error {
		start, err := ownThreadCPUTime()
		if err != nil {
			return err
		}
		// An interrupted run starts over; so does the thread's clock.
		restart := func() { start, _ = ownThreadCPUTime() }
		v, perRun, err := prog.Benchmark(frame, int(repeat), restart)
		if err != nil {
			return err
		}
		end, err := ownThreadCPUTime()
		if err != nil {
			return err
		}
		verdict = v
		kernelNs = float64(perRun.Nanoseconds())
		threadNs = float64(end-start) / float64(repeat)
		return nil
	})
	return kernelNs, threadNs, verdict, err
}
