// Package packets builds Ethernet frames for datapath tests and benchmarks:
// IPv4 with options and fragments, IPv6 with extension headers, TCP and UDP,
// optionally VLAN-tagged. Lengths and the IPv4 header checksum are filled in;
// L4 checksums are not (the datapath never reads them).
package packets

import (
	"encoding/binary"
	"net/netip"
)

// Protocol and header numbers used by the builder.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeIPv6 = 0x86dd
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100

	ProtoHopOpts  = 0
	ProtoICMP     = 1
	ProtoTCP      = 6
	ProtoUDP      = 17
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoDstOpts  = 60
)

// TCP header flags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
)

// Spec describes one frame.
type Spec struct {
	DstMAC, SrcMAC [6]byte
	Tagged         bool   // add one 802.1Q tag
	VLANID         uint16 // with Tagged
	Src, Dst       netip.Addr
	Proto          uint8 // L4 protocol: TCP and UDP get a header, others none
	SrcPort        uint16
	DstPort        uint16
	TCPFlags       uint8  // TCP only; 0 is a SYN
	IPv4Options    []byte // padded to a multiple of 4 bytes
	// FragmentOffset in 8-byte units; non-zero makes a non-first fragment,
	// which carries no L4 header. For IPv6 it needs a ProtoFragment in
	// IPv6Ext.
	FragmentOffset uint16
	MoreFragments  bool
	IPv6Ext        []uint8 // extension headers in order; 8 bytes each
	Payload        []byte
}

// Build returns the frame described by s.
func Build(s Spec) []byte {
	l4 := l4Header(s)
	var l3 []byte
	if s.Dst.Is4() {
		l3 = ipv4(s, len(l4)+len(s.Payload))
	} else {
		l3 = ipv6(s, len(l4)+len(s.Payload))
	}
	frame := Ethernet(s.DstMAC, s.SrcMAC, s.Tagged, s.VLANID, etherType(s))
	frame = append(frame, l3...)
	frame = append(frame, l4...)
	return append(frame, s.Payload...)
}

func etherType(s Spec) uint16 {
	if s.Dst.Is4() {
		return EtherTypeIPv4
	}
	return EtherTypeIPv6
}

// Ethernet returns an Ethernet header, with one 802.1Q tag if tagged.
func Ethernet(dst, src [6]byte, tagged bool, vlanID, etherType uint16) []byte {
	h := append(append([]byte{}, dst[:]...), src[:]...)
	if tagged {
		h = binary.BigEndian.AppendUint16(h, EtherTypeVLAN)
		h = binary.BigEndian.AppendUint16(h, vlanID&0x0fff)
	}
	return binary.BigEndian.AppendUint16(h, etherType)
}

func l4Header(s Spec) []byte {
	if s.FragmentOffset != 0 {
		return nil
	}
	switch s.Proto {
	case ProtoTCP:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], s.SrcPort)
		binary.BigEndian.PutUint16(h[2:], s.DstPort)
		binary.BigEndian.PutUint32(h[4:], 1)
		h[12] = 5 << 4 // data offset
		h[13] = s.TCPFlags
		if h[13] == 0 {
			h[13] = TCPSyn
		}
		binary.BigEndian.PutUint16(h[14:], 65535)
		return h
	case ProtoUDP:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], s.SrcPort)
		binary.BigEndian.PutUint16(h[2:], s.DstPort)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(s.Payload)))
		return h
	default:
		return nil
	}
}

func ipv4(s Spec, payloadLen int) []byte {
	options := append([]byte{}, s.IPv4Options...)
	for len(options)%4 != 0 {
		options = append(options, 0) // end of option list
	}
	headerLen := 20 + len(options)
	h := make([]byte, headerLen)
	h[0] = 4<<4 | byte(headerLen/4)
	binary.BigEndian.PutUint16(h[2:], uint16(headerLen+payloadLen))
	binary.BigEndian.PutUint16(h[4:], 0x1234)
	frag := s.FragmentOffset & 0x1fff
	if s.MoreFragments {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8] = 64
	h[9] = s.Proto
	src, dst := s.Src.As4(), s.Dst.As4()
	copy(h[12:], src[:])
	copy(h[16:], dst[:])
	copy(h[20:], options)
	binary.BigEndian.PutUint16(h[10:], Checksum(h))
	return h
}

func ipv6(s Spec, payloadLen int) []byte {
	var ext []byte
	next := s.Proto
	for i := len(s.IPv6Ext) - 1; i >= 0; i-- {
		e := make([]byte, 8)
		e[0] = next
		if s.IPv6Ext[i] == ProtoFragment {
			off := s.FragmentOffset << 3
			if s.MoreFragments {
				off |= 1
			}
			binary.BigEndian.PutUint16(e[2:], off)
			binary.BigEndian.PutUint32(e[4:], 0xabcd)
		} else {
			e[2] = 1 // PadN option filling the 6 bytes
			e[3] = 4
		}
		ext = append(e, ext...)
		next = s.IPv6Ext[i]
	}
	h := make([]byte, 40)
	h[0] = 6 << 4
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+payloadLen))
	h[6] = next
	h[7] = 64
	src, dst := s.Src.As16(), s.Dst.As16()
	copy(h[8:], src[:])
	copy(h[24:], dst[:])
	return append(h, ext...)
}

// Checksum is the Internet checksum of b.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
