// Package maglev builds the consistent-hash lookup table of a VIP.
//
// Every VIP owns a table of a prime number of slots, each holding the
// datapath id of a backend (0 means "no backend"). For a packet that has no
// live affinity entry, the XDP program picks the backend
//
//	table[ClientHash(seed, key) % size]
//
// where key is the masked client address. The table is filled with the
// Maglev population algorithm (Eisenbud et al., NSDI 2016), extended with
// weights: each backend gets a share of the slots proportional to its
// weight, and when the backend set changes only a small part of the slots
// change owner, so most clients keep their backend.
//
// Build is deterministic: the table depends only on the seed and on the set
// of (name, ID, weight) triples, never on the order of the input or on the
// process or machine that builds it, so all load balancers that share a
// configuration compute the same table.
package maglev

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
)

// Backend is one entry of a VIP's backend set as the table builder sees it.
type Backend struct {
	Name   string // unique within the VIP; the table depends on it, not on ID
	ID     uint32 // what the table stores (the datapath's backend id, never 0)
	Weight uint32 // relative share; 0 means the backend gets no slots
}

// DefaultTableSize is the table size used when a VIP does not choose one. It
// is prime, and large enough that a few hundred backends still get shares
// within a fraction of a percent of their weight.
const DefaultTableSize = 65537

// IsPrime reports whether n is a prime number.
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	if n%3 == 0 {
		return n == 3
	}
	for i := uint64(5); i*i <= uint64(n); i += 6 {
		if uint64(n)%i == 0 || uint64(n)%(i+2) == 0 {
			return false
		}
	}
	return true
}

// Build returns the Maglev table of size slots for backends, hashed with
// seed. Each slot holds the ID of a backend; a backend's share of the slots
// is proportional to its weight (up to rounding), and backends with weight 0
// get none. If no backend has a non-zero weight, every slot is 0.
//
// size must be a prime of at least 3 (DefaultTableSize unless there is a
// reason to differ), and no more backends than size may have a non-zero
// weight. Names must be non-empty and unique and IDs must be non-zero; these
// rules apply to weight-0 backends too. The table depends only on seed and
// the set of backends, not on their order in the slice, which Build does not
// modify.
//
// Population works in rounds over the backends sorted by name. A backend's
// credit grows by its weight every round, and each time the credit reaches
// the largest weight in the set the backend spends that much and claims the
// next slot of its own preference list that is still empty. The preference
// list of a backend is the permutation (offset + j*skip) % size, j = 0, 1, ...,
// where offset and skip come from two different hashes of the seed and the
// backend's name. With equal weights this is the original Maglev algorithm.
func Build(backends []Backend, size uint32, seed uint32) ([]uint32, error) {
	if err := checkSize(size); err != nil {
		return nil, err
	}
	sorted, err := sortByName(backends)
	if err != nil {
		return nil, err
	}
	active, maxWeight := weights(sorted)
	if uint64(active) > uint64(size) {
		return nil, fmt.Errorf("maglev: %d backends have a non-zero weight but the table has only %d slots (expected at most %d weighted backends)", active, size, size)
	}
	table := make([]uint32, size)
	if active == 0 {
		return table, nil
	}
	p := newPopulation(sorted, active, maxWeight, table, seed)
	p.fill()
	return table, nil
}

// checkSize returns an error unless size is a prime of at least 3.
func checkSize(size uint32) error {
	if size == 2 {
		return fmt.Errorf("maglev: table size %d is too small (expected a prime of at least 3 such as %d)", size, DefaultTableSize)
	}
	if !IsPrime(size) {
		return fmt.Errorf("maglev: table size %d is not a prime (expected a prime such as %d)", size, DefaultTableSize)
	}
	return nil
}

// sortByName returns a copy of backends sorted by name, or an error if a
// name is empty or not unique or an ID is 0.
func sortByName(backends []Backend) ([]Backend, error) {
	sorted := slices.Clone(backends)
	for i, b := range sorted {
		if b.Name == "" {
			return nil, fmt.Errorf("maglev: backend #%d (ID %d) has an empty name (expected a unique non-empty name)", i, b.ID)
		}
		if b.ID == 0 {
			return nil, fmt.Errorf("maglev: backend %q has ID 0 (expected a non-zero datapath backend id)", b.Name)
		}
	}
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
	for i := 1; i < len(sorted); i++ {
		if prev, b := sorted[i-1], sorted[i]; prev.Name == b.Name {
			return nil, fmt.Errorf("maglev: duplicate backend name %q (IDs %d and %d; expected unique names)", b.Name, prev.ID, b.ID)
		}
	}
	return sorted, nil
}

// weights returns how many of backends have a non-zero weight, and the
// largest weight.
func weights(backends []Backend) (active int, maxWeight uint32) {
	for _, b := range backends {
		if b.Weight > 0 {
			active++
			maxWeight = max(maxWeight, b.Weight)
		}
	}
	return active, maxWeight
}

// population is the state of Build while it fills a table.
//
// With credit += weight per round, the k-th claim of a backend (k = 1,
// 2, ...) falls in round ceil(k*maxWeight/weight), and within a round the
// backends act in name order. Visiting every backend every round would
// cost O(rounds*N), which is bad when a few heavy backends sit next to
// many light ones. Instead the backends of the largest weight, which act
// in every round, are visited in a plain loop, and the lighter ones wait
// in a min-heap ordered by (round, name index) and are merged into that
// loop when their round comes. Every step fills one slot.
type population struct {
	table     []uint32
	size      uint32
	maxWeight uint64
	ws        []walker  // the weighted backends in name order
	heavy     []uint32  // indices into ws of backends with maxWeight
	light     claimHeap // the other backends' next claims
	filled    uint32    // slots filled so far
}

// newPopulation prepares filling table, which is empty, with the backends
// of sorted, which is in name order; active of them have a non-zero weight,
// the largest being maxWeight.
func newPopulation(sorted []Backend, active int, maxWeight uint32, table []uint32, seed uint32) population {
	size := uint32(len(table))
	p := population{
		table:     table,
		size:      size,
		maxWeight: uint64(maxWeight),
		ws:        make([]walker, 0, active),
		heavy:     make([]uint32, 0, active),
		light:     make(claimHeap, 0, active),
	}
	for _, b := range sorted {
		if b.Weight == 0 {
			continue
		}
		w := newWalker(b, size, seed)
		index := uint32(len(p.ws))
		if b.Weight == maxWeight {
			p.heavy = append(p.heavy, index)
		} else {
			p.light = append(p.light, claim{round: w.nextRound(p.maxWeight), index: index})
		}
		p.ws = append(p.ws, w)
	}
	p.light.init()
	return p
}

// fill lets the backends claim slots round by round until the table is
// full. Some backend has the largest weight and acts every round, so each
// round fills at least one slot and the loop ends within size rounds.
func (p *population) fill() {
	for r := uint64(1); ; r++ {
		for _, j := range p.heavy {
			if p.takeLight(r, j) || p.take(j) {
				return
			}
		}
		if p.takeLight(r, ^uint32(0)) {
			return
		}
	}
}

// takeLight lets the light backends whose turn comes in round r before the
// backend at name index limit claim their slots. It reports whether the
// table is full.
func (p *population) takeLight(r uint64, limit uint32) bool {
	for len(p.light) > 0 && p.light[0].round == r && p.light[0].index < limit {
		i := p.light[0].index
		if p.take(i) {
			return true
		}
		p.light[0].round = p.ws[i].nextRound(p.maxWeight)
		p.light.down(0)
	}
	return false
}

// take lets the backend at name index i claim its next slot. It reports
// whether the table is full.
func (p *population) take(i uint32) bool {
	p.ws[i].claim(p.table, p.size)
	p.filled++
	return p.filled == p.size
}

// walker is one weighted backend during population. Its preference list is
// walked lazily: pos is the slot it will try next, advancing by skip modulo
// the table size, so no permutation is ever materialized.
type walker struct {
	id     uint32
	weight uint64
	pos    uint32
	skip   uint32
	turns  uint64 // slots claimed so far
}

// newWalker returns b's walker at the start of its preference list, the
// permutation (offset + j*skip) % size, where offset and skip come from two
// hashes of seed and b's name.
func newWalker(b Backend, size uint32, seed uint32) walker {
	h1, h2 := nameHashes(seed, b.Name)
	return walker{
		id:     b.ID,
		weight: uint64(b.Weight),
		pos:    uint32(h1 % uint64(size)),
		skip:   uint32(h2%uint64(size-1)) + 1,
	}
}

// claim puts w's ID in the first empty slot left in its preference list.
// The caller guarantees that an empty slot exists; since skip and size are
// coprime the list visits every slot, so the search ends.
func (w *walker) claim(table []uint32, size uint32) {
	for table[w.pos] != 0 {
		w.advance(size)
	}
	table[w.pos] = w.id
	w.advance(size)
	w.turns++
}

// advance moves w to the next entry of its preference list.
func (w *walker) advance(size uint32) {
	// pos < size and skip < size, so the sum fits in 33 bits.
	next := uint64(w.pos) + uint64(w.skip)
	if next >= uint64(size) {
		next -= uint64(size)
	}
	w.pos = uint32(next)
}

// nextRound returns the 1-based round of w's next claim: the first round r
// with r*weight >= (turns+1)*maxWeight. turns < 2^32 and maxWeight < 2^32,
// so nothing overflows.
func (w *walker) nextRound(maxWeight uint64) uint64 {
	return ((w.turns+1)*maxWeight + w.weight - 1) / w.weight
}

// claim is a heap entry: the round of a walker's next claim and the
// walker's index, which is its position in name order.
type claim struct {
	round uint64
	index uint32
}

func (c claim) before(d claim) bool {
	return c.round < d.round || (c.round == d.round && c.index < d.index)
}

// claimHeap is a binary min-heap of claims, earliest first.
type claimHeap []claim

func (h claimHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// down restores the heap order below i after h[i] moved later.
func (h claimHeap) down(i int) {
	n := len(h)
	x := h[i]
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h[r].before(h[c]) {
			c = r
		}
		if !h[c].before(x) {
			break
		}
		h[i] = h[c]
		i = c
	}
	h[i] = x
}

// nameHashes returns two independent 64-bit hashes of seed and name, used for
// the offset and the skip of the name's preference list. They are FNV-1a
// (over a fixed prefix byte that differs between the two, the seed in
// big-endian order, then the name) followed by a 64-bit avalanche finalizer,
// because FNV alone leaves the low bits of similar names ("web-1", "web-2")
// correlated. Everything here is fixed arithmetic, so every process and
// machine gets the same values.
func nameHashes(seed uint32, name string) (uint64, uint64) {
	var buf [5]byte
	binary.BigEndian.PutUint32(buf[1:], seed)
	hash := func(prefix byte) uint64 {
		buf[0] = prefix
		f := fnv.New64a()
		f.Write(buf[:])
		f.Write([]byte(name))
		return mix64(f.Sum64())
	}
	return hash('o'), hash('s')
}

// mix64 is the 64-bit finalizer of MurmurHash3: a bijection that makes
// every output bit depend on every input bit.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
