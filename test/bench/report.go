package bench

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
)

// The targets of issue 8, each a ratio measured in the same run.
const (
	targetLiveRatio     = 1.4  // live native tether ns/pkt ≤ this × XDP_TX floor
	targetNewConnRate   = 1.6  // new connections: tether req/s ≥ this × nginx
	targetNewConnCPU    = 50.0 // nginx CPU per request ≥ this × tether's
	targetKeepAlive     = 0.9  // keep-alive: tether req/s ≥ this × direct
	targetMaglevBuildMs = 50.0 // Maglev build of 1000 backends under this
)

// target is one line of the targets table.
type target struct {
	id                     string // for writeMisses
	name, measured, needed string
	met, known             bool
}

// missed reports whether the target of id was measured and missed.
func missed(targets []target, id string) bool {
	for _, t := range targets {
		if t.id == id {
			return t.known && !t.met
		}
	}
	return false
}

func (t target) result() string {
	switch {
	case !t.known:
		return "not measured"
	case t.met:
		return "PASS"
	default:
		return "MISS"
	}
}

// Markdown renders the results as the results file holds them.
func (r *Results) Markdown(command string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# tether benchmark results\n\n")
	w("Produced by `make bench` (`%s`) on %s in %s", command, r.Started.Format("2006-01-02 15:04 MST"), r.Took.Round(1e9))
	if r.Config.Quick {
		w(" (**quick mode**: small sizes, rough numbers)")
	}
	w(".\n\n%s\n\n", machine())
	w("Every number is a median over rounds that ran all variants round-robin, so the noise of this shared machine ")
	w("hits tether and its yardsticks alike; read the ratios, not the absolute values, which move from run to run. ")
	w("Packet benches: %d rounds; the affinity map (capacity %d) holds %d entries.\n\n", r.Config.Rounds, loader.DefaultOptions().AffinityCapacity, r.Entries)

	targets := r.targets()
	w("## Targets\n\n| target | measured | needed | result |\n|---|---|---|---|\n")
	for _, t := range targets {
		w("| %s | %s | %s | %s |\n", t.name, t.measured, t.needed, t.result())
	}
	w("\n")
	r.writeProgRun(&b)
	r.writeLive(&b)
	r.writeConnections(&b)
	r.writeControl(&b)
	r.writeMisses(&b, targets)
	w("## Not measured here\n\n")
	w("- `bpftool prog profile` and `perf stat`: this Firecracker VM exposes no hardware performance counters ")
	w("(`perf stat -e instructions true` says `<not supported>`), so there are no cycle or instruction counts per program; ")
	w("the profile above samples with the `cpu-clock` software event instead, and `perf annotate` of JITed BPF needs a perf built with libopcodes, which Debian's is not.\n")
	w("- Physical NICs: there are none in the VM. veth is the only driver here with native XDP, so the live numbers are veth's; ")
	w("on a NIC the floor is lower and tether's share of the cost larger (see the prog.Run table for the program alone).\n")
	w("- More than one core of packet processing: the VM has 2 cores and the generator, the program under test and the sink share one; ")
	w("multi-queue scaling is not measured.\n")
	w("- IPv4 clients: the benchmark keeps every address inside 198.18.0.0/15, which holds %d clients; the IPv4 cold rows cycle through all of them ", maxClients4)
	w("while the map holds the full count with IPv6 clients beside them. IPv6 rows cycle through their own clients, one /64 each.\n")
	for _, f := range r.Failures {
		w("- %s\n", f)
	}
	return b.String()
}

func machine() string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		lines := bufio.NewScanner(f)
		for lines.Scan() {
			if name, value, ok := strings.Cut(lines.Text(), ":"); ok && strings.TrimSpace(name) == "model name" {
				model = strings.TrimSpace(value)
				break
			}
		}
	}
	return fmt.Sprintf("Machine: Linux %s, %d CPUs (%s), %s.", unix.ByteSliceToString(u.Release[:]), runtime.NumCPU(), model, runtime.Version())
}

func (r *Results) targets() []target {
	var out []target
	for _, burst := range liveTraffic {
		live := target{id: fmt.Sprintf("live-%d", burst), name: fmt.Sprintf("live veth, native, IPv4, 1M clients in the affinity map, %s: tether ns/pkt / MAC-swap XDP_TX floor ns/pkt", burstDescription(burst)),
			needed: fmt.Sprintf("≤ %.1f×", targetLiveRatio)}
		if r.Live != nil {
			tether, ok1 := r.Live.Row("IPv4", burst, loader.ModeNative, programTether)
			floor, ok2 := r.Live.Row("IPv4", burst, loader.ModeNative, programMACSwap)
			if ok1 && ok2 {
				x := ratio(tether.NsPerPacket, floor.NsPerPacket)
				live.measured = fmt.Sprintf("%.2f× (%.0f / %.0f ns)", x, tether.NsPerPacket, floor.NsPerPacket)
				live.known, live.met = true, x <= targetLiveRatio
			}
		}
		out = append(out, live)
	}

	rate := target{id: "new-rate", name: "new connection per request: tether req/s / nginx req/s", needed: fmt.Sprintf("≥ %.1f×", targetNewConnRate)}
	cpu := target{id: "new-cpu", name: "new connection per request: nginx CPU per request / tether CPU per request", needed: fmt.Sprintf("≥ %.0f× (tether ≤ 1/%.0f)", targetNewConnCPU, targetNewConnCPU)}
	keep := target{id: "keep-alive", name: "keep-alive: tether req/s / direct req/s", needed: fmt.Sprintf("≥ %.1f×", targetKeepAlive)}
	if c := r.Connections; c != nil {
		tether, ok1 := c.Row(setupTether, modeNewConn)
		nginx, ok2 := c.Row(setupNginx, modeNewConn)
		if ok1 && ok2 {
			x := ratio(tether.RequestsPerSec, nginx.RequestsPerSec)
			rate.measured = fmt.Sprintf("%.2f× (%.0f / %.0f)", x, tether.RequestsPerSec, nginx.RequestsPerSec)
			rate.known, rate.met = true, x >= targetNewConnRate
			y := ratio(nginx.BalancerCPUus, tether.BalancerCPUus)
			cpu.measured = fmt.Sprintf("%.0f× (%.2f / %.2f µs)", y, nginx.BalancerCPUus, tether.BalancerCPUus)
			cpu.known, cpu.met = true, y >= targetNewConnCPU
		}
		tetherKeep, ok1 := c.Row(setupTether, modeKeepAlive)
		direct, ok2 := c.Row(setupDirect, modeKeepAlive)
		if ok1 && ok2 {
			x := ratio(tetherKeep.RequestsPerSec, direct.RequestsPerSec)
			keep.measured = fmt.Sprintf("%.2f× (%.0f / %.0f)", x, tetherKeep.RequestsPerSec, direct.RequestsPerSec)
			keep.known, keep.met = true, x >= targetKeepAlive
		}
	}
	out = append(out, rate, cpu, keep)

	build := target{id: "maglev", name: "Maglev build, 1000 backends, M = 65537", needed: fmt.Sprintf("< %.0f ms", targetMaglevBuildMs)}
	if r.Control != nil {
		ms := r.Control.MaglevBuildMs[1000]
		build.measured = fmt.Sprintf("%.1f ms", ms)
		build.known, build.met = true, ms < targetMaglevBuildMs
	}
	return append(out, build)
}

// burstDescription says what traffic of bursts of burst frames is.
func burstDescription(burst uint32) string {
	if burst <= 1 {
		return "every frame another client"
	}
	return fmt.Sprintf("flows of %d frames per client", burst)
}

func (r *Results) writeProgRun(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("## 1. Per-packet cost with prog.Run\n\n")
	p := r.ProgRun
	if p == nil {
		w("Not measured (see the end).\n\n")
		return
	}
	w("BPF_PROG_TEST_RUN, %d repetitions per sample, from a thread pinned to CPU %d. ", p.Repeat, p.CPU)
	w("*kernel* is the per-run duration the kernel reports (whole ns); *CPU* is the pinned thread's CPU time over the repetitions, ")
	w("which resolves below a nanosecond; ratios use *CPU*. Frames: a 64-byte IPv4 TCP SYN (60 bytes + FCS) and a minimal IPv6 TCP SYN (74 bytes) to a VIP. ")
	w("**Hot**: the same client every time, an affinity hit. **Cold**: prog.Run repeats one frame, so a small rotator program in front ")
	w("writes the next client's address into the frame and tail-calls the program under test; every repetition is another client, ")
	w("each with its own entry in the full affinity map. The floors run behind the same rotator, so its cost (a few ns) is on both sides of the ratio. ")
	w("The **bucket read floor** is the MAC-swap floor plus what any balancer keeping per-client state in a table of tether's size must do: ")
	w("hash the client onto one 128-byte bucket of a zeroed array of the same size and read it. Cold, that read misses the cache as tether's does; ")
	w("tether over that floor is its own work plus whatever part of the read's latency that work leaves exposed.\n\n")
	w("| frame | clients | program | kernel ns | CPU ns (min–max) | × XDP_DROP | × XDP_TX floor | × bucket read floor |\n|---|---|---|---|---|---|---|---|\n")
	for _, row := range p.Rows {
		drop, _ := p.Row(row.Family, row.Clients, programDrop)
		swap, _ := p.Row(row.Family, row.Clients, programMACSwap)
		bucket, _ := p.Row(row.Family, row.Clients, programBucketRead)
		clients := "1 (hot)"
		if row.Clients > 1 {
			clients = fmt.Sprintf("%d (cold)", row.Clients)
		}
		w("| %s | %s | %s | %.0f | %.1f (%.1f–%.1f) | %.2f | %.2f | %.2f |\n", row.Family, clients, row.Program, row.KernelNs,
			row.ThreadNs, row.Low, row.High, ratio(row.ThreadNs, drop.ThreadNs), ratio(row.ThreadNs, swap.ThreadNs), ratio(row.ThreadNs, bucket.ThreadNs))
	}
	w("\nAffinity lookups that hit during the cold tether runs:")
	for _, f := range []string{"IPv4", "IPv6"} {
		if rate, ok := p.ColdHitRate[f]; ok {
			w(" %s %.2f%%;", f, rate)
		}
	}
	w(" every cold frame is a hit on an entry that is not in the cache.\n\n")
	if len(r.TableSizes) == 0 {
		return
	}
	w("**The table's size.** The same %d IPv4 clients, cold, in tables sized for more and more clients (fewer repetitions and rounds than above): ", maxClients4)
	w("the lookups are the same, only the memory they spread over grows, and with it the cost of reaching a bucket, for the bucket read floor over a table of each size too. ")
	w("tether grows more than the floor: the floor's reads of consecutive packets overlap, tether's one at a time do not. ")
	w("Size `--affinity-capacity` for the clients there are, not far above.\n\n")
	w("| --affinity-capacity | table | tether hot ns | tether cold ns | bucket read floor cold ns | tether cold − floor ns |\n|---|---|---|---|---|---|\n")
	for _, row := range r.TableSizes {
		w("| %d | %.0f MiB | %.1f | %.1f | %.1f | %.1f |\n", row.Capacity, row.MiB, row.HotNs, row.ColdNs, row.FloorColdNs, row.ColdNs-row.FloorColdNs)
	}
	w("\n")
}

func (r *Results) writeLive(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("## 2. Live frames on veth\n\n")
	l := r.Live
	if l == nil {
		w("Not measured (see the end).\n\n")
		return
	}
	w("A generator XDP program runs with `BPF_F_TEST_XDP_LIVE_FRAMES` (batches of %d) from a thread pinned to CPU %d in namespace tether-bn-gen: ", liveBatchSize, l.CPU)
	w("frames cycle through the clients (IPv4: all of 198.18.0.0/15; IPv6: one /64 each, as in prog.Run's cold rows) and leave gen0 with XDP_TX into a veth pair. ")
	w("Two traffic shapes: **every frame another client**, the worst case for caches (each frame's affinity bucket was last touched %d clients ago), ", maxClients4)
	w("and **flows of %d frames per client**, what a long-polling request on a new connection sends towards a DSR balancer (SYN, ACK, request, two ACKs, FIN). ", flowFrames)
	w("The program under test runs on the peer dut0 in tether-bn-dut and sends the frame back with XDP_TX; an XDP program on gen0 counts and drops it (the sink). ")
	w("The XDP_DROP floor ends the path at dut0, where veth's own counter counts. All of it runs in softirq on the one pinned CPU. ")
	w("%d frames per sample; **ns/pkt** is the CPU time of the generator thread plus that CPU's ksoftirqd per delivered frame, ", l.Packets)
	w("**Mpps** delivered frames per wall-clock second. Every sample checks that the frames delivered equal the frames gen0 sent.\n\n")
	w("| frame | traffic | mode | program | Mpps | ns/pkt (min–max) | × native XDP_TX floor | × XDP_TX floor, same mode | × bucket read floor, same mode | delivered / sent |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range l.Rows {
		native, _ := l.Row(row.Family, row.Burst, loader.ModeNative, programMACSwap)
		same, _ := l.Row(row.Family, row.Burst, row.Mode, programMACSwap)
		bucket, _ := l.Row(row.Family, row.Burst, row.Mode, programBucketRead)
		w("| %s | %s | %s | %s | %.2f | %.0f (%.0f–%.0f) | %.2f | %.2f | %.2f | %d / %d |\n", row.Family, burstDescription(row.Burst), row.Mode, row.Program, row.Mpps,
			row.NsPerPacket, row.Low, row.High, ratio(row.NsPerPacket, native.NsPerPacket), ratio(row.NsPerPacket, same.NsPerPacket),
			ratio(row.NsPerPacket, bucket.NsPerPacket), row.Delivered, row.Sent)
	}
	w("\nAffinity lookups that hit during the live tether runs:")
	for _, f := range []string{"IPv4", "IPv6"} {
		for _, burst := range liveTraffic {
			if rate, ok := l.HitRate[trafficName(f, burst)]; ok {
				w(" %s %.2f%%;", trafficName(f, burst), rate)
			}
		}
	}
	w("\n\n**Which mode users get.** `tether run --mode native` (the default) attaches in the driver: every driver with XDP support ")
	w("(mlx5, ice, i40e, ixgbe, bnxt, virtio_net, veth, ena, …). Generic mode runs after the kernel has built an skb and is what `--mode auto` ")
	w("falls back to on drivers without native XDP (for example many older 1 G NICs, Wi-Fi, bridges); the generic rows show its price here.\n\n")
	if p := r.Profile; p != nil {
		w("### Where the time goes (live, native, %s, %d frames)\n\n", p.Family, l.Packets)
		w("The programs' own run time per frame from the kernel's BPF statistics (which add two clock reads to each run): ")
		w("tether %.0f ns, MAC-swap XDP_TX floor %.0f ns.\n\n", p.ProgramNs[programTether], p.ProgramNs[programMACSwap])
		if len(p.Symbols) == 0 {
			w("No perf profile: %s.\n\n", p.PerfProblem)
		} else {
			w("`perf record -e cpu-clock` on the bench CPU (symbols ≥ 1%% of samples), while tether forwards the live frames of %d clients, ", l.Packets)
			w("and while prog.Run repeats tether on one hot client (the program's own work, no cache misses):\n\n")
			w("| live, cold | symbol | prog.Run, hot | symbol |\n|---|---|---|---|\n")
			for i := range max(len(p.Symbols), len(p.HotSymbols)) {
				for _, list := range [][]SymbolShare{p.Symbols, p.HotSymbols} {
					if i < len(list) {
						w("| %.1f%% | `%s` ", list[i].Percent, list[i].Symbol)
					} else {
						w("| | ")
					}
				}
				w("|\n")
			}
			w("\n")
		}
	}
}

func (r *Results) writeConnections(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("## 3. Connections\n\n")
	c := r.Connections
	if c == nil {
		w("Not measured (see the end).\n\n")
		return
	}
	w("wrk (1 thread, %d connections, %s per run, %d rounds) from namespace tether-bn-client against nginx HTTP backends (`return 200`) in tether-bn-b1/b2, ", c.Config.Connections, c.Config.Duration, c.Config.Rounds)
	w("all joined by a bridge. tether is the real daemon (bin/tether, attached in %s mode) with a VIP and two backends added through its CLI; ", c.AttachMode)
	w("the backends hold the VIP on lo (arp_ignore=1, arp_announce=2) and answer the client directly (L2 DSR). ")
	w("nginx is the stream module with `hash $remote_addr consistent` over the same two backends (%d workers), a proxy in user space. ", c.NginxWorker)
	w("The L2 forwarder floor is the least an XDP DSR balancer can do (rewrite both MACs, XDP_TX) on the same path as tether: it shows what the extra veth hops cost. ")
	w("The client, the balancer and the backends share the machine's 2 cores, so every cycle a balancer spends is a cycle the others lose. ")
	w("*New connection per request* sends `Connection: close`.\n\n")
	w("**Balancer CPU per request**: for tether, the XDP program's run time from the kernel's BPF statistics plus the daemon's CPU time (health checks, its loop), ")
	w("over the requests; it does not include the veth driver's work around the program. For nginx, the CPU time of its master and worker processes, ")
	w("which includes their system calls and the softirq work that ran on their time but not the softirq work for their sockets that ran in other tasks. ")
	w("Both leave out the same kind of driver work, and for nginx it leaves out more.\n\n")
	w("| setup | requests | req/s (min–max) | × direct | × nginx | balancer CPU µs/req | packets via LB per request | wrk errors |\n|---|---|---|---|---|---|---|---|\n")
	for _, row := range c.Rows {
		direct, _ := c.Row(setupDirect, row.Mode)
		nginx, _ := c.Row(setupNginx, row.Mode)
		cpu, packets := "", ""
		if row.BalancerCPUus > 0 {
			cpu = fmt.Sprintf("%.2f", row.BalancerCPUus)
		}
		if row.PacketsPerRequest > 0 {
			packets = fmt.Sprintf("%.1f", row.PacketsPerRequest)
		}
		w("| %s | %s | %.0f (%.0f–%.0f) | %.2f | %.2f | %s | %s | %d |\n", row.Setup, row.Mode, row.RequestsPerSec, row.Low, row.High,
			ratio(row.RequestsPerSec, direct.RequestsPerSec), ratio(row.RequestsPerSec, nginx.RequestsPerSec), cpu, packets, row.Errors)
	}
	w("\n")
}

func (r *Results) writeControl(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("## 4. Control plane\n\n")
	c := r.Control
	if c == nil {
		w("Not measured (see the end).\n\n")
		return
	}
	w("| measurement | value |\n|---|---|\n")
	for _, n := range c.MaglevBackendCounts {
		w("| Maglev build, %d backends, M = 65537 (median of %d) | %.2f ms |\n", n, c.Rounds, c.MaglevBuildMs[n])
	}
	w("| table swap: InstallTable of 65537 slots into the kernel maps, then the VIP's slot flip (median of %d) | %.2f ms |\n", c.Rounds, c.SwapMs)
	w("| affinity table memory (kernel memlock of the array, full or empty) | %.1f MiB for a capacity of %d clients = %.1f MiB per million |\n",
		float64(c.AffinityMemlock)/(1<<20), c.AffinityCapacity, c.AffinityPerMillion/(1<<20))
	w("| affinity table scan: counting its %d entries in place through the daemon's mapping, as each /metrics scrape does (median of %d) | %.1f ms |\n",
		c.ScanEntries, c.Rounds, c.ScanMs)
	for _, h := range c.Health {
		load := "idle machine"
		if h.Busy {
			load = "a busy loop on every core"
		}
		w("| health checks, %s, %d backends every %s, %s (userspace/health Scheduler, %d workers, own process; targets on loopback) | %.3f CPU s/s (%.0f checks/s, %d failed, %d inconclusive); probe start after its due time p50 %.2f ms, p99 %.2f ms |\n",
			h.Kind, h.Targets, h.Interval, load, r.Config.Control.HealthWorkers, h.CoresUsed, h.ProbesPerSec, h.Failures, h.Inconclusive, h.LateP50Ms, h.LateP99Ms)
	}
	w("\n")
}

// writeMisses explains each missed target from what this run measured.
func (r *Results) writeMisses(b *strings.Builder, targets []target) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	someMissed := false
	for _, t := range targets {
		someMissed = someMissed || (t.known && !t.met)
	}
	if !someMissed {
		return
	}
	w("## Missed targets: why, and what would fix it\n\n")
	if missed(targets, "live-1") || missed(targets, fmt.Sprintf("live-%d", flowFrames)) {
		r.writeLiveMiss(w)
	}
	if r.Connections != nil {
		floor, okFloor := r.Connections.Row(setupFloor, modeKeepAlive)
		direct, okDirect := r.Connections.Row(setupDirect, modeKeepAlive)
		tether, okTether := r.Connections.Row(setupTether, modeKeepAlive)
		if missed(targets, "keep-alive") && okFloor && okDirect && okTether {
			w("**Keep-alive against direct.** The minimal L2 forwarder on the same path reaches %.2f× direct, tether %.2f× the forwarder. ",
				ratio(floor.RequestsPerSec, direct.RequestsPerSec), ratio(tether.RequestsPerSec, floor.RequestsPerSec))
			w("The path through a balancer adds two veth hops, a NAPI poll and an skb built for the XDP_TX'd frame on the switch port, ")
			w("all on the 2 cores the client and the backend need too; tether's own CPU (program and daemon) is %.2f µs per request. ", tether.BalancerCPUus)
			w("On real NICs the balancer has its own cores and the backends' replies skip it, so this ratio measures the test bed more than tether; ")
			w("a fair check needs the balancer on a separate machine or cores (taskset the client and backends away from the LB's RX CPU).\n\n")
		}
		nginx, okNginx := r.Connections.Row(setupNginx, modeNewConn)
		tetherNew, okNew := r.Connections.Row(setupTether, modeNewConn)
		if missed(targets, "new-rate") && okNginx && okNew {
			w("**New connections against nginx.** tether %.0f req/s, nginx %.0f req/s. The client and backends are the bottleneck on 2 cores: ", tetherNew.RequestsPerSec, nginx.RequestsPerSec)
			w("tether itself spends %.2f µs per request against nginx's %.2f µs, so the request rate is capped by wrk and the backend, not by the balancer",
				tetherNew.BalancerCPUus, nginx.BalancerCPUus)
			floorNew, okFloorNew := r.Connections.Row(setupFloor, modeNewConn)
			directNew, okDirectNew := r.Connections.Row(setupDirect, modeNewConn)
			if okFloorNew && okDirectNew {
				w(": the L2 forwarder floor reaches %.2f× nginx and no balancer at all %.2f×, so the ratio that nginx leaves room for is what this bed measures",
					ratio(floorNew.RequestsPerSec, nginx.RequestsPerSec), ratio(directNew.RequestsPerSec, nginx.RequestsPerSec))
			}
			w(".\n\n")
		}
		if missed(targets, "new-cpu") && okNginx && okNew {
			w("**CPU per new connection.** tether %.2f µs (%.1f packets through the balancer per request) against nginx's %.2f µs. ",
				tetherNew.BalancerCPUus, tetherNew.PacketsPerRequest, nginx.BalancerCPUus)
			w("The program's per-packet cost is in the prog.Run table; the BPF statistics add two clock reads per run, which matter at this size.\n\n")
		}
	}
	if missed(targets, "maglev") {
		w("**Maglev build.** The build fills 65537 slots from 1000 permutations; a build over the limit points at userspace/maglev's population loop (profile with `go test -bench . -cpuprofile`).\n\n")
	}
}

// writeLiveMiss explains a missed live target from the numbers measured.
func (r *Results) writeLiveMiss(w func(string, ...any)) {
	w("**Live veth, 1M clients.** ")
	l := r.Live
	for _, burst := range liveTraffic {
		floor, _ := l.Row("IPv4", burst, loader.ModeNative, programMACSwap)
		bucket, _ := l.Row("IPv4", burst, loader.ModeNative, programBucketRead)
		tether, _ := l.Row("IPv4", burst, loader.ModeNative, programTether)
		w("With %s, tether costs %.0f ns per frame over the XDP_TX floor; the bucket read floor, which only adds one read of the client's bucket in a table of tether's size, ",
			burstDescription(burst), tether.NsPerPacket-floor.NsPerPacket)
		w("already costs %.0f ns over it (%.2f× the XDP_TX floor), and tether is %.2f× that floor. ",
			bucket.NsPerPacket-floor.NsPerPacket, ratio(bucket.NsPerPacket, floor.NsPerPacket), ratio(tether.NsPerPacket, bucket.NsPerPacket))
	}
	if p := r.ProgRun; p != nil {
		hot, _ := p.Row("IPv4", 1, programTether)
		hotFloor, _ := p.Row("IPv4", 1, programMACSwap)
		w("prog.Run splits it: the program's own work is %.0f ns over the XDP_TX floor with one hot client (everything in cache)", hot.ThreadNs-hotFloor.ThreadNs)
		for _, row := range p.Rows {
			if row.Family == "IPv4" && row.Clients > 1 && row.Program == programTether {
				coldFloor, _ := p.Row("IPv4", row.Clients, programMACSwap)
				coldBucket, _ := p.Row("IPv4", row.Clients, programBucketRead)
				w("; when every packet is another of %d clients, tether costs %.0f ns more and the bucket read floor %.0f ns more than the XDP_TX floor",
					row.Clients, row.ThreadNs-hot.ThreadNs, coldBucket.ThreadNs-coldFloor.ThreadNs)
			}
		}
		w(". ")
	}
	w("So the target is missed on the read of a random 128-byte bucket in a table of %.0f MiB, which any balancer that keeps a client's backend for 1M clients pays; ",
		tableMiB(loader.DefaultOptions().AffinityCapacity))
	w("a flow pays it once, on its first frame. The program cannot hide it (XDP runs one frame at a time, BPF has no prefetch), and no per-client table for 1M clients fits in a CPU cache. ")
	if len(r.TableSizes) > 0 {
		first, last := r.TableSizes[0], r.TableSizes[len(r.TableSizes)-1]
		w("In prog.Run, from a %.0f to a %.0f MiB table, the bucket read floor's cold cost goes from %.0f to %.0f ns and tether's from %.0f to %.0f ns: ",
			first.MiB, last.MiB, first.FloorColdNs, last.FloorColdNs, first.ColdNs, last.ColdNs)
		w("the floor is short enough that the CPU starts the next packet's read before the last one has returned, so its reads overlap, ")
		w("while tether's program is long enough that one read is in flight at a time and each cold packet waits out the memory's full latency, which grows with the table. ")
	}
	w("What would move the ratio further is fewer bytes per client and one cache line per lookup: a 16-byte entry (a salted 64-bit fingerprint of the client instead of its 16-byte address) ")
	w("would put a bucket's four ways in one 64-byte line (today a client in way 2 or 3 needs the bucket's second line) and halve the table for the same capacity. ")
	w("What was done: the LRU hash (a bucket-head read, then a chain of elements, each a dependent miss: `lookup_nulls_elem_raw` took 51%% of the CPU) became a set-associative table read with one bucket access, ")
	w("whose index comes from two independent multiplies instead of a chain of Murmur rounds, ")
	w("and each CPU keeps a copy of the VIP entries it sees, so a packet does no hash map lookup (jhash of 20 bytes, bucket walk, memcmp) at all.\n\n")
}

// tableMiB is the affinity table's size for capacity clients.
func tableMiB(capacity uint32) float64 {
	return float64(loader.AffinityBuckets(capacity)) * float64(unsafe.Sizeof(loader.TetherAffinityBucket{})) / (1 << 20)
}
