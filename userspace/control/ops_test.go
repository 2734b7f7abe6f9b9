package control

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

func TestFailedCallsChangeNothing(t *testing.T) {
	backend := func(name, addr string) Backend {
		return Backend{Name: name, Addr: netip.MustParseAddr(addr), Weight: 1}
	}
	newVIP := func(addrPort string, tweak func(*VIP)) VIP {
		v := NewVIP(mustRef(t, addrPort, "tcp"))
		tweak(&v)
		return v
	}
	addVIP := func(v VIP) func(context.Context, *Daemon) error {
		return func(ctx context.Context, d *Daemon) error { return d.AddVIP(ctx, v) }
	}
	addBackend := func(ref VIPRef, b Backend) func(context.Context, *Daemon) error {
		return func(ctx context.Context, d *Daemon) error { return d.AddBackend(ctx, ref, b) }
	}
	withBackend := func(tweak func(*Backend)) Backend {
		b := backend("web-4", "10.0.0.4")
		tweak(&b)
		return b
	}
	smallVIP := mustRef(t, "198.18.1.3:80", "tcp") // table size 3, three backends
	unknownVIP := mustRef(t, "198.18.1.9:80", "tcp")
	cases := []struct {
		name string
		call func(context.Context, *Daemon) error
		want error
	}{
		{"prefix4 above 32", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.Prefix4 = 33 })), ErrInvalid},
		{"negative prefix4", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.Prefix4 = -1 })), ErrInvalid},
		{"prefix6 above 128", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.Prefix6 = 129 })), ErrInvalid},
		{"affinity timeout below 1s", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.AffinityTimeout = 500 * time.Millisecond })), ErrInvalid},
		{"negative affinity timeout", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.AffinityTimeout = -time.Second })), ErrInvalid},
		{"affinity timeout above 24h", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.AffinityTimeout = 25 * time.Hour })), ErrInvalid},
		{"table size not prime", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.TableSize = 4097 })), ErrInvalid},
		{"table size 2", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.TableSize = 2 })), ErrInvalid},
		{"table size above the stride", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.TableSize = 4111 })), ErrInvalid},
		{"unknown no_backend", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.NoBackend = "reject" })), ErrInvalid},
		{"unknown all_down", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.AllDown = "panic" })), ErrInvalid},
		{"unknown proto", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.Proto = "sctp" })), ErrInvalid},
		{"VIP port 0", addVIP(newVIP("198.18.1.2:0", func(*VIP) {})), ErrInvalid},
		{"unspecified VIP address", addVIP(newVIP("0.0.0.0:80", func(*VIP) {})), ErrInvalid},
		{"invalid VIP check", addVIP(newVIP("198.18.1.2:80", func(v *VIP) { v.Check = health.Check{Kind: "ping"} })), ErrInvalid},
		{"VIP with a duplicate backend name", addVIP(newVIP("198.18.1.2:80", func(v *VIP) {
			v.Backends = []Backend{backend("a", "10.0.0.7"), backend("a", "10.0.0.8")}
		})), ErrInvalid},
		{"VIP with a duplicate backend address", addVIP(newVIP("198.18.1.2:80", func(v *VIP) {
			v.Backends = []Backend{backend("a", "10.0.0.7"), backend("b", "10.0.0.7")}
		})), ErrInvalid},
		{"existing VIP", addVIP(NewVIP(webVIP)), ErrConflict},
		{"existing backend name", addBackend(webVIP, backend("web-1", "10.0.0.4")), ErrConflict},
		{"existing backend address", addBackend(webVIP, backend("web-4", "10.0.0.1")), ErrInvalid},
		{"bad backend name", addBackend(webVIP, backend("-web", "10.0.0.4")), ErrInvalid},
		{"loopback backend", addBackend(webVIP, backend("web-4", "127.0.0.1")), ErrInvalid},
		{"bad MAC", addBackend(webVIP, withBackend(func(b *Backend) { b.MAC = "02:00:00:00:00" })), ErrInvalid},
		{"multicast MAC", addBackend(webVIP, withBackend(func(b *Backend) { b.MAC = "01:00:5e:00:00:01" })), ErrInvalid},
		{"weight above 10000", addBackend(webVIP, withBackend(func(b *Backend) { b.Weight = 10001 })), ErrInvalid},
		{"invalid backend check", addBackend(webVIP, withBackend(func(b *Backend) {
			b.Check = &health.Check{Kind: health.KindTCP, Interval: time.Second, Timeout: 2 * time.Second}
		})), ErrInvalid},
		{"more weighted backends than table slots", addBackend(smallVIP, backend("s-4", "10.0.3.4")), ErrInvalid},
		{"backend of an unknown VIP", addBackend(unknownVIP, backend("web-4", "10.0.0.4")), ErrNotFound},
		{"remove unknown VIP", func(ctx context.Context, d *Daemon) error { return d.RemoveVIP(ctx, unknownVIP) }, ErrNotFound},
		{"remove unknown backend", func(ctx context.Context, d *Daemon) error { return d.RemoveBackend(ctx, webVIP, "web-9") }, ErrNotFound},
		{"weight of unknown backend", func(ctx context.Context, d *Daemon) error { return d.SetWeight(ctx, webVIP, "web-9", 2) }, ErrNotFound},
		{"weight above 10000 by SetWeight", func(ctx context.Context, d *Daemon) error { return d.SetWeight(ctx, webVIP, "web-1", 10001) }, ErrInvalid},
		{"drain unknown backend", func(ctx context.Context, d *Daemon) error { return d.Drain(ctx, webVIP, "web-9") }, ErrNotFound},
		{"enable backend of unknown VIP", func(ctx context.Context, d *Daemon) error { return d.Enable(ctx, unknownVIP, "web-1") }, ErrNotFound},
		{"pinned clients of unknown backend", func(_ context.Context, d *Daemon) error {
			_, err := d.PinnedClients(webVIP, "web-9")
			return err
		}, ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			statePath := filepath.Join(t.TempDir(), "state.json")
			tb := newTestBed(t, testLimits, statePath)
			tb.addVIP(webVIP, func(v *VIP) { v.Check = health.Check{Kind: health.KindTCP} })
			tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
			tb.addBackend(webVIP, "web-2", "10.0.0.2", 1)
			tb.addVIP(smallVIP, func(v *VIP) { v.TableSize = 3 })
			tb.addBackend(smallVIP, "s-1", "10.0.3.1", 1)
			tb.addBackend(smallVIP, "s-2", "10.0.3.2", 1)
			tb.addBackend(smallVIP, "s-3", "10.0.3.3", 1)
			tb.pinClients(10, 1, 2)
			before := tb.snapshot()
			saved, err := os.ReadFile(statePath)
			if err != nil {
				t.Fatal(err)
			}

			err = tc.call(t.Context(), tb.daemon)
			requireErrorIs(t, err, tc.want)
			tb.assertUnchanged(before)
			if after, err := os.ReadFile(statePath); err != nil || string(after) != string(saved) {
				t.Errorf("state file changed (%v)", err)
			}
		})
	}
}

func TestTooManyVIPsNamesTheLimit(t *testing.T) {
	limits := testLimits
	limits.MaxVIPs = 3
	tb := newTestBed(t, limits, "")
	for i := range 3 {
		tb.addVIP(mustRef(t, fmt.Sprintf("198.18.1.%d:80", i+1), "tcp"), nil)
	}
	before := tb.snapshot()
	err := tb.daemon.AddVIP(t.Context(), NewVIP(mustRef(t, "198.18.1.4:80", "tcp")))
	requireErrorIs(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), "all 3 VIP slots are used") {
		t.Errorf("error %q does not name the limit of 3 VIPs", err)
	}
	tb.assertUnchanged(before)
}

func TestTooManyBackendsNamesTheLimit(t *testing.T) {
	limits := testLimits
	limits.MaxBackends = 4 // ids 1..3
	tb := newTestBed(t, limits, "")
	tb.addVIP(webVIP, nil)
	for i := range 3 {
		tb.addBackend(webVIP, fmt.Sprintf("web-%d", i+1), fmt.Sprintf("10.0.0.%d", i+1), 1)
	}
	before := tb.snapshot()
	err := tb.daemon.AddBackend(t.Context(), webVIP, Backend{Name: "web-4", Addr: netip.MustParseAddr("10.0.0.4"), Weight: 1})
	requireErrorIs(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), "all 3 backend slots are used") {
		t.Errorf("error %q does not name the limit of 3 backends", err)
	}
	tb.assertUnchanged(before)
}

// failingMaps fails writes of one VIP key, to make a change fail after
// part of it reached the datapath.
type failingMaps struct {
	*maps.Fake
	failing maps.VIPKey
}

func (f failingMaps) PutVIP(key maps.VIPKey, v maps.VIP) error {
	if key == f.failing {
		return fmt.Errorf("writing VIP %s: injected failure", key)
	}
	return f.Fake.PutVIP(key, v)
}

func TestChangeFailingInTheDatapathIsRolledBack(t *testing.T) {
	tb := newTestBed(t, testLimits, "")
	tb.addVIP(webVIP, nil)
	tb.addBackend(webVIP, "web-1", "10.0.0.1", 1)
	other := NewVIP(mustRef(t, "198.18.1.2:80", "tcp"))
	m := failingMaps{Fake: tb.maps, failing: maps.FragmentAlias(other.key())}
	d, err := New(Options{Maps: m, Resolver: tb.resolver, IngressIfindex: ingressIfindex}, cloneState(tb.daemon.state))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	tb.daemon = d
	before := tb.snapshot()

	// The VIP's own entry and table are written before its alias fails.
	if err := d.AddVIP(t.Context(), other); err == nil {
		t.Fatalf("AddVIP succeeded though its fragment alias could not be written")
	}
	tb.assertServingAsBefore(before)
}

func TestChangeThatCannotBeSavedIsRolledBack(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state", "state.json")
	tb := newWebBed(t, nil)
	tb.daemon = tb.start(cloneState(tb.daemon.state), statePath)
	before := tb.snapshot()

	// A file where the state directory should be makes every save fail.
	if err := os.RemoveAll(filepath.Dir(statePath)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Dir(statePath), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tb.daemon.AddVIP(t.Context(), NewVIP(mustRef(t, "198.18.1.2:80", "tcp"))); err == nil {
		t.Fatalf("AddVIP succeeded though the state could not be saved")
	}
	tb.assertServingAsBefore(before)
	if err := tb.daemon.Drain(t.Context(), webVIP, "web-1"); err == nil {
		t.Fatalf("Drain succeeded though the state could not be saved")
	}
	tb.assertServingAsBefore(before)
}

// TestFailedSaveChangesNothing: with a state directory that cannot be
// written (full, read-only, gone), every change fails and the datapath,
// clients' affinity included, stays exactly as it was.
func TestFailedSaveChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tb := newTestBed(t, testLimits, filepath.Join(dir, "state.json"))
	ref := mustRef(t, "198.18.1.1:80", "tcp")
	tb.addVIP(ref, nil)
	for i, name := range []string{"b1", "b2", "b3"} {
		tb.addBackend(ref, name, fmt.Sprintf("198.18.0.%d", 10+i), 1)
	}
	for n := range 50 {
		key := clientKey(tb.vip(ref).ID, n)
		if err := tb.maps.PutAffinity(key, maps.Affinity{Backend: tb.backendID(ref, "b3"), Generation: tb.backend(tb.backendID(ref, "b3")).Generation, LastSeen: monotonicNow()}); err != nil {
			t.Fatal(err)
		}
	}
	// The directory becomes a file: no save can succeed, even as root.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before := tb.snapshot()
	other := mustRef(t, "198.18.1.2:80", "tcp")
	for what, change := range map[string]func() error{
		"backend remove": func() error { return tb.daemon.RemoveBackend(t.Context(), ref, "b3") },
		"vip remove":     func() error { return tb.daemon.RemoveVIP(t.Context(), ref) },
		"backend add": func() error {
			return tb.daemon.AddBackend(t.Context(), ref, Backend{Name: "b4", Addr: netip.MustParseAddr("198.18.0.20"), Weight: 1})
		},
		"drain":   func() error { return tb.daemon.Drain(t.Context(), ref, "b1") },
		"vip add": func() error { return tb.daemon.AddVIP(t.Context(), NewVIP(other)) },
	} {
		if err := change(); err == nil {
			t.Fatalf("%s succeeded without a state file to save to", what)
		}
		tb.assertUnchanged(before)
	}
}
