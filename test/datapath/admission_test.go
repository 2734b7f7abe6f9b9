package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/model"
	"github.com/tether-lb/tether/test/packets"
)

func bits(events ...maps.AffinityEvent) uint32 {
	var out uint32
	for _, e := range events {
		out |= 1 << e
	}
	return out
}

func withFlags(flags uint8) func(*packets.Spec) {
	return func(s *packets.Spec) { s.TCPFlags = flags }
}

// fixtureWithCapacity is the fixture over an affinity table sized for
// capacity clients.
func fixtureWithCapacity(t *testing.T, capacity uint32) *harness {
	opts := testOptions
	opts.AffinityCapacity = capacity
	h := newHarnessWith(t, opts)
	h.setupFixture()
	return h
}

// entryOf returns the kernel's affinity entry of an IPv4 client of VIP 0.
func entryOf(t *testing.T, h *harness, client netip.Addr) (maps.Affinity, bool) {
	t.Helper()
	a, err := h.kernel.Affinity(maps.AffinityKey{VIPID: 0, Client: maps.ClientKey(client, 32)})
	return a, err == nil
}

// TestAdmission: new clients are admitted on probation by the packet that
// opens a conversation and established by one that proves them real;
// packets that open nothing leave no trace. Kernel and model agree on
// every packet.
func TestAdmission(t *testing.T) {
	expectEvents := func(t *testing.T, res model.Result, want uint32) {
		t.Helper()
		if res.AffinityEvents != want {
			t.Fatalf("affinity events %b, want %b", res.AffinityEvents, want)
		}
	}
	t.Run("a SYN admits on probation, the handshake's ACK establishes", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		syn := h.expect(frame(client4, vip4), maps.OutcomeForwardTX)
		expectEvents(t, syn, bits(maps.AffinityMiss, maps.AffinityInsert))
		if a, ok := entryOf(t, h, client4); !ok || !a.Probationary {
			t.Fatalf("after a SYN the entry is %+v (found %t), want one on probation", a, ok)
		}
		// Retransmitted SYNs and RSTs prove nothing.
		expectEvents(t, h.expect(frame(client4, vip4), maps.OutcomeForwardTX), bits(maps.AffinityHit))
		expectEvents(t, h.expect(frame(client4, vip4, withFlags(packets.TCPRst)), maps.OutcomeForwardTX), bits(maps.AffinityHit))
		ack := h.expect(frame(client4, vip4, withFlags(packets.TCPAck)), maps.OutcomeForwardTX)
		expectEvents(t, ack, bits(maps.AffinityHit, maps.AffinityPromote))
		if ack.Backend != syn.Backend {
			t.Fatalf("the ACK went to %d, the SYN to %d", ack.Backend, syn.Backend)
		}
		if a, ok := entryOf(t, h, client4); !ok || a.Probationary {
			t.Fatalf("after the ACK the entry is %+v (found %t), want it established", a, ok)
		}
		expectEvents(t, h.expect(frame(client4, vip4, withFlags(packets.TCPAck|packets.TCPPsh)), maps.OutcomeForwardTX), bits(maps.AffinityHit))
	})
	t.Run("anything but a SYN from an unknown source leaves no trace", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		for _, flags := range []uint8{packets.TCPAck, packets.TCPRst, packets.TCPSyn | packets.TCPAck, packets.TCPFin | packets.TCPAck, packets.TCPSyn | packets.TCPRst} {
			expectEvents(t, h.expect(frame(client4, vip4, withFlags(flags)), maps.OutcomeForwardTX), bits(maps.AffinityMiss))
		}
		if a, ok := entryOf(t, h, client4); ok {
			t.Fatalf("an entry %+v was written", a)
		}
	})
	t.Run("UDP: admitted on its first datagram, established by one a second later", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		key := maps.AffinityKey{VIPID: 1, Client: maps.ClientKey(client4, 32)}
		expectEvents(t, h.expect(frame(client4, vip4UDP), maps.OutcomeForwardTX), bits(maps.AffinityMiss, maps.AffinityInsert))
		expectEvents(t, h.expect(frame(client4, vip4UDP), maps.OutcomeForwardTX), bits(maps.AffinityHit))
		h.apply(func(m maps.Maps) error {
			a, err := m.Affinity(key)
			a.LastSeen -= uint64(maps.AffinityProbation + time.Second)
			return errorsJoin(err, m.PutAffinity(key, a))
		})
		expectEvents(t, h.expect(frame(client4, vip4UDP), maps.OutcomeForwardTX), bits(maps.AffinityHit, maps.AffinityPromote))
	})
	t.Run("an established client whose backend went away stays established", func(t *testing.T) {
		h := newHarness(t)
		h.setupFixture()
		setTableTo(h, vip4, 1)
		h.apply(func(m maps.Maps) error {
			return m.PutAffinity(maps.AffinityKey{VIPID: 0, Client: maps.ClientKey(client4, 32)},
				maps.Affinity{Backend: 4, Generation: 1, LastSeen: monotonicCoarse()})
		})
		res := h.expect(frame(client4, vip4, withFlags(packets.TCPAck)), maps.OutcomeForwardTX)
		expectEvents(t, res, bits(maps.AffinityStale, maps.AffinityInsert))
		if a, ok := entryOf(t, h, client4); !ok || a.Probationary || a.Backend != 1 {
			t.Fatalf("the entry is %+v (found %t), want established on backend 1", a, ok)
		}
	})
}

// TestFloodKeepsEstablishedClients fills a small table with established
// clients, changes the backend set, then sends ten times its capacity in
// SYNs, in bare ACKs, and in SYN-then-ACK pairs (what it takes to be
// established) from forged sources: no established client loses its entry
// or its backend.
func TestFloodKeepsEstablishedClients(t *testing.T) {
	const capacity = 1024
	h := fixtureWithCapacity(t, capacity)
	established := map[netip.Addr]maps.BackendID{}
	for i := range capacity {
		client := netip.AddrFrom4([4]byte{198, 18, 4 + byte(i>>8), byte(i)})
		syn := h.expect(frame(client, vip4), maps.OutcomeForwardTX)
		if h.expect(frame(client, vip4, withFlags(packets.TCPAck)), maps.OutcomeForwardTX).AffinityEvents&bits(maps.AffinityPromote) != 0 {
			established[client] = syn.Backend
		}
	}
	if len(established) < capacity*9/10 {
		t.Fatalf("only %d of %d clients were established", len(established), capacity)
	}
	setTableTo(h, vip4, 1) // Maglev would move every client to backend 1
	forged := func(block, i int) netip.Addr {
		return netip.AddrFrom4([4]byte{198, 19, byte(block*64 + i>>8), byte(i)})
	}
	for _, flood := range []struct {
		name  string
		block int
		flags []uint8
	}{
		{"SYNs", 0, []uint8{packets.TCPSyn}},
		{"bare ACKs", 1, []uint8{packets.TCPAck}},
		{"SYN then ACK from each source", 2, []uint8{packets.TCPSyn, packets.TCPAck}},
	} {
		before, err := h.kernel.Counters(maps.GlobalSlot)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 10 * capacity {
			for _, flags := range flood.flags {
				h.expect(frame(forged(flood.block, i), vip4, withFlags(flags)), maps.OutcomeForwardTX)
			}
		}
		after, err := h.kernel.Counters(maps.GlobalSlot)
		if err != nil {
			t.Fatal(err)
		}
		for client, backend := range established {
			a, ok := entryOf(t, h, client)
			if !ok || a.Probationary || a.Backend != backend {
				t.Fatalf("after a flood of %s, established client %s has entry %+v (found %t), want backend %d", flood.name, client, a, ok, backend)
			}
		}
		delta := func(e maps.AffinityEvent) uint64 { return after.Affinity[e] - before.Affinity[e] }
		t.Logf("flood of %s from %d forged sources: %d admitted, %d evicted on probation, %d found no room, %d promoted",
			flood.name, 10*capacity, delta(maps.AffinityInsert), delta(maps.AffinityEvictProbation), delta(maps.AffinityFull), delta(maps.AffinityPromote))
		if flood.name == "bare ACKs" && delta(maps.AffinityInsert) != 0 {
			t.Fatalf("bare ACKs from unknown sources admitted %d entries", delta(maps.AffinityInsert))
		}
	}
	for client, backend := range established {
		if res := h.expect(frame(client, vip4, withFlags(packets.TCPAck)), maps.OutcomeForwardTX); res.Backend != backend {
			t.Fatalf("established client %s went to %d, was on %d", client, res.Backend, backend)
		}
	}
}

// TestOnlyExpiryDisplacesEstablished: a bucket full of fresh established
// clients has no room for a new one (forwarded by Maglev, unpinned); once
// one of them has been silent past the affinity timeout, its way is the
// first a new client takes. That is all an attacker can do to an
// established client: wait until it leaves.
func TestOnlyExpiryDisplacesEstablished(t *testing.T) {
	const capacity = 64
	h := fixtureWithCapacity(t, capacity)
	buckets := loader.AffinityBuckets(capacity)
	keyOf := func(a netip.Addr) maps.AffinityKey { return maps.AffinityKey{VIPID: 0, Client: maps.ClientKey(a, 32)} }
	var sameBucket []netip.Addr
	target := maps.AffinityBucket(buckets, testAffinitySalt, keyOf(client4))
	for i := 0; len(sameBucket) < maps.AffinityWays+1; i++ {
		a := netip.AddrFrom4([4]byte{198, 18, 8 + byte(i>>8), byte(i)})
		if maps.AffinityBucket(buckets, testAffinitySalt, keyOf(a)) == target {
			sameBucket = append(sameBucket, a)
		}
	}
	for _, a := range sameBucket[:maps.AffinityWays] {
		h.expect(frame(a, vip4), maps.OutcomeForwardTX)
		h.expect(frame(a, vip4, withFlags(packets.TCPAck)), maps.OutcomeForwardTX)
	}
	newcomer := sameBucket[maps.AffinityWays]
	if res := h.expect(frame(newcomer, vip4), maps.OutcomeForwardTX); res.AffinityEvents != bits(maps.AffinityMiss, maps.AffinityFull) {
		t.Fatalf("a new client in a bucket of established ones: events %b, want miss and full", res.AffinityEvents)
	}
	silent := keyOf(sameBucket[2])
	h.apply(func(m maps.Maps) error {
		a, err := m.Affinity(silent)
		a.LastSeen -= uint64(121 * time.Second)
		return errorsJoin(err, m.PutAffinity(silent, a))
	})
	if res := h.expect(frame(newcomer, vip4), maps.OutcomeForwardTX); res.AffinityEvents != bits(maps.AffinityMiss, maps.AffinityInsert) {
		t.Fatalf("a new client beside an expired entry: events %b, want miss and insert", res.AffinityEvents)
	}
	if _, ok := entryOf(t, h, sameBucket[2]); ok {
		t.Fatal("the expired client kept its way")
	}
	for _, a := range append(sameBucket[:2], sameBucket[3:maps.AffinityWays]...) {
		if e, ok := entryOf(t, h, a); !ok || e.Probationary {
			t.Fatalf("established client %s lost its entry: %+v (found %t)", a, e, ok)
		}
	}
}
