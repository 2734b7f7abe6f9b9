package maglev

import (
	"encoding/binary"
	"math/bits"
)

// ClientHash is the datapath's hash of a masked client key: the value the
// XDP program (client_hash in bpf/tether.c) computes before it looks up
// table[ClientHash(seed, key) % size].
//
// The key is the 16-byte client address after the VIP's affinity mask has
// been applied. IPv4 keys use bytes 0..3 and leave bytes 4..15 zero. The key
// is read as four big-endian 32-bit words, so the result does not depend on
// the byte order of the host, and every load balancer that shares a seed
// sends a given client to the same slot. The mixing is Murmur3-style
// (32-bit block and finalizer constants); it must stay bit-identical to the
// C version, which the pinned vectors in hash_test.go check.
func ClientHash(seed uint32, client [16]byte) uint32 {
	h := seed
	for i := 0; i < 4; i++ {
		w := binary.BigEndian.Uint32(client[4*i:])
		w *= 0xcc9e2d51
		w = bits.RotateLeft32(w, 15)
		w *= 0x1b873593
		h ^= w
		h = bits.RotateLeft32(h, 13)
		h = h*5 + 0xe6546b64
	}
	h ^= 16
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}
