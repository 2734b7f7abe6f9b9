package maps

import (
	"errors"
	"strings"
	"testing"

	"github.com/tether-lb/tether/loader"
)

// clientsOfBucket returns n keys of VIP id 0 that share bucket 0 of a
// table of buckets buckets.
func clientsOfBucket(buckets uint32, n int) []AffinityKey {
	var keys []AffinityKey
	for i := 0; len(keys) < n; i++ {
		key := AffinityKey{Client: [16]byte{198, 18, byte(i >> 8), byte(i)}}
		if AffinityBucket(buckets, 0, key) == 0 {
			keys = append(keys, key)
		}
	}
	return keys
}

func TestAffinityTableEvictsLeastRecentlySeen(t *testing.T) {
	table := affinityTable{buckets: make([]loader.TetherAffinityBucket, 4)}
	keys := clientsOfBucket(4, AffinityWays+2)
	for i, key := range keys[:AffinityWays] {
		if _, evicted, err := table.put(key, Affinity{Backend: BackendID(i + 1), Generation: 1, LastSeen: uint64(100 + i)}); err != nil || evicted {
			t.Fatalf("put %d into a bucket with room: evicted %v, err %v", i, evicted, err)
		}
	}
	// Client 2 is seen again: its own way, nothing evicted.
	if _, evicted, err := table.put(keys[2], Affinity{Backend: 3, Generation: 1, LastSeen: 50}); err != nil || evicted {
		t.Fatalf("rewrite of a present client: evicted %v, err %v", evicted, err)
	}
	// A new client takes the least recently seen way: client 2's (50).
	replaced, evicted, err := table.put(keys[AffinityWays], Affinity{Backend: 9, Generation: 1, LastSeen: 200})
	if err != nil || !evicted || replaced != (Affinity{Backend: 3, Generation: 1, LastSeen: 50}) {
		t.Fatalf("put into a full bucket: replaced %+v, evicted %v, err %v; want client 2's entry", replaced, evicted, err)
	}
	if _, err := table.get(keys[2]); !errors.Is(err, ErrNotFound) {
		t.Errorf("evicted client still found: %v", err)
	}
	if n := table.count(); n != AffinityWays {
		t.Errorf("%d entries, want %d", n, AffinityWays)
	}

	// A way a writer holds (here: one that died holding it) is never the
	// victim, even when it is the oldest.
	b := &table.buckets[0]
	b.Way[0].Route, b.Way[0].LastSeenNs = routeBusy, 0
	replaced, _, err = table.put(keys[AffinityWays+1], Affinity{Backend: 7, Generation: 1, LastSeen: 300})
	if err != nil || replaced.LastSeen != 101 {
		t.Fatalf("put beside a held way: replaced %+v, err %v; want the oldest free way (101)", replaced, err)
	}
	if b.Way[0].Route != routeBusy {
		t.Errorf("the held way was overwritten")
	}
	seen := 0
	table.each(func(key AffinityKey, a Affinity) {
		seen++
		if got, err := table.get(key); err != nil || got != a {
			t.Errorf("each gave %+v -> %+v, get gives %+v, %v", key, a, got, err)
		}
	})
	if seen != AffinityWays-1 || table.count() != AffinityWays-1 {
		t.Errorf("each saw %d entries, count says %d, want %d: a held way is no entry", seen, table.count(), AffinityWays-1)
	}

	// Every way held: the insert fails and says why.
	for w := range b.Way {
		b.Way[w].Route = routeBusy
	}
	if _, _, err := table.put(keys[0], Affinity{Backend: 1, LastSeen: 400}); !errors.Is(err, errAffinityBusy) {
		t.Errorf("put into a bucket of held ways: %v, want %v", err, errAffinityBusy)
	}
}

func TestAffinityTableRefusesWhatItCannotHold(t *testing.T) {
	table := affinityTable{buckets: make([]loader.TetherAffinityBucket, 1)}
	for _, tc := range []struct {
		key  AffinityKey
		a    Affinity
		want string
	}{
		{AffinityKey{VIPID: 0xffff}, Affinity{Backend: 1}, "VIP id 65535: id out of range 0..65534"},
		{AffinityKey{}, Affinity{Backend: 0}, "backend id 0 out of range 1..65535"},
		{AffinityKey{}, Affinity{Backend: 0x10000}, "backend id 65536 out of range 1..65535"},
	} {
		if _, _, err := table.put(tc.key, tc.a); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("put %+v %+v: %v, want an error containing %q", tc.key, tc.a, err, tc.want)
		}
	}
	if _, _, err := (affinityTable{}).put(AffinityKey{}, Affinity{Backend: 1}); err == nil {
		t.Error("put into a table of no buckets succeeded")
	}
}

// TestAffinityBucketsSpreadClients fills a table sized for a million
// clients with a million neighbouring addresses, as real clients are: IPv4
// addresses in a row, IPv6 /64s in a row and one client of each under many
// VIPs. No bucket may hold much more than a random spread gives (for a
// Poisson load of 4/3 per bucket, about 1.1 % of the clients find their
// bucket's 4 ways taken).
func TestAffinityBucketsSpreadClients(t *testing.T) {
	const clients = 1 << 20
	buckets := loader.AffinityBuckets(clients)
	const salt = 0x243f6a8885a308d3
	for _, tc := range []struct {
		name string
		key  func(i int) AffinityKey
	}{
		{"IPv4 in a row", func(i int) AffinityKey {
			return AffinityKey{Client: [16]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}}
		}},
		{"IPv6 /64s in a row", func(i int) AffinityKey {
			return AffinityKey{Client: [16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i >> 16), byte(i >> 8), byte(i)}}
		}},
		{"one client, many VIPs", func(i int) AffinityKey {
			return AffinityKey{VIPID: uint32(i % 0xffff), Client: [16]byte{10, 0, byte(i >> 24), byte(i >> 16)}}
		}},
	} {
		load := make([]uint8, buckets)
		for i := range clients {
			load[AffinityBucket(buckets, salt, tc.key(i))]++
		}
		overflow, fullest := 0, uint8(0)
		for _, n := range load {
			overflow += max(int(n)-AffinityWays, 0)
			fullest = max(fullest, n)
		}
		share := float64(overflow) / clients * 100
		t.Logf("%s: %d clients in %d buckets, fullest %d, %.2f%% beyond the ways", tc.name, clients, buckets, fullest, share)
		if share > 1.3 || fullest > 14 {
			t.Errorf("%s: %.2f%% of clients beyond their bucket's ways, fullest bucket %d: want about 1.1%% and at most 14, as a random spread", tc.name, share, fullest)
		}
	}
}

// TestAffinityTableClientInTwoWays: two CPUs that insert the same client at
// once leave it in two ways of its bucket. User space reports it once and
// deletes both.
func TestAffinityTableClientInTwoWays(t *testing.T) {
	table := affinityTable{buckets: make([]loader.TetherAffinityBucket, 2), salt: 7}
	key := AffinityKey{VIPID: 3, Client: [16]byte{198, 18, 0, 1}}
	if _, _, err := table.put(key, Affinity{Backend: 2, Generation: 1, LastSeen: 10}); err != nil {
		t.Fatal(err)
	}
	b := table.bucket(key)
	b.Way[2] = b.Way[0]
	seen := 0
	table.each(func(k AffinityKey, a Affinity) {
		seen++
		if k != key || a != (Affinity{Backend: 2, Generation: 1, LastSeen: 10}) {
			t.Errorf("each: %+v %+v", k, a)
		}
	})
	if seen != 1 || table.count() != 1 {
		t.Errorf("each saw %d, count %d; want the client once", seen, table.count())
	}
	if err := table.delete(key); err != nil {
		t.Fatal(err)
	}
	if b.Way[0].Route != 0 || b.Way[2].Route != 0 {
		t.Errorf("delete left a copy: routes %#x, %#x", b.Way[0].Route, b.Way[2].Route)
	}
	if err := table.delete(key); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}
