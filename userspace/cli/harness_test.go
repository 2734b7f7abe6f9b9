package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/cli"
	"github.com/tether-lb/tether/userspace/control"
)

// unresolvable is the one backend address the fake resolver cannot reach.
var unresolvable = netip.MustParseAddr("198.18.0.99")

const ingressIfindex = 2

// fakeResolver resolves every address to fixed MACs on the ingress
// interface, except unresolvable.
type fakeResolver struct{}

func (fakeResolver) Resolve(_ context.Context, addr netip.Addr, override net.HardwareAddr) (control.NextHop, error) {
	if addr == unresolvable {
		return control.NextHop{}, errors.New("no neighbour entry")
	}
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	if override != nil {
		mac = override
	}
	return control.NextHop{Ifindex: ingressIfindex, SourceMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}, MAC: mac}, nil
}

// daemon is an in-process tether daemon over fake maps, serving its
// control socket in a temporary directory.
type daemon struct {
	t         *testing.T
	maps      *maps.Fake
	socket    string
	statePath string
}

func startDaemon(t *testing.T, allowGID int) *daemon {
	t.Helper()
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state", "state.json")
	fake := maps.NewFake(maps.Limits{MaxVIPs: 8, TableStride: 257, MaxBackends: 64, AffinityBuckets: 1024})
	d, err := control.New(control.Options{
		Maps:           fake,
		Resolver:       fakeResolver{},
		StatePath:      statePath,
		IngressIfindex: ingressIfindex,
	}, control.State{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	d.SetDatapathInfo(control.DatapathInfo{Interface: "veth-test", Mode: "generic", ProgramID: 7})
	server := control.NewServer(d, slog.New(slog.DiscardHandler), allowGID)
	socket := filepath.Join(dir, "run", "tether.sock")
	ln, err := control.Listen(socket, allowGID)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serving the control API: %v", err)
		}
	})
	return &daemon{t: t, maps: fake, socket: socket, statePath: statePath}
}

// run runs the tether command line against the daemon, as main does.
func (d *daemon) run(args ...string) (stdout, stderr string, err error) {
	d.t.Helper()
	var out, errOut bytes.Buffer
	err = cli.Run(cli.App(&out, &errOut), append([]string{"tether", "--socket", d.socket}, args...))
	return out.String(), errOut.String(), err
}

// mustRun runs a command that must succeed and returns its stdout.
func (d *daemon) mustRun(args ...string) string {
	d.t.Helper()
	stdout, stderr, err := d.run(args...)
	if err != nil {
		d.t.Fatalf("tether %q: %v\nstderr: %s", args, err, stderr)
	}
	return stdout
}

// statusJSON is the output of status -o json.
func (d *daemon) statusJSON() string {
	d.t.Helper()
	return d.mustRun("status", "-o", "json")
}

func (d *daemon) status() control.Status {
	d.t.Helper()
	var st control.Status
	if err := json.Unmarshal([]byte(d.statusJSON()), &st); err != nil {
		d.t.Fatalf("status -o json is not JSON: %v", err)
	}
	return st
}

// stateFile is the persisted state.
func (d *daemon) stateFile() string {
	d.t.Helper()
	data, err := os.ReadFile(d.statePath)
	if err != nil {
		d.t.Fatal(err)
	}
	return string(data)
}

// backends returns the backends of the VIP at addr (tcp) from status.
func (d *daemon) backends(addr string) []control.BackendStatus {
	d.t.Helper()
	for _, v := range d.status().VIPs {
		if v.Addr.String() == addr && v.Proto == "tcp" {
			return v.Backends
		}
	}
	d.t.Fatalf("status has no VIP %s", addr)
	return nil
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func toJSON(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// jsonEqual compares a and b as the daemon's API sees them.
func jsonEqual(t *testing.T, a, b any) bool {
	t.Helper()
	return toJSON(t, a) == toJSON(t, b)
}
