package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
)

// The small XDP programs the benchmark builds itself with cilium/ebpf's
// assembler: the two floors tether is measured against, the programs that
// put a different client address into every frame, and the counting sink
// at the end of the live veth path.

// XDP verdicts.
const (
	xdpAborted = 0
	xdpDrop    = 1
	xdpPass    = 2
	xdpTX      = 3
)

// Offsets of the fields of struct xdp_md the programs read.
const (
	xdpMDData    = 0
	xdpMDDataEnd = 4
)

const ethHeaderLen = 14

// clientWordOffset is where the rotating programs write the client number
// into an untagged frame: Ethernet (14) + 12 is the IPv4 source address,
// Ethernet (14) + 8 + 4 the second word of the IPv6 source address, inside
// the /64 that tether keys IPv6 clients by.
const clientWordOffset = ethHeaderLen + 12

func newXDPProgram(name string, insns asm.Instructions) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.XDP,
		AttachType:   ebpf.AttachXDP, // as tether's: tail calls need them equal
		Instructions: insns,
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("loading XDP program %s: %+v", name, verr)
		}
		return nil, fmt.Errorf("loading XDP program %s: %w", name, err)
	}
	return prog, nil
}

// newDropFloor returns XDP_DROP for every frame: the cheapest XDP program.
func newDropFloor() (*ebpf.Program, error) {
	return newXDPProgram("floor_drop", asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return(),
	})
}

// newPassProgram returns XDP_PASS: on the peer of a veth that receives
// XDP_TX frames, it makes the peer accept them.
func newPassProgram() (*ebpf.Program, error) {
	return newXDPProgram("pass", asm.Instructions{
		asm.Mov.Imm(asm.R0, xdpPass),
		asm.Return(),
	})
}

// newMACSwapFloor is the least a forwarding XDP program does: check the
// Ethernet header is there, swap destination and source MAC, XDP_TX.
func newMACSwapFloor() (*ebpf.Program, error) {
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, xdpMDData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, xdpMDDataEnd, asm.Word),
	}
	insns = append(insns, macSwap("short")...)
	insns = append(insns, verdicts(xdpTX, "short", xdpDrop)...)
	return newXDPProgram("floor_mac_swap", insns)
}

// verdicts ends a program: return verdict, and at label return
// labelVerdict.
func verdicts(verdict int32, label string, labelVerdict int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R0, verdict),
		asm.Return(),
		asm.Mov.Imm(asm.R0, labelVerdict).WithSymbol(label),
		asm.Return(),
	}
}

// macSwap checks that the frame from R2 to R3 has an Ethernet header (else
// jumps to short) and swaps its destination and source MAC. It uses R0 and
// R1 to R5.
func macSwap(short string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ethHeaderLen),
		asm.JGT.Reg(asm.R4, asm.R3, short),
		// destination MAC: bytes 0..5, source MAC: bytes 6..11
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Word),
		asm.LoadMem(asm.R5, asm.R2, 4, asm.Half),
		asm.LoadMem(asm.R0, asm.R2, 6, asm.Word),
		asm.LoadMem(asm.R1, asm.R2, 10, asm.Half),
		asm.StoreMem(asm.R2, 0, asm.R0, asm.Word),
		asm.StoreMem(asm.R2, 4, asm.R1, asm.Half),
		asm.StoreMem(asm.R2, 6, asm.R4, asm.Word),
		asm.StoreMem(asm.R2, 10, asm.R5, asm.Half),
	}
}

// newBucketTable makes a zeroed array of `buckets` buckets of the size of
// tether's, laid out like tether's affinity table (mmapable, so
// page-aligned).
func newBucketTable(buckets uint32) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_buckets", Type: ebpf.Array, KeySize: 4,
		ValueSize: uint32(unsafe.Sizeof(loader.TetherAffinityBucket{})), MaxEntries: buckets, Flags: unix.BPF_F_MMAPABLE})
	if err != nil {
		return nil, fmt.Errorf("creating a table of %d buckets: %w", buckets, err)
	}
	return m, nil
}

// newBucketReadFloor is the MAC-swap floor plus the least a balancer with
// per-client state in a table of tether's size does: hash the frame's client
// word (where the rotating programs write it) onto one of buckets entries of
// table, read the bucket's first word and branch on it. The read is the
// cache miss any per-client table of that size pays for a client it has not
// seen lately; what tether costs beyond this floor is its own work and the
// part of the read's latency that work leaves exposed.
func newBucketReadFloor(table *ebpf.Map, buckets uint32) (*ebpf.Program, error) {
	const golden32 = -0x61c8864f // 0x9e3779b1 as a signed immediate
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, xdpMDData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, xdpMDDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, clientWordOffset+4),
		asm.JGT.Reg(asm.R4, asm.R3, "short"),
		asm.LoadMem(asm.R6, asm.R2, clientWordOffset, asm.Word),
	}
	insns = append(insns, macSwap("short")...)
	insns = append(insns,
		// Multiplicative hash, then multiply-shift onto [0, buckets), as
		// tether indexes its table.
		asm.Mul.Imm32(asm.R6, golden32),
		asm.Mul.Imm(asm.R6, int32(buckets)),
		asm.RSh.Imm(asm.R6, 32),
		asm.StoreMem(asm.R10, -4, asm.R6, asm.Word),
	)
	insns = append(insns, lookupStackKey(table, "short")...)
	insns = append(insns,
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		// Never taken (the table stays zeroed), but the verdict waits for
		// the read like tether's does.
		asm.JEq.Imm(asm.R1, 1, "short"),
	)
	insns = append(insns, verdicts(xdpTX, "short", xdpDrop)...)
	return newXDPProgram("floor_bucket", insns)
}

// newL2ForwarderFloor is the least an L2 direct-server-return balancer
// does: IPv4 frames get the backend's MAC as destination and the
// balancer's as source and leave with XDP_TX; everything else (ARP) goes to
// the stack. It stands in tether's place on the connection bench.
func newL2ForwarderFloor(backend, self net.HardwareAddr) (*ebpf.Program, error) {
	// Immediates are signed 32-bit; the store writes their low bytes.
	word := func(mac net.HardwareAddr) int64 { return int64(int32(binary.NativeEndian.Uint32(mac[0:4]))) }
	half := func(mac net.HardwareAddr) int64 { return int64(binary.NativeEndian.Uint16(mac[4:6])) }
	var ipv4 [2]byte
	binary.BigEndian.PutUint16(ipv4[:], 0x0800)
	return newXDPProgram("floor_l2_fwd", asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, xdpMDData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, xdpMDDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, ethHeaderLen),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, int32(binary.NativeEndian.Uint16(ipv4[:])), "pass"),
		asm.StoreImm(asm.R2, 0, word(backend), asm.Word),
		asm.StoreImm(asm.R2, 4, half(backend), asm.Half),
		asm.StoreImm(asm.R2, 6, word(self), asm.Word),
		asm.StoreImm(asm.R2, 10, half(self), asm.Half),
		asm.Mov.Imm(asm.R0, xdpTX),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	})
}

// clientCycle is a range of clients the rotating programs walk through:
// the frame's client word becomes Base + n, n = 0, 1, ..., Count-1, 0, 1,
// ..., each n for Burst frames in a row (0 counts as 1).
type clientCycle struct {
	Base  uint32 // host order
	Count uint32
	Burst uint32
}

// frames is the length of the cycle in frames.
func (c clientCycle) frames() uint32 { return c.Count * max(c.Burst, 1) }

// newCounterMap makes the one-slot array a rotating program keeps its
// position in.
func newCounterMap(name string) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("creating map %s: %w", name, err)
	}
	return m, nil
}

// rotateClient writes the next client of cycle into the frame, using the
// counter in position. It leaves the context in R6 and jumps to "abort" when
// the frame is too short.
func rotateClient(position *ebpf.Map, cycle clientCycle) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.R10, -4, 0, asm.Word),
	}
	insns = append(insns, lookupStackKey(position, "abort")...)
	return append(insns,
		asm.LoadMem(asm.R7, asm.R0, 0, asm.DWord), // this frame's number
		asm.Mov.Reg(asm.R8, asm.R7),
		asm.Add.Imm(asm.R8, 1),
		asm.JLT.Imm(asm.R8, int32(cycle.frames()), "next"),
		asm.Mov.Imm(asm.R8, 0),
		asm.StoreMem(asm.R0, 0, asm.R8, asm.DWord).WithSymbol("next"),
		asm.Div.Imm(asm.R7, int32(max(cycle.Burst, 1))), // its client
		// 32-bit add: the base wraps like the unsigned address word it is.
		asm.Add.Imm32(asm.R7, int32(cycle.Base)),
		asm.HostTo(asm.BE, asm.R7, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, xdpMDData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, xdpMDDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, clientWordOffset+4),
		asm.JGT.Reg(asm.R4, asm.R3, "abort"),
		asm.StoreMem(asm.R2, clientWordOffset, asm.R7, asm.Word),
	)
}

// lookupStackKey looks up the 4-byte key stored at R10-4 in m and leaves
// the value's pointer in R0, or jumps to missing if there is none.
func lookupStackKey(m *ebpf.Map, missing string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, missing),
	}
}

// newRotatingGenerator gives every frame the next client of cycle and sends
// it with XDP_TX: run with BPF_F_TEST_XDP_LIVE_FRAMES it is a traffic
// generator from many clients.
func newRotatingGenerator(position *ebpf.Map, cycle clientCycle) (*ebpf.Program, error) {
	insns := append(rotateClient(position, cycle), verdicts(xdpTX, "abort", xdpAborted)...)
	return newXDPProgram("gen_clients", insns)
}

// newTailCallArray makes the one-slot program array a rotator jumps through.
func newTailCallArray() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_target", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("creating program array: %w", err)
	}
	return m, nil
}

// newRotatingTailCaller gives every frame the next client of cycle and then
// tail-calls the program in slot 0 of target. prog.Run repeats one frame;
// this turns its repetitions into a walk over many clients. The floors are
// measured behind the same rotator, so its cost is in both sides of a ratio.
func newRotatingTailCaller(position, target *ebpf.Map, cycle clientCycle) (*ebpf.Program, error) {
	insns := rotateClient(position, cycle)
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, target.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		// Reached only when slot 0 is empty.
		asm.Mov.Imm(asm.R0, xdpAborted).WithSymbol("abort"),
		asm.Return(),
	)
	return newXDPProgram("rotate_clients", insns)
}

// newCountingSink counts every frame in slot 0 of the per-CPU array counts
// and drops it.
func newCountingSink(counts *ebpf.Map) (*ebpf.Program, error) {
	insns := append(asm.Instructions{asm.StoreImm(asm.R10, -4, 0, asm.Word)}, lookupStackKey(counts, "drop")...)
	return newXDPProgram("sink_count", append(insns,
		// Per-CPU slot: no other CPU writes it, a plain add is enough.
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("drop"),
		asm.Return(),
	))
}

// newPerCPUCounter makes the per-CPU array the sink counts into.
func newPerCPUCounter(name string) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("creating map %s: %w", name, err)
	}
	return m, nil
}

// sumPerCPU reads slot 0 of a per-CPU counter summed over CPUs.
func sumPerCPU(m *ebpf.Map) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading per-CPU counter: %w", err)
	}
	var sum uint64
	for _, v := range perCPU {
		sum += v
	}
	return sum, nil
}
