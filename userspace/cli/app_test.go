package cli_test

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	urfave "github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/cli"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
)

// commandPaths lists every command and subcommand of the app.
var commandPaths = [][]string{
	{"run"},
	{"vip"}, {"vip", "add"}, {"vip", "remove"}, {"vip", "list"},
	{"backend"}, {"backend", "add"}, {"backend", "remove"}, {"backend", "set"},
	{"backend", "drain"}, {"backend", "enable"}, {"backend", "list"},
	{"status"}, {"stats"}, {"detach"}, {"version"},
}

func TestCommandPathsListEveryCommand(t *testing.T) {
	var walk func(prefix []string, commands []*urfave.Command)
	var found [][]string
	walk = func(prefix []string, commands []*urfave.Command) {
		for _, c := range commands {
			path := append(slices.Clone(prefix), c.Name)
			found = append(found, path)
			walk(path, c.Subcommands)
		}
	}
	walk(nil, cli.App(&bytes.Buffer{}, &bytes.Buffer{}).Commands)
	for _, path := range found {
		if !slices.ContainsFunc(commandPaths, func(p []string) bool { return slices.Equal(p, path) }) {
			t.Errorf("command %q is not in commandPaths: add it and test it", path)
		}
	}
	if len(found) != len(commandPaths) {
		t.Errorf("the app has %d commands, commandPaths lists %d", len(found), len(commandPaths))
	}
}

func TestHelp(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	for _, path := range commandPaths {
		for _, flag := range []string{"--help", "-h"} {
			stdout, _, err := d.run(append(slices.Clone(path), flag)...)
			if err != nil {
				t.Errorf("tether %s %s: %v", strings.Join(path, " "), flag, err)
				continue
			}
			if want := "tether " + strings.Join(path, " "); !strings.Contains(stdout, want) || !strings.Contains(stdout, "USAGE") {
				t.Errorf("tether %s %s printed no usage of %q:\n%s", strings.Join(path, " "), flag, want, stdout)
			}
		}
	}
	stdout, _, err := d.run("--help")
	if err != nil || !strings.Contains(stdout, "USAGE") || !strings.Contains(stdout, "backend") {
		t.Errorf("tether --help: %v\n%s", err, stdout)
	}
}

// TestHelpAfterArguments checks --help works where flags follow positional
// arguments, and that "help" is a backend name like any other.
func TestHelpAfterArguments(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	stdout, _, err := d.run("backend", "add", "--vip", "198.18.1.1:80", "b1", "198.18.0.3", "--help")
	if err != nil || !strings.Contains(stdout, "tether backend add") {
		t.Errorf("backend add ... --help: %v\n%s", err, stdout)
	}
	d.mustRun("vip", "add", "198.18.1.1:80")
	d.mustRun("backend", "add", "--vip", "198.18.1.1:80", "help", "198.18.0.3")
	if got := d.backends("198.18.1.1:80"); len(got) != 1 || got[0].Name != "help" {
		t.Fatalf("backend named help: got %+v", got)
	}
	d.mustRun("backend", "remove", "--vip", "198.18.1.1:80", "help")
	if got := d.backends("198.18.1.1:80"); len(got) != 0 {
		t.Fatalf("backend named help was not removed: %+v", got)
	}
}

func TestVersion(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	if stdout := d.mustRun("version"); stdout != "tether "+cli.Version+"\n" {
		t.Errorf("version printed %q", stdout)
	}
}

func TestVIPAdd(t *testing.T) {
	// defaults is the VIP at addr as vip add without flags makes it, with
	// the first id.
	defaults := func(addr string) control.VIP {
		v := control.NewVIP(control.VIPRef{Addr: mustAddrPort(t, addr), Proto: "tcp"})
		v.ID = 0
		v.AffinityTimeout = control.DefaultAffinityTimeout
		v.TableSize = 257
		v.NoBackend, v.AllDown, v.Source = control.NoBackendDrop, control.AllDownFailOpen, control.SourceCLI
		v.SessionGrace, v.MassFailurePercent = control.DefaultSessionGrace, control.DefaultMassFailurePercent
		v.Check = health.Check{Kind: health.KindNone}.WithDefaults()
		return v
	}
	tests := []struct {
		args []string
		want func(*control.VIP)
	}{
		{[]string{"198.18.1.1:80"}, func(*control.VIP) {}},
		{[]string{"198.18.1.2:53", "--proto", "udp"}, func(v *control.VIP) { v.Proto = "udp" }},
		{[]string{"198.18.1.3:80", "--prefix4", "24"}, func(v *control.VIP) { v.Prefix4 = 24 }},
		{[]string{"--prefix6", "48", "198.18.1.4:80"}, func(v *control.VIP) { v.Prefix6 = 48 }},
		{[]string{"198.18.1.5:80", "--affinity-timeout", "90s"}, func(v *control.VIP) { v.AffinityTimeout = 90 * time.Second }},
		{[]string{"198.18.1.6:80", "--table-size", "251"}, func(v *control.VIP) { v.TableSize = 251 }},
		{[]string{"198.18.1.7:80", "--no-backend", "pass"}, func(v *control.VIP) { v.NoBackend = control.NoBackendPass }},
		{[]string{"[2001:db8:1::1]:443", "--all-down", "fail-closed"}, func(v *control.VIP) { v.AllDown = control.AllDownFailClosed }},
		{[]string{"198.18.1.10:80", "--session-grace", "2m", "--mass-failure-percent", "75"},
			func(v *control.VIP) { v.SessionGrace, v.MassFailurePercent = 2*time.Minute, 75 }},
		{[]string{"[2001:db8:1::2]:443", "--check", "http", "--check-path", "/health", "--check-interval", "1s",
			"--check-timeout", "500ms", "--check-rise", "3", "--check-fall", "2"},
			func(v *control.VIP) {
				v.Check = health.Check{Kind: health.KindHTTP, Path: "/health", Method: "GET", Status: 200,
					Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 3, Fall: 2}
			}},
		{[]string{"--check", "http", "--check-method", "head", "--check-status", "204", "--check-port", "8080", "198.18.1.8:80"},
			func(v *control.VIP) {
				v.Check = health.Check{Kind: health.KindHTTP, Path: "/", Method: "HEAD", Status: 204, Port: 8080}.WithDefaults()
			}},
		{[]string{"198.18.1.9:80", "--check", "engineio"},
			func(v *control.VIP) { v.Check = health.Check{Kind: health.KindEngineIO}.WithDefaults() }},
	}
	// Each VIP is removed after its check: the fake maps hold 8.
	d := startDaemon(t, os.Getgid())
	for _, test := range tests {
		stdout, stderr, err := d.run(append([]string{"vip", "add"}, test.args...)...)
		if err != nil || stdout != "" || stderr != "" {
			t.Fatalf("vip add %q: %v, stdout %q, stderr %q", test.args, err, stdout, stderr)
		}
		st := d.status()
		if len(st.VIPs) != 1 {
			t.Fatalf("vip add %q: %d VIPs, want 1", test.args, len(st.VIPs))
		}
		got := st.VIPs[0]
		want := defaults(got.Addr.String())
		test.want(&want)
		got.VIP.Backends = nil
		if !jsonEqual(t, got.VIP, want) {
			t.Errorf("vip add %q:\n got %s\nwant %s", test.args, toJSON(t, got.VIP), toJSON(t, want))
		}
		if got.TableVersion != 1 {
			t.Errorf("vip add %q: table version %d, want 1", test.args, got.TableVersion)
		}
		if !strings.Contains(d.stateFile(), got.Addr.String()) {
			t.Errorf("vip add %q: the state file does not hold the VIP:\n%s", test.args, d.stateFile())
		}
		table := d.mustRun("vip", "list")
		if !strings.HasPrefix(table, "VIP ") || !strings.Contains(table, got.Addr.String()) {
			t.Errorf("vip list after vip add %q:\n%s", test.args, table)
		}
		var listed []control.VIPStatus
		if err := json.Unmarshal([]byte(d.mustRun("vip", "list", "-o", "json")), &listed); err != nil || len(listed) != 1 {
			t.Errorf("vip list -o json: %d VIPs, %v", len(listed), err)
		}
		d.mustRun("vip", "remove", "--proto", got.Proto, got.Addr.String())
	}
}

func TestVIPRemove(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", "198.18.1.1:80")
	d.mustRun("vip", "add", "198.18.1.1:80", "--proto", "udp")
	d.mustRun("backend", "add", "--vip", "198.18.1.1:80", "b1", "198.18.0.3")
	d.mustRun("vip", "remove", "198.18.1.1:80")
	st := d.status()
	if len(st.VIPs) != 1 || st.VIPs[0].Proto != "udp" {
		t.Fatalf("after removing the tcp VIP: %s", toJSON(t, st.VIPs))
	}
	d.mustRun("vip", "remove", "--proto", "udp", "198.18.1.1:80")
	if st := d.status(); len(st.VIPs) != 0 {
		t.Fatalf("after removing both VIPs: %s", toJSON(t, st.VIPs))
	}
	if strings.Contains(d.stateFile(), "198.18.1.1") {
		t.Errorf("the state file still holds a removed VIP:\n%s", d.stateFile())
	}
}

func TestBackendLifecycle(t *testing.T) {
	const vip = "198.18.1.1:80"
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", vip)
	d.mustRun("backend", "add", "--vip", vip, "b1", "198.18.0.3", "--weight", "2")
	d.mustRun("backend", "add", "--weight", "3", "--mac", "02:00:00:00:aa:01", "--vip", vip, "b2", "198.18.0.4", "--port", "3000")
	d.mustRun("backend", "add", "b3", "--vip", vip, "2001:db8::3", "--check", "engineio", "--check-interval", "1s")

	backends := d.backends(vip)
	if len(backends) != 3 {
		t.Fatalf("backends: %s", toJSON(t, backends))
	}
	b1, b2, b3 := backends[0], backends[1], backends[2]
	if b1.Name != "b1" || b1.Addr.String() != "198.18.0.3" || b1.Weight != 2 || b1.State != "up" || b1.MACInUse != "02:00:00:00:00:02" {
		t.Errorf("b1: %s", toJSON(t, b1))
	}
	if b2.Weight != 3 || b2.MAC != "02:00:00:00:aa:01" || b2.MACInUse != "02:00:00:00:aa:01" || b2.Port != 3000 || b2.Check != nil {
		t.Errorf("b2: %s", toJSON(t, b2))
	}
	wantCheck := health.Check{Kind: health.KindEngineIO, Interval: time.Second}.WithDefaults()
	if b3.Weight != control.DefaultWeight || b3.Check == nil || *b3.Check != wantCheck {
		t.Errorf("b3: %s", toJSON(t, b3))
	}

	d.mustRun("backend", "set", "--vip", vip, "b1", "--weight", "7")
	if got := d.backends(vip)[0].Weight; got != 7 {
		t.Errorf("weight after set: %d, want 7", got)
	}
	d.mustRun("backend", "set", "--weight", "0", "--vip", vip, "b1")
	if got := d.backends(vip)[0].Weight; got != 0 {
		t.Errorf("weight after set 0: %d", got)
	}

	d.mustRun("backend", "drain", "--vip", vip, "b2")
	if b := d.backends(vip)[1]; b.State != "draining" || !b.Drained {
		t.Errorf("after drain: %s", toJSON(t, b))
	}
	if stdout := d.mustRun("backend", "drain", "--vip", vip, "b2", "--wait", "--timeout", "1s"); !strings.Contains(stdout, "b2 drained: no client pinned") {
		t.Errorf("drain --wait printed %q", stdout)
	}
	d.mustRun("backend", "enable", "--vip", vip, "b2")
	if b := d.backends(vip)[1]; b.State != "up" || b.Drained {
		t.Errorf("after enable: %s", toJSON(t, b))
	}

	table := d.mustRun("backend", "list")
	for _, want := range []string{"NAME", "b1", "b2", "b3", "198.18.0.4", "2001:db8::3", "02:00:00:00:aa:01"} {
		if !strings.Contains(table, want) {
			t.Errorf("backend list lacks %q:\n%s", want, table)
		}
	}
	var listed []control.BackendStatus
	if err := json.Unmarshal([]byte(d.mustRun("backend", "list", "--vip", vip, "-o", "json")), &listed); err != nil || len(listed) != 3 {
		t.Errorf("backend list -o json: %d backends, %v", len(listed), err)
	}

	d.mustRun("backend", "remove", "--vip", vip, "b1")
	if got := d.backends(vip); len(got) != 2 || got[0].Name != "b2" {
		t.Errorf("after remove: %s", toJSON(t, got))
	}
	d.mustRun("vip", "remove", vip)
	if st := d.status(); len(st.VIPs) != 0 {
		t.Errorf("after vip remove: %s", toJSON(t, st.VIPs))
	}
}

func TestBackendOfUDPVIP(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", "198.18.1.1:53", "--proto", "udp")
	d.mustRun("vip", "add", "198.18.1.1:53")
	d.mustRun("backend", "add", "--vip", "198.18.1.1:53", "--proto", "udp", "dns1", "198.18.0.3")
	st := d.status()
	if len(st.VIPs) != 2 || len(st.VIPs[0].Backends) != 1 || len(st.VIPs[1].Backends) != 0 {
		t.Fatalf("the backend went to the wrong VIP: %s", toJSON(t, st.VIPs))
	}
	stdout := d.mustRun("backend", "list", "--vip", "198.18.1.1:53", "--proto", "udp")
	if !strings.Contains(stdout, "dns1") || !strings.Contains(stdout, "198.18.1.1:53/udp") {
		t.Errorf("backend list of the udp VIP:\n%s", stdout)
	}
	if stdout := d.mustRun("backend", "list", "--vip", "198.18.1.1:53"); strings.Contains(stdout, "dns1") {
		t.Errorf("backend list of the tcp VIP shows the udp VIP's backend:\n%s", stdout)
	}
}

func TestUnresolvableBackendWarns(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", "198.18.1.1:80")
	stdout, stderr, err := d.run("backend", "add", "--vip", "198.18.1.1:80", "far", unresolvable.String())
	if err != nil {
		t.Fatalf("adding an unresolvable backend failed: %v", err)
	}
	if stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "warning: ") ||
		!strings.Contains(stderr, "far") || !strings.Contains(stderr, unresolvable.String()) {
		t.Errorf("want one warning line naming the backend, got stdout %q, stderr %q", stdout, stderr)
	}
	b := d.backends("198.18.1.1:80")[0]
	if b.State != "down" || b.Problem == "" {
		t.Errorf("unresolvable backend: %s", toJSON(t, b))
	}
	if table := d.mustRun("backend", "list"); !strings.Contains(table, "no neighbour entry") {
		t.Errorf("backend list does not say why far is down:\n%s", table)
	}
	d.mustRun("backend", "add", "--vip", "198.18.1.1:80", "near", "198.18.0.3")
	if _, stderr, _ := d.run("vip", "add", "198.18.1.2:80"); stderr != "" {
		t.Errorf("adding another VIP warned about the first one's backend: %q", stderr)
	}
}

// TestDrainWait checks drain --wait gives up after its timeout, naming the
// backend, while a client is pinned to it, and returns at once when none is.
func TestDrainWait(t *testing.T) {
	const vip = "198.18.1.1:80"
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", vip)
	d.mustRun("backend", "add", "--vip", vip, "b1", "198.18.0.3")
	d.mustRun("backend", "add", "--vip", vip, "b2", "198.18.0.4")
	st := d.status()
	if len(st.VIPs) != 1 || len(st.VIPs[0].Backends) != 2 {
		t.Fatalf("status: %s", toJSON(t, st.VIPs))
	}
	b1 := st.VIPs[0].Backends[0]
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		t.Fatal(err)
	}
	client := maps.AffinityKey{VIPID: st.VIPs[0].ID, Client: maps.ClientKey(netip.MustParseAddr("203.0.113.7"), 32)}
	if err := d.maps.PutAffinity(client, maps.Affinity{Backend: b1.ID, Generation: b1.Generation, LastSeen: uint64(now.Nano())}); err != nil {
		t.Fatal(err)
	}
	if pinned := d.backends(vip)[0].Pinned; pinned != 1 {
		t.Fatalf("status shows %d clients pinned to b1, want 1", pinned)
	}

	_, _, err := d.run("backend", "drain", "--vip", vip, "b1", "--wait", "--timeout", "1ns")
	if err == nil || !strings.Contains(err.Error(), "b1 still has 1 pinned client(s)") {
		t.Errorf("drain --wait with a pinned client: %v", err)
	}
	if b := d.backends(vip)[0]; b.State != "draining" || b.Pinned != 1 {
		t.Errorf("b1 after drain: %s", toJSON(t, b))
	}
	if stdout := d.mustRun("backend", "drain", "--vip", vip, "b2", "--wait"); stdout != "b2 drained: no client pinned\n" {
		t.Errorf("drain --wait of a backend without clients printed %q", stdout)
	}
}

func TestStatusTable(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", "198.18.1.1:80", "--table-size", "251")
	d.mustRun("backend", "add", "--vip", "198.18.1.1:80", "b1", "198.18.0.3")
	stdout := d.mustRun("status")
	for _, want := range []string{"interface    veth-test\n", "attach mode  generic\n", "program id   7\n", "seed         0x74657468\n",
		"198.18.1.1:80  tcp    251", "198.18.1.1:80/tcp  b1"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
	st := d.status()
	if st.Interface != "veth-test" || st.Mode != "generic" || st.Seed != control.DefaultSeed || len(st.VIPs) != 1 {
		t.Errorf("status -o json: %s", toJSON(t, st))
	}
}

func TestStats(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	d.mustRun("vip", "add", "198.18.1.1:80", "--table-size", "251")
	d.mustRun("backend", "add", "--vip", "198.18.1.1:80", "b1", "198.18.0.3")
	stdout := d.mustRun("stats")
	for _, want := range []string{"SCOPE", "affinity_entries"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stats lacks %q:\n%s", want, stdout)
		}
	}
	var st control.Stats
	if err := json.Unmarshal([]byte(d.mustRun("stats", "-o", "json")), &st); err != nil || len(st.VIPs) != 1 || len(st.VIPs[0].Backends) != 1 {
		t.Errorf("stats -o json: %+v, %v", st, err)
	}
	for _, bad := range [][]string{{"stats", "--interval", "1s"}, {"stats", "--watch", "--interval", "1ms"}, {"stats", "extra"}} {
		if _, _, err := d.run(bad...); err == nil {
			t.Errorf("tether %s succeeded", strings.Join(bad, " "))
		}
	}
}

func TestDetachRefusesWhileTheDaemonRuns(t *testing.T) {
	d := startDaemon(t, os.Getgid())
	_, _, err := d.run("detach", "--iface", "lo", "--bpffs", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("detach with the daemon running: %v, want a refusal saying to stop the daemon first", err)
	}
}

func TestControlSocketPermission(t *testing.T) {
	d := startDaemon(t, -1)
	_, _, err := d.run("status")
	if os.Geteuid() == 0 {
		if err != nil {
			t.Errorf("root was refused: %v", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("a non-root caller got %v, want permission denied", err)
	}
}

func TestDaemonNotRunning(t *testing.T) {
	var stdout, stderr bytes.Buffer
	socket := filepath.Join(t.TempDir(), "none.sock")
	err := cli.Run(cli.App(&stdout, &stderr), []string{"tether", "--socket", socket, "status"})
	if err == nil || !strings.Contains(err.Error(), "not running") || !strings.Contains(err.Error(), socket) {
		t.Errorf("status without a daemon: %v", err)
	}
}

func TestRunRefusesATakenMetricsPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	var stdout, stderr bytes.Buffer
	err = cli.Run(cli.App(&stdout, &stderr), []string{"tether", "--socket", filepath.Join(t.TempDir(), "s"), "run", "--iface", "lo",
		"--metrics-addr", addr, "--state-dir", t.TempDir(), "--bpffs", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("run with metrics port %s taken: %v, want a one-line error naming it", addr, err)
	}
}
