package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/tether-lb/tether/loader"
)

// The affinity table's layout and rules, as bpf/affinity.h has them: a
// client's bucket is affinityHash of the table's salt, its VIP and key,
// mapped onto the buckets by multiply-shift; within the bucket it may be in
// any of AffinityWays ways. Writers claim a way by swapping its route for
// routeBusy, write it and publish the route last; readers accept a way
// whose route is the same before and after they read it. Two CPUs that
// insert the same client at once can leave it in two ways of its bucket:
// readers here report it once and delete both.
const (
	// AffinityWays is the number of entries of a bucket.
	AffinityWays = len(loader.TetherAffinityBucket{}.Way)
	routeBusy    = ^uint64(0) // ROUTE_BUSY
	// maxRouteID bounds the backend ids an entry holds, maxRouteVIP its
	// VIP ids.
	maxRouteID           = uint32(loader.TetherRouteLayoutROUTE_ID_MASK)
	maxRouteVIP          = uint32(loader.TetherRouteLayoutROUTE_VIP_MASK)
	routeProbation       = uint64(loader.TetherRouteLayoutROUTE_PROBATION)
	routeBackendShift    = loader.TetherRouteLayoutROUTE_BACKEND_SHIFT
	routeGenerationShift = loader.TetherRouteLayoutROUTE_GENERATION_SHIFT
)

// affinityHash's multipliers, AFFINITY_HASH_*_MUL in bpf/affinity.h.
const (
	hashVIPMul   = 0xd6e8feb86659fd93
	hashLowMul   = 0x9e3779b97f4a7c15
	hashHighMul  = 0xc2b2ae3d27d4eb4f
	hashFinalMul = 0x165667b19e3779f9
)

// affinityHash is affinity_hash in bpf/affinity.h: each little-endian half
// of the key salted and folded onto itself, the second mixed with the VIP,
// two independent multiplies and a multiply-xorshift finalizer.
func affinityHash(salt uint64, vipID uint32, client [16]byte) uint32 {
	a := binary.LittleEndian.Uint64(client[0:8]) ^ salt
	b := binary.LittleEndian.Uint64(client[8:16]) ^ (uint64(vipID)*hashVIPMul + salt)
	a ^= a >> 32
	b ^= b >> 32
	h := a*hashLowMul ^ b*hashHighMul
	h ^= h >> 29
	return uint32((h * hashFinalMul) >> 32)
}

// AffinityBucket is the bucket of key in a table of buckets buckets hashed
// with salt.
func AffinityBucket(buckets uint32, salt uint64, key AffinityKey) uint32 {
	return uint32(uint64(affinityHash(salt, key.VIPID, key.Client)) * uint64(buckets) >> 32)
}

func makeRoute(vipID uint32, a Affinity) uint64 {
	route := uint64(vipID) | uint64(a.Backend)<<routeBackendShift | uint64(a.Generation)<<routeGenerationShift
	if a.Probationary {
		route |= routeProbation
	}
	return route
}

func routeVIP(route uint64) uint32 { return uint32(route) & maxRouteVIP }

func decodeRoute(r uint64, lastSeen uint64) Affinity {
	return Affinity{Backend: BackendID(uint32(r>>routeBackendShift) & maxRouteID), Generation: uint32(r >> routeGenerationShift),
		LastSeen: lastSeen, Probationary: r&routeProbation != 0}
}

// errAffinityBusy: a way kept changing under a writer.
var errAffinityBusy = errors.New("the client's affinity bucket is being written by the datapath, try again")

// ErrAffinityFull: every way of the client's bucket holds a fresh
// established client, which a new client never displaces.
var ErrAffinityFull = errors.New("no room in the client's affinity bucket")

// affinityTable implements the affinity operations over buckets that live in
// a Go slice (Fake) or in the kernel's map, mapped into this process
// (Kernel). Routes are read and written atomically, as the datapath does.
type affinityTable struct {
	buckets []loader.TetherAffinityBucket
	salt    uint64
}

func (t affinityTable) bucket(key AffinityKey) *loader.TetherAffinityBucket {
	return &t.buckets[AffinityBucket(uint32(len(t.buckets)), t.salt, key)]
}

// way is one way as read: its route, key and entry, or ok false if it is
// empty, being written, or changed while it was read.
type way struct {
	route uint64
	key   AffinityKey
	entry Affinity
	ok    bool
}

func readWay(e *loader.TetherAffinityEntry) way {
	r := atomic.LoadUint64(&e.Route)
	if r == 0 || r == routeBusy {
		return way{}
	}
	w := way{route: r, key: AffinityKey{VIPID: routeVIP(r), Client: e.Client}, entry: decodeRoute(r, e.LastSeenNs)}
	w.ok = atomic.LoadUint64(&e.Route) == r
	return w
}

// eachWay calls fn for every way of b that holds a client, once per client:
// a second way of the same client is left out.
func eachWay(b *loader.TetherAffinityBucket, fn func(*loader.TetherAffinityEntry, way)) {
	var seen [AffinityWays]AffinityKey
	n := 0
ways:
	for i := range b.Way {
		w := readWay(&b.Way[i])
		if !w.ok {
			continue
		}
		for _, key := range seen[:n] {
			if key == w.key {
				continue ways
			}
		}
		seen[n] = w.key
		n++
		fn(&b.Way[i], w)
	}
}

// find returns the first way holding key and its route.
func (t affinityTable) find(key AffinityKey) (*loader.TetherAffinityEntry, uint64) {
	if len(t.buckets) == 0 {
		return nil, 0
	}
	b := t.bucket(key)
	for i := range b.Way {
		if w := readWay(&b.Way[i]); w.ok && w.key == key {
			return &b.Way[i], w.route
		}
	}
	return nil, 0
}

func (t affinityTable) get(key AffinityKey) (Affinity, error) {
	e, r := t.find(key)
	if e == nil {
		return Affinity{}, fmt.Errorf("looking up affinity of VIP id %d: %w", key.VIPID, ErrNotFound)
	}
	return decodeRoute(r, e.LastSeenNs), nil
}

// keepWay says whether a way must not be a victim, by its route and
// last-seen stamp; nil keeps none.
type keepWay func(route, lastSeen uint64) bool

// victim is the way a client without one takes, and its route as judged:
// the first empty way, else the least recently seen one no writer holds and
// keep does not keep (the first of equals). When keep keeps every way no
// writer holds, none (nil), unless a writer holds one: way 0, busy.
func victim(b *loader.TetherAffinityBucket, keep keepWay) (*loader.TetherAffinityEntry, uint64) {
	var v *loader.TetherAffinityEntry
	var vRoute uint64
	busy := false
	for w := range b.Way {
		e := &b.Way[w]
		r := atomic.LoadUint64(&e.Route)
		switch {
		case r == 0:
			return e, 0
		case r == routeBusy:
			busy = true
		case keep != nil && keep(r, e.LastSeenNs):
		case v == nil || e.LastSeenNs < v.LastSeenNs:
			v, vRoute = e, r
		}
	}
	switch {
	case v != nil:
		return v, vRoute
	case busy:
		return &b.Way[0], routeBusy
	}
	return nil, 0
}

// admitted keeps, as the datapath admits a new client at now, every way
// that holds a fresh established client (fresh by timeout).
func admitted(now uint64, timeout time.Duration) keepWay {
	return func(route, lastSeen uint64) bool {
		return route&routeProbation == 0 && Fresh(now, lastSeen, timeout)
	}
}

// put writes key's entry into its own way, or else into the victim's that
// keep leaves. It returns the other client's entry it replaced, and
// ErrAffinityFull when keep kept every way.
func (t affinityTable) put(key AffinityKey, a Affinity, keep keepWay) (replaced Affinity, ok bool, err error) {
	switch {
	case len(t.buckets) == 0:
		return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: the affinity table has no buckets", key.VIPID)
	case key.VIPID >= maxRouteVIP:
		return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: id out of range 0..%d", key.VIPID, maxRouteVIP-1)
	case a.Backend == 0 || a.Backend > BackendID(maxRouteID):
		return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: backend id %d out of range 1..%d", key.VIPID, a.Backend, maxRouteID)
	}
	for range 3 {
		e, seen := t.find(key)
		if e == nil {
			e, seen = victim(t.bucket(key), keep)
		}
		if e == nil {
			return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: %w", key.VIPID, ErrAffinityFull)
		}
		if seen == routeBusy || !atomic.CompareAndSwapUint64(&e.Route, seen, routeBusy) {
			continue
		}
		if old := (AffinityKey{VIPID: routeVIP(seen), Client: e.Client}); seen != 0 && old != key {
			replaced, ok = decodeRoute(seen, e.LastSeenNs), true
		}
		e.Client = key.Client
		e.LastSeenNs = a.LastSeen
		atomic.SwapUint64(&e.Route, makeRoute(key.VIPID, a))
		return replaced, ok, nil
	}
	return Affinity{}, false, fmt.Errorf("writing affinity of VIP id %d: %w", key.VIPID, errAffinityBusy)
}

// delete clears every way holding key. It claims a way before it clears
// it, as a writer does, and compares the client again while it holds it: a
// way the datapath rewrote for another client with an equal route since it
// was read is put back, not cleared. A way a writer holds is not key's yet:
// the delete comes first.
func (t affinityTable) delete(key AffinityKey) error {
	if len(t.buckets) == 0 {
		return fmt.Errorf("deleting affinity of VIP id %d: %w", key.VIPID, ErrNotFound)
	}
	b := t.bucket(key)
	found, busy := false, false
	for i := range b.Way {
		e := &b.Way[i]
		cleared := false
		for range 3 {
			w := readWay(e)
			if !w.ok || w.key != key {
				cleared = true // not key's, or no longer
				break
			}
			if !atomic.CompareAndSwapUint64(&e.Route, w.route, routeBusy) {
				continue
			}
			if e.Client == key.Client {
				atomic.StoreUint64(&e.Route, 0)
				found = true
			} else {
				atomic.StoreUint64(&e.Route, w.route)
			}
			cleared = true
			break
		}
		busy = busy || !cleared
	}
	switch {
	case busy:
		return fmt.Errorf("deleting affinity of VIP id %d: %w", key.VIPID, errAffinityBusy)
	case !found:
		return fmt.Errorf("deleting affinity of VIP id %d: %w", key.VIPID, ErrNotFound)
	}
	return nil
}

// each calls fn for every client's entry; a way that changes while it is
// read is skipped.
func (t affinityTable) each(fn func(AffinityKey, Affinity)) {
	for i := range t.buckets {
		eachWay(&t.buckets[i], func(_ *loader.TetherAffinityEntry, w way) { fn(w.key, w.entry) })
	}
}

func (t affinityTable) count() AffinityCounts {
	var n AffinityCounts
	for i := range t.buckets {
		eachWay(&t.buckets[i], func(_ *loader.TetherAffinityEntry, w way) {
			n.Entries++
			if w.entry.Probationary {
				n.Probationary++
			}
		})
	}
	return n
}
