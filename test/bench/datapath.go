package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/test/packets"
	"github.com/tether-lb/tether/userspace/maglev"
)

// The packet benchmarks' datapath: two VIPs (IPv4 and IPv6, TCP port 80)
// over 16 backends, Maglev tables of the default size, and an affinity map
// filled with the clients the rotating programs walk through. Every address
// lies in the benchmarking ranges 198.18.0.0/15 and 2001:db8::/32.

const (
	benchPort     = 80
	benchSeed     = 0x7e7e7e7e
	benchBackends = 16
	// The entries the benchmark writes stay fresh for the whole run; the
	// datapath's cost does not depend on the timeout's value.
	benchAffinityTimeout = time.Hour
)

var (
	benchVIP4 = netip.MustParseAddr("198.18.1.1")
	benchVIP6 = netip.MustParseAddr("2001:db8:1::1")
	// IPv4 clients: every address of 198.18.0.0/15 at most.
	clientBase4 = netip.MustParseAddr("198.18.0.0")
	// IPv6 clients: 2001:db8:N::1, one /64 each; N is the word the
	// rotating programs write.
	clientBase6 = netip.MustParseAddr("2001:db8::1")
)

// maxClients4 is the size of 198.18.0.0/15.
const maxClients4 = 1 << 17

// family is IPv4 or IPv6 with what the benchmark needs of each.
type family struct {
	Name    string
	VIP     netip.Addr
	VIPID   uint32
	Base    netip.Addr
	Clients clientCycle
}

func (f family) vipKey() maps.VIPKey {
	return maps.VIPKey{Addr: f.VIP, Port: benchPort, Proto: maps.TCP}
}

// clientAddr is client n of the family's cycle.
func (f family) clientAddr(n uint32) netip.Addr {
	word := f.Clients.Base + n
	if f.Base.Is4() {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], word)
		return netip.AddrFrom4(a)
	}
	a := f.Base.As16()
	binary.BigEndian.PutUint32(a[clientWordOffset-ethHeaderLen-8:], word)
	return netip.AddrFrom16(a)
}

// prefixBits is the client key length of the benchmark's VIPs (tether's
// defaults).
func (f family) prefixBits() int {
	if f.Base.Is4() {
		return 32
	}
	return 64
}

// families returns the IPv4 and IPv6 families with clients4 and clients6
// clients.
func families(clients4, clients6 uint32) []family {
	word := func(a netip.Addr) uint32 {
		if a.Is4() {
			b := a.As4()
			return binary.BigEndian.Uint32(b[:])
		}
		b := a.As16()
		return binary.BigEndian.Uint32(b[clientWordOffset-ethHeaderLen-8:])
	}
	return []family{
		{Name: "IPv4", VIP: benchVIP4, VIPID: 0, Base: clientBase4, Clients: clientCycle{Base: word(clientBase4), Count: clients4}},
		{Name: "IPv6", VIP: benchVIP6, VIPID: 1, Base: clientBase6, Clients: clientCycle{Base: word(clientBase6), Count: clients6}},
	}
}

// synFrame is the TCP SYN of client 0 of f to the VIP: 60 bytes for IPv4
// (a 64-byte frame on the wire with its FCS), 74 for IPv6 (no padding
// needed).
func synFrame(f family, dst, src net.HardwareAddr) []byte {
	frame := packets.Build(packets.Spec{
		DstMAC: [6]byte(dst), SrcMAC: [6]byte(src),
		Src: f.clientAddr(0), Dst: f.VIP, Proto: packets.ProtoTCP, SrcPort: 40000, DstPort: benchPort,
	})
	const minFrame = 60 // without the FCS
	for len(frame) < minFrame {
		frame = append(frame, 0) // Ethernet padding, outside the IP length
	}
	return frame
}

// benchDatapath is tether loaded with the benchmark's state.
type benchDatapath struct {
	*loader.Datapath
	kernel   *maps.Kernel
	table    []uint32
	families []family
}

// newBenchDatapath loads tether with opts and installs the VIPs of
// families, their backends and tables, and one affinity entry per client.
// backendMAC is where forwarded frames go, sourceMAC the MAC they come from.
func newBenchDatapath(opts loader.Options, fams []family, backendMAC, sourceMAC net.HardwareAddr) (*benchDatapath, error) {
	dp, err := loader.Load(opts)
	if err != nil {
		return nil, err
	}
	kernel, err := maps.NewKernel(&dp.Maps, maps.LimitsOf(opts))
	if err != nil {
		dp.Close()
		return nil, err
	}
	b := &benchDatapath{Datapath: dp, kernel: kernel, families: fams}
	if err := b.install(backendMAC, sourceMAC); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Close unmaps the affinity table and closes the program and maps.
func (b *benchDatapath) Close() error {
	return errors.Join(b.kernel.Close(), b.Datapath.Close())
}

func (b *benchDatapath) install(backendMAC, sourceMAC net.HardwareAddr) error {
	set := make([]maglev.Backend, benchBackends)
	for i := range set {
		set[i] = maglev.Backend{Name: fmt.Sprintf("backend-%02d", i+1), ID: uint32(i + 1), Weight: 1}
	}
	table, err := maglev.Build(set, maglev.DefaultTableSize, benchSeed)
	if err != nil {
		return fmt.Errorf("building the benchmark's Maglev table: %w", err)
	}
	b.table = table
	if err := b.pointBackends(backendMAC, sourceMAC); err != nil {
		return err
	}
	ids := make([]maps.BackendID, len(table))
	for i, id := range table {
		ids[i] = maps.BackendID(id)
	}
	for _, f := range b.families {
		vip := maps.VIP{ID: f.VIPID, AffinityTimeout: benchAffinityTimeout, Prefix4: 32, Prefix6: 64}
		if _, err := maps.InstallTable(b.kernel, f.vipKey(), vip, ids); err != nil {
			return err
		}
	}
	if err := b.fillAffinity(); err != nil {
		return err
	}
	return b.kernel.PutSettings(maps.Settings{Seed: benchSeed, Active: true})
}

// pointBackends (re)writes every backend with the given MACs, keeping its
// generation so the affinity entries stay valid.
func (b *benchDatapath) pointBackends(backendMAC, sourceMAC net.HardwareAddr) error {
	for id := maps.BackendID(1); id <= benchBackends; id++ {
		be := maps.Backend{MAC: backendMAC, SourceMAC: sourceMAC, Generation: 1, State: maps.BackendUp,
			Addr: netip.AddrFrom4([4]byte{198, 18, 2, byte(id)})}
		if err := b.kernel.PutBackend(id, be); err != nil {
			return err
		}
	}
	return nil
}

// affinityBatch is how many entries one update syscall writes.
// fillAffinity pins every client of every family to the backend Maglev
// gives it, as the datapath itself would have.
func (b *benchDatapath) fillAffinity() error {
	now, err := monotonicCoarse()
	if err != nil {
		return err
	}
	for _, f := range b.families {
		for n := range f.Clients.Count {
			client := maps.ClientKey(f.clientAddr(n), f.prefixBits())
			backend := b.table[maglev.ClientHash(benchSeed, client)%uint32(len(b.table))]
			a := maps.Affinity{Backend: maps.BackendID(backend), Generation: 1, LastSeen: now}
			if err := b.kernel.PutAffinity(maps.AffinityKey{VIPID: f.VIPID, Client: client}, a); err != nil {
				return err
			}
		}
	}
	return nil
}

// affinityTally is what the datapath's affinity lookups found.
type affinityTally struct{ Hits, Lookups uint64 }

// affinityTally reads the global counters: every lookup ends in exactly one
// of hit, miss, expired or stale.
func (b *benchDatapath) affinityTally() (affinityTally, error) {
	c, err := b.kernel.Counters(maps.GlobalSlot)
	if err != nil {
		return affinityTally{}, err
	}
	a := c.Affinity
	return affinityTally{
		Hits: a[loader.TetherAffinityEventAFFINITY_HIT],
		Lookups: a[loader.TetherAffinityEventAFFINITY_HIT] + a[loader.TetherAffinityEventAFFINITY_MISS] +
			a[loader.TetherAffinityEventAFFINITY_EXPIRED] + a[loader.TetherAffinityEventAFFINITY_STALE],
	}, nil
}

func (t affinityTally) minus(earlier affinityTally) affinityTally {
	return affinityTally{Hits: t.Hits - earlier.Hits, Lookups: t.Lookups - earlier.Lookups}
}

func (t affinityTally) plus(other affinityTally) affinityTally {
	return affinityTally{Hits: t.Hits + other.Hits, Lookups: t.Lookups + other.Lookups}
}

// hitRate is the share of lookups that hit, in percent.
func (t affinityTally) hitRate() float64 {
	if t.Lookups == 0 {
		return 0
	}
	return 100 * float64(t.Hits) / float64(t.Lookups)
}
