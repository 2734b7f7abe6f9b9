package control

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

const fullConfig = `
seed: 1234
vips:
  - vip: 198.18.1.1:80
    proto: tcp
    prefix4: 24
    prefix6: 56
    affinity_timeout: 3m
    table_size: 1021
    no_backend: pass
    all_down: fail-closed
    session_grace: 90s
    mass_failure_percent: 60
    check:
      kind: http
      port: 8080
      path: /healthz
      method: head
      status: 204
      interval: 5s
      timeout: 2s
      rise: 3
      fall: 4
    backends:
      - name: web-1
        address: 10.0.0.1
        mac: 02:00:00:00:00:11
        weight: 3
        port: 3000
        drained: true
        check:
          kind: engineio
          path: /sio/
      - name: web-2
        address: 10.0.0.2
  - vip: "[2001:db8::1]:443"
    proto: udp
    backends:
      - name: v6
        address: 2001:db8::10
`

func TestParseConfigReadsEveryField(t *testing.T) {
	cfg, err := ParseConfig(strings.NewReader(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	merged, err := cfg.Merge(State{Seed: DefaultSeed})
	if err != nil {
		t.Fatal(err)
	}
	if merged.Seed != 1234 || len(merged.VIPs) != 2 {
		t.Fatalf("merged state has seed %d and %d VIPs, want 1234 and 2", merged.Seed, len(merged.VIPs))
	}
	web, v6 := merged.VIPs[0], merged.VIPs[1]
	wantCheck := health.Check{Kind: health.KindHTTP, Port: 8080, Path: "/healthz", Method: "HEAD", Status: 204,
		Interval: 5 * time.Second, Timeout: 2 * time.Second, Rise: 3, Fall: 4}
	if web.VIPRef != webVIP || web.Prefix4 != 24 || web.Prefix6 != 56 || web.AffinityTimeout != 3*time.Minute ||
		web.TableSize != 1021 || web.NoBackend != NoBackendPass || web.AllDown != AllDownFailClosed ||
		web.SessionGrace != 90*time.Second || web.MassFailurePercent != 60 ||
		web.Check != wantCheck || web.Source != SourceConfig || web.ID != unassignedVIP {
		t.Errorf("first VIP is %+v", web)
	}
	wantBackendCheck := health.Check{Kind: health.KindEngineIO, Path: "/sio/", Interval: health.DefaultInterval,
		Timeout: health.DefaultTimeout, Rise: health.DefaultRise, Fall: health.DefaultFall}
	web1 := Backend{Name: "web-1", Addr: netip.MustParseAddr("10.0.0.1"), Port: 3000, MAC: "02:00:00:00:00:11", Weight: 3,
		Check: &wantBackendCheck, Drained: true, Source: SourceConfig}
	web2 := Backend{Name: "web-2", Addr: netip.MustParseAddr("10.0.0.2"), Weight: DefaultWeight, Source: SourceConfig}
	if !reflect.DeepEqual(web.Backends, []Backend{web1, web2}) {
		t.Errorf("backends of the first VIP are %+v, want %+v and %+v", web.Backends, web1, web2)
	}
	if v6.VIPRef != mustRef(t, "[2001:db8::1]:443", "udp") || v6.Prefix4 != DefaultPrefix4 || v6.Prefix6 != DefaultPrefix6 ||
		len(v6.Backends) != 1 || v6.Backends[0].Addr != netip.MustParseAddr("2001:db8::10") {
		t.Errorf("second VIP is %+v", v6)
	}

	// The daemon installs it as written.
	tb := &testBed{t: t, maps: maps.NewFake(testLimits), resolver: newFakeResolver(), checker: newFakeChecker()}
	tb.daemon = tb.start(merged, "")
	want := maps.VIP{ID: 0, NoBackendPass: true, AffinityTimeout: 3 * time.Minute, TableSize: 1021, Prefix4: 24, Prefix6: 56}
	if got := tb.vip(webVIP); got != want {
		t.Errorf("VIP entry %+v, want %+v", got, want)
	}
	if entry := tb.backend(1); entry.State != maps.BackendDraining || entry.MAC.String() != "02:00:00:00:00:11" {
		t.Errorf("web-1's entry is %+v, want draining with the configured MAC", entry)
	}
	if settings, err := tb.maps.Settings(); err != nil || settings.Seed != 1234 {
		t.Errorf("datapath seed %d (%v), want 1234", settings.Seed, err)
	}
}

func TestParseConfigRejectsUnknownFields(t *testing.T) {
	_, err := ParseConfig(strings.NewReader("vips:\n  - vip: 198.18.1.1:80\n    weight: 3\n"))
	if err == nil || !strings.Contains(err.Error(), "weight") || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("error %v, want one naming the unknown field weight on line 3", err)
	}
	_, err = ParseConfig(strings.NewReader("vips:\n  - vip: 198.18.1.1:80\n    backends:\n      - name: a\n        port: 70000\n"))
	if err == nil || !strings.Contains(err.Error(), "70000") || !strings.Contains(err.Error(), "line 5") {
		t.Errorf("error %v, want one naming the port 70000 on line 5", err)
	}
}

func TestConfigErrorsNameValueAndPosition(t *testing.T) {
	const good = "198.18.1.1:80"
	vip := func(fields string) string {
		return "  - vip: " + good + "\n" + fields
	}
	backends := func(second string) string {
		return "    backends:\n      - name: a\n        address: 10.0.0.1\n      - name: b\n" + second
	}
	cases := []struct {
		name, yaml, where, value string
	}{
		{"VIP without port", "  - vip: 198.18.1.1\n", "vips[0]", "198.18.1.1"},
		{"VIP port 0", "  - vip: 198.18.1.1:0\n", "vips[0]", "198.18.1.1:0"},
		{"proto", vip("    proto: sctp\n"), "vips[0]", "sctp"},
		{"prefix4", vip("    prefix4: 40\n"), "vips[0]", "40"},
		{"prefix6", vip("    prefix6: 129\n"), "vips[0]", "129"},
		{"affinity timeout", vip("    affinity_timeout: soon\n"), "vips[0]", "soon"},
		{"long affinity timeout", vip("    affinity_timeout: 48h\n"), "vips[0]", "48h"},
		{"table size", vip("    table_size: 100\n"), "vips[0]", "100"},
		{"no_backend", vip("    no_backend: reject\n"), "vips[0]", "reject"},
		{"all_down", vip("    all_down: maybe\n"), "vips[0]", "maybe"},
		{"session grace", vip("    session_grace: later\n"), "vips[0]", "later"},
		{"long session grace", vip("    session_grace: 2h\n"), "vips[0]", "2h0m0s"},
		{"mass failure percent", vip("    mass_failure_percent: 150\n"), "vips[0]", "150"},
		{"VIP check interval", vip("    check:\n      kind: tcp\n      interval: -1s\n"), "vips[0]", "-1s"},
		{"VIP check kind", vip("    check:\n      kind: ping\n"), "vips[0]", "ping"},
		{"backend address", vip(backends("        address: 10.0.0\n")), "vips[0].backends[1]", "10.0.0"},
		{"backend MAC", vip(backends("        address: 10.0.0.2\n        mac: zz\n")), "vips[0].backends[1]", "zz"},
		{"backend weight", vip(backends("        address: 10.0.0.2\n        weight: 20000\n")), "vips[0].backends[1]", "20000"},
		{"backend check", vip(backends("        address: 10.0.0.2\n        check:\n          kind: http\n          status: 99\n")),
			"vips[0].backends[1]", "99"},
		{"duplicate backend name", vip("    backends:\n      - name: a\n        address: 10.0.0.1\n      - name: a\n        address: 10.0.0.2\n"),
			"vips[0]", `"a"`},
		{"duplicate backend address", vip(backends("        address: 10.0.0.1\n")), "vips[0]", "10.0.0.1"},
		{"second VIP", vip("") + "  - vip: 198.18.1.2:80\n    no_backend: reject\n", "vips[1]", "reject"},
		{"duplicate VIP", vip("") + vip(""), "vips[1]", good},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig(strings.NewReader("vips:\n" + tc.yaml))
			if err != nil {
				t.Fatalf("parsing: %v", err)
			}
			_, err = cfg.Merge(State{Seed: DefaultSeed})
			if err == nil {
				t.Fatalf("config accepted:\n%s", tc.yaml)
			}
			if !strings.HasPrefix(err.Error(), tc.where+":") || !strings.Contains(err.Error(), tc.value) {
				t.Errorf("error %q, want one starting with %s and naming %s", err, tc.where, tc.value)
			}
		})
	}
}

func writeConfig(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fileBackends declares backends name=address, weight 1 unless given.
func fileBackends(backends ...string) string {
	var b strings.Builder
	b.WriteString("    backends:\n")
	for _, spec := range backends {
		name, rest, _ := strings.Cut(spec, "=")
		addr, weight, _ := strings.Cut(rest, "@")
		fmt.Fprintf(&b, "      - name: %s\n        address: %s\n", name, addr)
		if weight != "" {
			fmt.Fprintf(&b, "        weight: %s\n", weight)
		}
	}
	return b.String()
}

func TestReloadConfigMergesTheFile(t *testing.T) {
	dir := t.TempDir()
	configPath := filepath.Join(dir, "tether.yaml")
	statePath := filepath.Join(dir, "state.json")
	writeConfig(t, configPath, "vips:\n"+
		"  - vip: 198.18.1.1:80\n"+fileBackends("f-1=10.0.0.1", "f-2=10.0.0.2", "f-3=10.0.0.3")+
		"  - vip: 198.18.1.2:80\n"+fileBackends("f-b=10.0.0.20"))
	merged, err := MergeConfigFile(State{Seed: DefaultSeed}, configPath)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBed{t: t, maps: maps.NewFake(testLimits), resolver: newFakeResolver(), checker: newFakeChecker()}
	tb.daemon = tb.start(merged, statePath)
	cliVIP := mustRef(t, "198.18.2.1:80", "tcp")
	tb.addVIP(cliVIP, nil)
	tb.addBackend(cliVIP, "cli-1", "10.0.0.30", 1)
	tb.addBackend(webVIP, "cli-a", "10.0.0.40", 1)
	fileVIP := mustRef(t, "198.18.1.2:80", "tcp")
	ids := map[string]maps.BackendID{}
	for _, v := range tb.status().VIPs {
		for _, b := range v.Backends {
			ids[b.Name] = b.ID
		}
	}
	webID := tb.vip(webVIP).ID
	removedEntry := tb.backend(ids["f-3"])

	// The file changes f-1's weight, drops f-3 and the second VIP, adds
	// f-4 and a new VIP, and leaves out the table size and every other
	// default, as most files do.
	writeConfig(t, configPath, "vips:\n"+
		"  - vip: 198.18.1.1:80\n"+fileBackends("f-1=10.0.0.1@5", "f-2=10.0.0.2", "f-4=10.0.0.4")+
		"  - vip: 198.18.1.3:80\n"+fileBackends("f-c=10.0.0.50"))
	if err := tb.daemon.ReloadConfig(t.Context(), configPath); err != nil {
		t.Fatalf("reloading the config: %v", err)
	}

	if id := tb.vip(webVIP).ID; id != webID {
		t.Errorf("VIP kept in the file has id %d, want %d", id, webID)
	}
	want := map[string]struct {
		weight uint32
		source string
	}{"f-1": {5, SourceConfig}, "f-2": {1, SourceConfig}, "cli-a": {1, SourceCLI}, "f-4": {1, SourceConfig}}
	got := tb.backendStatuses(webVIP)
	if len(got) != len(want) {
		t.Errorf("backends of %s after the reload: %+v, want %v", webVIP, got, want)
	}
	for _, b := range got {
		w, ok := want[b.Name]
		if !ok || b.Weight != w.weight || b.Source != w.source {
			t.Errorf("backend %s: weight %d, source %s; want %+v", b.Name, b.Weight, b.Source, w)
		}
		if id, existed := ids[b.Name]; existed && b.ID != id {
			t.Errorf("backend %s has id %d after the reload, want %d", b.Name, b.ID, id)
		}
	}
	if f4 := tb.backendStatus(webVIP, "f-4"); f4.ID == ids["f-3"] {
		t.Errorf("f-4 took the id of f-3, removed in the same reload: f-3's clients would follow it")
	}
	if entry := tb.backend(ids["f-3"]); entry.State != maps.BackendDown || entry.Generation <= removedEntry.Generation {
		t.Errorf("backend removed from the file is %+v, want down with a new generation", entry)
	}
	if _, err := tb.maps.VIP(fileVIP.key()); err == nil {
		t.Errorf("VIP removed from the file is still in the datapath")
	}
	if got := tb.backendStatuses(cliVIP); len(got) != 1 || got[0].ID != ids["cli-1"] {
		t.Errorf("VIP added with the CLI has %+v after the reload, want cli-1 unchanged", got)
	}
	newVIP := mustRef(t, "198.18.1.3:80", "tcp")
	if info := tb.vip(newVIP); info.TableSize != 4099 || info.AffinityTimeout != DefaultAffinityTimeout {
		t.Errorf("VIP added by the file is %+v, want the default table size and timeout", info)
	}
	if s := loadSaved(t, statePath); !reflect.DeepEqual(s, tb.daemon.state) {
		t.Errorf("saved state after the reload is not the daemon's")
	}

	// A file with a good change and a bad value changes nothing.
	for name, bad := range map[string]string{
		"bad value":          "  - vip: 198.18.1.3:80\n    table_size: 4\n",
		"table too large":    "  - vip: 198.18.1.3:80\n    table_size: 4111\n",
		"not YAML":           "  - vip: [\n",
		"duplicate backends": "  - vip: 198.18.1.3:80\n" + fileBackends("x=10.0.0.60", "y=10.0.0.60"),
	} {
		t.Run(name, func(t *testing.T) {
			before := tb.snapshot()
			saved, err := os.ReadFile(statePath)
			if err != nil {
				t.Fatal(err)
			}
			writeConfig(t, configPath, "vips:\n"+
				"  - vip: 198.18.1.1:80\n"+fileBackends("f-1=10.0.0.1@7", "f-2=10.0.0.2", "f-4=10.0.0.4")+bad)
			if err := tb.daemon.ReloadConfig(t.Context(), configPath); err == nil {
				t.Fatalf("reload accepted a file with a %s", name)
			}
			tb.assertUnchanged(before)
			if after, err := os.ReadFile(statePath); err != nil || string(after) != string(saved) {
				t.Errorf("state file changed (%v)", err)
			}
		})
	}
}

func TestReloadConfigWithNewSeedReachesTheDatapath(t *testing.T) {
	configPath := filepath.Join(t.TempDir(), "tether.yaml")
	writeConfig(t, configPath, "vips:\n  - vip: 198.18.1.1:80\n"+fileBackends("a=10.0.0.1", "b=10.0.0.2"))
	tb := newTestBed(t, testLimits, "")
	if err := tb.daemon.ReloadConfig(t.Context(), configPath); err != nil {
		t.Fatal(err)
	}
	tableBefore := tb.liveTable(webVIP)
	writeConfig(t, configPath, "seed: 99\nvips:\n  - vip: 198.18.1.1:80\n"+fileBackends("a=10.0.0.1", "b=10.0.0.2"))
	if err := tb.daemon.ReloadConfig(t.Context(), configPath); err != nil {
		t.Fatal(err)
	}
	if settings, err := tb.maps.Settings(); err != nil || settings.Seed != 99 {
		t.Errorf("datapath hashes clients with seed %d (%v) after the reload, want 99 like the tables", settings.Seed, err)
	}
	if tb.status().Seed != 99 {
		t.Errorf("status shows seed %d, want 99", tb.status().Seed)
	}
	if changedSlots(tableBefore, tb.liveTable(webVIP)) == 0 {
		t.Errorf("table unchanged by a new seed")
	}
}

func TestConfigSeedZeroIsRefused(t *testing.T) {
	cfg, err := ParseConfig(strings.NewReader("seed: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Merge(State{Seed: DefaultSeed}); err == nil || !strings.Contains(err.Error(), "seed 0") {
		t.Fatalf("merging seed 0: %v, want an error naming it", err)
	}
}

// TestReloadRefusesWhatLooksLikeAMistake: a reload of an empty, comment-only
// or cut-short file would remove every VIP the file declared; it is refused
// and changes nothing, while "vips: []" says it is meant. A second YAML
// document, a FIFO and a device are refused too.
func TestReloadRefusesWhatLooksLikeAMistake(t *testing.T) {
	dir := t.TempDir()
	configPath := filepath.Join(dir, "tether.yaml")
	writeConfig(t, configPath, "vips:\n  - vip: 198.18.1.1:80\n"+fileBackends("f-1=10.0.0.1"))
	merged, err := MergeConfigFile(State{Seed: DefaultSeed}, configPath)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBed{t: t, maps: maps.NewFake(testLimits), resolver: newFakeResolver(), checker: newFakeChecker()}
	tb.daemon = tb.start(merged, filepath.Join(dir, "state.json"))
	before := tb.snapshot()
	for name, text := range map[string]string{
		"empty":             "",
		"only comments":     "# tether\n# nothing yet\n",
		"cut short":         "seed: 1952805992\n",
		"a second document": "vips:\n  - vip: 198.18.1.1:80\n" + fileBackends("f-1=10.0.0.1") + "---\nvips: []\n",
	} {
		writeConfig(t, configPath, text)
		if err := tb.daemon.ReloadConfig(t.Context(), configPath); err == nil {
			t.Fatalf("reloading a config file that is %s succeeded", name)
		}
		tb.assertUnchanged(before)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, "/dev/zero"} {
		if err := tb.daemon.ReloadConfig(t.Context(), path); err == nil || !strings.Contains(err.Error(), "expected a regular file") {
			t.Fatalf("reloading %s: %v, want a refusal", path, err)
		}
	}
	writeConfig(t, configPath, "vips: []\n")
	if err := tb.daemon.ReloadConfig(t.Context(), configPath); err != nil {
		t.Fatalf("reloading an explicitly empty list: %v", err)
	}
	if n := len(tb.status().VIPs); n != 0 {
		t.Fatalf("%d VIPs left after \"vips: []\"", n)
	}
}
