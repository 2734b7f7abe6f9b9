package maps

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/tether-lb/tether/loader"
)

// Fake is Maps in memory, with the kernel maps' semantics: the backends and
// Maglev arrays read as zero where never written, and ids out of range fail.
// Its affinity table is the datapath's: same buckets, ways and evictions.
type Fake struct {
	mu       sync.Mutex
	limits   Limits
	vips     map[VIPKey]VIP
	backends map[BackendID]Backend
	tables   map[uint32][]BackendID // by TableIndex of entry 0
	affinity affinityTable
	settings Settings
	counters map[uint32]Counters
	txPorts  map[uint32]bool
}

// NewFake returns empty maps with the given limits.
func NewFake(limits Limits) *Fake {
	return &Fake{
		limits:   limits,
		vips:     make(map[VIPKey]VIP),
		backends: make(map[BackendID]Backend),
		tables:   make(map[uint32][]BackendID),
		affinity: affinityTable{buckets: make([]loader.TetherAffinityBucket, limits.AffinityBuckets)},
		counters: make(map[uint32]Counters),
		txPorts:  make(map[uint32]bool),
	}
}

// Limits returns the sizes the maps were created with.
func (f *Fake) Limits() Limits { return f.limits }

// VIP returns the entry of key.
func (f *Fake) VIP(key VIPKey) (VIP, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vips[key]
	if !ok {
		return VIP{}, fmt.Errorf("looking up VIP %s: %w", key, ErrNotFound)
	}
	return v, nil
}

// PutVIP creates or replaces the entry of key.
func (f *Fake) PutVIP(key VIPKey, v VIP) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vips[key] = v
	return nil
}

// DeleteVIP removes the entry of key.
func (f *Fake) DeleteVIP(key VIPKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vips[key]; !ok {
		return fmt.Errorf("deleting VIP %s: %w", key, ErrNotFound)
	}
	delete(f.vips, key)
	return nil
}

// VIPs returns every entry.
func (f *Fake) VIPs() (map[VIPKey]VIP, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.vips), nil
}

// Backend returns backend id's entry; an unused id reads as a zero entry.
func (f *Fake) Backend(id BackendID) (Backend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if uint32(id) >= f.limits.MaxBackends {
		return Backend{}, fmt.Errorf("looking up backend %d: %w", id, ErrNotFound)
	}
	b := f.backends[id]
	b.MAC = slices.Clone(b.MAC)
	b.SourceMAC = slices.Clone(b.SourceMAC)
	return b, nil
}

// PutBackend writes backend id's entry.
func (f *Fake) PutBackend(id BackendID, b Backend) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id == 0 || uint32(id) >= f.limits.MaxBackends {
		return fmt.Errorf("writing backend %d: id out of range 1..%d", id, f.limits.MaxBackends-1)
	}
	b.MAC = slices.Clone(b.MAC)
	b.SourceMAC = slices.Clone(b.SourceMAC)
	f.backends[id] = b
	return nil
}

// PutTable writes table into the VIP's table slot.
func (f *Fake) PutTable(vipID uint32, slot uint8, table []BackendID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vipID >= f.limits.MaxVIPs || uint32(len(table)) > f.limits.TableStride {
		return fmt.Errorf("writing Maglev table of VIP id %d: id or size %d out of range", vipID, len(table))
	}
	base := f.limits.TableIndex(vipID, slot, 0)
	stored := f.tables[base]
	if stored == nil {
		stored = make([]BackendID, f.limits.TableStride)
		f.tables[base] = stored
	}
	copy(stored, table)
	return nil
}

// Table reads the first size entries of the VIP's table slot.
func (f *Fake) Table(vipID uint32, slot uint8, size uint32) ([]BackendID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vipID >= f.limits.MaxVIPs || size > f.limits.TableStride {
		return nil, fmt.Errorf("reading Maglev table of VIP id %d: id or size %d out of range", vipID, size)
	}
	out := make([]BackendID, size)
	copy(out, f.tables[f.limits.TableIndex(vipID, slot, 0)])
	return out, nil
}

// TableEntry reads one Maglev map entry by its flat index, as the datapath
// does; out of range reads as "no entry".
func (f *Fake) TableEntry(index uint32) (BackendID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if index >= f.limits.MaxVIPs*2*f.limits.TableStride {
		return 0, false
	}
	stride := f.limits.TableStride
	table := f.tables[index-index%stride]
	if table == nil {
		return 0, true
	}
	return table[index%stride], true
}

// Affinity returns a client's entry.
func (f *Fake) Affinity(key AffinityKey) (Affinity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.affinity.get(key)
}

// SetAffinitySalt sets the salt of the affinity table's hash, as the loader
// draws one for a new table. The table must be empty: nothing is moved.
func (f *Fake) SetAffinitySalt(salt uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.affinity.salt = salt
}

// PutAffinity writes a client's entry, into its own way or the bucket's
// least recently seen one, as user space may.
func (f *Fake) PutAffinity(key AffinityKey, a Affinity) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, _, err := f.affinity.put(key, a, nil)
	return err
}

// AdmitAffinity writes a client's entry as the datapath does at now for a
// VIP of the given affinity timeout: into its own way, or else a way that
// holds no fresh established client (ErrAffinityFull if there is none). It
// returns the other client's entry it took the place of, if it did.
func (f *Fake) AdmitAffinity(key AffinityKey, a Affinity, now uint64, timeout time.Duration) (replaced Affinity, ok bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.affinity.put(key, a, admitted(now, timeout))
}

// DeleteAffinity removes a client's entry.
func (f *Fake) DeleteAffinity(key AffinityKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.affinity.delete(key)
}

// Affinities returns every entry.
func (f *Fake) Affinities() (map[AffinityKey]Affinity, error) {
	out := make(map[AffinityKey]Affinity)
	err := f.ForEachAffinity(func(key AffinityKey, a Affinity) { out[key] = a })
	return out, err
}

// ForEachAffinity calls fn for every entry, on a copy taken first.
func (f *Fake) ForEachAffinity(fn func(AffinityKey, Affinity)) error {
	f.mu.Lock()
	copied := affinityTable{buckets: slices.Clone(f.affinity.buckets)}
	f.mu.Unlock()
	copied.each(fn)
	return nil
}

// AffinityCount counts the entries, and those on probation.
func (f *Fake) AffinityCount() (AffinityCounts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.affinity.count(), nil
}

// Settings returns the datapath's switches.
func (f *Fake) Settings() (Settings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.settings, nil
}

// PutSettings writes the datapath's switches.
func (f *Fake) PutSettings(s Settings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settings = s
	return nil
}

// Counters returns a counter slot.
func (f *Fake) Counters(slot uint32) (Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slot >= 1+f.limits.MaxVIPs+f.limits.MaxBackends {
		return Counters{}, fmt.Errorf("reading counter slot %d: %w", slot, ErrNotFound)
	}
	return f.counters[slot], nil
}

// UpdateCounters changes a counter slot in place, as the datapath does.
func (f *Fake) UpdateCounters(slot uint32, update func(*Counters)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counters[slot]
	update(&c)
	f.counters[slot] = c
}

// PutTxPort lets the datapath redirect frames out of ifindex.
func (f *Fake) PutTxPort(ifindex uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.txPorts[ifindex] = true
	return nil
}

// DeleteTxPort removes ifindex from the redirect targets.
func (f *Fake) DeleteTxPort(ifindex uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.txPorts[ifindex] {
		return fmt.Errorf("removing tx port ifindex %d: %w", ifindex, ErrNotFound)
	}
	delete(f.txPorts, ifindex)
	return nil
}

// HasTxPort reports whether ifindex is a redirect target.
func (f *Fake) HasTxPort(ifindex uint32) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.txPorts[ifindex]
}
