package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
)

// TestAffinityTableConcurrentWriters runs the program on every CPU at once
// for 64 clients that share an affinity table of 3 buckets, so that CPUs
// keep evicting and inserting into the same ways, while user space deletes
// and rewrites entries in place. The Maglev table never changes, so every
// packet must reach its client's Maglev backend: a reader that paired one
// client's address with another's route would send it elsewhere. Every
// entry left at the end must be a client's own.
func TestAffinityTableConcurrentWriters(t *testing.T) {
	cpus := runtime.NumCPU()
	if cpus < 2 {
		t.Skip("needs two CPUs to run the program concurrently")
	}
	opts := testOptions
	opts.AffinityCapacity = 4
	h := newHarnessWith(t, opts)
	h.setupFixture()

	const clients = 64
	frames := make([][]byte, clients)
	keys := make([]maps.AffinityKey, clients)
	want := map[maps.AffinityKey]maps.BackendID{}
	for i := range clients {
		addr := netip.AddrFrom4([4]byte{198, 18, 2, byte(i)})
		frames[i] = frame(addr, vip4)
		keys[i] = maps.AffinityKey{VIPID: 0, Client: maps.ClientKey(addr, 32)}
		// The model's answer on its own maps: Maglev's, as nothing is pinned.
		want[keys[i]] = h.model.Run(frames[i], monotonicCoarse()).Backend
	}

	deadline := time.Now().Add(2 * time.Second)
	var runs atomic.Uint64
	errs := make(chan error, cpus+1)
	var wg sync.WaitGroup
	for cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- runOnCPU(cpu, func(rng *rand.Rand) error {
				for time.Now().Before(deadline) {
					i := rng.IntN(clients)
					verdict, out, err := h.runKernel(frames[i])
					if err != nil {
						return err
					}
					if verdict != maps.XDPTx || !bytes.Equal(out[:6], backendMAC(want[keys[i]])) {
						return fmt.Errorf("client %d: verdict %d to MAC % x, want XDP_TX to backend %d", i, verdict, out[:6], want[keys[i]])
					}
					runs.Add(1)
				}
				return nil
			})
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rewrites := 0
		for time.Now().Before(deadline) {
			key := keys[rewrites%clients]
			if err := h.kernel.DeleteAffinity(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
				errs <- err
				return
			}
			// A write that keeps losing its way to the program fails; a
			// later one tries again.
			_ = h.kernel.PutAffinity(key, maps.Affinity{Backend: want[key], Generation: 1, LastSeen: monotonicCoarse()})
			rewrites++
		}
		errs <- nil
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	entries, err := h.kernel.Affinities()
	if err != nil {
		t.Fatal(err)
	}
	for key, a := range entries {
		if backend, ok := want[key]; !ok || a.Backend != backend {
			t.Errorf("entry %+v -> backend %d, want one of the clients' own (%d, known %v)", key, a.Backend, backend, ok)
		}
	}
	global, err := h.kernel.Counters(maps.GlobalSlot)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d packets on %d CPUs, %d entries left; inserts %d, failed inserts (lost the way to another writer) %d, evictions of clients on probation %d",
		runs.Load(), cpus, len(entries), global.Affinity[loader.TetherAffinityEventAFFINITY_INSERT],
		global.Affinity[loader.TetherAffinityEventAFFINITY_INSERT_FAILED], global.Affinity[maps.AffinityEvictProbation])
}

// runOnCPU runs fn on a thread pinned to cpu.
func runOnCPU(cpu int, fn func(*rand.Rand) error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pinning to CPU %d: %w", cpu, err)
	}
	return fn(rand.New(rand.NewPCG(uint64(cpu), 1)))
}

// TestVIPChangeSeenOnEveryCPU warms every CPU's VIP cache, then changes
// the VIP entries: the next packet on every CPU must follow the new entry,
// as the model (which has no cache) does.
func TestVIPChangeSeenOnEveryCPU(t *testing.T) {
	h := newHarness(t)
	h.setupFixture()
	onEveryCPU := func(frame []byte, want maps.Outcome) {
		t.Helper()
		for cpu := range runtime.NumCPU() {
			if err := runOnCPU(cpu, func(*rand.Rand) error {
				res, err := h.compare(frame)
				if err == nil && res.Outcome != want {
					err = fmt.Errorf("outcome %d, want %d", res.Outcome, want)
				}
				return err
			}); err != nil {
				t.Fatalf("CPU %d: %v", cpu, err)
			}
		}
	}
	onEveryCPU(frame(client4, vip4), maps.OutcomeForwardTX)
	onEveryCPU(frame(client6, vip6), maps.OutcomeForwardTX)

	// No table, pass when no backend: a new client passes (client4 has an
	// entry and keeps its backend). Then the VIP is gone.
	h.apply(func(m maps.Maps) error {
		vip, err := m.VIP(vip4)
		if err != nil {
			return err
		}
		vip.TableSize, vip.NoBackendPass = 0, true
		return m.PutVIP(vip4, vip)
	})
	onEveryCPU(frame(netip.MustParseAddr("198.18.0.77"), vip4), maps.OutcomePassNoBackend)
	h.apply(func(m maps.Maps) error { return m.DeleteVIP(vip4) })
	onEveryCPU(frame(client4, vip4), maps.OutcomePassNotVIP)
	// The other VIP is untouched.
	onEveryCPU(frame(client6, vip6), maps.OutcomeForwardTX)
}

// TestKernelCloseWaitsForScans closes the Kernel while a scan of the
// affinity table is running, as a daemon shutting down may while a scrape
// counts clients: Close waits for the scan instead of unmapping the table
// under it, and the table reads as empty afterwards.
func TestKernelCloseWaitsForScans(t *testing.T) {
	h := newHarness(t)
	key := maps.AffinityKey{VIPID: 1, Client: [16]byte{198, 18, 0, 7}}
	if err := h.kernel.PutAffinity(key, maps.Affinity{Backend: 2, Generation: 1, LastSeen: 1}); err != nil {
		t.Fatal(err)
	}
	inScan, release := make(chan struct{}), make(chan struct{})
	scanned := make(chan error, 1)
	go func() {
		scanned <- h.kernel.ForEachAffinity(func(maps.AffinityKey, maps.Affinity) {
			close(inScan)
			<-release
		})
	}()
	<-inScan
	closed := make(chan error, 1)
	go func() { closed <- h.kernel.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a scan was reading the table", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-scanned; err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if n, err := h.kernel.AffinityCount(); err != nil || n.Entries != 0 {
		t.Errorf("after Close: %d entries (%v), want an empty table", n, err)
	}
}
