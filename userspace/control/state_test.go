package control

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

func loadSaved(t *testing.T, path string) State {
	t.Helper()
	s, found, err := LoadState(path)
	if err != nil || !found {
		t.Fatalf("loading state file %s: found %v, %v", path, found, err)
	}
	return s
}

func TestEveryChangeSavesTheState(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.json")
	tb := newTestBed(t, testLimits, statePath)
	if s := loadSaved(t, statePath); s.Seed != DefaultSeed || len(s.VIPs) != 0 {
		t.Errorf("state saved by Start is %+v, want the default seed and no VIPs", s)
	}
	v6 := mustRef(t, "[2001:db8::1]:443", "udp")
	check := health.Check{Kind: health.KindEngineIO, Path: "/sio/"}
	steps := []struct {
		name   string
		change func() error
	}{
		{"add VIP", func() error {
			v := NewVIP(webVIP)
			v.Check = health.Check{Kind: health.KindHTTP, Path: "/healthz"}
			return tb.daemon.AddVIP(t.Context(), v)
		}},
		{"add backend", func() error {
			return tb.daemon.AddBackend(t.Context(), webVIP, Backend{Name: "web-1", Addr: netip.MustParseAddr("10.0.0.1"), Weight: 1})
		}},
		{"add IPv6 VIP", func() error { return tb.daemon.AddVIP(t.Context(), NewVIP(v6)) }},
		{"add backend with everything", func() error {
			return tb.daemon.AddBackend(t.Context(), v6, Backend{Name: "v6-1", Addr: netip.MustParseAddr("2001:db8::10"), Port: 3000,
				MAC: "02:00:00:00:00:61", Weight: 7, Check: &check})
		}},
		{"drain", func() error { return tb.daemon.Drain(t.Context(), v6, "v6-1") }},
		{"weight", func() error { return tb.daemon.SetWeight(t.Context(), webVIP, "web-1", 4) }},
		{"remove backend", func() error { return tb.daemon.RemoveBackend(t.Context(), webVIP, "web-1") }},
	}
	var previous []byte
	for _, step := range steps {
		current, err := os.ReadFile(statePath)
		if err != nil {
			t.Fatal(err)
		}
		previous = current
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if s := loadSaved(t, statePath); !reflect.DeepEqual(s, tb.daemon.state) {
			t.Errorf("%s: saved state %+v, want the daemon's %+v", step.name, s, tb.daemon.state)
		}
	}

	// Saving replaces the file in one rename and keeps the last good copy.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"state.json", "state.json.prev"}) {
		t.Errorf("state directory holds %q, want only the state file and its previous copy", names)
	}
	if prev, err := os.ReadFile(statePath + ".prev"); err != nil || string(prev) != string(previous) {
		t.Errorf("state.json.prev is not the state before the last change (%v)", err)
	}
	if info, err := os.Stat(statePath); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v (%v), want 0600", info.Mode().Perm(), err)
	}
}

func TestLoadStateRejectsCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.json")
	if s, found, err := LoadState(missing); err != nil || found || s.Seed != DefaultSeed || len(s.VIPs) != 0 {
		t.Errorf("LoadState of a missing file = %+v, %v, %v; want an empty state with the default seed", s, found, err)
	}
	for name, content := range map[string]string{
		"truncated":     `{"seed": 1, "vips": [{"addr": "198.18.1.1:80"`,
		"unknown field": `{"seed": 1, "vips": [], "colour": "blue"}`,
		"wrong type":    `{"seed": "one", "vips": []}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadState(path)
			if err == nil {
				t.Fatalf("LoadState accepted %q", content)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), path+".prev") {
				t.Errorf("error %q names neither the file nor its .prev copy", err)
			}
		})
	}
}

func TestRestartKeepsIDsGenerationsAndTables(t *testing.T) {
	statePath := filepath.Join(t.TempDir(), "state.json")
	tb := newTestBed(t, testLimits, statePath)
	tb.addVIP(webVIP, func(v *VIP) { v.Check = health.Check{Kind: health.KindTCP} })
	api := mustRef(t, "198.18.1.2:80", "tcp")
	tb.addVIP(api, nil)
	tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
	tb.addBackend(webVIP, "web-2", "10.0.0.2", 2)
	tb.addBackend(webVIP, "web-3", "10.0.0.3", 1)
	tb.addBackend(api, "short-lived", "10.0.0.4", 1)
	if err := tb.daemon.RemoveBackend(t.Context(), api, "short-lived"); err != nil {
		t.Fatal(err)
	}
	tb.addBackend(api, "far", "10.0.1.4", 1) // reuses id 4 with generation 3
	tb.addBackend(webVIP, "web-5", "10.0.0.5", 1)
	if err := tb.daemon.Drain(t.Context(), webVIP, "web-3"); err != nil {
		t.Fatal(err)
	}
	tb.healthChange(tb.backendID(webVIP, "web-5"), health.Down, "test")
	tb.pinClients(50, 1, 2, 3)

	before := tb.snapshot()
	liveBefore := map[VIPRef][]maps.BackendID{webVIP: tb.liveTable(webVIP), api: tb.liveTable(api)}
	if entry := tb.backend(4); entry.Generation != 3 || entry.State != maps.BackendUp {
		t.Fatalf("reused backend id 4 is %+v, want up with generation 3", entry)
	}

	// Entries a lost state file would leave behind: a VIP with its alias
	// and clients, and a backend still in service.
	stray := maps.VIPKey{Addr: netip.MustParseAddr("198.18.9.9"), Port: 80, Proto: maps.TCP}
	strayInfo := maps.VIP{ID: 6, AffinityTimeout: DefaultAffinityTimeout, TableSize: 3, Prefix4: 32, Prefix6: 64}
	for _, key := range []maps.VIPKey{stray, maps.FragmentAlias(stray)} {
		if err := tb.maps.PutVIP(key, strayInfo); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.maps.PutAffinity(clientKey(6, 1), maps.Affinity{Backend: 20, Generation: 4, LastSeen: monotonicNow()}); err != nil {
		t.Fatal(err)
	}
	if err := tb.maps.PutBackend(20, maps.Backend{MAC: derivedMAC(netip.MustParseAddr("10.0.0.20")), Generation: 4, State: maps.BackendUp}); err != nil {
		t.Fatal(err)
	}

	tb.checker = newFakeChecker()
	tb.daemon = tb.start(loadSaved(t, statePath), statePath)

	for _, key := range []maps.VIPKey{stray, maps.FragmentAlias(stray)} {
		if _, err := tb.maps.VIP(key); err == nil {
			t.Errorf("VIP %s the state does not know is still in the datapath", key)
		}
	}
	if _, err := tb.maps.Affinity(clientKey(6, 1)); err == nil {
		t.Errorf("clients of the removed stray VIP are still pinned: a VIP given id 6 later would inherit them")
	}
	if entry := tb.backend(20); entry.State != maps.BackendDown || entry.Generation != 5 {
		t.Errorf("stray backend is %+v, want down with generation 5", entry)
	}
	before.backends[20] = tb.backend(20)

	// Clients do not move: the same ids, generations, states and tables.
	after := tb.snapshot()
	if !reflect.DeepEqual(after.backends, before.backends) {
		t.Errorf("backend entries changed across the restart:\nbefore %+v\nafter  %+v", before.backends, after.backends)
	}
	if !reflect.DeepEqual(after.affinities, before.affinities) {
		t.Errorf("affinity entries changed across the restart")
	}
	if !slices.Equal(after.txPorts, []uint32{otherIfindex}) {
		t.Errorf("tx ports after the restart: %v, want [%d]", after.txPorts, otherIfindex)
	}
	for ref, table := range liveBefore {
		info, infoBefore := tb.vip(ref), before.vips[ref.key()]
		if info.ID != infoBefore.ID {
			t.Errorf("VIP %s has id %d after the restart, want %d", ref, info.ID, infoBefore.ID)
		}
		if got := tb.liveTable(ref); !slices.Equal(got, table) {
			t.Errorf("live table of %s differs in %d slots after the restart", ref, changedSlots(table, got))
		}
	}
	for _, b := range before.status.VIPs[0].Backends {
		got := tb.backendStatus(webVIP, b.Name)
		if got.ID != b.ID || got.Generation != b.Generation || got.State != b.State || got.Drained != b.Drained {
			t.Errorf("backend %s after the restart: id %d, generation %d, %s; want id %d, generation %d, %s",
				b.Name, got.ID, got.Generation, got.State, b.ID, b.Generation, b.State)
		}
	}
	if call, ok := tb.checker.checked(backendCheckID(tb.backendID(webVIP, "web-5"))); !ok || call.initial != health.Down {
		t.Errorf("check of the backend that was down restarts as %+v (%v), want starting down", call, ok)
	}
	if call, ok := tb.checker.checked(backendCheckID(1)); !ok || call.initial != health.Up {
		t.Errorf("check of a backend in service restarts as %+v (%v), want starting up", call, ok)
	}
	if settings, err := tb.maps.Settings(); err != nil || !settings.Active || settings.Seed != DefaultSeed {
		t.Errorf("settings after the restart: %+v (%v), want active with the default seed", settings, err)
	}
}

func TestStartWithoutStateClearsTheDatapath(t *testing.T) {
	tb := newWebBed(t, nil)
	tb.pinClients(5, 1)
	tb.daemon = tb.start(State{}, "")

	if vips, err := tb.maps.VIPs(); err != nil || len(vips) != 0 {
		t.Errorf("VIP entries after starting with an empty state: %v (%v), want none", vips, err)
	}
	for id := maps.BackendID(1); id <= 3; id++ {
		if entry := tb.backend(id); entry.State.Usable() {
			t.Errorf("backend %d the state does not know is still %s", id, entry.State)
		}
	}
	if entries, err := tb.maps.Affinities(); err != nil || len(entries) != 0 {
		t.Errorf("%d clients of removed VIPs are still pinned (%v)", len(entries), err)
	}
}

func TestRestartWithoutCheckerTakesBackendsBackIntoService(t *testing.T) {
	tb := newWebBed(t, func(v *VIP) { v.Check = health.Check{Kind: health.KindTCP} })
	tb.healthChange(2, health.Down, "test")
	tableBefore := tb.liveTable(webVIP)

	d, err := New(Options{Maps: tb.maps, Resolver: tb.resolver, IngressIfindex: ingressIfindex}, cloneState(tb.daemon.state))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	tb.daemon = d
	if entry := tb.backend(2); entry.State != maps.BackendUp {
		t.Errorf("with no health checker nothing can ever bring backend 2 up, yet it stays %s", entry.State)
	}
	if st := tb.backendStatus(webVIP, "web-2"); st.Health != "unchecked" {
		t.Errorf("status shows health %q without a checker, want unchecked", st.Health)
	}
	if counts := shares(tb.liveTable(webVIP)); len(counts) != 3 || counts[0] != 0 {
		t.Errorf("table holds %v after the restart, want backends 1, 2 and 3 (before: %v)", counts, shares(tableBefore))
	}
}
