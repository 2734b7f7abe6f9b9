package control

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

var webVIP = VIPRef{Addr: netip.MustParseAddrPort("198.18.1.1:80"), Proto: "tcp"}

// newWebBed starts a daemon serving webVIP with web-1..web-3 at
// 10.0.0.1..10.0.0.3, weight 1 each.
func newWebBed(t *testing.T, tweak func(*VIP)) *testBed {
	t.Helper()
	tb := newTestBed(t, testLimits, "")
	tb.addVIP(webVIP, tweak)
	tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
	tb.addBackend(webVIP, "web-2", "10.0.0.2", 1)
	tb.addBackend(webVIP, "web-3", "10.0.0.3", 1)
	return tb
}

// honoured reports whether the datapath would follow a client's affinity
// entry: same generation as its backend, which is usable.
func (tb *testBed) honoured(a maps.Affinity) bool {
	entry := tb.backend(a.Backend)
	return entry.Generation == a.Generation && entry.State.Usable()
}

// pinClients writes count fresh affinity entries of webVIP's clients,
// spread over ids round-robin, as the datapath would have.
func (tb *testBed) pinClients(count int, ids ...maps.BackendID) {
	tb.t.Helper()
	vipID := tb.vip(webVIP).ID
	now := monotonicNow()
	for n := range count {
		id := ids[n%len(ids)]
		a := maps.Affinity{Backend: id, Generation: tb.backend(id).Generation, LastSeen: now}
		if err := tb.maps.PutAffinity(clientKey(vipID, n), a); err != nil {
			tb.t.Fatal(err)
		}
	}
}

func TestAddVIPAndBackendsWritesDefaultsAndEvenTable(t *testing.T) {
	tb := newTestBed(t, testLimits, "")
	tb.addVIP(webVIP, nil)

	want := maps.VIP{ID: 0, AffinityTimeout: 120 * time.Second, TableSize: 4099, Prefix4: 32, Prefix6: 64}
	if got := tb.vip(webVIP); got != want {
		t.Fatalf("VIP entry %+v, want %+v (defaults: /32, /64, 120s, largest prime <= stride, drop)", got, want)
	}
	if counts := shares(tb.liveTable(webVIP)); counts[0] != 4099 {
		t.Fatalf("table of a VIP without backends holds %v, want only zeros", counts)
	}

	tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
	tb.addBackend(webVIP, "web-2", "10.0.0.2", 1)
	tb.addBackend(webVIP, "web-3", "10.0.0.3", 1)
	for i, name := range []string{"web-1", "web-2", "web-3"} {
		id := maps.BackendID(i + 1)
		if got := tb.backendID(webVIP, name); got != id {
			t.Errorf("%s has id %d, want the lowest free id %d", name, got, id)
		}
		addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})
		entry := tb.backend(id)
		if entry.State != maps.BackendUp || entry.Addr != addr || entry.Ifindex != 0 || entry.Generation != 1 ||
			entry.MAC.String() != derivedMAC(addr).String() || entry.SourceMAC.String() != ingressMAC.String() {
			t.Errorf("entry of %s is %+v, want up, %s, MAC %s from %s, ifindex 0 (XDP_TX), generation 1",
				name, entry, addr, derivedMAC(addr), ingressMAC)
		}
	}
	table := tb.liveTable(webVIP)
	if counts := shares(table); len(counts) != 3 || counts[0] != 0 {
		t.Fatalf("table holds %v, want exactly backends 1, 2 and 3", counts)
	}
	for id := maps.BackendID(1); id <= 3; id++ {
		assertShare(t, table, id, 1.0/3)
	}
	if info := tb.vip(webVIP); info.NoBackendPass {
		t.Errorf("VIP entry %+v passes with no backend, want the default drop", info)
	}
}

func TestIDsAreLowestFree(t *testing.T) {
	tb := newTestBed(t, testLimits, "")
	refs := []VIPRef{mustRef(t, "198.18.1.1:80", "tcp"), mustRef(t, "198.18.1.2:80", "tcp"), mustRef(t, "198.18.1.3:80", "tcp")}
	for i, ref := range refs {
		tb.addVIP(ref, nil)
		tb.addBackend(ref, "web", netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}).String(), 1)
	}
	for i, ref := range refs {
		if id := tb.vip(ref).ID; id != uint32(i) {
			t.Errorf("VIP %s has id %d, want %d", ref, id, i)
		}
		if id := tb.backendID(ref, "web"); id != maps.BackendID(i+1) {
			t.Errorf("backend of %s has id %d, want %d", ref, id, i+1)
		}
	}
	if err := tb.daemon.RemoveVIP(t.Context(), refs[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.maps.VIP(refs[1].key()); err == nil {
		t.Fatalf("VIP %s is still in the datapath after RemoveVIP", refs[1])
	}
	replacement := mustRef(t, "198.18.1.4:80", "tcp")
	tb.addVIP(replacement, nil)
	tb.addBackend(replacement, "web", "10.0.0.4", 1)
	if id := tb.vip(replacement).ID; id != 1 {
		t.Errorf("new VIP has id %d, want the freed id 1", id)
	}
	if id := tb.backendID(replacement, "web"); id != 2 {
		t.Errorf("new backend has id %d, want the freed id 2", id)
	}
}

func TestRemoveVIPForgetsItsClients(t *testing.T) {
	tb := newWebBed(t, nil)
	other := mustRef(t, "198.18.1.2:80", "tcp")
	tb.addVIP(other, nil)
	tb.addBackend(other, "api-1", "10.0.0.11", 1)
	tb.pinClients(10, 1, 2, 3)
	otherClient := clientKey(tb.vip(other).ID, 0)
	if err := tb.maps.PutAffinity(otherClient, maps.Affinity{Backend: 4, Generation: 1, LastSeen: monotonicNow()}); err != nil {
		t.Fatal(err)
	}

	if err := tb.daemon.RemoveVIP(t.Context(), webVIP); err != nil {
		t.Fatal(err)
	}
	entries, err := tb.maps.Affinities()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := entries[otherClient]; len(entries) != 1 || !ok {
		t.Errorf("affinity entries after removing %s: %v, want only the other VIP's client", webVIP, entries)
	}
	for id := maps.BackendID(1); id <= 3; id++ {
		if entry := tb.backend(id); entry.State != maps.BackendDown || entry.Generation != 2 {
			t.Errorf("backend %d of the removed VIP is %+v, want down with generation 2", id, entry)
		}
	}
	if _, err := tb.maps.VIP(maps.FragmentAlias(webVIP.key())); err == nil {
		t.Errorf("fragment alias of the removed VIP is still in the datapath")
	}
}

func TestFragmentAliasFollowsSinglePortVIPs(t *testing.T) {
	tb := newWebBed(t, nil)
	alias := maps.FragmentAlias(webVIP.key())
	assertAlias := func(step string) {
		t.Helper()
		got, err := tb.maps.VIP(alias)
		if err != nil {
			t.Fatalf("%s: fragment alias %s: %v", step, alias, err)
		}
		if want := tb.vip(webVIP); got != want {
			t.Errorf("%s: fragment alias is %+v, want the VIP's entry %+v", step, got, want)
		}
	}
	assertAlias("one port")

	// The alias must follow every table swap, not only those of a change.
	tb.healthChange(2, health.Down, "test")
	assertAlias("after a health change")

	https := mustRef(t, "198.18.1.1:443", "tcp")
	tb.addVIP(https, nil)
	if _, err := tb.maps.VIP(alias); err == nil {
		t.Errorf("fragment alias %s still exists with two ports on the address", alias)
	}
	dns := mustRef(t, "198.18.1.1:53", "udp")
	tb.addVIP(dns, nil)
	if got, err := tb.maps.VIP(maps.FragmentAlias(dns.key())); err != nil || got != tb.vip(dns) {
		t.Errorf("UDP fragment alias is %+v (%v), want the UDP VIP's entry", got, err)
	}

	if err := tb.daemon.RemoveVIP(t.Context(), https); err != nil {
		t.Fatal(err)
	}
	assertAlias("second port removed")
}

func TestTableSwapNeverWritesTheLiveSlot(t *testing.T) {
	tb := newWebBed(t, nil)
	ctx := t.Context()
	steps := []struct {
		name   string
		change func() error
	}{
		{"add web-4", func() error {
			return tb.daemon.AddBackend(ctx, webVIP, Backend{Name: "web-4", Addr: netip.MustParseAddr("10.0.0.4"), Weight: 1})
		}},
		{"remove web-1", func() error { return tb.daemon.RemoveBackend(ctx, webVIP, "web-1") }},
		{"drain web-2", func() error { return tb.daemon.Drain(ctx, webVIP, "web-2") }},
		{"web-3 down", func() error { tb.healthChange(3, health.Down, "test"); return nil }},
		{"weight of web-4", func() error { return tb.daemon.SetWeight(ctx, webVIP, "web-4", 5) }},
	}
	for _, step := range steps {
		before := tb.vip(webVIP)
		live := tb.table(before.ID, before.TableSlot, before.TableSize)
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		after := tb.vip(webVIP)
		if after.TableSlot != before.TableSlot^1 {
			t.Errorf("%s: table slot %d, want the flip of %d", step.name, after.TableSlot, before.TableSlot)
		}
		if old := tb.table(before.ID, before.TableSlot, before.TableSize); !slices.Equal(old, live) {
			t.Errorf("%s: the slot that was live was written (%d entries differ)", step.name, changedSlots(live, old))
		}
		if slices.Equal(tb.liveTable(webVIP), live) {
			t.Errorf("%s: the live table did not change", step.name)
		}
	}

	before, version := tb.vip(webVIP), tb.vipStatus(webVIP).TableVersion
	if err := tb.daemon.SetWeight(ctx, webVIP, "web-4", 5); err != nil {
		t.Fatal(err)
	}
	if after := tb.vip(webVIP); after != before || tb.vipStatus(webVIP).TableVersion != version {
		t.Errorf("a change that leaves the table alone swapped it: %+v -> %+v", before, after)
	}
}

func TestAddingABackendMovesNoPinnedClient(t *testing.T) {
	tb := newWebBed(t, nil)
	tb.pinClients(300, 1, 2, 3)
	pinned, err := tb.maps.Affinities()
	if err != nil {
		t.Fatal(err)
	}
	entriesBefore := map[maps.BackendID]maps.Backend{1: tb.backend(1), 2: tb.backend(2), 3: tb.backend(3)}
	tableBefore := tb.liveTable(webVIP)

	tb.addBackend(webVIP, "web-4", "10.0.0.4", 1)

	after, err := tb.maps.Affinities()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(pinned) {
		t.Fatalf("%d affinity entries after adding a backend, want the %d pinned clients", len(after), len(pinned))
	}
	for key, a := range pinned {
		if after[key] != a {
			t.Fatalf("affinity entry of %v changed: %+v -> %+v", key, a, after[key])
		}
		if !tb.honoured(a) {
			t.Fatalf("client pinned to backend %d (%+v) would move: its entry is %+v", a.Backend, a, tb.backend(a.Backend))
		}
	}
	for id, entry := range entriesBefore {
		if got := tb.backend(id); got.Generation != entry.Generation || got.State != maps.BackendUp {
			t.Errorf("backend %d changed from %+v to %+v", id, entry, got)
		}
	}
	tableAfter := tb.liveTable(webVIP)
	if changed, limit := changedSlots(tableBefore, tableAfter), int((1.0/4+0.01)*float64(len(tableAfter))); changed > limit {
		t.Errorf("adding a fourth backend reassigned %d of %d slots, want at most %d (1/4 + 1%%)", changed, len(tableAfter), limit)
	}
	assertShare(t, tableAfter, 4, 1.0/4)
}

func TestRemoveBackendVoidsItsEntryAndReusesTheID(t *testing.T) {
	tb := newWebBed(t, func(v *VIP) { v.Check = health.Check{Kind: health.KindTCP} })
	tableBefore := tb.liveTable(webVIP)
	entriesBefore := map[maps.BackendID]maps.Backend{1: tb.backend(1), 2: tb.backend(2), 3: tb.backend(3)}
	if _, ok := tb.checker.checked("backend-2"); !ok {
		t.Fatalf("web-2 is not health checked")
	}

	if err := tb.daemon.RemoveBackend(t.Context(), webVIP, "web-2"); err != nil {
		t.Fatal(err)
	}
	removed := tb.backend(2)
	if removed.State != maps.BackendDown || removed.Generation != entriesBefore[2].Generation+1 {
		t.Errorf("removed backend's entry is %+v, want down with generation %d", removed, entriesBefore[2].Generation+1)
	}
	if _, ok := tb.checker.checked("backend-2"); ok {
		t.Errorf("removed backend is still health checked")
	}
	table := tb.liveTable(webVIP)
	if counts := shares(table); counts[2] != 0 || counts[0] != 0 {
		t.Errorf("table after removing backend 2 holds %v, want only backends 1 and 3", counts)
	}
	kept := 0
	for i, id := range tableBefore {
		if id != 2 && table[i] == id {
			kept++
		}
	}
	if others := len(table) - shares(tableBefore)[2]; kept < others*99/100 {
		t.Errorf("only %d of the %d slots of the remaining backends kept their backend", kept, others)
	}
	for _, id := range []maps.BackendID{1, 3} {
		if got := tb.backend(id); got.Generation != entriesBefore[id].Generation || got.State != maps.BackendUp {
			t.Errorf("backend %d changed from %+v to %+v", id, entriesBefore[id], got)
		}
	}

	tb.addBackend(webVIP, "web-5", "10.0.0.5", 1)
	if id := tb.backendID(webVIP, "web-5"); id != 2 {
		t.Fatalf("new backend has id %d, want the freed id 2", id)
	}
	reused := tb.backend(2)
	if reused.State != maps.BackendUp || reused.Generation <= removed.Generation {
		t.Errorf("reused id's entry is %+v, want up with a generation above %d", reused, removed.Generation)
	}
	stale := maps.Affinity{Backend: 2, Generation: entriesBefore[2].Generation, LastSeen: monotonicNow()}
	if tb.honoured(stale) {
		t.Errorf("a client of the removed backend would be sent to its successor")
	}
}

func TestHealthDownAndUp(t *testing.T) {
	tb := newWebBed(t, func(v *VIP) { v.Check = health.Check{Kind: health.KindTCP} })
	call, ok := tb.checker.checked("backend-2")
	if !ok || call.target != netip.MustParseAddrPort("10.0.0.2:80") || call.check.Kind != health.KindTCP || call.initial != health.Up {
		t.Fatalf("health check of web-2 is %+v (set: %v), want tcp to 10.0.0.2:80 starting up", call, ok)
	}
	tableBefore := tb.liveTable(webVIP)
	entriesBefore := map[maps.BackendID]maps.Backend{1: tb.backend(1), 2: tb.backend(2), 3: tb.backend(3)}

	unchanged := tb.snapshot()
	tb.daemon.HealthResult(health.Result{ID: "backend-2", State: health.Down, Changed: false})
	tb.daemon.HealthResult(health.Result{ID: "backend-9", State: health.Down, Changed: true})
	tb.assertUnchanged(unchanged)

	tb.healthChange(2, health.Down, "3 consecutive failures")
	down := tb.backend(2)
	if down.State != maps.BackendDown || down.Generation != entriesBefore[2].Generation+1 {
		t.Errorf("entry of the failed backend is %+v, want down with generation %d", down, entriesBefore[2].Generation+1)
	}
	if counts := shares(tb.liveTable(webVIP)); counts[2] != 0 || counts[0] != 0 {
		t.Errorf("table holds %v, want only backends 1 and 3", counts)
	}
	for _, id := range []maps.BackendID{1, 3} {
		if got := tb.backend(id); got.Generation != entriesBefore[id].Generation || got.State != maps.BackendUp {
			t.Errorf("backend %d changed from %+v to %+v", id, entriesBefore[id], got)
		}
	}
	st := tb.backendStatus(webVIP, "web-2")
	if st.State != "down" || st.Health != "down" || st.HealthNote != "3 consecutive failures" {
		t.Errorf("status of the failed backend: state %q, health %q, note %q", st.State, st.Health, st.HealthNote)
	}

	tb.healthChange(2, health.Up, "2 consecutive successes")
	if up := tb.backend(2); up.State != maps.BackendUp || up.Generation != down.Generation {
		t.Errorf("entry of the recovered backend is %+v, want up with generation %d", up, down.Generation)
	}
	if table := tb.liveTable(webVIP); !slices.Equal(table, tableBefore) {
		t.Errorf("table after recovery differs from the table before the failure in %d slots", changedSlots(tableBefore, table))
	}
}

func TestUncheckedBackendsAreNotProbed(t *testing.T) {
	tb := newWebBed(t, nil)
	for id := 1; id <= 3; id++ {
		if _, ok := tb.checker.checked(backendCheckID(maps.BackendID(id))); ok {
			t.Errorf("backend %d is probed though its VIP has no check", id)
		}
	}
	if st := tb.backendStatus(webVIP, "web-1"); st.Health != "unchecked" || st.State != "up" {
		t.Errorf("status of an unchecked backend: health %q, state %q", st.Health, st.State)
	}
	check := health.Check{Kind: health.KindHTTP, Port: 8080}
	if err := tb.daemon.AddBackend(t.Context(), webVIP, Backend{Name: "web-4", Addr: netip.MustParseAddr("10.0.0.4"), Weight: 1, Port: 3000, Check: &check}); err != nil {
		t.Fatal(err)
	}
	call, ok := tb.checker.checked("backend-4")
	if !ok || call.target != netip.MustParseAddrPort("10.0.0.4:3000") || call.check.Kind != health.KindHTTP || call.check.Path != "/" {
		t.Errorf("health check of web-4 is %+v (set: %v), want its own http check of 10.0.0.4:3000 with defaults", call, ok)
	}
}

func TestAllDownFailOpenKeepsForwarding(t *testing.T) {
	tb := newWebBed(t, func(v *VIP) { v.Check = health.Check{Kind: health.KindTCP} })
	tableBefore := tb.liveTable(webVIP)
	tb.healthChange(1, health.Down, "test")
	tb.healthChange(2, health.Down, "test")
	last := tb.backend(3)
	tb.healthChange(3, health.Down, "test")

	for id := maps.BackendID(1); id <= 3; id++ {
		if entry := tb.backend(id); entry.State != maps.BackendUp {
			t.Errorf("backend %d is %s while failing open, want up", id, entry.State)
		}
	}
	if entry := tb.backend(3); entry.Generation != last.Generation {
		t.Errorf("the last backend's generation moved from %d to %d: its clients would move", last.Generation, entry.Generation)
	}
	table := tb.liveTable(webVIP)
	if counts := shares(table); counts[0] != 0 {
		t.Errorf("table while failing open has %d empty slots", counts[0])
	}
	if !slices.Equal(table, tableBefore) {
		t.Errorf("table while failing open differs from the table of all backends in %d slots", changedSlots(tableBefore, table))
	}
	vs := tb.vipStatus(webVIP)
	if !vs.FailingOpen {
		t.Errorf("status does not say the VIP is failing open")
	}
	for _, b := range vs.Backends {
		if !b.FailingOpen || b.Health != "down" {
			t.Errorf("status of %s: failing open %v, health %q", b.Name, b.FailingOpen, b.Health)
		}
	}

	tb.healthChange(2, health.Up, "test")
	if tb.vipStatus(webVIP).FailingOpen {
		t.Errorf("status still says failing open with a backend up")
	}
	for id, want := range map[maps.BackendID]maps.BackendState{1: maps.BackendDown, 2: maps.BackendUp, 3: maps.BackendDown} {
		if entry := tb.backend(id); entry.State != want {
			t.Errorf("backend %d is %s after one recovered, want %s", id, entry.State, want)
		}
	}
	if counts := shares(tb.liveTable(webVIP)); len(counts) != 1 || counts[2] == 0 {
		t.Errorf("table holds %v, want only backend 2", counts)
	}
}

func TestAllDownFailClosedEmptiesTheTable(t *testing.T) {
	tb := newWebBed(t, func(v *VIP) { v.AllDown = AllDownFailClosed })
	for id := maps.BackendID(1); id <= 3; id++ {
		tb.healthChange(id, health.Down, "test")
	}
	for id := maps.BackendID(1); id <= 3; id++ {
		if entry := tb.backend(id); entry.State != maps.BackendDown {
			t.Errorf("backend %d is %s, want down", id, entry.State)
		}
	}
	if counts := shares(tb.liveTable(webVIP)); len(counts) != 1 || counts[0] == 0 {
		t.Errorf("table holds %v, want only zeros", counts)
	}
	if tb.vipStatus(webVIP).FailingOpen {
		t.Errorf("status says failing open with all_down fail-closed")
	}
}

func TestDrainKeepsPinnedClientsAndCountsThem(t *testing.T) {
	tb := newWebBed(t, nil)
	tableBefore := tb.liveTable(webVIP)
	vipID := tb.vip(webVIP).ID
	generation := tb.backend(2).Generation
	now := monotonicNow()
	entries := []struct {
		vipID    uint32
		backend  maps.BackendID
		gen      uint32
		lastSeen uint64
		counted  bool
	}{
		{vipID, 2, generation, now - uint64(time.Second), true},
		{vipID, 2, generation, now - uint64(119*time.Second), true},
		{vipID, 2, generation, now + uint64(time.Millisecond), true}, // refreshed on another CPU just now
		{vipID, 2, generation, now - uint64(121*time.Second), false}, // idle past the timeout
		{vipID, 2, generation - 1, now, false},                       // pinned to an earlier life of the id
		{vipID, 1, tb.backend(1).Generation, now, false},
		{vipID + 1, 2, generation, now, false},
	}
	for n, e := range entries {
		a := maps.Affinity{Backend: e.backend, Generation: e.gen, LastSeen: e.lastSeen}
		if err := tb.maps.PutAffinity(clientKey(e.vipID, n), a); err != nil {
			t.Fatal(err)
		}
	}

	if err := tb.daemon.Drain(t.Context(), webVIP, "web-2"); err != nil {
		t.Fatal(err)
	}
	if entry := tb.backend(2); entry.State != maps.BackendDraining || entry.Generation != generation {
		t.Errorf("drained backend's entry is %+v, want draining with generation %d", entry, generation)
	}
	if counts := shares(tb.liveTable(webVIP)); counts[2] != 0 || counts[0] != 0 {
		t.Errorf("table holds %v, want only backends 1 and 3", counts)
	}
	for n, e := range entries {
		if a, err := tb.maps.Affinity(clientKey(e.vipID, n)); err != nil || (e.counted && !tb.honoured(a)) {
			t.Errorf("client %d (%+v) lost its backend: %v", n, a, err)
		}
	}
	want := 3
	if pinned, err := tb.daemon.PinnedClients(webVIP, "web-2"); err != nil || pinned != want {
		t.Errorf("PinnedClients = %d, %v; want %d", pinned, err, want)
	}
	if st := tb.backendStatus(webVIP, "web-2"); st.Pinned != want || st.State != "draining" {
		t.Errorf("status of the drained backend: %d pinned, state %q; want %d, draining", st.Pinned, st.State, want)
	}

	if err := tb.daemon.Enable(t.Context(), webVIP, "web-2"); err != nil {
		t.Fatal(err)
	}
	if entry := tb.backend(2); entry.State != maps.BackendUp || entry.Generation != generation {
		t.Errorf("enabled backend's entry is %+v, want up with generation %d", entry, generation)
	}
	if table := tb.liveTable(webVIP); !slices.Equal(table, tableBefore) {
		t.Errorf("table after Enable differs from the table before Drain in %d slots", changedSlots(tableBefore, table))
	}

	if err := tb.daemon.Drain(t.Context(), webVIP, "web-2"); err != nil {
		t.Fatal(err)
	}
	tb.healthChange(2, health.Down, "test")
	if entry := tb.backend(2); entry.State != maps.BackendDown || entry.Generation != generation+1 {
		t.Errorf("draining backend that failed its checks is %+v, want down with generation %d", entry, generation+1)
	}
	if pinned, err := tb.daemon.PinnedClients(webVIP, "web-2"); err != nil || pinned != 0 {
		t.Errorf("PinnedClients of a dead backend = %d, %v; want 0", pinned, err)
	}
}

func TestSetWeightChangesShares(t *testing.T) {
	tb := newWebBed(t, nil)
	if err := tb.daemon.SetWeight(t.Context(), webVIP, "web-3", 2); err != nil {
		t.Fatal(err)
	}
	table := tb.liveTable(webVIP)
	assertShare(t, table, 1, 1.0/4)
	assertShare(t, table, 2, 1.0/4)
	assertShare(t, table, 3, 1.0/2)

	tb.pinClients(30, 3)
	generation := tb.backend(3).Generation
	if err := tb.daemon.SetWeight(t.Context(), webVIP, "web-3", 0); err != nil {
		t.Fatal(err)
	}
	table = tb.liveTable(webVIP)
	if counts := shares(table); counts[3] != 0 || counts[0] != 0 {
		t.Errorf("table holds %v, want no slot for the weight-0 backend", counts)
	}
	assertShare(t, table, 1, 1.0/2)
	if entry := tb.backend(3); entry.State != maps.BackendUp || entry.Generation != generation {
		t.Errorf("weight-0 backend's entry is %+v, want up with generation %d: its pinned clients stay", entry, generation)
	}
	if pinned, err := tb.daemon.PinnedClients(webVIP, "web-3"); err != nil || pinned != 30 {
		t.Errorf("PinnedClients of the weight-0 backend = %d, %v; want 30", pinned, err)
	}
}

func TestUnresolvedBackendIsOutUntilResolved(t *testing.T) {
	tb := newTestBed(t, testLimits, "")
	tb.addVIP(webVIP, nil)
	tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
	tb.addBackend(webVIP, "web-9", unresolvable.String(), 1)

	problems := tb.daemon.Problems(webVIP, "")
	if len(problems) != 1 || !strings.Contains(problems[0], "web-9") || !strings.Contains(problems[0], unresolvable.String()) {
		t.Errorf("Problems = %q, want one naming web-9 and %s", problems, unresolvable)
	}
	if entry := tb.backend(2); entry.State != maps.BackendDown {
		t.Errorf("unresolved backend's entry is %+v, want down", entry)
	}
	if counts := shares(tb.liveTable(webVIP)); len(counts) != 1 || counts[1] == 0 {
		t.Errorf("table holds %v, want only backend 1", counts)
	}
	if st := tb.backendStatus(webVIP, "web-9"); st.Problem == "" || st.State != "down" {
		t.Errorf("status of the unresolved backend: problem %q, state %q", st.Problem, st.State)
	}

	tb.resolver.setFailing(unresolvable, false)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tb.daemon.Maintain(ctx, time.Millisecond)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for tb.backend(2).State != maps.BackendUp && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done

	if entry := tb.backend(2); entry.State != maps.BackendUp || entry.MAC.String() != derivedMAC(unresolvable).String() {
		t.Fatalf("backend resolved by Maintain is %+v, want up with MAC %s", entry, derivedMAC(unresolvable))
	}
	if counts := shares(tb.liveTable(webVIP)); len(counts) != 2 || counts[2] == 0 {
		t.Errorf("table holds %v, want backends 1 and 2", counts)
	}
	if problems := tb.daemon.Problems(webVIP, ""); len(problems) != 0 {
		t.Errorf("Problems after resolution = %q, want none", problems)
	}
}

func TestHeartbeatRefreshesTheWatchdog(t *testing.T) {
	tb := newWebBed(t, nil)
	if err := tb.daemon.SetWatchdogTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	settings, err := tb.maps.Settings()
	if err != nil || settings.WatchdogTimeout != 5*time.Second {
		t.Fatalf("settings %+v (%v), want a 5s watchdog", settings, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tb.daemon.Heartbeat(ctx, time.Millisecond)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if after, _ := tb.maps.Settings(); after.Watchdog > settings.Watchdog {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if after, err := tb.maps.Settings(); err != nil || after.Watchdog <= settings.Watchdog || after.WatchdogTimeout != 5*time.Second {
		t.Errorf("settings after heartbeats %+v (%v), want the watchdog refreshed past %d and the timeout kept", after, err, settings.Watchdog)
	}
}

func TestNeighbourChangedRewritesTheMAC(t *testing.T) {
	tb := newWebBed(t, nil)
	override := "02:aa:00:00:00:01"
	if err := tb.daemon.AddBackend(t.Context(), webVIP, Backend{Name: "pinned-mac", Addr: netip.MustParseAddr("10.0.0.4"), Weight: 1, MAC: override}); err != nil {
		t.Fatal(err)
	}
	if entry := tb.backend(4); entry.MAC.String() != override {
		t.Fatalf("backend with a MAC override uses %s, want %s", entry.MAC, override)
	}
	tableBefore := tb.liveTable(webVIP)
	before := tb.backend(2)

	moved := net.HardwareAddr{0x02, 0xbb, 0, 0, 0, 0x02}
	tb.resolver.setMAC(netip.MustParseAddr("10.0.0.2"), moved)
	tb.daemon.NeighbourChanged(netip.MustParseAddr("10.0.0.2"), int(tb.backend(2).Ifindex), moved)
	tb.daemon.maintainOnce(t.Context())
	after := tb.backend(2)
	if after.MAC.String() != moved.String() || after.Generation != before.Generation || after.State != maps.BackendUp {
		t.Errorf("entry after the MAC change is %+v, want MAC %s, generation %d, up", after, moved, before.Generation)
	}
	if st := tb.backendStatus(webVIP, "web-2"); st.MACInUse != moved.String() {
		t.Errorf("status shows MAC %s in use, want %s", st.MACInUse, moved)
	}
	if table := tb.liveTable(webVIP); !slices.Equal(table, tableBefore) {
		t.Errorf("a MAC change moved %d table slots", changedSlots(tableBefore, table))
	}

	tb.resolver.setMAC(netip.MustParseAddr("10.0.0.4"), moved)
	tb.daemon.NeighbourChanged(netip.MustParseAddr("10.0.0.4"), 0, moved)
	tb.daemon.maintainOnce(t.Context())
	if entry := tb.backend(4); entry.MAC.String() != override {
		t.Errorf("neighbour change replaced the operator's MAC %s with %s", override, entry.MAC)
	}
}

func TestBackendsBehindAnotherInterfaceGetATxPort(t *testing.T) {
	tb := newTestBed(t, testLimits, "")
	tb.addVIP(webVIP, nil)
	tb.addBackend(webVIP, "near", "10.0.0.1", 1)
	tb.addBackend(webVIP, "far-1", "10.0.1.1", 1)
	tb.addBackend(webVIP, "far-2", "10.0.1.2", 1)

	if entry := tb.backend(1); entry.Ifindex != 0 || entry.SourceMAC.String() != ingressMAC.String() {
		t.Errorf("backend on the ingress interface: %+v, want ifindex 0 and source MAC %s", entry, ingressMAC)
	}
	for _, id := range []maps.BackendID{2, 3} {
		if entry := tb.backend(id); entry.Ifindex != otherIfindex || entry.SourceMAC.String() != otherMAC.String() {
			t.Errorf("backend %d behind interface %d: %+v, want that ifindex and source MAC %s", id, otherIfindex, entry, otherMAC)
		}
	}
	if !tb.maps.HasTxPort(otherIfindex) || tb.maps.HasTxPort(ingressIfindex) {
		t.Errorf("tx ports: %d %v, %d %v; want only %d", otherIfindex, tb.maps.HasTxPort(otherIfindex),
			ingressIfindex, tb.maps.HasTxPort(ingressIfindex), otherIfindex)
	}
	if st := tb.backendStatus(webVIP, "far-1"); st.Ifindex != otherIfindex {
		t.Errorf("status shows ifindex %d, want %d", st.Ifindex, otherIfindex)
	}

	if err := tb.daemon.RemoveBackend(t.Context(), webVIP, "far-1"); err != nil {
		t.Fatal(err)
	}
	if !tb.maps.HasTxPort(otherIfindex) {
		t.Errorf("tx port %d removed while far-2 still needs it", otherIfindex)
	}
	if err := tb.daemon.RemoveBackend(t.Context(), webVIP, "far-2"); err != nil {
		t.Fatal(err)
	}
	if tb.maps.HasTxPort(otherIfindex) {
		t.Errorf("tx port %d kept with no backend behind it", otherIfindex)
	}
}
