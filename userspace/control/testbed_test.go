package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

const (
	ingressIfindex = 2
	otherIfindex   = 3
)

// testLimits give every VIP a default table of 4099 slots (the largest
// prime not above the stride): big enough for share and disruption bounds
// of a percent, small enough to keep the tests fast.
var testLimits = maps.Limits{MaxVIPs: 8, TableStride: 4100, MaxBackends: 32, AffinityBuckets: 4096}

var (
	ingressMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
	otherMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfd}
	// Addresses in otherNet are reached through otherIfindex.
	otherNet = netip.MustParsePrefix("10.0.1.0/24")
	// unresolvable has no neighbour entry until the resolver is told.
	unresolvable = netip.MustParseAddr("10.0.9.9")
)

// fakeResolver gives every address a MAC made of its last four bytes, on
// the ingress interface, except addresses in otherNet (on otherIfindex)
// and addresses marked as failing.
type fakeResolver struct {
	mu      sync.Mutex
	failing map[netip.Addr]bool
	macs    map[netip.Addr]net.HardwareAddr // replaces the derived MAC
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{failing: map[netip.Addr]bool{unresolvable: true}, macs: map[netip.Addr]net.HardwareAddr{}}
}

func derivedMAC(addr netip.Addr) net.HardwareAddr {
	b := addr.As16()
	return net.HardwareAddr{0x02, 0x00, b[12], b[13], b[14], b[15]}
}

func (r *fakeResolver) Resolve(_ context.Context, addr netip.Addr, override net.HardwareAddr) (NextHop, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failing[addr] {
		return NextHop{}, fmt.Errorf("resolving %s: no neighbour entry", addr)
	}
	hop := NextHop{Ifindex: ingressIfindex, SourceMAC: slices.Clone(ingressMAC), MAC: derivedMAC(addr)}
	if otherNet.Contains(addr) {
		hop.Ifindex, hop.SourceMAC = otherIfindex, slices.Clone(otherMAC)
	}
	if mac, ok := r.macs[addr]; ok {
		hop.MAC = slices.Clone(mac)
	}
	if override != nil {
		hop.MAC = slices.Clone(override)
	}
	return hop, nil
}

func (r *fakeResolver) setFailing(addr netip.Addr, failing bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failing[addr] = failing
}

func (r *fakeResolver) setMAC(addr netip.Addr, mac net.HardwareAddr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.macs[addr] = mac
}

// checkCall is one Checker.Set call.
type checkCall struct {
	target  netip.AddrPort
	check   health.Check
	initial health.State
}

// fakeChecker records what the daemon asks it to check.
type fakeChecker struct {
	mu      sync.Mutex
	current map[string]checkCall
	removed []string
}

func newFakeChecker() *fakeChecker { return &fakeChecker{current: map[string]checkCall{}} }

func (c *fakeChecker) Set(id string, target netip.AddrPort, check health.Check, initial health.State) error {
	if initial != health.Up && initial != health.Down && initial != health.Unhealthy {
		return fmt.Errorf("initial state %s is none the scheduler accepts", initial)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current[id] = checkCall{target: target, check: check, initial: initial}
	return nil
}

func (c *fakeChecker) Remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.current, id)
	c.removed = append(c.removed, id)
}

func (c *fakeChecker) checked(id string) (checkCall, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	call, ok := c.current[id]
	return call, ok
}

// testBed is a started daemon over fake maps.
type testBed struct {
	t        testing.TB
	maps     *maps.Fake
	resolver *fakeResolver
	checker  *fakeChecker
	daemon   *Daemon
	now      func() time.Time // the daemon's clock; nil: time.Now
}

// newTestBed starts a daemon with an empty state over fresh fake maps.
func newTestBed(t testing.TB, limits maps.Limits, statePath string) *testBed {
	t.Helper()
	tb := &testBed{t: t, maps: maps.NewFake(limits), resolver: newFakeResolver(), checker: newFakeChecker()}
	tb.daemon = tb.start(State{}, statePath)
	return tb
}

// start builds and starts a daemon over the test bed's maps, as a restart
// of the daemon process would.
func (tb *testBed) start(state State, statePath string) *Daemon {
	tb.t.Helper()
	d, err := New(Options{
		Maps:           tb.maps,
		Resolver:       tb.resolver,
		Checker:        tb.checker,
		StatePath:      statePath,
		IngressIfindex: ingressIfindex,
		Now:            tb.now,
	}, state)
	if err != nil {
		tb.t.Fatalf("building daemon: %v", err)
	}
	if err := d.Start(tb.t.Context()); err != nil {
		tb.t.Fatalf("starting daemon: %v", err)
	}
	return d
}

func mustRef(t *testing.T, addrPort, proto string) VIPRef {
	t.Helper()
	return VIPRef{Addr: netip.MustParseAddrPort(addrPort), Proto: proto}
}

// addVIP adds a VIP with default settings, changed by tweak.
func (tb *testBed) addVIP(ref VIPRef, tweak func(*VIP)) {
	tb.t.Helper()
	v := NewVIP(ref)
	if tweak != nil {
		tweak(&v)
	}
	if err := tb.daemon.AddVIP(tb.t.Context(), v); err != nil {
		tb.t.Fatalf("adding VIP %s: %v", ref, err)
	}
}

func (tb *testBed) addBackend(ref VIPRef, name, addr string, weight uint32) {
	tb.t.Helper()
	b := Backend{Name: name, Addr: netip.MustParseAddr(addr), Weight: weight}
	if err := tb.daemon.AddBackend(tb.t.Context(), ref, b); err != nil {
		tb.t.Fatalf("adding backend %s to %s: %v", name, ref, err)
	}
}

// vip returns the datapath's entry of ref.
func (tb *testBed) vip(ref VIPRef) maps.VIP {
	tb.t.Helper()
	info, err := tb.maps.VIP(ref.key())
	if err != nil {
		tb.t.Fatalf("reading VIP %s: %v", ref, err)
	}
	return info
}

// liveTable returns the Maglev table the datapath uses for ref.
func (tb *testBed) liveTable(ref VIPRef) []maps.BackendID {
	tb.t.Helper()
	info := tb.vip(ref)
	return tb.table(info.ID, info.TableSlot, info.TableSize)
}

func (tb *testBed) table(vipID uint32, slot uint8, size uint32) []maps.BackendID {
	tb.t.Helper()
	table, err := tb.maps.Table(vipID, slot, size)
	if err != nil {
		tb.t.Fatalf("reading table slot %d of VIP id %d: %v", slot, vipID, err)
	}
	return table
}

func (tb *testBed) backend(id maps.BackendID) maps.Backend {
	tb.t.Helper()
	entry, err := tb.maps.Backend(id)
	if err != nil {
		tb.t.Fatalf("reading backend %d: %v", id, err)
	}
	return entry
}

// backendID returns the id the daemon gave a backend of ref.
func (tb *testBed) backendID(ref VIPRef, name string) maps.BackendID {
	tb.t.Helper()
	for _, b := range tb.backendStatuses(ref) {
		if b.Name == name {
			return b.ID
		}
	}
	tb.t.Fatalf("backend %s of %s not in status", name, ref)
	return 0
}

func (tb *testBed) status() Status {
	tb.t.Helper()
	st, err := tb.daemon.Status()
	if err != nil {
		tb.t.Fatalf("reading status: %v", err)
	}
	return st
}

func (tb *testBed) vipStatus(ref VIPRef) VIPStatus {
	tb.t.Helper()
	for _, v := range tb.status().VIPs {
		if v.VIPRef == ref {
			return v
		}
	}
	tb.t.Fatalf("VIP %s not in status", ref)
	return VIPStatus{}
}

func (tb *testBed) backendStatuses(ref VIPRef) []BackendStatus {
	tb.t.Helper()
	return tb.vipStatus(ref).Backends
}

func (tb *testBed) backendStatus(ref VIPRef, name string) BackendStatus {
	tb.t.Helper()
	for _, b := range tb.backendStatuses(ref) {
		if b.Name == name {
			return b
		}
	}
	tb.t.Fatalf("backend %s of %s not in status", name, ref)
	return BackendStatus{}
}

// healthChange reports a health transition of a backend as the scheduler
// would.
func (tb *testBed) healthChange(id maps.BackendID, state health.State, reason string) {
	tb.daemon.HealthResult(health.Result{ID: backendCheckID(id), State: state, Changed: true, Reason: reason})
}

// shares counts the table slots of each backend.
func shares(table []maps.BackendID) map[maps.BackendID]int {
	count := map[maps.BackendID]int{}
	for _, id := range table {
		count[id]++
	}
	return count
}

// changedSlots counts the slots whose backend differs.
func changedSlots(before, after []maps.BackendID) int {
	changed := 0
	for i := range before {
		if before[i] != after[i] {
			changed++
		}
	}
	return changed
}

// assertShare checks that id holds want of the table, within a percent.
func assertShare(t *testing.T, table []maps.BackendID, id maps.BackendID, want float64) {
	t.Helper()
	got := float64(shares(table)[id]) / float64(len(table))
	if got < want-0.01 || got > want+0.01 {
		t.Errorf("backend %d holds %.3f of the table, want %.3f ± 0.01", id, got, want)
	}
}

// snapshot is everything a failed call must leave as it was.
type snapshot struct {
	vips       map[maps.VIPKey]maps.VIP
	backends   map[maps.BackendID]maps.Backend
	tables     map[uint32][2][]maps.BackendID
	affinities map[maps.AffinityKey]maps.Affinity
	settings   maps.Settings
	txPorts    []uint32
	status     Status
}

func (tb *testBed) snapshot() snapshot {
	tb.t.Helper()
	s := snapshot{backends: map[maps.BackendID]maps.Backend{}, tables: map[uint32][2][]maps.BackendID{}, status: tb.status()}
	var err error
	if s.vips, err = tb.maps.VIPs(); err != nil {
		tb.t.Fatal(err)
	}
	limits := tb.maps.Limits()
	for id := maps.BackendID(1); uint32(id) < limits.MaxBackends; id++ {
		s.backends[id] = tb.backend(id)
	}
	// Only the tables of installed VIPs can be read by the datapath.
	for _, info := range s.vips {
		s.tables[info.ID] = [2][]maps.BackendID{
			tb.table(info.ID, 0, limits.TableStride),
			tb.table(info.ID, 1, limits.TableStride),
		}
	}
	if s.affinities, err = tb.maps.Affinities(); err != nil {
		tb.t.Fatal(err)
	}
	if s.settings, err = tb.maps.Settings(); err != nil {
		tb.t.Fatal(err)
	}
	for ifindex := uint32(0); ifindex < 16; ifindex++ {
		if tb.maps.HasTxPort(ifindex) {
			s.txPorts = append(s.txPorts, ifindex)
		}
	}
	return s
}

// assertUnchanged compares the maps and status with an earlier snapshot.
func (tb *testBed) assertUnchanged(before snapshot) {
	tb.t.Helper()
	tb.compareSnapshots(before, tb.snapshot())
}

func (tb *testBed) compareSnapshots(before, after snapshot) {
	tb.t.Helper()
	parts := []struct {
		name          string
		before, after any
		tooLongToShow bool
	}{
		{"VIP entries", before.vips, after.vips, false},
		{"backend entries", before.backends, after.backends, false},
		{"Maglev tables", before.tables, after.tables, true},
		{"affinity entries", before.affinities, after.affinities, false},
		{"settings", before.settings, after.settings, false},
		{"tx ports", before.txPorts, after.txPorts, false},
		{"status", before.status, after.status, false},
	}
	for _, part := range parts {
		switch {
		case reflect.DeepEqual(part.before, part.after):
		case part.tooLongToShow:
			tb.t.Errorf("%s changed", part.name)
		default:
			tb.t.Errorf("%s changed:\nbefore %+v\nafter  %+v", part.name, part.before, part.after)
		}
	}
}

// assertServingAsBefore is assertUnchanged for a change that reached the
// datapath and was rolled back: the rollback may have written the inactive
// table slots and counted table versions, which no client can tell.
func (tb *testBed) assertServingAsBefore(before snapshot) {
	tb.t.Helper()
	for _, info := range before.vips {
		live := before.tables[info.ID][info.TableSlot][:info.TableSize]
		current, err := tb.maps.VIP(tb.keyOf(before, info.ID))
		if err != nil {
			tb.t.Errorf("VIP id %d is gone: %v", info.ID, err)
			continue
		}
		if got := tb.table(current.ID, current.TableSlot, current.TableSize); !slices.Equal(got, live) {
			tb.t.Errorf("live table of VIP id %d differs in %d slots", info.ID, changedSlots(live, got))
		}
	}
	before.tables = nil
	for i := range before.status.VIPs {
		before.status.VIPs[i].TableVersion = 0
	}
	after := tb.snapshot()
	after.tables = nil
	for i := range after.status.VIPs {
		after.status.VIPs[i].TableVersion = 0
	}
	tb.compareSnapshots(before, after)
}

// keyOf returns the key of a VIP id, not its fragment alias.
func (tb *testBed) keyOf(s snapshot, id uint32) maps.VIPKey {
	for key, info := range s.vips {
		if info.ID == id && key.Port != 0 {
			return key
		}
	}
	return maps.VIPKey{}
}

// clientKey returns the affinity key of client number n of a VIP.
func clientKey(vipID uint32, n int) maps.AffinityKey {
	addr := netip.AddrFrom4([4]byte{192, 0, byte(n >> 8), byte(n)})
	return maps.AffinityKey{VIPID: vipID, Client: maps.ClientKey(addr, 32)}
}

func requireErrorIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one wrapping %v", err, target)
	}
}
