package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/model"
	"github.com/tether-lb/tether/test/packets"
	"github.com/tether-lb/tether/test/testenv"
)

// maxFuzzFrame caps the fuzzed frames below the largest frame
// BPF_PROG_TEST_RUN hands to the program in one buffer (a page minus XDP
// headroom and skb_shared_info, 3520 bytes on x86-64). Longer frames become
// multi-buffer: the program, not loaded as xdp.frags, sees only the first
// buffer, and no driver gives it such a frame. TestJumboFrames covers them.
const maxFuzzFrame = 3500

// FuzzDatapath runs any frame over a map state decoded from the fuzzer's
// bytes (VIPs, backends, Maglev tables, affinity entries, settings) through
// the program and the Go model, and fails on any difference in verdict,
// output frame, affinity entries or counters. One program is loaded per
// fuzz process; each input replaces the previous input's state.
func FuzzDatapath(f *testing.F) {
	h := newFuzzHarness(f)
	fz := &datapathFuzzer{h: h, redirectIfindex: addRedirectTarget(f, h)}
	for _, seed := range datapathSeeds() {
		f.Add(seed.state, seed.frame)
	}
	f.Fuzz(func(t *testing.T, state, frame []byte) {
		h.t = t
		passed := false
		defer func() {
			if !passed {
				fz.forget()
			}
		}()
		if len(frame) > maxFuzzFrame {
			frame = frame[:maxFuzzFrame]
		}
		decoded := fz.decode(state, monotonicCoarse())
		if err := fz.install(decoded); err != nil {
			t.Fatalf("installing state: %v", err)
		}
		res, err := h.compare(frame)
		if err != nil {
			t.Fatalf("kernel and model differ: %v\nstate %+v\nframe % x", err, decoded, frame)
		}
		if err := fz.compareState(); err != nil {
			t.Fatalf("after outcome %d: %v\nstate %+v\nframe % x", res.Outcome, err, decoded, frame)
		}
		passed = true
	})
}

// fuzzOptions are smaller than testOptions where a fuzz input's cost grows
// with size: every counter slot is read after each input. The affinity
// table has 3 buckets (12 ways): an input's pins and inserts fill buckets
// and evict, and the model must evict the same entries.
var fuzzOptions = loader.Options{MaxVIPs: 4, TableStride: 257, MaxBackends: 16, AffinityCapacity: 4, MaxTxPorts: 8}

// newFuzzHarness is a harness over fuzzOptions.
func newFuzzHarness(tb testing.TB) *harness {
	tb.Helper()
	return newHarnessWith(tb, fuzzOptions)
}

// newHarnessWith is newHarness with maps sized by opts.
func newHarnessWith(tb testing.TB, opts loader.Options) *harness {
	tb.Helper()
	testenv.RequireBPF(tb)
	dp, err := loader.Load(opts)
	if err != nil {
		tb.Fatalf("loading datapath: %v", err)
	}
	tb.Cleanup(func() { dp.Close() })
	limits := maps.LimitsOf(opts)
	kernel, err := maps.NewKernel(&dp.Maps, limits)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { kernel.Close() })
	if err := kernel.SetAffinitySalt(testAffinitySalt); err != nil {
		tb.Fatal(err)
	}
	fake := maps.NewFake(limits)
	fake.SetAffinitySalt(testAffinitySalt)
	return &harness{
		t:      tb,
		dp:     dp,
		kernel: kernel,
		fake:   fake,
		model:  &model.Datapath{Maps: fake, IngressIfindex: loIfindex},
	}
}

// TestDatapathSeedsCoverEveryOutcome keeps FuzzDatapath's seeds worth
// mutating: through the model, they end in every outcome and every
// affinity event the model produces. It needs no BPF.
func TestDatapathSeedsCoverEveryOutcome(t *testing.T) {
	const redirectIfindex = 2
	fz := &datapathFuzzer{redirectIfindex: redirectIfindex}
	outcomes := map[maps.Outcome]bool{}
	var events uint32
	for _, seed := range datapathSeeds() {
		fake := maps.NewFake(maps.LimitsOf(fuzzOptions))
		fake.SetAffinitySalt(testAffinitySalt)
		now := monotonicCoarse()
		if err := errors.Join(fake.PutTxPort(redirectIfindex), writeFuzzState(fake, fz.decode(seed.state, now), nil)); err != nil {
			t.Fatal(err)
		}
		res := (&model.Datapath{Maps: fake, IngressIfindex: loIfindex}).Run(seed.frame, now)
		outcomes[res.Outcome] = true
		events |= res.AffinityEvents
	}
	for outcome := range loader.TetherOutcomeOUTCOME_MAX {
		if !outcomes[outcome] {
			t.Errorf("no seed ends in outcome %d", outcome)
		}
	}
	for event := range loader.TetherAffinityEventAFFINITY_EVENT_MAX {
		// An insert fails only when another CPU writes the same way.
		if event != loader.TetherAffinityEventAFFINITY_INSERT_FAILED && events&(1<<event) == 0 {
			t.Errorf("no seed causes affinity event %d", event)
		}
	}
}

// addRedirectTarget gives the devmap a real device to point at: a veth
// in an unnamed namespace held open by this process, so parallel
// fuzz workers never share one and none is left behind. It returns the
// device's ifindex, which the devmap resolved in that namespace.
func addRedirectTarget(tb testing.TB, h *harness) uint32 {
	tb.Helper()
	ns, err := newPrivateNetns()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Close() })
	var ifindex uint32
	err = testenv.InNetns(ns, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fuzz-redirect"}, PeerName: "fuzz-peer"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth pair: %w", err)
		}
		link, err := netlink.LinkByName(veth.Name)
		if err != nil {
			return fmt.Errorf("looking up veth: %w", err)
		}
		ifindex = uint32(link.Attrs().Index)
		return errors.Join(h.kernel.PutTxPort(ifindex), h.fake.PutTxPort(ifindex))
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ifindex
}

// newPrivateNetns creates a network namespace without a name; it lives
// while the returned handle is open.
func newPrivateNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, fmt.Errorf("getting current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, fmt.Errorf("creating netns: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		// The thread stays locked in the new namespace and ends with
		// this goroutine.
		ns.Close()
		return 0, fmt.Errorf("returning from new netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ns, nil
}

// Choices the fuzzer's bytes select from. Frames in the seeds use these
// addresses, so mutations of them reach the VIPs and pinned clients.
var (
	fuzzVIPAddrs = []netip.Addr{
		netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.1.2"),
		netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:1::2"),
		netip.MustParseAddr("::ffff:198.18.1.1"),
	}
	fuzzVIPPorts = []uint16{80, 443, 53}
	fuzzClients  = []netip.Addr{
		client4, netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.1.10"),
		client6, netip.MustParseAddr("2001:db8::11"), netip.MustParseAddr("2001:db8:0:1::10"),
	}
	fuzzTimeouts = []time.Duration{120 * time.Second, 5 * time.Second, 30 * time.Second, 300 * time.Second}
	// Table sizes: primes, the stride, and sizes the program must refuse
	// or survive (0, 1, 2, above the stride). Small tables keep inputs
	// fast; the hash modulo the size is the same code for any size.
	fuzzTableSizes = []uint32{13, fuzzOptions.TableStride, 7, 3, 2, 1, 0, fuzzOptions.TableStride + 1}
	// The backend ids a state writes: the first few and the array's last.
	fuzzBackendIDs = []maps.BackendID{1, 2, 3, 4, 5, 6, 7, maps.BackendID(fuzzOptions.MaxBackends - 1)}
	// The ids affinity entries point at: 0, the written ones; other bytes
	// are taken as they are (never written, or past the array).
	fuzzBackendRefs = append([]maps.BackendID{0}, fuzzBackendIDs...)
	// The ids a table nibble selects: the written ones, 0, one never
	// written, one past the array and the largest.
	tableRefs = []maps.BackendID{0, 1, 2, 3, 4, 5, 6, 7, maps.BackendID(fuzzOptions.MaxBackends - 1),
		8, maps.BackendID(fuzzOptions.MaxBackends), ^maps.BackendID(0), 1, 2, 1, 2}
)

// fuzzBytes hands out an input's bytes in order; past the end it gives
// zeros, so every input decodes to a state.
type fuzzBytes struct{ data []byte }

func (b *fuzzBytes) next() byte {
	if len(b.data) == 0 {
		return 0
	}
	v := b.data[0]
	b.data = b.data[1:]
	return v
}

func (b *fuzzBytes) pick(n int) int { return int(b.next()) % n }

func (b *fuzzBytes) uint32() uint32 {
	return binary.BigEndian.Uint32([]byte{b.next(), b.next(), b.next(), b.next()})
}

// backendRef selects an id of fuzzBackendRefs, or takes the byte as it is.
func (b *fuzzBytes) backendRef() maps.BackendID {
	v := b.next()
	if int(v)%16 < len(fuzzBackendRefs) {
		return fuzzBackendRefs[int(v)%16]
	}
	return maps.BackendID(v)
}

type tableRef struct {
	vipID uint32
	slot  uint8
}

// fuzzState is one input's map state.
type fuzzState struct {
	settings maps.Settings
	vips     map[maps.VIPKey]maps.VIP
	backends map[maps.BackendID]maps.Backend
	tables   map[tableRef][]maps.BackendID
	pins     map[maps.AffinityKey]maps.Affinity
}

// datapathFuzzer installs fuzz states. Only what differs from the state
// installed before is written: the program never writes VIPs, backends,
// tables or settings, so the last state tells what the maps hold.
type datapathFuzzer struct {
	h               *harness
	redirectIfindex uint32
	counterKeys     []uint32 // buffers of kernelCounters
	counterWords    []counterWords
	installed       *fuzzState // nil: unknown, rewrite everything
	// countersAlike is set while the model's counters equal the kernel's,
	// as they do after every input that passed.
	countersAlike bool
}

// forget makes the next input rewrite everything, after an input that
// failed half-way.
func (fz *datapathFuzzer) forget() {
	fz.installed, fz.countersAlike = nil, false
}

// Encoding of a state (missing bytes read as zero):
//
//	settings  1 byte: bit 0 inactive; bits 1-2 watchdog 1 fresh, 2 stale
//	seed      4 bytes
//	VIP count 1 byte (mod 5), then per VIP 8 bytes:
//	          key (address, port, protocol), id (>= 0xf0: past max VIPs),
//	          flags (bit 0 pass, bit 1 fragment alias, bits 2-3 timeout),
//	          table size, prefix4, prefix6, table slot, table pattern
//	backends  3 bytes per id of fuzzBackendIDs: state (0: never written),
//	          generation and ifindex, MAC
//	pins      1 byte count (mod 9), then per entry 4 bytes: VIP, client,
//	          backend, generation, age and probation
//
// Timestamps keep far from every threshold (refresh, timeout, watchdog),
// so kernel and model decide alike although their clocks differ by the
// time the run takes.
func (fz *datapathFuzzer) decode(data []byte, now uint64) fuzzState {
	b := &fuzzBytes{data: data}
	s := fuzzState{
		vips:     map[maps.VIPKey]maps.VIP{},
		backends: map[maps.BackendID]maps.Backend{},
		tables:   map[tableRef][]maps.BackendID{},
		pins:     map[maps.AffinityKey]maps.Affinity{},
	}
	flags := b.next()
	s.settings = maps.Settings{Active: flags&1 == 0, Seed: b.uint32()}
	switch flags >> 1 & 3 {
	case 1:
		s.settings.WatchdogTimeout = 5 * time.Second
		s.settings.Watchdog = now - uint64(time.Second)
	case 2:
		s.settings.WatchdogTimeout = 5 * time.Second
		s.settings.Watchdog = now - uint64(10*time.Second)
	}

	var vipList []maps.VIP
	for range b.pick(5) {
		keyByte := b.next()
		key := maps.VIPKey{
			Addr:  fuzzVIPAddrs[int(keyByte)%len(fuzzVIPAddrs)],
			Port:  fuzzVIPPorts[int(keyByte)/len(fuzzVIPAddrs)%len(fuzzVIPPorts)],
			Proto: []maps.Proto{maps.TCP, maps.UDP}[int(keyByte)/(len(fuzzVIPAddrs)*len(fuzzVIPPorts))%2],
		}
		id := uint32(b.next())
		if id >= 0xf0 {
			id = fuzzOptions.MaxVIPs + (id-0xf0)*37
		} else {
			id %= fuzzOptions.MaxVIPs
		}
		vipFlags := b.next()
		vip := maps.VIP{
			ID:              id,
			NoBackendPass:   vipFlags&1 != 0,
			AffinityTimeout: fuzzTimeouts[vipFlags>>2&3],
			TableSize:       fuzzTableSizes[b.pick(len(fuzzTableSizes))],
			Prefix4:         b.next(),
			Prefix6:         b.next(),
			TableSlot:       b.next(),
		}
		pattern := b.next()
		s.vips[key] = vip
		if vipFlags&2 != 0 {
			s.vips[maps.FragmentAlias(key)] = vip
		}
		vipList = append(vipList, vip)
		if id < fuzzOptions.MaxVIPs {
			addPatternTables(s.tables, id, vip.TableSize, pattern)
		}
	}

	for _, id := range fuzzBackendIDs {
		stateByte, detail, macByte := b.next(), b.next(), b.next()
		if stateByte == 0 {
			s.backends[id] = maps.Backend{}
			continue
		}
		state := []maps.BackendState{maps.BackendUp, maps.BackendUp, maps.BackendDraining, maps.BackendDown, maps.BackendState(stateByte)}[stateByte%5]
		s.backends[id] = maps.Backend{
			MAC:        net.HardwareAddr{0x02, 0xbe, 0, 0, byte(id), macByte},
			SourceMAC:  sourceMAC,
			Ifindex:    []uint32{0, loIfindex, fz.redirectIfindex, 999}[detail>>2&3],
			Generation: uint32(detail & 3 % 3),
			State:      state,
		}
	}

	for range b.pick(9) {
		vipByte, clientByte, backend, detail := b.next(), b.next(), b.backendRef(), b.next()
		vip := maps.VIP{ID: uint32(vipByte), AffinityTimeout: fuzzTimeouts[0]}
		if len(vipList) > 0 && vipByte < 0xf0 {
			vip = vipList[int(vipByte)%len(vipList)]
		}
		client := fuzzClients[int(clientByte)%len(fuzzClients)]
		bits := int(vip.Prefix6)
		if client.Is4() {
			bits = int(vip.Prefix4)
		}
		key := maps.AffinityKey{VIPID: vip.ID, Client: maps.ClientKey(client, bits)}
		s.pins[key] = maps.Affinity{Backend: backend, Generation: uint32(detail & 3 % 3), LastSeen: pinStamp(now, vip.AffinityTimeout, detail>>2&3),
			Probationary: detail>>4&1 != 0}
	}
	return s
}

// addPatternTables fills both table slots of a VIP id with the two backend
// references of a pattern byte (one per nibble, see tableRefs) in turns,
// as far as the VIP's table size reaches. Sizes the program refuses (0,
// above the stride) need no table. Where VIPs share an id, the last one's
// table wins, in the kernel as in the model.
func addPatternTables(tables map[tableRef][]maps.BackendID, vipID, size uint32, pattern byte) {
	if size == 0 || size > fuzzOptions.TableStride {
		return
	}
	cycle := []maps.BackendID{tableRefs[pattern&0x0f], tableRefs[pattern>>4]}
	for slot := range uint8(2) {
		ids := make([]maps.BackendID, size)
		for i := range ids {
			ids[i] = cycle[(i+int(slot))%len(cycle)]
		}
		tables[tableRef{vipID: vipID, slot: slot}] = ids
	}
}

// pinStamp is a last-seen time: fresh, due for refresh, expired, or a
// little ahead (written by another CPU), each well away from thresholds.
func pinStamp(now uint64, timeout time.Duration, age byte) uint64 {
	switch age {
	case 0:
		return now - uint64(200*time.Millisecond)
	case 1:
		return now - uint64(min(3*time.Second, timeout/2))
	case 2:
		return now - uint64(timeout+5*time.Second)
	default:
		return now + uint64(50*time.Millisecond)
	}
}

// install makes the kernel's maps and the model's hold s: VIPs, backends,
// tables and settings that differ from the installed state are written,
// and affinity entries are replaced by s's pins. After a failed input the
// model's counters are set to the kernel's.
func (fz *datapathFuzzer) install(s fuzzState) error {
	h := fz.h
	previous := fz.installed
	fz.installed = nil
	oldVIPs, err := fz.vipsHeld(previous)
	if err != nil {
		return err
	}
	for key := range oldVIPs {
		if _, ok := s.vips[key]; !ok {
			if err := errors.Join(ignoreNotFound(h.kernel.DeleteVIP(key)), ignoreNotFound(h.fake.DeleteVIP(key))); err != nil {
				return err
			}
		}
	}
	if err := fz.deleteAffinities(); err != nil {
		return err
	}
	for _, m := range []maps.Maps{h.kernel, h.fake} {
		if err := writeFuzzState(m, s, previous); err != nil {
			return err
		}
	}
	if !fz.countersAlike {
		counters, err := fz.kernelCounters()
		if err != nil {
			return err
		}
		for slot, c := range counters {
			h.fake.UpdateCounters(uint32(slot), func(dst *maps.Counters) { *dst = c })
		}
		fz.countersAlike = true
	}
	fz.installed = &s
	return nil
}

// vipsHeld returns the VIP entries the maps hold: the previous state's,
// or, when that is unknown, every entry of either map.
func (fz *datapathFuzzer) vipsHeld(previous *fuzzState) (map[maps.VIPKey]maps.VIP, error) {
	if previous != nil {
		return previous.vips, nil
	}
	held, err := fz.h.kernel.VIPs()
	if err != nil {
		return nil, err
	}
	modelVIPs, err := fz.h.fake.VIPs()
	if err != nil {
		return nil, err
	}
	for key, vip := range modelVIPs {
		held[key] = vip
	}
	return held, nil
}

// writeFuzzState writes s's settings, backends, tables, VIPs and pins,
// skipping what previous (nil: unknown) shows the map holds already.
func writeFuzzState(m maps.Maps, s fuzzState, previous *fuzzState) error {
	if previous == nil || s.settings != previous.settings {
		if err := m.PutSettings(s.settings); err != nil {
			return err
		}
	}
	for id, b := range s.backends {
		if previous != nil && sameBackend(previous.backends[id], b) {
			continue
		}
		if err := m.PutBackend(id, b); err != nil {
			return err
		}
	}
	for ref, ids := range s.tables {
		if previous != nil && slices.Equal(previous.tables[ref], ids) {
			continue
		}
		if err := m.PutTable(ref.vipID, ref.slot, ids); err != nil {
			return err
		}
	}
	for key, vip := range s.vips {
		if old, ok := previous.vipEntry(key); ok && old == vip {
			continue
		}
		if err := m.PutVIP(key, vip); err != nil {
			return err
		}
	}
	return putPins(m, s.pins)
}

func (s *fuzzState) vipEntry(key maps.VIPKey) (maps.VIP, bool) {
	if s == nil {
		return maps.VIP{}, false
	}
	vip, ok := s.vips[key]
	return vip, ok
}

func sameBackend(a, b maps.Backend) bool {
	return bytes.Equal(a.MAC, b.MAC) && bytes.Equal(a.SourceMAC, b.SourceMAC) && a.Ifindex == b.Ifindex &&
		a.Generation == b.Generation && a.Addr == b.Addr && a.State == b.State
}

func ignoreNotFound(err error) error {
	if errors.Is(err, maps.ErrNotFound) {
		return nil
	}
	return err
}

// deleteAffinities empties the kernel's affinity table and the model's.
func (fz *datapathFuzzer) deleteAffinities() error {
	for _, m := range []maps.Maps{fz.h.kernel, fz.h.fake} {
		entries, err := m.Affinities()
		if err != nil {
			return err
		}
		for key := range entries {
			if err := m.DeleteAffinity(key); err != nil {
				return err
			}
		}
	}
	return nil
}

// counterWords is one CPU's struct lb_counters as the words it is made
// of. Unlike the generated struct it has no hidden field, so cilium/ebpf
// copies it as it is instead of decoding it field by field.
type counterWords [len(maps.Counters{}.Packets) + len(maps.Counters{}.Bytes) + len(maps.Counters{}.Affinity)]uint64

// kernelCounters reads every counter slot, summed over CPUs, in one batch.
func (fz *datapathFuzzer) kernelCounters() ([]maps.Counters, error) {
	counterMap := fz.h.dp.Maps.Counters
	if size := uint32(unsafe.Sizeof(counterWords{})); counterMap.ValueSize() != size {
		return nil, fmt.Errorf("counter value is %d bytes, want %d: update counterWords", counterMap.ValueSize(), size)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("counting CPUs: %w", err)
	}
	slots := int(counterMap.MaxEntries())
	if len(fz.counterKeys) != slots {
		fz.counterKeys, fz.counterWords = make([]uint32, slots), make([]counterWords, slots*cpus)
	}
	keys, perCPU := fz.counterKeys, fz.counterWords
	var cursor ebpf.MapBatchCursor
	n, err := counterMap.BatchLookup(&cursor, keys, perCPU, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("reading counters: %w", err)
	}
	if n != slots {
		return nil, fmt.Errorf("reading counters: got %d slots, want %d", n, slots)
	}
	out := make([]maps.Counters, slots)
	packets, bytes := len(out[0].Packets), len(out[0].Bytes)
	for i, words := range perCPU {
		sum := &out[keys[i/cpus]]
		for j := range sum.Packets {
			sum.Packets[j] += words[j]
			sum.Bytes[j] += words[packets+j]
		}
		for j := range sum.Affinity {
			sum.Affinity[j] += words[packets+bytes+j]
		}
	}
	return out, nil
}

// compareState is harness.compareState with one read per map instead of
// one per counter slot: every affinity entry and every counter slot,
// kernel against model.
func (fz *datapathFuzzer) compareState() error {
	got, err := fz.h.kernel.Affinities()
	if err != nil {
		return err
	}
	want, err := fz.h.fake.Affinities()
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return fmt.Errorf("kernel has %d affinity entries, model %d", len(got), len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			return fmt.Errorf("affinity entry %+v: kernel %+v (present %v), model %+v", k, g, ok, w)
		}
	}
	counters, err := fz.kernelCounters()
	if err != nil {
		return err
	}
	for slot, g := range counters {
		w, err := fz.h.fake.Counters(uint32(slot))
		if err != nil {
			return err
		}
		if g != w {
			return fmt.Errorf("counter slot %d: kernel %+v, model %+v", slot, g, w)
		}
	}
	return nil
}

type datapathSeed struct{ state, frame []byte }

// Seed states, in the encoding decode documents.
var (
	// Three VIPs as in setupFixture (IPv4 TCP with a fragment alias, IPv4
	// UDP, IPv6 TCP) with tables over backends 1 and 2, backend 3
	// draining, 4 down, 63 up, and pins: client4 on backend 2, client6 on
	// draining 3 due for refresh, an expired one and one of down 4.
	fixtureSeedState = []byte{
		0, 0, 0, 0, 42, // active, seed 42
		3,
		0, 0, 2, 0, 32, 64, 1, 0x21, // 198.18.1.1:80/tcp id 0, alias
		25, 1, 0, 0, 32, 64, 0, 0x21, // 198.18.1.1:53/udp id 1
		2, 2, 0, 0, 32, 64, 1, 0x12, // [2001:db8:1::1]:80/tcp id 2
		1, 1, 1, 1, 1, 2, 2, 1, 3, 3, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 9, // backends 1-7, 63
		4,
		0, 0, 2, 1, // client4 -> 2, fresh
		2, 3, 3, 5, // client6 -> 3, refresh due
		0, 1, 1, 9, // 198.18.0.11 -> 1, expired
		0, 2, 4, 13, // 198.18.1.10 -> 4, ahead
	}
	// fixturePinBytes is the pins part of fixtureSeedState: a count and
	// four pins of four bytes.
	fixturePinBytes = 1 + 4*4
	// The same with a stale watchdog: everything passes.
	staleWatchdogSeedState = append([]byte{4}, fixtureSeedState[1:]...)
	// The same with client4 on probation.
	probationSeedState = probationOfFirstPin(fixtureSeedState)
	// An IPv4 and an IPv6 VIP grouping clients by /24 and /48, passing
	// when no backend is usable, backend 63 behind the devmap, backend 1
	// behind an interface missing from it, and a fresh watchdog.
	prefixSeedState = []byte{
		2, 0x12, 0x34, 0x56, 0x78,
		2,
		0, 3, 1, 0, 24, 48, 0, 0x81, // 198.18.1.1:80/tcp id 3, /24, pass, backends 1 and 63
		3, 5, 5, 2, 24, 48, 1, 0x1a, // [2001:db8:1::2]:80/tcp id 5, table of 7 over 1 and none
		1, 13, 1, 1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9,
		0,
	}
	// Datapath off: everything passes.
	inactiveSeedState = []byte{1, 0, 0, 0, 42, 1, 0, 0, 0, 0, 32, 64, 0, 0}
	// What the daemon never writes: a VIP id past max VIPs, a table past
	// the stride, prefixes past the address, slot 9, a backend in state
	// 9, pins of a missing VIP and of a never-written backend.
	brokenSeedState = []byte{
		0, 0, 0, 0, 7,
		2,
		0, 0xf3, 0, 0, 32, 64, 0, 0x21,
		2, 1, 0, 7, 33, 200, 9, 0x3c,
		9, 2, 0, 1, 1, 2,
		2,
		0xff, 0, 1, 1,
		1, 3, 0x0b, 1,
	}
)

// datapathSeeds pairs the seed states with frames of every kind the
// fixtures test, aimed at the seed states' VIPs.
func datapathSeeds() []datapathSeed {
	otherVIP6 := maps.VIPKey{Addr: netip.MustParseAddr("2001:db8:1::2"), Port: 80, Proto: maps.TCP}
	frames := [][]byte{
		frame(client4, vip4),
		frame(client4, vip4, func(s *packets.Spec) { s.TCPFlags = packets.TCPAck }),
		frame(client4, vip4UDP),
		frame(client6, vip6),
		frame(client6, otherVIP6),
		frame(netip.MustParseAddr("2001:db8:5::10"), otherVIP6),
		frame(netip.MustParseAddr("198.18.0.11"), vip4),
		frame(netip.MustParseAddr("198.18.1.10"), vip4),
		frame(netip.MustParseAddr("2001:db8:0:1::10"), vip6),
		frame(client4, vip4, func(s *packets.Spec) { s.Tagged, s.VLANID = true, 42 }),
		frame(client6, vip6, func(s *packets.Spec) { s.Tagged, s.VLANID = true, 7 }),
		frame(client4, vip4, func(s *packets.Spec) { s.IPv4Options = make([]byte, 40) }),
		frame(client4, vip4, func(s *packets.Spec) { s.MoreFragments = true }),
		frame(client4, vip4, func(s *packets.Spec) { s.FragmentOffset = 185 }),
		frame(client6, vip6, func(s *packets.Spec) { s.IPv6Ext, s.FragmentOffset = []uint8{packets.ProtoFragment}, 185 }),
		frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext = []uint8{packets.ProtoHopOpts, packets.ProtoDstOpts, packets.ProtoRouting, packets.ProtoDstOpts}
		}),
		frame(client6, vip6, func(s *packets.Spec) {
			s.IPv6Ext = []uint8{packets.ProtoHopOpts, packets.ProtoDstOpts, packets.ProtoRouting, packets.ProtoDstOpts, packets.ProtoDstOpts}
		}),
		frame(client4, vip4, func(s *packets.Spec) { s.Proto = packets.ProtoICMP }),
		frame(client4, vip4, func(s *packets.Spec) { s.DstPort = 81 }),
		frame(client4, vip4, func(s *packets.Spec) { s.Payload = make([]byte, 1514-14-20-20) }),
		append(packets.Ethernet(lbMAC, clientMAC, false, 0, packets.EtherTypeARP), make([]byte, 28)...),
		edit(frame(client4, vip4), 14, 0x4f),
		edit(frame(client4, vip4), 14+20+12, 0xf0),
		edit(frame(client6, vip6, func(s *packets.Spec) { s.IPv6Ext = []uint8{packets.ProtoHopOpts} }), 14+40+1, 9),
		frame(client4, vip4)[:30],
		frame(client6, vip6)[:60],
		[]byte{0x02, 0, 0, 0, 0, 0xaa, 0x02, 0, 0, 0, 0, 0xcc, 0x81, 0x00, 0},
		nil,
	}
	var seeds []datapathSeed
	for _, state := range [][]byte{fixtureSeedState, staleWatchdogSeedState, probationSeedState, prefixSeedState, inactiveSeedState, brokenSeedState} {
		for _, f := range frames {
			seeds = append(seeds, datapathSeed{state: state, frame: f})
		}
	}
	return append(seeds, fullBucketSeed(false), fullBucketSeed(true))
}

// probationOfFirstPin returns state, a fixture state, with its first pin
// on probation.
func probationOfFirstPin(state []byte) []byte {
	out := slices.Clone(state)
	out[len(out)-fixturePinBytes+1+3] |= 1 << 4
	return out
}

// fullBucketSeed is the fixture's VIPs and backends with the bucket of a
// new client of VIP id 0 full of other clients' fresh entries: established
// ones leave it no room; on probation, its insert evicts one.
func fullBucketSeed(probation bool) datapathSeed {
	newClient := netip.MustParseAddr("198.18.2.20")
	buckets := loader.AffinityBuckets(fuzzOptions.AffinityCapacity)
	target := maps.AffinityBucket(buckets, testAffinitySalt, maps.AffinityKey{VIPID: 0, Client: maps.ClientKey(newClient, 32)})
	vipsAndBackends := fixtureSeedState[:len(fixtureSeedState)-fixturePinBytes]
	state := append(slices.Clone(vipsAndBackends), byte(maps.AffinityWays))
	pins := 0
	// Pins of VIP bytes >= 0xf0 are of VIP ids missing from the state,
	// with prefix 0: one zero client key per id. They only fill buckets.
	// Backend byte 1 is backend 1; detail 4 is generation 0, seen 3 s ago,
	// 20 the same on probation.
	detail := byte(4)
	if probation {
		detail |= 1 << 4
	}
	for vipByte := 0xf0; vipByte <= 0xff && pins < maps.AffinityWays; vipByte++ {
		if maps.AffinityBucket(buckets, testAffinitySalt, maps.AffinityKey{VIPID: uint32(vipByte)}) == target {
			state = append(state, byte(vipByte), 0, 1, detail)
			pins++
		}
	}
	return datapathSeed{state: state, frame: frame(newClient, vip4)}
}
