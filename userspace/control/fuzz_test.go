package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

// requireOneLine fails unless err reads as one non-empty line: the CLI
// prints errors as they are, after "tether: ".
func requireOneLine(t *testing.T, what string, err error) {
	t.Helper()
	if msg := err.Error(); msg == "" || strings.ContainsAny(msg, "\n\r") {
		t.Fatalf("%s: error is not one line: %q", what, msg)
	}
}

// fuzzLimits are small datapath limits: a config or API call that fits
// them costs little to apply.
var fuzzLimits = maps.Limits{MaxVIPs: 16, TableStride: 257, MaxBackends: 64, AffinityBuckets: 1024}

// FuzzParseConfig feeds any bytes to ParseConfig and Config.Merge, over an
// empty state and over one with CLI entries. Neither may panic; every
// error is one line; an accepted file keeps the CLI's entries and their
// ids, and the daemon starts with the merged state unless it exceeds the
// datapath's limits, which it then names.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		fullConfig,
		"",
		"seed: 7\n",
		"vips: []\n",
		"vips:\n  - vip: 198.18.1.1:80\n",
		"vips:\n  - vip: 198.18.1.1:80\n    backends:\n      - name: web-1\n        address: 10.0.0.1\n        weight: 0\n",
		"vips:\n  - vip: 198.18.1.1:80\n    table_size: 251\n    backends:\n      - {name: a, address: 10.0.0.1}\n      - {name: b, address: 10.0.0.2, drained: true}\n",
		"vips:\n  - vip: \"[2001:db8::1]:443\"\n    proto: UDP\n    prefix6: 48\n    check: {kind: engineio, path: /sio/}\n",
		"vips:\n  - vip: 198.18.2.1:80\n    backends:\n      - name: keep\n        address: 10.0.0.9\n",
		"vips:\n  - vip: 198.18.1.1:80\n    table_size: 65537\n",
		"vips:\n  - vip: 198.18.1.1:80\n    weight: 3\n",
		"vips:\n  - &v {vip: 198.18.1.1:80}\n  - *v\n",
		"vips:\n  - vip: 198.18.1.1:80\n    check:\n      kind: http\n      status: 99\n      rise: 1000\n",
		"vips: {vip: 198.18.1.1:80}\n",
		"seed: -1\n",
		"seed: 1\nseed: 2\n",
		"%YAML 1.2\n---\nvips: []\n...\n---\nseed: 3\n",
		"vips:\n  - vip: [\n",
		"\t- x",
	} {
		f.Add(seed)
	}
	cliVIP := VIPRef{Addr: netip.MustParseAddrPort("198.18.2.1:80"), Proto: "tcp"}
	f.Fuzz(func(t *testing.T, data string) {
		cfg, err := ParseConfig(strings.NewReader(data))
		if err != nil {
			requireOneLine(t, "ParseConfig", err)
			return
		}
		merged, err := cfg.Merge(State{Seed: DefaultSeed})
		if err != nil {
			requireOneLine(t, "Merge", err)
			return
		}
		startMerged(t, merged)

		base := baseStateWithCLIEntries(t, cliVIP)
		merged, err = cfg.Merge(base)
		if err != nil {
			t.Fatalf("the file merged into an empty state but not into one with CLI entries: %v", err)
		}
		kept, err := findVIP(&merged, cliVIP)
		if err != nil {
			t.Fatalf("merging dropped the CLI's VIP %s", cliVIP)
		}
		if kept.ID != base.VIPs[0].ID {
			t.Fatalf("merging changed the id of VIP %s from %d to %d", cliVIP, base.VIPs[0].ID, kept.ID)
		}
		backend, err := findBackend(kept, "cli-1")
		if err != nil {
			t.Fatalf("merging dropped the CLI's backend cli-1")
		}
		if backend.ID != base.VIPs[0].Backends[0].ID {
			t.Fatalf("merging changed the id of backend cli-1 from %d to %d", base.VIPs[0].Backends[0].ID, backend.ID)
		}
	})
}

// baseStateWithCLIEntries is the state of a daemon that serves one VIP
// with one backend, both added with the CLI.
func baseStateWithCLIEntries(t *testing.T, ref VIPRef) State {
	t.Helper()
	v := NewVIP(ref).withDefaults(fuzzLimits.TableStride)
	v.ID = 3
	v.Backends = []Backend{{Name: "cli-1", Addr: netip.MustParseAddr("10.0.9.1"), Weight: 1, Source: SourceCLI, ID: 5}}
	return State{Seed: DefaultSeed, VIPs: []VIP{v}}
}

// startMerged starts a daemon with a merged config over fake maps. It
// must start unless the file asks for more than the datapath holds: a
// table above the stride, more VIPs or backends than there are slots.
func startMerged(t *testing.T, merged State) {
	t.Helper()
	backends, largestTable := 0, uint32(0)
	for _, v := range merged.VIPs {
		backends += len(v.Backends)
		largestTable = max(largestTable, v.TableSize)
	}
	d, err := New(Options{Maps: maps.NewFake(fuzzLimits), Resolver: newFakeResolver(), IngressIfindex: ingressIfindex}, merged)
	if err == nil {
		err = d.Start(context.Background())
	}
	tooLarge := largestTable > fuzzLimits.TableStride || len(merged.VIPs) > int(fuzzLimits.MaxVIPs) ||
		backends >= int(fuzzLimits.MaxBackends)
	switch {
	case err != nil && !tooLarge:
		t.Fatalf("the daemon refused a config Merge accepted: %v", err)
	case err != nil:
		requireOneLine(t, "starting with a config beyond the datapath's limits", err)
	case tooLarge:
		t.Fatalf("the daemon started with %d VIPs, %d backends and a table of %d, beyond the limits %+v", len(merged.VIPs), backends, largestTable, fuzzLimits)
	}
}

// apiRoute is one call of the control API.
type apiRoute struct {
	method, path string
	changes      bool // a success changes the state
}

var apiRoutes = []apiRoute{
	{http.MethodPost, "/v1/vips", true},
	{http.MethodDelete, "/v1/vips", true},
	{http.MethodPost, "/v1/backends", true},
	{http.MethodDelete, "/v1/backends", true},
	{http.MethodPost, "/v1/backends/weight", true},
	{http.MethodPost, "/v1/backends/drain", true},
	{http.MethodPost, "/v1/backends/enable", true},
	{http.MethodPost, "/v1/backends/pinned", false},
	{http.MethodGet, "/v1/status", false},
	{http.MethodGet, "/v1/stats", false},
}

// apiFuzzBed is a daemon over fake maps serving its API on a unix socket,
// shared by the inputs of one fuzz process.
type apiFuzzBed struct {
	testBed
	base      State
	statePath string
	client    *http.Client
}

func newAPIFuzzBed(f *testing.F) *apiFuzzBed {
	dir := f.TempDir()
	bed := &apiFuzzBed{
		testBed:   testBed{maps: maps.NewFake(fuzzLimits), resolver: newFakeResolver(), checker: newFakeChecker()},
		statePath: filepath.Join(dir, "state.json"),
	}
	web := NewVIP(webVIP)
	web.Backends = []Backend{
		{Name: "web-1", Addr: netip.MustParseAddr("10.0.0.1"), Weight: 1},
		{Name: "web-2", Addr: netip.MustParseAddr("10.0.0.2"), Weight: 2},
		{Name: "far", Addr: netip.MustParseAddr("10.0.1.3"), Weight: 1, Drained: true},
	}
	udp := NewVIP(VIPRef{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Proto: "udp"})
	d, err := New(Options{Maps: bed.maps, Resolver: bed.resolver, Checker: bed.checker, StatePath: bed.statePath,
		IngressIfindex: ingressIfindex}, State{VIPs: []VIP{web, udp}})
	if err != nil {
		f.Fatal(err)
	}
	if err := d.Start(f.Context()); err != nil {
		f.Fatal(err)
	}
	bed.daemon, bed.base = d, cloneState(d.state)
	_, bed.client = serveAPI(f, d)
	return bed
}

// reset puts the daemon back to the state it started with.
func (bed *apiFuzzBed) reset() error {
	return bed.daemon.change(context.Background(), func(s *State) error {
		*s = cloneState(bed.base)
		return nil
	})
}

// call sends body to a route and returns the status and the reply.
func (bed *apiFuzzBed) call(route apiRoute, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(route.method, "http://tether"+route.path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("building request: %w", err)
	}
	resp, err := bed.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("calling %s %s: %w", route.method, route.path, err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("reading reply: %w", err)
	}
	return resp.StatusCode, reply, nil
}

// FuzzAPIRequests posts any body to every route of the control API of a
// daemon over fake maps. A call never panics the daemon and never answers
// 500: bad input is 400, 404 or 409, with a one-line error. A failed call
// changes nothing (maps, status, state file); a successful one leaves a
// state the datapath can serve: canonical protocols, one VIP per
// datapath key, valid addresses, every VIP installed under its id.
func FuzzAPIRequests(f *testing.F) {
	bed := newAPIFuzzBed(f)
	web := `{"addr":"198.18.1.1:80","proto":"tcp"}`
	// Seed bodies of each route, in apiRoutes order.
	for route, bodies := range [][]string{
		{`{"addr":"198.18.1.2:80","proto":"tcp"}`, `{"addr":"198.18.1.1:80"}`, `{"addr":"198.18.1.1:80","proto":"UDP"}`,
			`{"addr":"198.18.1.3:80","proto":"udp","prefix4":24,"prefix6":48,"affinity_timeout":5000000000,"table_size":251,` +
				`"no_backend":"pass","all_down":"fail-closed","check":{"Kind":"http","Path":"/healthz"},` +
				`"backends":[{"name":"a","addr":"10.0.0.5","weight":3},{"name":"b","addr":"10.0.0.6","mac":"02:00:00:00:00:06"}]}`,
			`{"addr":"[2001:db8::2]:80","table_size":4}`, `{"addr":"0.0.0.0:80"}`, `{}`, `null`, `[]`, `{"addr":1}`, ``},
		{web, `{"addr":"198.18.9.9:80","proto":"tcp"}`, `{"addr":"198.18.1.1:80","proto":"TCP"}`, `{}`},
		{`{"vip":` + web + `,"backend":{"name":"web-3","addr":"10.0.0.3","weight":1}}`,
			`{"vip":` + web + `,"backend":{"name":"web-4","weight":1}}`,
			`{"vip":` + web + `,"backend":{"name":"web-1","addr":"10.0.0.9"}}`,
			`{"vip":` + web + `,"backend":{"name":"web-5","addr":"10.0.0.2"}}`,
			`{"vip":` + web + `,"backend":{"name":"x","addr":"10.0.0.7","check":{"Kind":"tcp","Interval":1}}}`,
			`{"vip":` + web + `,"backend":{"name":"bad name","addr":"10.0.0.8"}}`,
			`{"vip":` + web + `,"backend":{"name":"w","addr":"10.0.0.8","weight":4294967295}}`,
			`{"vip":{"addr":"198.18.9.9:80","proto":"tcp"},"backend":{"name":"y","addr":"10.0.0.8"}}`},
		{`{"vip":` + web + `,"backend":{"name":"web-1"}}`, `{"vip":` + web + `,"backend":{"name":"nobody"}}`},
		{`{"vip":` + web + `,"backend":{"name":"web-2","weight":0}}`, `{"vip":` + web + `,"backend":{"name":"web-2","weight":10001}}`},
		{`{"vip":` + web + `,"backend":{"name":"web-1"}}`},
		{`{"vip":` + web + `,"backend":{"name":"far"}}`},
		{`{"vip":` + web + `,"backend":{"name":"web-1"}}`, `{"vip":{"addr":"[2001:db8::1]:443","proto":"udp"},"backend":{"name":"x"}}`},
		{``},
		{``},
	} {
		for _, body := range bodies {
			f.Add(uint8(route), []byte(body))
		}
	}
	changed := false
	f.Fuzz(func(t *testing.T, routeIndex uint8, body []byte) {
		bed.t = t
		if changed {
			if err := bed.reset(); err != nil {
				t.Fatalf("resetting the daemon: %v", err)
			}
			changed = false
		}
		route := apiRoutes[int(routeIndex)%len(apiRoutes)]
		before := bed.snapshot()
		savedBefore, err := os.ReadFile(bed.statePath)
		if err != nil {
			t.Fatal(err)
		}
		status, reply, err := bed.call(route, body)
		if err != nil {
			t.Fatal(err)
		}
		switch status {
		case http.StatusOK:
			changed = route.changes
			bed.requireServable()
			return
		case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict:
		default:
			t.Fatalf("%s %s %q: status %d, want 200, 400, 404 or 409: %s", route.method, route.path, body, status, reply)
		}
		var e errorReply
		if err := json.Unmarshal(reply, &e); err != nil {
			t.Fatalf("%s %s: error reply %q is not JSON: %v", route.method, route.path, reply, err)
		}
		if e.Error == "" || strings.ContainsAny(e.Error, "\n\r") {
			t.Fatalf("%s %s %q: error %q is not one line", route.method, route.path, body, e.Error)
		}
		bed.assertUnchanged(before)
		if saved, err := os.ReadFile(bed.statePath); err != nil || !bytes.Equal(saved, savedBefore) {
			t.Fatalf("%s %s %q failed with %d but changed the state file (%v)", route.method, route.path, body, status, err)
		}
	})
}

// requireServable checks the daemon's state after a successful call.
func (bed *apiFuzzBed) requireServable() {
	t := bed.t
	t.Helper()
	bed.daemon.mu.Lock()
	state := cloneState(bed.daemon.state)
	bed.daemon.mu.Unlock()
	keys := map[maps.VIPKey]VIPRef{}
	for _, v := range state.VIPs {
		if v.Proto != "tcp" && v.Proto != "udp" {
			t.Fatalf("VIP %s has protocol %q, want tcp or udp", v.VIPRef, v.Proto)
		}
		if !v.Addr.IsValid() || v.Addr.Port() == 0 {
			t.Fatalf("VIP %s has no address or port", v.VIPRef)
		}
		if other, ok := keys[v.key()]; ok {
			t.Fatalf("VIPs %s and %s share the datapath key %s", other, v.VIPRef, v.key())
		}
		keys[v.key()] = v.VIPRef
		info, err := bed.maps.VIP(v.key())
		if err != nil || info.ID != v.ID {
			t.Fatalf("VIP %s (id %d) is in the datapath as %+v (%v)", v.VIPRef, v.ID, info, err)
		}
		for _, b := range v.Backends {
			if !b.Addr.IsValid() {
				t.Fatalf("backend %s of %s has no address", b.Name, v.VIPRef)
			}
		}
	}
}

// FuzzParsers feeds any string to the parsers of addresses, MACs,
// protocols, names and check kinds. None may panic; errors are one line;
// an accepted value parses again from its canonical form to itself.
func FuzzParsers(f *testing.F) {
	for _, seed := range []string{
		"198.18.1.1:80", "[2001:db8::1]:443", "198.18.1.1", "198.18.1.1:0", "198.18.1.1:65536", "[::ffff:198.18.1.1]:80",
		"[fe80::1%eth0]:80", "0.0.0.0:80", "127.0.0.1:80", "224.0.0.1:80", "2001:db8::3", "::ffff:10.0.0.1",
		"02:00:00:00:00:01", "02-00-00-00-00-01", "0200.0000.0001", "01:00:5e:00:00:01", "00:00:00:00:00:00",
		"02:00:00:00:00:00:00:01", "tcp", "UDP", "", "sctp", "web-1", "a.b_c-d", "-x", strings.Repeat("n", 64),
		"http", " Engineio ", "none", "ping", "[fe80::1%\n]:80", "fe80::1%\x00",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ap, err := ParseVIPAddr(s); err != nil {
			requireOneLine(t, "ParseVIPAddr", err)
		} else {
			if ap.Port() == 0 || checkServiceAddr("VIP", ap.Addr()) != nil {
				t.Fatalf("ParseVIPAddr(%q) accepted %s", s, ap)
			}
			if again, err := ParseVIPAddr(ap.String()); err != nil || again != ap {
				t.Fatalf("ParseVIPAddr(%q) = %s, which parses as %s (%v)", s, ap, again, err)
			}
		}
		if a, err := ParseBackendAddr(s); err != nil {
			requireOneLine(t, "ParseBackendAddr", err)
		} else if again, err := ParseBackendAddr(a.String()); err != nil || again != a {
			t.Fatalf("ParseBackendAddr(%q) = %s, which parses as %s (%v)", s, a, again, err)
		}
		if mac, err := ParseMAC(s); err != nil {
			requireOneLine(t, "ParseMAC", err)
		} else {
			if len(mac) != 6 || mac[0]&1 != 0 || bytes.Equal(mac, make([]byte, 6)) {
				t.Fatalf("ParseMAC(%q) accepted %s", s, mac)
			}
			if again, err := ParseMAC(mac.String()); err != nil || !bytes.Equal(again, mac) {
				t.Fatalf("ParseMAC(%q) = %s, which parses as %s (%v)", s, mac, again, err)
			}
		}
		if proto, err := ParseProto(s); err != nil {
			requireOneLine(t, "ParseProto", err)
		} else if again, err := ParseProto(proto); (proto != "tcp" && proto != "udp") || err != nil || again != proto {
			t.Fatalf("ParseProto(%q) = %q, which parses as %q (%v)", s, proto, again, err)
		}
		if err := ValidateName(s); err != nil {
			requireOneLine(t, "ValidateName", err)
		} else if len(s) > 63 || !utf8.ValidString(s) || strings.ContainsAny(s, " /\n\x00") {
			t.Fatalf("ValidateName accepted %q", s)
		}
		if kind, err := health.ParseKind(s); err != nil {
			requireOneLine(t, "health.ParseKind", err)
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("health.ParseKind(%q): error %q does not name the value", s, err)
			}
		} else if again, err := health.ParseKind(string(kind)); err != nil || again != kind ||
			!slices.Contains([]health.Kind{health.KindTCP, health.KindHTTP, health.KindEngineIO, health.KindNone}, kind) {
			t.Fatalf("health.ParseKind(%q) = %q, which parses as %q (%v)", s, kind, again, err)
		}
	})
}
