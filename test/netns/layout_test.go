package netns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/testenv"
)

// TestChangedMapLayoutIsAnError pins a vips map whose value size differs
// from this build's, as an older or newer tether would have left it: Open
// must refuse with ErrLayoutChanged and leave the pinned map alone.
func TestChangedMapLayoutIsAnError(t *testing.T) {
	testenv.RequireBPF(t)
	dir := loader.PinDir(testenv.PrivateBPFFS(t), "eth0")
	first, _, err := loader.Open(dir, loader.Options{MaxVIPs: 4, TableStride: 257, MaxBackends: 16, AffinityCapacity: 1024, MaxTxPorts: 4})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()

	vips := filepath.Join(dir, loader.TetherMapVips)
	if err := os.Remove(vips); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vips", Type: ebpf.Hash, KeySize: 20, ValueSize: 16, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(vips); err != nil {
		t.Fatal(err)
	}
	if err := old.Put(make([]byte, 20), make([]byte, 16)); err != nil {
		t.Fatal(err)
	}

	_, _, err = loader.Open(dir, loader.DefaultOptions())
	if !errors.Is(err, loader.ErrLayoutChanged) {
		t.Fatalf("opening pins with a changed vips layout: %v, want ErrLayoutChanged", err)
	}
	t.Logf("error: %v", err)
	kept, err := ebpf.LoadPinnedMap(vips, nil)
	if err != nil {
		t.Fatalf("the pinned map is gone: %v", err)
	}
	defer kept.Close()
	if info, err := kept.Info(); err != nil || info.ValueSize != 16 {
		t.Fatalf("the pinned map was replaced: %+v, %v", info, err)
	}
}

// TestAffinityTableAdoptedWithItsSalt opens pins twice, as a daemon and its
// restart do: the first Open draws a random salt for the new affinity
// table, the second adopts table and salt, so the entries written before
// are found where they were put. Pins left by a tether without one of
// today's maps are ErrLayoutChanged.
func TestAffinityTableAdoptedWithItsSalt(t *testing.T) {
	testenv.RequireBPF(t)
	dir := loader.PinDir(testenv.PrivateBPFFS(t), "eth0")
	opts := loader.Options{MaxVIPs: 4, TableStride: 257, MaxBackends: 16, AffinityCapacity: 1024, MaxTxPorts: 4}
	salt := func(d *loader.Datapath) uint64 {
		var s uint64
		if err := d.Maps.AffinitySalt.Lookup(uint32(0), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	clients := make([]maps.AffinityKey, 200)
	for i := range clients {
		clients[i] = maps.AffinityKey{VIPID: 1, Client: maps.ClientKey(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)}
	}

	first, adopted, err := loader.Open(dir, opts)
	if err != nil || adopted {
		t.Fatalf("first Open: adopted %v, err %v", adopted, err)
	}
	firstSalt := salt(first)
	m, err := maps.NewKernel(&first.Maps, maps.LimitsOf(opts))
	if err != nil {
		t.Fatal(err)
	}
	for i, key := range clients {
		if err := m.PutAffinity(key, maps.Affinity{Backend: maps.BackendID(1 + i%3), Generation: 1, LastSeen: 1}); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	first.Close()

	second, adopted, err := loader.Open(dir, loader.DefaultOptions())
	if err != nil || !adopted {
		t.Fatalf("second Open: adopted %v, err %v", adopted, err)
	}
	defer second.Close()
	if s := salt(second); s != firstSalt {
		t.Fatalf("salt %#x after adopting, was %#x", s, firstSalt)
	}
	m, err = maps.NewKernel(&second.Maps, maps.LimitsOf(second.Options))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i, key := range clients {
		if a, err := m.Affinity(key); err != nil || a.Backend != maps.BackendID(1+i%3) {
			t.Fatalf("client %d after adopting: %+v, %v", i, a, err)
		}
	}

	// A fresh table gets another salt.
	fresh, err := loader.Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if salt(fresh) == firstSalt {
		t.Errorf("two tables drew the same salt %#x", firstSalt)
	}

	// Pins without the salt map, as an older tether leaves them.
	second.Close()
	if err := os.Remove(filepath.Join(dir, loader.TetherMapAffinitySalt)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loader.Open(dir, opts); !errors.Is(err, loader.ErrLayoutChanged) {
		t.Fatalf("opening pins without %s: %v, want ErrLayoutChanged", loader.TetherMapAffinitySalt, err)
	}
}
