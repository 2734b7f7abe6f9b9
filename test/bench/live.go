package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/test/testenv"
)

// The live veth bench:
//
//	tether-bn-gen                         tether-bn-dut
//	generator ──XDP_TX──► gen0 ═══ veth ═══ dut0 ──► program under test
//	sink (counts, drops) ◄── gen0 ◄══════════ dut0 ◄── XDP_TX
//
// The generator is an XDP program run with BPF_F_TEST_XDP_LIVE_FRAMES from a
// thread pinned to one CPU: every frame gets the next client address and
// leaves gen0 into the veth. The program under test (tether or a floor, in
// native or generic mode) runs on dut0 and bounces the frame back with
// XDP_TX, where the sink on gen0 counts and drops it. Every step runs in
// softirq on the generator's CPU, so one core does all the work; the floors
// sit in tether's place, so what differs between the rows is the program.

// bpfFTestXDPLiveFrames is BPF_F_TEST_XDP_LIVE_FRAMES from the kernel's uapi.
const bpfFTestXDPLiveFrames = 1 << 1

// liveBatchSize is how many frames the kernel hands the generator at a
// time; 64 is its default and stays below the veth ring's 256 slots.
const liveBatchSize = 64

// xdpMD is struct xdp_md as BPF_PROG_RUN takes it for the frame's context.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// LiveRow is one program in one attach mode, medians over rounds.
type LiveRow struct {
	Family      string
	Burst       uint32 // frames each client sends in a row
	Mode        loader.Mode
	Program     string
	Mpps        float64 // delivered frames per wall-clock second
	NsPerPacket float64 // CPU time of the generator thread and ksoftirqd per frame
	Low, High   float64 // smallest and largest NsPerPacket of the rounds
	Sent        uint64  // frames the generator put on the wire, all rounds
	Delivered   uint64  // frames that reached the end of the path, all rounds
}

// LiveResults are the live veth measurements.
type LiveResults struct {
	Rows    []LiveRow
	Packets uint32 // frames per sample
	Rounds  int
	CPU     int
	// HitRate is the share of tether's affinity lookups that hit, by
	// family and burst (trafficName).
	HitRate map[string]float64
}

// flowFrames is the burst of the flow-shaped traffic: the frames a client
// sends towards the balancer for one long-polling request on a new
// connection (SYN, ACK, request, two ACKs, FIN; with DSR the replies skip
// the balancer).
const flowFrames = 6

// liveTraffic is a traffic shape: every frame another client (burst 1), or
// flows of flowFrames frames per client. Only the first is run in generic
// mode too.
var liveTraffic = []uint32{1, flowFrames}

// trafficName names a family's traffic of bursts of burst frames.
func trafficName(familyName string, burst uint32) string {
	if burst <= 1 {
		return familyName
	}
	return fmt.Sprintf("%s, flows of %d", familyName, burst)
}

// Row returns the row of program in mode for family's traffic of bursts of
// burst frames, if measured.
func (r *LiveResults) Row(familyName string, burst uint32, mode loader.Mode, program string) (LiveRow, bool) {
	for _, row := range r.Rows {
		if row.Family == familyName && row.Burst == burst && row.Mode == mode && row.Program == program {
			return row, true
		}
	}
	return LiveRow{}, false
}

// liveBed is the two namespaces with their veth pair and the sink.
type liveBed struct {
	gen, dut       *testenv.Netns
	gen0, dut0     *net.Interface
	sinkCounts     *ebpf.Map
	cpu, softirqID int
}

// newLiveBed builds the namespaces and the veth pair and puts the sink on
// gen0.
func newLiveBed(l *lab) (*liveBed, error) {
	gen, err := l.netns("gen")
	if err != nil {
		return nil, err
	}
	dut, err := l.netns("dut")
	if err != nil {
		return nil, err
	}
	// No stack chatter (IPv6 router and multicast listener messages) may
	// reach the sink and be counted as delivered frames.
	for _, ns := range []*testenv.Netns{gen, dut} {
		if err := execAll(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1", "sysctl -qw net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			return nil, err
		}
	}
	if err := testenv.Run("ip", "link", "add", "gen0", "netns", gen.Name, "type", "veth", "peer", "name", "dut0", "netns", dut.Name); err != nil {
		return nil, err
	}
	// GRO gives dut0 a NAPI context without a native program, which the
	// veth needs to take frames from gen0 when the program is generic.
	if err := execAll(dut, "ip link set dut0 up", "ethtool -K dut0 gro on"); err != nil {
		return nil, err
	}
	if err := execAll(gen, "ip link set gen0 up"); err != nil {
		return nil, err
	}
	b := &liveBed{gen: gen, dut: dut, cpu: benchCPU()}
	if b.gen0, err = interfaceIn(gen, "gen0"); err != nil {
		return nil, err
	}
	if b.dut0, err = interfaceIn(dut, "dut0"); err != nil {
		return nil, err
	}
	if b.softirqID, err = ksoftirqd(b.cpu); err != nil {
		return nil, err
	}
	if b.sinkCounts, err = newPerCPUCounter("bench_sink"); err != nil {
		return nil, err
	}
	l.onTeardown("closing the sink counter", b.sinkCounts.Close)
	sink, err := newCountingSink(b.sinkCounts)
	if err != nil {
		return nil, err
	}
	l.onTeardown("closing the sink", sink.Close)
	sinkLink, err := attachIn(gen, sink, b.gen0.Index, loader.ModeNative)
	if err != nil {
		return nil, err
	}
	l.onTeardown("detaching the sink", sinkLink.Close)
	return b, nil
}

// attachIn attaches prog to ifindex of ns in mode (native or generic).
func attachIn(ns *testenv.Netns, prog *ebpf.Program, ifindex int, mode loader.Mode) (link.Link, error) {
	var l link.Link
	err := ns.Do(func() error {
		var err error
		l, _, err = loader.Attach(prog, ifindex, mode)
		return err
	})
	return l, err
}

// liveProgram is a program to put on dut0.
type liveProgram struct {
	name    string
	prog    *ebpf.Program
	dropped bool // frames end at dut0: count them there, not at the sink
}

// liveSample is one run of the generator.
type liveSample struct {
	wall      time.Duration
	cpu       time.Duration
	sent      uint64
	delivered uint64
}

// measureLive runs every program of programs in native and generic mode on
// dut0, round-robin, with packets frames per run from every family's
// clients.
func measureLive(ctx context.Context, l *lab, bed *liveBed, dp *benchDatapath, fl *floors, packets uint32, rounds int, progress io.Writer) (*LiveResults, error) {
	// Forwarded frames go back to gen0, as a backend behind the same port.
	if err := dp.pointBackends(bed.gen0.HardwareAddr, bed.dut0.HardwareAddr); err != nil {
		return nil, err
	}
	programs := []liveProgram{{programTether, dp.Program, false}, {programDrop, fl.Drop, true}, {programMACSwap, fl.MACSwap, false},
		{programBucketRead, fl.BucketRead, false}}

	type generator struct {
		family family
		burst  uint32
		modes  []loader.Mode
		prog   *ebpf.Program
		frame  []byte
	}
	var generators []generator
	for _, f := range dp.families {
		for _, burst := range liveTraffic {
			position, err := newCounterMap("bench_gen_pos")
			if err != nil {
				return nil, err
			}
			l.onTeardown("closing a generator's position", position.Close)
			cycle := f.Clients
			cycle.Burst = burst
			prog, err := newRotatingGenerator(position, cycle)
			if err != nil {
				return nil, err
			}
			l.onTeardown("closing a generator", prog.Close)
			modes := []loader.Mode{loader.ModeNative}
			if burst == 1 {
				modes = append(modes, loader.ModeGeneric)
			}
			generators = append(generators, generator{f, burst, modes, prog, synFrame(f, bed.dut0.HardwareAddr, bed.gen0.HardwareAddr)})
		}
	}

	wall, cpu := samples{}, samples{}
	totals := map[string]liveSample{}
	tallies := map[string]affinityTally{}
	key := func(g generator, mode loader.Mode, p liveProgram) string {
		return fmt.Sprintf("%s/%s/%s", trafficName(g.family.Name, g.burst), mode, p.name)
	}
	for round := range rounds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "live veth round %d/%d\n", round+1, rounds)
		for _, g := range generators {
			for _, mode := range g.modes {
				for _, p := range programs {
					k := key(g, mode, p)
					before, err := dp.affinityTally()
					if err != nil {
						return nil, err
					}
					s, err := bed.run(g.prog, g.frame, p, mode, packets)
					if err != nil {
						return nil, fmt.Errorf("live run of %s: %w", k, err)
					}
					if p.prog == dp.Program {
						after, err := dp.affinityTally()
						if err != nil {
							return nil, err
						}
						name := trafficName(g.family.Name, g.burst)
						tallies[name] = tallies[name].plus(after.minus(before))
					}
					if s.delivered != s.sent {
						return nil, fmt.Errorf("live run of %s: sent %d frames, %d arrived: the path drops frames and its rate would be wrong", k, s.sent, s.delivered)
					}
					wall.add(k, float64(s.delivered)/s.wall.Seconds()/1e6)
					cpu.add(k, float64(s.cpu.Nanoseconds())/float64(s.delivered))
					t := totals[k]
					t.sent += s.sent
					t.delivered += s.delivered
					totals[k] = t
				}
			}
		}
	}

	results := &LiveResults{Packets: packets, Rounds: rounds, CPU: bed.cpu, HitRate: map[string]float64{}}
	for _, g := range generators {
		for _, mode := range g.modes {
			for _, p := range programs {
				k := key(g, mode, p)
				low, high := cpu.spread(k)
				results.Rows = append(results.Rows, LiveRow{
					Family: g.family.Name, Burst: g.burst, Mode: mode, Program: p.name,
					Mpps: wall.median(k), NsPerPacket: cpu.median(k), Low: low, High: high,
					Sent: totals[k].sent, Delivered: totals[k].delivered,
				})
			}
		}
	}
	for name, tally := range tallies {
		results.HitRate[name] = tally.hitRate()
	}
	return results, nil
}

// run attaches p to dut0 in mode, warms the path up, then sends packets
// frames and measures.
func (b *liveBed) run(generator *ebpf.Program, frame []byte, p liveProgram, mode loader.Mode, packets uint32) (liveSample, error) {
	attached, err := attachIn(b.dut, p.prog, b.dut0.Index, mode)
	if err != nil {
		return liveSample{}, err
	}
	defer attached.Close()
	if _, err := b.send(generator, frame, max(packets/10, liveBatchSize)); err != nil {
		return liveSample{}, fmt.Errorf("warming up: %w", err)
	}

	sentBefore, err := b.sent()
	if err != nil {
		return liveSample{}, err
	}
	arrivedBefore, err := b.arrived(p)
	if err != nil {
		return liveSample{}, err
	}
	softirqBefore, err := processCPUTime(b.softirqID)
	if err != nil {
		return liveSample{}, err
	}
	s, err := b.send(generator, frame, packets)
	if err != nil {
		return liveSample{}, err
	}
	// Frames still queued when the syscall returned are counted once they
	// land; they normally land before it returns.
	deadline := time.Now().Add(2 * time.Second)
	for {
		arrived, err := b.arrived(p)
		if err != nil {
			return liveSample{}, err
		}
		s.delivered = arrived - arrivedBefore
		if s.delivered >= uint64(packets) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	softirqAfter, err := processCPUTime(b.softirqID)
	if err != nil {
		return liveSample{}, err
	}
	sentAfter, err := b.sent()
	if err != nil {
		return liveSample{}, err
	}
	s.sent = sentAfter - sentBefore
	s.cpu += softirqAfter - softirqBefore
	return s, nil
}

// send runs the generator for packets frames from the pinned thread inside
// the generator's namespace, where gen0's ifindex means gen0.
func (b *liveBed) send(generator *ebpf.Program, frame []byte, packets uint32) (liveSample, error) {
	var s liveSample
	err := onPinnedThread(b.cpu, b.gen.Handle, func() error {
		opts := ebpf.RunOptions{
			Data:      frame,
			Context:   xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(b.gen0.Index)},
			Repeat:    packets,
			Flags:     bpfFTestXDPLiveFrames,
			BatchSize: liveBatchSize,
		}
		cpuStart, err := ownThreadCPUTime()
		if err != nil {
			return err
		}
		start := time.Now()
		if _, err := generator.Run(&opts); err != nil {
			return fmt.Errorf("running the generator in live frame mode: %w", err)
		}
		s.wall = time.Since(start)
		cpuEnd, err := ownThreadCPUTime()
		if err != nil {
			return err
		}
		s.cpu = cpuEnd - cpuStart
		return nil
	})
	return s, err
}

// sent is how many frames gen0 has put into the veth.
func (b *liveBed) sent() (uint64, error) {
	return ethtoolStat(b.gen, "gen0", "tx_queue_0_xdp_xmit")
}

// arrived is how many frames reached the end of p's path: the sink, or
// dut0 itself for a program that drops them.
func (b *liveBed) arrived(p liveProgram) (uint64, error) {
	if p.dropped {
		return ethtoolStat(b.dut, "dut0", "rx_queue_0_xdp_packets")
	}
	return sumPerCPU(b.sinkCounts)
}

// ethtoolStat reads one counter of ethtool -S.
func ethtoolStat(ns *testenv.Netns, dev, name string) (uint64, error) {
	out, err := output(ns, "ethtool", "-S", dev)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		field, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && field == name {
			n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing %s of %s: %w", name, dev, err)
			}
			return n, nil
		}
	}
	return 0, errors.New("ethtool -S " + dev + " has no " + name)
}
