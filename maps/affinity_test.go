package maps

import (
	"errors"
	"strings"
	"testing"
	"time"

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
		if _, evicted, err := table.put(key, Affinity{Backend: BackendID(i + 1), Generation: 1, LastSeen: uint64(100 + i)}, nil); err != nil || evicted {
			t.Fatalf("put %d into a bucket with room: evicted %v, err %v", i, evicted, err)
		}
	}
	// Client 2 is seen again: its own way, nothing evicted.
	if _, evicted, err := table.put(keys[2], Affinity{Backend: 3, Generation: 1, LastSeen: 50}, nil); err != nil || evicted {
		t.Fatalf("rewrite of a present client: evicted %v, err %v", evicted, err)
	}
	// A new client takes the least recently seen way: client 2's (50).
	replaced, evicted, err := table.put(keys[AffinityWays], Affinity{Backend: 9, Generation: 1, LastSeen: 200}, nil)
	if err != nil || !evicted || replaced != (Affinity{Backend: 3, Generation: 1, LastSeen: 50}) {
		t.Fatalf("put into a full bucket: replaced %+v, evicted %v, err %v; want client 2's entry", replaced, evicted, err)
	}
	if _, err := table.get(keys[2]); !errors.Is(err, ErrNotFound) {
		t.Errorf("evicted client still found: %v", err)
	}
	if n := table.count().Entries; n != AffinityWays {
		t.Errorf("%d entries, want %d", n, AffinityWays)
	}

	// A way a writer holds (here: one that died holding it) is never the
	// victim, even when it is the oldest.
	b := &table.buckets[0]
	b.Way[0].Route, b.Way[0].LastSeenNs = routeBusy, 0
	replaced, _, err = table.put(keys[AffinityWays+1], Affinity{Backend: 7, Generation: 1, LastSeen: 300}, nil)
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
	if seen != AffinityWays-1 || table.count().Entries != AffinityWays-1 {
		t.Errorf("each saw %d entries, count says %d, want %d: a held way is no entry", seen, table.count().Entries, AffinityWays-1)
	}

	// Every way held: the insert fails and says why.
	for w := range b.Way {
		b.Way[w].Route = routeBusy
	}
	if _, _, err := table.put(keys[0], Affinity{Backend: 1, LastSeen: 400}, nil); !errors.Is(err, errAffinityBusy) {
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
		{AffinityKey{VIPID: 0x7fff}, Affinity{Backend: 1}, "VIP id 32767: id out of range 0..32766"},
		{AffinityKey{}, Affinity{Backend: 0}, "backend id 0 out of range 1..65535"},
		{AffinityKey{}, Affinity{Backend: 0x10000}, "backend id 65536 out of range 1..65535"},
	} {
		if _, _, err := table.put(tc.key, tc.a, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("put %+v %+v: %v, want an error containing %q", tc.key, tc.a, err, tc.want)
		}
	}
	if _, _, err := (affinityTable{}).put(AffinityKey{}, Affinity{Backend: 1}, nil); err == nil {
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
	if _, _, err := table.put(key, Affinity{Backend: 2, Generation: 1, LastSeen: 10}, nil); err != nil {
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
	if seen != 1 || table.count().Entries != 1 {
		t.Errorf("each saw %d, count %d; want the client once", seen, table.count().Entries)
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

// TestAffinityAdmissionKeepsEstablishedClients: a new client takes an
// empty way, else the oldest way on probation or expired; a fresh
// established client is never taken, and with only those the bucket is
// full. user-space puts (keep nil) may take any way.
func TestAffinityAdmissionKeepsEstablishedClients(t *testing.T) {
	const timeout = 100 * time.Second
	now := uint64(1000 * time.Second)
	table := affinityTable{buckets: make([]loader.TetherAffinityBucket, 4)}
	keys := clientsOfBucket(4, AffinityWays+4)
	established := func(seen uint64) Affinity { return Affinity{Backend: 1, Generation: 1, LastSeen: seen} }
	for i, key := range keys[:AffinityWays] {
		if _, _, err := table.put(key, established(now-uint64(i)), admitted(now, timeout)); err != nil {
			t.Fatalf("admitting client %d into a bucket with room: %v", i, err)
		}
	}
	newcomer := Affinity{Backend: 2, Generation: 1, LastSeen: now, Probationary: true}
	if _, _, err := table.put(keys[AffinityWays], newcomer, admitted(now, timeout)); !errors.Is(err, ErrAffinityFull) {
		t.Fatalf("admitting into a bucket of fresh established clients: %v, want %v", err, ErrAffinityFull)
	}
	if n := table.count().Entries; n != AffinityWays {
		t.Fatalf("%d entries after a refused admission, want %d", n, AffinityWays)
	}
	// Client 1 goes on probation, client 3 expires: the older of the two goes first.
	onProbation := established(now - 10)
	onProbation.Probationary = true
	if _, _, err := table.put(keys[1], onProbation, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := table.put(keys[3], established(now-uint64(timeout)-1), nil); err != nil {
		t.Fatal(err)
	}
	for i, victim := range []AffinityKey{keys[3], keys[1]} {
		replaced, ok, err := table.put(keys[AffinityWays+1+i], newcomer, admitted(now, timeout))
		if err != nil || !ok {
			t.Fatalf("admitting beside a way on probation or expired: replaced %+v (%t), %v", replaced, ok, err)
		}
		if _, err := table.get(victim); !errors.Is(err, ErrNotFound) {
			t.Fatalf("admission %d did not take %v: %v", i, victim, err)
		}
	}
	for _, key := range []AffinityKey{keys[0], keys[2]} {
		if _, err := table.get(key); err != nil {
			t.Fatalf("a fresh established client was taken: %v", err)
		}
	}
	// User space may write anywhere.
	if _, ok, err := table.put(keys[AffinityWays+3], established(now), nil); err != nil || !ok {
		t.Fatalf("a user-space put into a full bucket: replaced %t, %v", ok, err)
	}
}
