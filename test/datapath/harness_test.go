// Package datapath tests the XDP program with BPF_PROG_TEST_RUN against the
// Go model in test/model: fixtures for every rule, and a differential test
// on random packets and map states.
package datapath

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/model"
	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/userspace/maglev"
)

// Small maps keep the tests fast; the rules do not depend on sizes.
var testOptions = loader.Options{
	MaxVIPs:          8,
	TableStride:      257,
	MaxBackends:      64,
	AffinityCapacity: 1 << 16,
	MaxTxPorts:       8,
}

// loIfindex is the ingress interface BPF_PROG_TEST_RUN reports: the
// loopback device of the caller's namespace.
const loIfindex = 1

// testAffinitySalt is the affinity table's salt in the tests, where the
// loader would draw one: kernel and model must agree, and a failing fuzz
// input must fail again.
const testAffinitySalt = 0x5a175a175a175a17

type harness struct {
	t      testing.TB
	dp     *loader.Datapath
	kernel *maps.Kernel
	fake   *maps.Fake
	model  *model.Datapath
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	return newHarnessWith(t, testOptions)
}

// apply makes the same change to the real maps and to the model's.
func (h *harness) apply(change func(m maps.Maps) error) {
	h.t.Helper()
	for _, m := range []maps.Maps{h.kernel, h.fake} {
		if err := change(m); err != nil {
			h.t.Fatalf("setting up maps: %v", err)
		}
	}
}

// monotonicCoarse is the clock bpf_ktime_get_coarse_ns() reads.
func monotonicCoarse() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

// runKernel runs one frame through the real program.
func (h *harness) runKernel(frame []byte) (verdict uint32, out []byte, err error) {
	out = make([]byte, len(frame)+256)
	opts := ebpf.RunOptions{Data: frame, DataOut: out}
	verdict, err = h.dp.Program.Run(&opts)
	return verdict, opts.DataOut, err
}

// compare runs frame through both and reports the first difference in
// verdict, output frame or the affinity entry the packet wrote. It brings
// the model's clock-dependent LastSeen in line with the kernel's.
func (h *harness) compare(frame []byte) (model.Result, error) {
	before := monotonicCoarse()
	verdict, out, err := h.runKernel(frame)
	after := monotonicCoarse()
	if err != nil {
		if len(frame) < 14 && errors.Is(err, unix.EINVAL) {
			// The kernel refuses frames shorter than an Ethernet header, so
			// the program never sees one; the model would drop it.
			return model.Result{Outcome: maps.OutcomeDropMalformedEth, Verdict: maps.XDPDrop, Frame: frame, VIPID: model.NoVIP}, nil
		}
		return model.Result{}, fmt.Errorf("running program: %w", err)
	}
	want := h.model.Run(frame, before)
	if verdict != want.Verdict {
		return want, fmt.Errorf("verdict %d, model says %d (outcome %d)", verdict, want.Verdict, want.Outcome)
	}
	if !bytes.Equal(out, want.Frame) {
		return want, fmt.Errorf("output frame differs (outcome %d)\nkernel % x\nmodel  % x", want.Outcome, out, want.Frame)
	}
	if want.AffinityWritten {
		got, err := h.kernel.Affinity(want.AffinityKey)
		if err != nil {
			return want, fmt.Errorf("program did not write the affinity entry the model wrote: %w", err)
		}
		modelEntry, _ := h.fake.Affinity(want.AffinityKey)
		if got.Backend != modelEntry.Backend || got.Generation != modelEntry.Generation || got.Probationary != modelEntry.Probationary {
			return want, fmt.Errorf("affinity entry %+v, model says %+v", got, modelEntry)
		}
		if got.LastSeen < before || got.LastSeen > after {
			return want, fmt.Errorf("affinity last_seen %d outside the run's window [%d, %d]", got.LastSeen, before, after)
		}
		modelEntry.LastSeen = got.LastSeen
		_ = h.fake.PutAffinity(want.AffinityKey, modelEntry)
	}
	return want, nil
}

// compareState fails on any difference in affinity entries or counters.
func (h *harness) compareState() error {
	got, err := h.kernel.Affinities()
	if err != nil {
		return err
	}
	want, _ := h.fake.Affinities()
	if len(got) != len(want) {
		return fmt.Errorf("kernel has %d affinity entries, model %d", len(got), len(want))
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			return fmt.Errorf("affinity entry %+v: kernel %+v (present %v), model %+v", k, g, ok, w)
		}
	}
	limits := h.fake.Limits()
	for slot := range 1 + limits.MaxVIPs + limits.MaxBackends {
		g, err := h.kernel.Counters(slot)
		if err != nil {
			return err
		}
		w, _ := h.fake.Counters(slot)
		if g != w {
			return fmt.Errorf("counter slot %d: kernel %+v, model %+v", slot, g, w)
		}
	}
	return nil
}

// Fixture state shared by the tests.
var (
	vip4    = maps.VIPKey{Addr: netip.MustParseAddr("198.18.1.1"), Port: 80, Proto: maps.TCP}
	vip4UDP = maps.VIPKey{Addr: netip.MustParseAddr("198.18.1.1"), Port: 53, Proto: maps.UDP}
	vip6    = maps.VIPKey{Addr: netip.MustParseAddr("2001:db8:1::1"), Port: 80, Proto: maps.TCP}

	client4 = netip.MustParseAddr("198.18.0.10")
	client6 = netip.MustParseAddr("2001:db8::10")

	lbMAC      = [6]byte{0x02, 0, 0, 0, 0, 0xaa}
	clientMAC  = [6]byte{0x02, 0, 0, 0, 0, 0xcc}
	sourceMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xaa}
	backendIDs = []maps.BackendID{1, 2, 3, 4}
)

func backendMAC(id maps.BackendID) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xbe, 0, 0, 0, byte(id)}
}

const fixtureTableSize = 251

// setupFixture installs three VIPs, backends 1 and 2 up, 3 draining and 4
// down, Maglev tables over backends 1 and 2, and switches the datapath on.
func (h *harness) setupFixture() {
	h.t.Helper()
	table, err := maglev.Build([]maglev.Backend{{Name: "b1", ID: 1, Weight: 1}, {Name: "b2", ID: 2, Weight: 1}}, fixtureTableSize, 42)
	if err != nil {
		h.t.Fatal(err)
	}
	ids := make([]maps.BackendID, len(table))
	for i, id := range table {
		ids[i] = maps.BackendID(id)
	}
	states := map[maps.BackendID]maps.BackendState{1: maps.BackendUp, 2: maps.BackendUp, 3: maps.BackendDraining, 4: maps.BackendDown}
	h.apply(func(m maps.Maps) error {
		for i, key := range []maps.VIPKey{vip4, vip4UDP, vip6} {
			vip := maps.VIP{ID: uint32(i), AffinityTimeout: 120 * time.Second, Prefix4: 32, Prefix6: 64}
			if _, err := maps.InstallTable(m, key, vip, ids); err != nil {
				return err
			}
		}
		for _, id := range backendIDs {
			b := maps.Backend{MAC: backendMAC(id), SourceMAC: sourceMAC, Generation: 1, State: states[id],
				Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + id)})}
			if err := m.PutBackend(id, b); err != nil {
				return err
			}
		}
		return m.PutSettings(maps.Settings{Seed: 42, Active: true})
	})
}

// addRedirectPort makes a namespace holding the veth pair
// dpt-redir0/dpt-redir1, a real device for the devmap to point at, adds it
// as a tx port to both the kernel's maps and the model's, and returns its
// ifindex.
func (h *harness) addRedirectPort(t *testing.T) uint32 {
	ns := testenv.NewNetns(t, "tether-dpt-redirect")
	ns.MustExec(t, "ip link add dpt-redir0 type veth peer name dpt-redir1",
		"ip link set dpt-redir0 up", "ip link set dpt-redir1 up")
	var index uint32
	if err := ns.Do(func() error {
		var err error
		if index, err = ifindex("dpt-redir0"); err != nil {
			return err
		}
		// The devmap resolves the ifindex in the caller's namespace.
		return errorsJoin(h.kernel.PutTxPort(index), h.fake.PutTxPort(index))
	}); err != nil {
		t.Fatal(err)
	}
	return index
}

func ifindex(name string) (uint32, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("looking up %s: %w", name, err)
	}
	return uint32(iface.Index), nil
}

// putPins writes affinity entries in one order, the same for the kernel and
// the model, so that both evict the same ones from a full bucket. Pins to
// backend 0 are left out: an entry cannot name no backend.
func putPins(m maps.Maps, pins map[maps.AffinityKey]maps.Affinity) error {
	keys := make([]maps.AffinityKey, 0, len(pins))
	for key, a := range pins {
		if a.Backend != 0 {
			keys = append(keys, key)
		}
	}
	slices.SortFunc(keys, func(a, b maps.AffinityKey) int {
		return cmp.Or(cmp.Compare(a.VIPID, b.VIPID), bytes.Compare(a.Client[:], b.Client[:]))
	})
	for _, key := range keys {
		if err := m.PutAffinity(key, pins[key]); err != nil {
			return err
		}
	}
	return nil
}
