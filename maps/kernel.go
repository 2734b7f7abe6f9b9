package maps

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
)

// Kernel is Maps over the datapath's real BPF maps.
type Kernel struct {
	maps   *loader.TetherMaps
	limits Limits
	// mu guards the mappings: Close unmaps them only when no call is
	// reading them (a scrape may still be scanning the table as the daemon
	// shuts down).
	mu       sync.RWMutex
	affinity affinityTable // the affinity map, mapped into this process
	vipEpoch *uint64       // the vip_epoch map's value, mapped
	mapped   [][]byte
}

// NewKernel wraps loaded maps created with the given limits. It maps the
// affinity table and the VIP epoch into this process, where they are read
// and written in place, as the datapath does; Close unmaps them.
func NewKernel(m *loader.TetherMaps, limits Limits) (*Kernel, error) {
	buckets := m.Affinity.MaxEntries()
	bucketSize := uint32(unsafe.Sizeof(loader.TetherAffinityBucket{}))
	switch {
	case buckets != limits.AffinityBuckets:
		return nil, fmt.Errorf("mapping the affinity table: it has %d buckets, the limits say %d", buckets, limits.AffinityBuckets)
	case m.Affinity.ValueSize() != bucketSize || m.Affinity.Flags()&unix.BPF_F_MMAPABLE == 0:
		return nil, fmt.Errorf("mapping the affinity table: buckets of %d bytes, flags %#x; want %d-byte buckets in an mmapable array",
			m.Affinity.ValueSize(), m.Affinity.Flags(), bucketSize)
	}
	k := &Kernel{maps: m, limits: limits}
	if err := m.AffinitySalt.Lookup(uint32(0), &k.affinity.salt); err != nil {
		return nil, fmt.Errorf("reading the affinity table's salt: %w", err)
	}
	table, err := k.mmap(m.Affinity, int(buckets)*int(bucketSize))
	if err != nil {
		return nil, fmt.Errorf("mapping the affinity table: %w", err)
	}
	k.affinity.buckets = unsafe.Slice((*loader.TetherAffinityBucket)(table), buckets)
	epoch, err := k.mmap(m.VipEpoch, 8)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("mapping the VIP epoch: %w", err), k.Close())
	}
	k.vipEpoch = (*uint64)(epoch)
	// A writer that died between a VIP update and its bump left copies the
	// programs' caches must not keep.
	k.vipsChanged()
	return k, nil
}

// SetAffinitySalt replaces the affinity table's salt, for tests that need a
// known one. The table must be empty: entries are not moved to their new
// buckets.
func (k *Kernel) SetAffinitySalt(salt uint64) error {
	if err := k.maps.AffinitySalt.Put(uint32(0), salt); err != nil {
		return fmt.Errorf("writing the affinity table's salt: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.affinity.salt = salt
	return nil
}

// mmap maps the first size bytes of an mmapable array map.
func (k *Kernel) mmap(m *ebpf.Map, size int) (unsafe.Pointer, error) {
	page := os.Getpagesize()
	mapped, err := unix.Mmap(m.FD(), 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap of %d bytes: %w", size, err)
	}
	k.mapped = append(k.mapped, mapped)
	return unsafe.Pointer(unsafe.SliceData(mapped)), nil
}

// errClosed: the Kernel was closed.
var errClosed = errors.New("the datapath's maps were closed")

// Close unmaps what NewKernel mapped. The maps stay open; the affinity table
// reads as empty and VIPs can no longer be changed.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.affinity, k.vipEpoch = affinityTable{}, nil
	var errs []error
	for _, mapped := range k.mapped {
		if err := unix.Munmap(mapped); err != nil {
			errs = append(errs, fmt.Errorf("unmapping a map: %w", err))
		}
	}
	k.mapped = nil
	return errors.Join(errs...)
}

// vipsChanged tells the datapath's per-CPU VIP caches that their copies
// are out of date.
func (k *Kernel) vipsChanged() {
	atomic.AddUint64(k.vipEpoch, 1)
}

// Limits returns the sizes the maps were created with.
func (k *Kernel) Limits() Limits { return k.limits }

func notFound(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// VIP returns the entry of key.
func (k *Kernel) VIP(key VIPKey) (VIP, error) {
	var v loader.TetherVipInfo
	if err := k.maps.Vips.Lookup(encodeVIPKey(key), &v); err != nil {
		return VIP{}, fmt.Errorf("looking up VIP %s: %w", key, notFound(err))
	}
	return decodeVIP(v), nil
}

// PutVIP creates or replaces the entry of key.
func (k *Kernel) PutVIP(key VIPKey, v VIP) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.vipEpoch == nil {
		return fmt.Errorf("writing VIP %s: %w", key, errClosed)
	}
	if err := k.maps.Vips.Put(encodeVIPKey(key), encodeVIP(v)); err != nil {
		return fmt.Errorf("writing VIP %s: %w", key, err)
	}
	k.vipsChanged()
	return nil
}

// DeleteVIP removes the entry of key.
func (k *Kernel) DeleteVIP(key VIPKey) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.vipEpoch == nil {
		return fmt.Errorf("deleting VIP %s: %w", key, errClosed)
	}
	if err := k.maps.Vips.Delete(encodeVIPKey(key)); err != nil {
		return fmt.Errorf("deleting VIP %s: %w", key, notFound(err))
	}
	k.vipsChanged()
	return nil
}

// VIPs returns every entry, fragment aliases included.
func (k *Kernel) VIPs() (map[VIPKey]VIP, error) {
	out := make(map[VIPKey]VIP)
	var key loader.TetherVipKey
	var v loader.TetherVipInfo
	it := k.maps.Vips.Iterate()
	for it.Next(&key, &v) {
		out[decodeVIPKey(key)] = decodeVIP(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing VIPs: %w", err)
	}
	return out, nil
}

// Backend returns backend id's entry; an unused id reads as a zero entry.
func (k *Kernel) Backend(id BackendID) (Backend, error) {
	var b loader.TetherBackend
	if err := k.maps.Backends.Lookup(uint32(id), &b); err != nil {
		return Backend{}, fmt.Errorf("looking up backend %d: %w", id, notFound(err))
	}
	return decodeBackend(b), nil
}

// PutBackend writes backend id's entry.
func (k *Kernel) PutBackend(id BackendID, b Backend) error {
	if id == 0 || uint32(id) >= k.limits.MaxBackends {
		return fmt.Errorf("writing backend %d: id out of range 1..%d", id, k.limits.MaxBackends-1)
	}
	if err := k.maps.Backends.Put(uint32(id), encodeBackend(b)); err != nil {
		return fmt.Errorf("writing backend %d: %w", id, err)
	}
	return nil
}

// PutTable writes table into the VIP's table slot in one batch.
func (k *Kernel) PutTable(vipID uint32, slot uint8, table []BackendID) error {
	if vipID >= k.limits.MaxVIPs || uint32(len(table)) > k.limits.TableStride {
		return fmt.Errorf("writing Maglev table of VIP id %d: id or size %d out of range", vipID, len(table))
	}
	keys := make([]uint32, len(table))
	values := make([]uint32, len(table))
	for i, id := range table {
		keys[i] = k.limits.TableIndex(vipID, slot, uint32(i))
		values[i] = uint32(id)
	}
	if _, err := k.maps.Maglev.BatchUpdate(keys, values, nil); err != nil {
		return fmt.Errorf("writing Maglev table of VIP id %d slot %d: %w", vipID, slot, err)
	}
	return nil
}

// Table reads the first size entries of the VIP's table slot.
func (k *Kernel) Table(vipID uint32, slot uint8, size uint32) ([]BackendID, error) {
	if vipID >= k.limits.MaxVIPs || size > k.limits.TableStride {
		return nil, fmt.Errorf("reading Maglev table of VIP id %d: id or size %d out of range", vipID, size)
	}
	out := make([]BackendID, size)
	for i := range out {
		var id uint32
		if err := k.maps.Maglev.Lookup(k.limits.TableIndex(vipID, slot, uint32(i)), &id); err != nil {
			return nil, fmt.Errorf("reading Maglev table of VIP id %d slot %d: %w", vipID, slot, err)
		}
		out[i] = BackendID(id)
	}
	return out, nil
}

// Affinity returns a client's entry.
func (k *Kernel) Affinity(key AffinityKey) (Affinity, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.affinity.get(key)
}

// PutAffinity writes a client's entry, into its own way or the bucket's
// least recently seen one, as user space may.
func (k *Kernel) PutAffinity(key AffinityKey, a Affinity) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	_, _, err := k.affinity.put(key, a, nil)
	return err
}

// DeleteAffinity removes a client's entry.
func (k *Kernel) DeleteAffinity(key AffinityKey) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.affinity.delete(key)
}

// Affinities returns every entry.
func (k *Kernel) Affinities() (map[AffinityKey]Affinity, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make(map[AffinityKey]Affinity)
	k.affinity.each(func(key AffinityKey, a Affinity) { out[key] = a })
	return out, nil
}

// ForEachAffinity calls fn for every entry, read in place.
func (k *Kernel) ForEachAffinity(fn func(AffinityKey, Affinity)) error {
	k.mu.RLock()
	defer k.mu.RUnlock()
	k.affinity.each(fn)
	return nil
}

// AffinityCount counts the entries, and those on probation.
func (k *Kernel) AffinityCount() (AffinityCounts, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.affinity.count(), nil
}

// Settings returns the datapath's switches.
func (k *Kernel) Settings() (Settings, error) {
	var s loader.TetherLbSettings
	if err := k.maps.Settings.Lookup(uint32(0), &s); err != nil {
		return Settings{}, fmt.Errorf("reading settings: %w", err)
	}
	return decodeSettings(s), nil
}

// PutSettings writes the datapath's switches in one update.
func (k *Kernel) PutSettings(s Settings) error {
	if err := k.maps.Settings.Put(uint32(0), encodeSettings(s)); err != nil {
		return fmt.Errorf("writing settings: %w", err)
	}
	return nil
}

// Counters returns a counter slot summed over CPUs.
func (k *Kernel) Counters(slot uint32) (Counters, error) {
	var perCPU []loader.TetherLbCounters
	if err := k.maps.Counters.Lookup(slot, &perCPU); err != nil {
		return Counters{}, fmt.Errorf("reading counter slot %d: %w", slot, err)
	}
	var sum Counters
	for _, c := range perCPU {
		for i := range sum.Packets {
			sum.Packets[i] += c.Packets[i]
			sum.Bytes[i] += c.Bytes[i]
		}
		for i := range sum.Affinity {
			sum.Affinity[i] += c.Affinity[i]
		}
	}
	return sum, nil
}

// PutTxPort lets the datapath redirect frames out of ifindex.
func (k *Kernel) PutTxPort(ifindex uint32) error {
	if err := k.maps.TxPorts.Put(ifindex, ifindex); err != nil {
		return fmt.Errorf("adding tx port ifindex %d: %w", ifindex, err)
	}
	return nil
}

// DeleteTxPort removes ifindex from the redirect targets.
func (k *Kernel) DeleteTxPort(ifindex uint32) error {
	if err := k.maps.TxPorts.Delete(ifindex); err != nil {
		return fmt.Errorf("removing tx port ifindex %d: %w", ifindex, notFound(err))
	}
	return nil
}
