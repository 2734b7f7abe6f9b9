// Package model is a Go model of the tether XDP program (bpf/tether.c): the
// same parse, client key, hash, Maglev and affinity rules, over maps.Fake.
// The differential tests run the model and the real program on the same
// packets and map states and fail on any difference, so this file must say
// what the C says, in the same order.
package model

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/maglev"
)

// NoVIP marks a packet that matched no VIP.
const NoVIP = ^uint32(0)

const (
	ethPIPv4  = 0x0800
	ethPIPv6  = 0x86dd
	ethP8021Q = 0x8100

	protoHopOpts  = 0
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoDstOpts  = 60
)

// Result is what the program did with one packet.
type Result struct {
	Outcome        maps.Outcome
	Verdict        uint32
	Frame          []byte // the frame after the program, rewritten or not
	VIPID          uint32 // NoVIP if no VIP matched
	Backend        maps.BackendID
	AffinityEvents uint32 // bit (1 << affinity event)
	// AffinityWritten is set when the program inserted or refreshed the
	// entry of AffinityKey (its LastSeen is then the program's clock).
	AffinityWritten bool
	AffinityKey     maps.AffinityKey
}

// Datapath is the model of one loaded program.
type Datapath struct {
	Maps           *maps.Fake
	IngressIfindex uint32
}

type packet struct {
	dst      maps.VIPKey
	source   [16]byte
	family   uint8
	fragment bool
	tcpFlags uint8
}

// TCP header flags.
const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// admits is admits() in bpf/tether.c: a TCP SYN or a UDP datagram.
func (p *packet) admits() bool {
	if p.fragment {
		return false
	}
	if p.dst.Proto == maps.UDP {
		return true
	}
	return p.tcpFlags&(tcpSYN|tcpACK|tcpRST) == tcpSYN
}

// proves is proves() in bpf/tether.c: a TCP segment neither SYN nor RST,
// or a UDP datagram AffinityProbation after admission.
func (p *packet) proves(now, admitted uint64) bool {
	if p.fragment {
		return false
	}
	if p.dst.Proto == maps.UDP {
		return now >= admitted+uint64(maps.AffinityProbation)
	}
	return p.tcpFlags&(tcpSYN|tcpRST) == 0
}

const parseOK = -1

// parseL4 reads ports at off; ipEnd is where the IP packet ends by its own
// length (padding after it is no header).
func parseL4(frame []byte, off, ipEnd int, proto uint8, pkt *packet) int {
	switch proto {
	case protoTCP:
		if off+20 > ipEnd {
			return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_L4)
		}
		doff := int(frame[off+12] >> 4)
		if doff < 5 || off+doff*4 > ipEnd {
			return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_L4)
		}
		pkt.tcpFlags = frame[off+13]
	case protoUDP:
		if off+8 > ipEnd {
			return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_L4)
		}
	default:
		return int(loader.TetherOutcomeOUTCOME_PASS_NOT_TCP_UDP)
	}
	pkt.dst.Port = binary.BigEndian.Uint16(frame[off+2:])
	pkt.dst.Proto = maps.Proto(proto)
	return parseOK
}

func parseIPv4(frame []byte, off int, pkt *packet) int {
	if off+20 > len(frame) {
		return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV4)
	}
	version, ihl := frame[off]>>4, int(frame[off]&0x0f)
	if version != 4 || ihl < 5 {
		return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV4)
	}
	headerLen := ihl * 4
	totalLen := int(binary.BigEndian.Uint16(frame[off+2:]))
	if totalLen < headerLen || off+totalLen > len(frame) {
		return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV4)
	}
	pkt.family = uint8(loader.TetherFamilyFAMILY_IPV4)
	pkt.dst.Addr = addr4(frame[off+16 : off+20])
	copy(pkt.source[:4], frame[off+12:off+16])
	if binary.BigEndian.Uint16(frame[off+6:])&0x1fff != 0 {
		pkt.fragment = true
		pkt.dst.Proto = maps.Proto(frame[off+9])
		return parseOK
	}
	return parseL4(frame, off+headerLen, off+totalLen, frame[off+9], pkt)
}

func skippable(next uint8) bool {
	return next == protoHopOpts || next == protoRouting || next == protoDstOpts || next == protoFragment
}

func parseIPv6(frame []byte, off int, pkt *packet) int {
	if off+40 > len(frame) {
		return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6)
	}
	next := off + 40
	ipEnd := next + int(binary.BigEndian.Uint16(frame[off+4:]))
	if frame[off]>>4 != 6 || ipEnd > len(frame) {
		return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6)
	}
	pkt.family = uint8(loader.TetherFamilyFAMILY_IPV6)
	pkt.dst.Addr = addr16(frame[off+24 : off+40])
	copy(pkt.source[:], frame[off+8:off+24])
	nexthdr := frame[off+6]
	for range maps.MaxIPv6ExtHeaders {
		if !skippable(nexthdr) {
			break
		}
		if nexthdr == protoFragment {
			if next+8 > ipEnd {
				return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6EXT)
			}
			nexthdr = frame[next]
			fragOff := binary.BigEndian.Uint16(frame[next+2:])
			next += 8
			if fragOff&0xfff8 != 0 {
				pkt.fragment = true
				pkt.dst.Proto = maps.Proto(nexthdr)
				return parseOK
			}
			continue
		}
		if next+2 > ipEnd {
			return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6EXT)
		}
		nexthdr = frame[next]
		next += (int(frame[next+1]) + 1) * 8
		if next > ipEnd {
			return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6EXT)
		}
	}
	if skippable(nexthdr) {
		return int(loader.TetherOutcomeOUTCOME_PASS_IPV6EXT_LIMIT)
	}
	return parseL4(frame, next, ipEnd, nexthdr, pkt)
}

func parsePacket(frame []byte, pkt *packet) int {
	if len(frame) < 14 {
		return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_ETH)
	}
	proto := binary.BigEndian.Uint16(frame[12:])
	off := 14
	if proto == ethP8021Q {
		if off+4 > len(frame) {
			return int(loader.TetherOutcomeOUTCOME_DROP_MALFORMED_VLAN)
		}
		proto = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	switch proto {
	case ethPIPv4:
		return parseIPv4(frame, off, pkt)
	case ethPIPv6:
		return parseIPv6(frame, off, pkt)
	default:
		return int(loader.TetherOutcomeOUTCOME_PASS_NOT_IP)
	}
}

// prefixMask is the network-order mask of 32-bit word `word` of a prefix.
func prefixMask(prefix, word uint32) [4]byte {
	var mask [4]byte
	if prefix <= word*32 {
		return mask
	}
	bits := prefix - word*32
	if bits >= 32 {
		return [4]byte{0xff, 0xff, 0xff, 0xff}
	}
	binary.BigEndian.PutUint32(mask[:], ^(uint32(0xffffffff) >> bits))
	return mask
}

func clientKey(pkt *packet, vip maps.VIP) maps.AffinityKey {
	prefix := uint32(vip.Prefix6)
	if pkt.family == uint8(loader.TetherFamilyFAMILY_IPV4) {
		prefix = uint32(vip.Prefix4)
	}
	key := maps.AffinityKey{VIPID: vip.ID}
	for word := range uint32(4) {
		mask := prefixMask(prefix, word)
		for b := range uint32(4) {
			key.Client[word*4+b] = pkt.source[word*4+b] & mask[b]
		}
	}
	return key
}

func (d *Datapath) maglevBackend(vip maps.VIP, hash uint32) maps.BackendID {
	limits := d.Maps.Limits()
	if vip.TableSize == 0 || vip.TableSize > limits.TableStride {
		return 0
	}
	// The C computes the index in 32 bits.
	index := (vip.ID*2+uint32(vip.TableSlot&1))*limits.TableStride + hash%vip.TableSize
	id, _ := d.Maps.TableEntry(index)
	return id
}

func noBackend(vip maps.VIP) int {
	if vip.NoBackendPass {
		return int(loader.TetherOutcomeOUTCOME_PASS_NO_BACKEND)
	}
	return int(loader.TetherOutcomeOUTCOME_DROP_NO_BACKEND)
}

func (d *Datapath) forward(frame []byte, be maps.Backend) int {
	copy(frame[0:6], padMAC(be.MAC))
	copy(frame[6:12], padMAC(be.SourceMAC))
	if be.Ifindex == 0 || be.Ifindex == d.IngressIfindex {
		return int(loader.TetherOutcomeOUTCOME_FORWARD_TX)
	}
	if d.Maps.HasTxPort(be.Ifindex) {
		return int(loader.TetherOutcomeOUTCOME_FORWARD_REDIRECT)
	}
	return int(loader.TetherOutcomeOUTCOME_DROP_TX_PORT_MISSING)
}

// lookupBackend reads a backend as the program does: ids out of the array's
// range are missing.
func (d *Datapath) lookupBackend(id maps.BackendID) (maps.Backend, bool) {
	if id == 0 {
		return maps.Backend{}, false
	}
	be, err := d.Maps.Backend(id)
	return be, err == nil
}

func (d *Datapath) balance(frame []byte, now uint64, res *Result) int {
	cfg, _ := d.Maps.Settings()
	if !cfg.Active {
		return int(loader.TetherOutcomeOUTCOME_PASS_INACTIVE)
	}
	if cfg.WatchdogTimeout != 0 && !maps.Fresh(now, cfg.Watchdog, cfg.WatchdogTimeout) {
		return int(loader.TetherOutcomeOUTCOME_PASS_WATCHDOG)
	}
	var pkt packet
	if ret := parsePacket(frame, &pkt); ret != parseOK {
		return ret
	}
	if pkt.fragment {
		pkt.dst.Port = 0
	}
	vip, err := d.Maps.VIP(pkt.dst)
	if err != nil {
		if pkt.fragment {
			return int(loader.TetherOutcomeOUTCOME_PASS_FRAGMENT)
		}
		return int(loader.TetherOutcomeOUTCOME_PASS_NOT_VIP)
	}
	res.VIPID = vip.ID
	if vip.ID >= d.Maps.Limits().MaxVIPs {
		return noBackend(vip)
	}

	key := clientKey(&pkt, vip)
	res.AffinityKey = key
	entry, err := d.Maps.Affinity(key)
	own := err == nil
	probation := true
	switch {
	case !own:
		res.AffinityEvents |= 1 << maps.AffinityMiss
	case !maps.Fresh(now, entry.LastSeen, vip.AffinityTimeout):
		res.AffinityEvents |= 1 << maps.AffinityExpired
	default:
		be, ok := d.lookupBackend(entry.Backend)
		if ok && be.Generation == entry.Generation && be.State.Usable() {
			res.AffinityEvents |= 1 << maps.AffinityHit
			res.Backend = entry.Backend
			d.touch(key, entry, &pkt, now, res)
			return d.forward(frame, be)
		}
		res.AffinityEvents |= 1 << maps.AffinityStale
		probation = entry.Probationary
	}

	id := d.maglevBackend(vip, maglev.ClientHash(cfg.Seed, key.Client))
	be, ok := d.lookupBackend(id)
	if !ok || !be.State.Usable() {
		return noBackend(vip)
	}
	res.Backend = id
	if !probation || pkt.admits() {
		d.pin(key, maps.Affinity{Backend: id, Generation: be.Generation, LastSeen: now, Probationary: probation}, own, vip, now, res)
	}
	return d.forward(frame, be)
}

// touch is what a hit does to the client's entry: an established one's
// LastSeen is refreshed once it is AffinityRefresh old; one on probation
// is promoted by a packet that proves the client real.
func (d *Datapath) touch(key maps.AffinityKey, entry maps.Affinity, pkt *packet, now uint64, res *Result) {
	switch {
	case !entry.Probationary && now > entry.LastSeen+uint64(maps.AffinityRefresh):
		entry.LastSeen = now
	case entry.Probationary && pkt.proves(now, entry.LastSeen):
		entry.LastSeen, entry.Probationary = now, false
		res.AffinityEvents |= 1 << maps.AffinityPromote
	default:
		return
	}
	_ = d.Maps.PutAffinity(key, entry)
	res.AffinityWritten = true
}

// pin is pin() in bpf/tether.c: the client's entry written into its own
// way, or a way the admission rule gives up.
func (d *Datapath) pin(key maps.AffinityKey, a maps.Affinity, own bool, vip maps.VIP, now uint64, res *Result) {
	replaced, evicted, err := d.Maps.AdmitAffinity(key, a, now, vip.AffinityTimeout)
	switch {
	case errors.Is(err, maps.ErrAffinityFull):
		res.AffinityEvents |= 1 << maps.AffinityFull
	case err != nil:
		res.AffinityEvents |= 1 << maps.AffinityInsertFailed
	default:
		res.AffinityWritten = true
		res.AffinityEvents |= 1 << maps.AffinityInsert
		if evicted && !own && maps.Fresh(now, replaced.LastSeen, vip.AffinityTimeout) {
			res.AffinityEvents |= 1 << maps.AffinityEvictProbation
		}
	}
}

func (d *Datapath) count(slot uint32, outcome maps.Outcome, bytes uint64, events uint32) {
	d.Maps.UpdateCounters(slot, func(c *maps.Counters) {
		c.Packets[outcome]++
		c.Bytes[outcome] += bytes
		for i := range c.Affinity {
			if events&(1<<i) != 0 {
				c.Affinity[i]++
			}
		}
	})
}

// Run runs one frame through the model at CLOCK_MONOTONIC time now. It
// changes the maps as the program would and returns what it did.
func (d *Datapath) Run(frame []byte, now uint64) Result {
	out := append([]byte(nil), frame...)
	res := Result{VIPID: NoVIP}
	res.Outcome = maps.Outcome(d.balance(out, now, &res))
	res.Verdict = maps.Verdict(res.Outcome)
	res.Frame = out

	limits := d.Maps.Limits()
	bytes := uint64(len(frame))
	d.count(maps.GlobalSlot, res.Outcome, bytes, res.AffinityEvents)
	if res.VIPID < limits.MaxVIPs {
		d.count(limits.VIPSlot(res.VIPID), res.Outcome, bytes, res.AffinityEvents)
	}
	if res.Backend != 0 {
		d.count(limits.BackendSlot(res.Backend), res.Outcome, bytes, 0)
	}
	return res
}

func padMAC(mac []byte) []byte {
	var out [6]byte
	copy(out[:], mac)
	return out[:]
}

func addr4(b []byte) netip.Addr { return netip.AddrFrom4([4]byte(b)) }

func addr16(b []byte) netip.Addr { return netip.AddrFrom16([16]byte(b)) }
