// Package maps gives typed access to the datapath's BPF maps. It is the one
// place that converts between Go values (netip.Addr, BackendID, durations)
// and the kernel's byte layouts (network byte order, zero-padded addresses).
// Maps is implemented by Kernel, over the real maps, and by Fake, in memory,
// for unit tests of the control logic and for the datapath model.
package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/tether-lb/tether/loader"
)

// ErrNotFound is returned when a key has no entry.
var ErrNotFound = errors.New("not found")

// BackendID indexes the backends map. 0 means "no backend".
type BackendID uint32

// Proto is an IP protocol number served by a VIP.
type Proto uint8

// The protocols a VIP can serve.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	default:
		return fmt.Sprintf("proto-%d", uint8(p))
	}
}

// BackendState is a backend's state as the datapath sees it.
type BackendState uint8

// Backend states. Up and draining backends keep their affinity entries;
// only up backends belong in Maglev tables.
const (
	BackendDown     = BackendState(loader.TetherBackendStateBACKEND_DOWN)
	BackendUp       = BackendState(loader.TetherBackendStateBACKEND_UP)
	BackendDraining = BackendState(loader.TetherBackendStateBACKEND_DRAINING)
)

func (s BackendState) String() string {
	switch s {
	case BackendDown:
		return "down"
	case BackendUp:
		return "up"
	case BackendDraining:
		return "draining"
	default:
		return fmt.Sprintf("state-%d", uint8(s))
	}
}

// Usable reports whether the datapath may send packets to a backend in s.
func (s BackendState) Usable() bool { return s == BackendUp || s == BackendDraining }

// VIPKey identifies a VIP. Port 0 is the fragment alias of an address that
// serves exactly one port of Proto (see FragmentAlias).
type VIPKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (k VIPKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// FragmentAlias is the key under which non-first fragments, which carry no
// ports, find the VIP: same address and protocol, port 0.
func FragmentAlias(k VIPKey) VIPKey { return VIPKey{Addr: k.Addr, Proto: k.Proto} }

// IsFragmentAlias reports whether k is a fragment alias, not a VIP.
func (k VIPKey) IsFragmentAlias() bool { return k.Port == 0 }

// VIP is what the datapath knows about a VIP.
type VIP struct {
	ID              uint32 // < MaxVIPs; selects Maglev and counter slots
	NoBackendPass   bool   // with no usable backend: pass to the stack, not drop
	AffinityTimeout time.Duration
	TableSize       uint32 // this VIP's Maglev table size M (a prime)
	Prefix4         uint8  // client key bits of an IPv4 source
	Prefix6         uint8  // client key bits of an IPv6 source
	TableSlot       uint8  // live Maglev table: 0 or 1
}

// Backend is one backends map entry.
type Backend struct {
	MAC        net.HardwareAddr // destination MAC of forwarded frames
	SourceMAC  net.HardwareAddr // the egress interface's MAC
	Ifindex    uint32           // 0 or the ingress interface: XDP_TX
	Generation uint32
	Addr       netip.Addr
	State      BackendState
}

// AffinityKey is one client of one VIP. Client is the source address masked
// to the VIP's prefix, in the datapath's 16-byte form (see ClientKey).
type AffinityKey struct {
	VIPID  uint32
	Client [16]byte
}

// ClientKey returns addr masked to bits, in the datapath's 16-byte form:
// IPv4 in bytes 0..3, IPv6 in all 16.
func ClientKey(addr netip.Addr, bits int) [16]byte {
	var key [16]byte
	prefix, err := addr.Prefix(min(bits, addr.BitLen()))
	if err != nil {
		return key
	}
	masked := prefix.Addr().AsSlice()
	copy(key[:], masked)
	return key
}

// Affinity is the backend a client is pinned to.
type Affinity struct {
	Backend    BackendID
	Generation uint32
	LastSeen   uint64 // CLOCK_MONOTONIC nanoseconds
	// Probationary: admitted by a first packet, not yet proven a real
	// client; first to go when its bucket needs room.
	Probationary bool
}

// AffinityCounts are the clients in the affinity table.
type AffinityCounts struct {
	Entries      int // every client, once
	Probationary int // of them, those on probation
}

// Limits of the datapath, from bpf/consts.h.
const (
	// MaxClockSkew is how far ahead of now a stamp is still trusted: a
	// writer's clock may run a little ahead, but a stamp far in the future
	// must not stay fresh for ever.
	MaxClockSkew = time.Duration(loader.TetherTimeLimitMsMAX_CLOCK_SKEW_MS) * time.Millisecond
	// AffinityRefresh is how old an entry's LastSeen gets before a packet
	// of its client rewrites it.
	AffinityRefresh = time.Duration(loader.TetherTimeLimitMsAFFINITY_REFRESH_MS) * time.Millisecond
	// AffinityProbation is how long after its admission a UDP client on
	// probation must send again to prove itself real.
	AffinityProbation = time.Duration(loader.TetherTimeLimitMsAFFINITY_PROBATION_MS) * time.Millisecond
	// MaxIPv6ExtHeaders is how many IPv6 extension headers the datapath
	// skips looking for TCP or UDP.
	MaxIPv6ExtHeaders = int(loader.TetherLimitsMAX_IPV6EXT_HEADERS)
)

// Fresh is the datapath's rule for a CLOCK_MONOTONIC stamp at now: at most
// timeout old, or at most MaxClockSkew ahead.
func Fresh(now, stamp uint64, timeout time.Duration) bool {
	if now < stamp {
		return stamp-now <= uint64(MaxClockSkew)
	}
	return now-stamp <= uint64(timeout)
}

// Settings are the datapath's switches.
type Settings struct {
	Seed            uint32
	Active          bool
	Watchdog        uint64        // daemon heartbeat, CLOCK_MONOTONIC ns
	WatchdogTimeout time.Duration // 0: no watchdog
}

// Counters are one counter slot summed over CPUs.
type Counters = loader.TetherLbCounters

// Limits are the sizes the maps were created with.
type Limits struct {
	MaxVIPs         uint32
	TableStride     uint32
	MaxBackends     uint32
	AffinityBuckets uint32
}

// LimitsOf returns the limits of maps loaded with opts.
func LimitsOf(opts loader.Options) Limits {
	return Limits{MaxVIPs: opts.MaxVIPs, TableStride: opts.TableStride, MaxBackends: opts.MaxBackends,
		AffinityBuckets: loader.AffinityBuckets(opts.AffinityCapacity)}
}

// Counter slots: one global, one per VIP, one per backend.
const GlobalSlot = 0

// VIPSlot is the counter slot of a VIP.
func (l Limits) VIPSlot(vipID uint32) uint32 { return 1 + vipID }

// BackendSlot is the counter slot of a backend.
func (l Limits) BackendSlot(id BackendID) uint32 { return 1 + l.MaxVIPs + uint32(id) }

// TableIndex is the maglev map index of entry i of a VIP's table slot.
func (l Limits) TableIndex(vipID uint32, slot uint8, i uint32) uint32 {
	return (vipID*2+uint32(slot&1))*l.TableStride + i
}

// Maps is the datapath's state as the control plane reads and writes it.
type Maps interface {
	VIP(VIPKey) (VIP, error)
	PutVIP(VIPKey, VIP) error
	DeleteVIP(VIPKey) error
	VIPs() (map[VIPKey]VIP, error)

	Backend(BackendID) (Backend, error)
	PutBackend(BackendID, Backend) error

	// PutTable writes one of a VIP's two Maglev tables (slot 0 or 1).
	PutTable(vipID uint32, slot uint8, table []BackendID) error
	Table(vipID uint32, slot uint8, size uint32) ([]BackendID, error)

	Affinity(AffinityKey) (Affinity, error)
	PutAffinity(AffinityKey, Affinity) error
	DeleteAffinity(AffinityKey) error
	Affinities() (map[AffinityKey]Affinity, error)
	AffinityCount() (AffinityCounts, error)
	// ForEachAffinity calls fn for every entry without holding them all.
	ForEachAffinity(fn func(AffinityKey, Affinity)) error

	Settings() (Settings, error)
	PutSettings(Settings) error

	Counters(slot uint32) (Counters, error)

	PutTxPort(ifindex uint32) error
	DeleteTxPort(ifindex uint32) error

	Limits() Limits
}

// InstallTable makes info, with table as its Maglev table, the datapath's
// entry for key without the datapath ever reading a half-written table. A
// VIP the datapath has already gets table in its inactive slot, then the
// slot flips with one update of its entry, and of its fragment alias if the
// alias names the same VIP. A new VIP gets slot 0, filled before its entry
// exists. info's TableSize and TableSlot are set here; the entry as
// installed is returned.
func InstallTable(m Maps, key VIPKey, info VIP, table []BackendID) (VIP, error) {
	if uint32(len(table)) > m.Limits().TableStride || len(table) == 0 {
		return VIP{}, fmt.Errorf("installing Maglev table of %s: size %d is out of range 1..%d", key, len(table), m.Limits().TableStride)
	}
	info.TableSize, info.TableSlot = uint32(len(table)), 0
	switch current, err := m.VIP(key); {
	case err == nil:
		info.TableSlot = current.TableSlot ^ 1
	case !errors.Is(err, ErrNotFound):
		return VIP{}, fmt.Errorf("reading VIP %s before installing its Maglev table: %w", key, err)
	}
	if err := m.PutTable(info.ID, info.TableSlot, table); err != nil {
		return VIP{}, fmt.Errorf("writing Maglev table of %s: %w", key, err)
	}
	if err := m.PutVIP(key, info); err != nil {
		return VIP{}, fmt.Errorf("switching %s to its new Maglev table: %w", key, err)
	}
	// Non-first fragments must follow the swap too.
	alias := FragmentAlias(key)
	switch aliasInfo, err := m.VIP(alias); {
	case err == nil && aliasInfo.ID == info.ID:
		if err := m.PutVIP(alias, info); err != nil {
			return VIP{}, fmt.Errorf("switching the fragment alias of %s to its new Maglev table: %w", key, err)
		}
	case err != nil && !errors.Is(err, ErrNotFound):
		return VIP{}, fmt.Errorf("reading the fragment alias of %s: %w", key, err)
	}
	return info, nil
}

// Byte order and layout conversions, in one place.

func addrBytes(a netip.Addr) (addr [16]byte, family uint8) {
	if a.Is4() {
		v4 := a.As4()
		copy(addr[:], v4[:])
		return addr, uint8(loader.TetherFamilyFAMILY_IPV4)
	}
	if a.Is6() {
		return a.As16(), uint8(loader.TetherFamilyFAMILY_IPV6)
	}
	return addr, 0
}

func bytesAddr(addr [16]byte, family uint8) netip.Addr {
	switch family {
	case uint8(loader.TetherFamilyFAMILY_IPV4):
		return netip.AddrFrom4([4]byte(addr[:4]))
	case uint8(loader.TetherFamilyFAMILY_IPV6):
		return netip.AddrFrom16(addr)
	default:
		return netip.Addr{}
	}
}

// Ports are stored in network byte order in a host-order uint16 field.
func networkPort(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func hostPort(stored uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], stored)
	return binary.BigEndian.Uint16(b[:])
}

func encodeVIPKey(k VIPKey) loader.TetherVipKey {
	addr, family := addrBytes(k.Addr)
	return loader.TetherVipKey{Addr: addr, Port: networkPort(k.Port), Proto: uint8(k.Proto), Family: family}
}

func decodeVIPKey(k loader.TetherVipKey) VIPKey {
	return VIPKey{Addr: bytesAddr(k.Addr, k.Family), Port: hostPort(k.Port), Proto: Proto(k.Proto)}
}

func encodeVIP(v VIP) loader.TetherVipInfo {
	var flags uint32
	if v.NoBackendPass {
		flags |= uint32(loader.TetherVipFlagVIP_FLAG_NO_BACKEND_PASS)
	}
	return loader.TetherVipInfo{
		VipId:             v.ID,
		Flags:             flags,
		AffinityTimeoutNs: uint64(v.AffinityTimeout),
		TableSize:         v.TableSize,
		Prefix4:           v.Prefix4,
		Prefix6:           v.Prefix6,
		TableSlot:         v.TableSlot,
	}
}

func decodeVIP(v loader.TetherVipInfo) VIP {
	return VIP{
		ID:              v.VipId,
		NoBackendPass:   v.Flags&uint32(loader.TetherVipFlagVIP_FLAG_NO_BACKEND_PASS) != 0,
		AffinityTimeout: time.Duration(v.AffinityTimeoutNs),
		TableSize:       v.TableSize,
		Prefix4:         v.Prefix4,
		Prefix6:         v.Prefix6,
		TableSlot:       v.TableSlot,
	}
}

func encodeBackend(b Backend) loader.TetherBackend {
	addr, family := addrBytes(b.Addr)
	out := loader.TetherBackend{
		Ifindex:    b.Ifindex,
		Generation: b.Generation,
		Addr:       addr,
		Family:     family,
		State:      uint8(b.State),
	}
	copy(out.Mac[:], b.MAC)
	copy(out.SrcMac[:], b.SourceMAC)
	return out
}

func decodeBackend(b loader.TetherBackend) Backend {
	return Backend{
		MAC:        net.HardwareAddr(append([]byte(nil), b.Mac[:]...)),
		SourceMAC:  net.HardwareAddr(append([]byte(nil), b.SrcMac[:]...)),
		Ifindex:    b.Ifindex,
		Generation: b.Generation,
		Addr:       bytesAddr(b.Addr, b.Family),
		State:      BackendState(b.State),
	}
}

func encodeSettings(s Settings) loader.TetherLbSettings {
	out := loader.TetherLbSettings{Seed: s.Seed, WatchdogNs: s.Watchdog, WatchdogTimeoutNs: uint64(s.WatchdogTimeout)}
	if s.Active {
		out.Active = 1
	}
	return out
}

func decodeSettings(s loader.TetherLbSettings) Settings {
	return Settings{Seed: s.Seed, Active: s.Active != 0, Watchdog: s.WatchdogNs, WatchdogTimeout: time.Duration(s.WatchdogTimeoutNs)}
}
