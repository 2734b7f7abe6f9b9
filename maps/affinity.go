package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/tether-lb/tether/loader"
)

// The affinity table's layout and rules, as bpf/affinity.h has them: a
// client's bucket is affinityHash of its VIP and key, mapped onto the
// buckets by multiply-shift; within the bucket it may be in any of
// AffinityWays ways. Writers claim a way by swapping its route for
// routeBusy, write it and publish the route last; readers accept a way whose
// route is the same before and after they read it.
const (
	// AffinityWays is the number of entries of a bucket.
	AffinityWays = len(loader.TetherAffinityBucket{}.Way)
	routeBusy    = ^uint64(0)
	// maxRouteID bounds the VIP and backend ids an entry holds.
	maxRouteID = 0xffff
)

// affinityHash is affinity_hash in bpf/affinity.h: each little-endian
// half of the key folded onto itself, the second mixed with the VIP, two
// independent multiplies and a multiply-xorshift finalizer.
func affinityHash(vipID uint32, client [16]byte) uint32 {
	a := binary.LittleEndian.Uint64(client[0:8])
	b := binary.LittleEndian.Uint64(client[8:16])
	a ^= a >> 32
	b ^= b>>32 ^ uint64(vipID)*0xd6e8feb86659fd93
	h := a*0x9e3779b97f4a7c15 ^ b*0xc2b2ae3d27d4eb4f
	h ^= h >> 29
	return uint32((h * 0x165667b19e3779f9) >> 32)
}

// AffinityBucket is the bucket of key in a table of buckets buckets.
func AffinityBucket(buckets uint32, key AffinityKey) uint32 {
	return uint32(uint64(affinityHash(key.VIPID, key.Client)) * uint64(buckets) >> 32)
}

func makeRoute(vipID uint32, a Affinity) uint64 {
	return uint64(vipID&maxRouteID) | uint64(a.Backend&maxRouteID)<<16 | uint64(a.Generation)<<32
}

func routeVIP(route uint64) uint32 { return uint32(route & maxRouteID) }

// errAffinityBusy: a way kept changing under a writer.
var errAffinityBusy = errors.New("the client's affinity bucket is being written by the datapath, try again")

// affinityTable implements the affinity operations over buckets that live in
// a Go slice (Fake) or in the kernel's map, mapped into this process
// (Kernel). Routes are read and written atomically, as the datapath does.
type affinityTable struct {
	buckets []loader.TetherAffinityBucket
}

func (t affinityTable) bucket(key AffinityKey) *loader.TetherAffinityBucket {
	return &t.buckets[AffinityBucket(uint32(len(t.buckets)), key)]
}

// find returns the way holding key and its route.
func (t affinityTable) find(key AffinityKey) (*loader.TetherAffinityEntry, uint64) {
	if len(t.buckets) == 0 {
		return nil, 0
	}
	b := t.bucket(key)
	for w := range b.Way {
		e := &b.Way[w]
		r := atomic.LoadUint64(&e.Route)
		if r == 0 || r == routeBusy || routeVIP(r) != key.VIPID || e.Client != key.Client {
			continue
		}
		if atomic.LoadUint64(&e.Route) == r {
			return e, r
		}
	}
	return nil, 0
}

func decodeRoute(r uint64, lastSeen uint64) Affinity {
	return Affinity{Backend: BackendID(r >> 16 & maxRouteID), Generation: uint32(r >> 32), LastSeen: lastSeen}
}

func (t affinityTable) get(key AffinityKey) (Affinity, error) {
	e, r := t.find(key)
	if e == nil {
		return Affinity{}, fmt.Errorf("looking up affinity of VIP id %d: %w", key.VIPID, ErrNotFound)
	}
	return decodeRoute(r, e.LastSeenNs), nil
}

// victim is the way a client without one takes: the first empty way, else
// the least recently seen one no writer holds (the first of equals); if
// writers hold them all, way 0, busy.
func victim(b *loader.TetherAffinityBucket) (*loader.TetherAffinityEntry, uint64) {
	var v *loader.TetherAffinityEntry
	for w := range b.Way {
		e := &b.Way[w]
		r := atomic.LoadUint64(&e.Route)
		if r == 0 {
			return e, 0
		}
		if r != routeBusy && (v == nil || e.LastSeenNs < v.LastSeenNs) {
			v = e
		}
	}
	if v == nil {
		return &b.Way[0], routeBusy
	}
	return v, atomic.LoadUint64(&v.Route)
}

// put writes key's entry as the datapath inserts one: into its own way, or
// else into the victim's. It returns the other client's entry it replaced.
func (t affinityTable) put(key AffinityKey, a Affinity) (replaced Affinity, ok bool, err error) {
	switch {
	case len(t.buckets) == 0:
		return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: the affinity table has no buckets", key.VIPID)
	case key.VIPID >= maxRouteID:
		return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: id out of range 0..%d", key.VIPID, maxRouteID-1)
	case a.Backend == 0 || a.Backend > maxRouteID:
		return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: backend id %d out of range 1..%d", key.VIPID, a.Backend, maxRouteID)
	}
	for range 3 {
		e, seen := t.find(key)
		if e == nil {
			e, seen = victim(t.bucket(key))
			if seen != 0 && seen != routeBusy {
				replaced, ok = decodeRoute(seen, e.LastSeenNs), true
			}
		}
		if seen == routeBusy || !atomic.CompareAndSwapUint64(&e.Route, seen, routeBusy) {
			replaced, ok = Affinity{}, false
			continue
		}
		e.Client = key.Client
		e.LastSeenNs = a.LastSeen
		atomic.StoreUint64(&e.Route, makeRoute(key.VIPID, a))
		return replaced, ok, nil
	}
	return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: %w", key.VIPID, errAffinityBusy)
}

func (t affinityTable) delete(key AffinityKey) error {
	e, r := t.find(key)
	if e == nil || !atomic.CompareAndSwapUint64(&e.Route, r, 0) {
		return fmt.Errorf("deleting affinity of VIP id %d: %w", key.VIPID, ErrNotFound)
	}
	return nil
}

// each calls fn for every entry; a way that changes while it is read is
// skipped.
func (t affinityTable) each(fn func(AffinityKey, Affinity)) {
	for i := range t.buckets {
		b := &t.buckets[i]
		for w := range b.Way {
			e := &b.Way[w]
			r := atomic.LoadUint64(&e.Route)
			if r == 0 || r == routeBusy {
				continue
			}
			key := AffinityKey{VIPID: routeVIP(r), Client: e.Client}
			lastSeen := e.LastSeenNs
			if atomic.LoadUint64(&e.Route) == r {
				fn(key, decodeRoute(r, lastSeen))
			}
		}
	}
}

func (t affinityTable) count() int {
	n := 0
	for i := range t.buckets {
		for w := range t.buckets[i].Way {
			if r := atomic.LoadUint64(&t.buckets[i].Way[w].Route); r != 0 && r != routeBusy {
				n++
			}
		}
	}
	return n
}
