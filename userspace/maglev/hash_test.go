package maglev

import (
	"fmt"
	"testing"
)

func key(b ...byte) [16]byte {
	var k [16]byte
	copy(k[:], b)
	return k
}

// The expected values were produced once by compiling the C client_hash
// from bpf/tether.c with a host compiler; they pin the Go port to it.
func TestClientHashVectors(t *testing.T) {
	var ones [16]byte
	for i := range ones {
		ones[i] = 0xff
	}
	var seq [16]byte
	for i := range seq {
		seq[i] = byte(i)
	}
	tests := []struct {
		name string
		seed uint32
		key  [16]byte
		want uint32
	}{
		{"zero key seed 0", 0, key(), 0x8134cdf8},
		{"zero key seed 1", 1, key(), 0x90052b18},
		{"10.0.0.1 seed 0", 0, key(10, 0, 0, 1), 0x6822dffa},
		{"10.0.0.1 seed deadbeef", 0xdeadbeef, key(10, 0, 0, 1), 0xcf0b7ccc},
		{"192.168.1.10 seed 42", 42, key(192, 168, 1, 10), 0xf193fac7},
		{"2001:db8::1 seed 42", 42, key(0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), 0x79c1d67d},
		{"all ones seed ffffffff", 0xffffffff, ones, 0xf2f699fc},
		{"bytes 0..15 seed 12345678", 0x12345678, seq, 0xedcfca4b},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ClientHash(tt.seed, tt.key); got != tt.want {
				t.Errorf("ClientHash(%#x, %v) = %#08x, want %#08x", tt.seed, tt.key, got, tt.want)
			}
		})
	}
}

func TestClientHashSeedMatters(t *testing.T) {
	keys := [][16]byte{
		key(),
		key(10, 0, 0, 1),
		key(192, 168, 1, 10),
		key(0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
	}
	seeds := []uint32{0, 1, 2, 42, 0x9e3779b9, 0xffffffff}
	for _, k := range keys {
		t.Run(fmt.Sprintf("%x", k), func(t *testing.T) {
			seen := make(map[uint32]uint32, len(seeds))
			for _, s := range seeds {
				h := ClientHash(s, k)
				if prev, ok := seen[h]; ok {
					t.Errorf("seeds %#x and %#x both hash the key to %#08x", prev, s, h)
				}
				seen[h] = s
			}
		})
	}
}

func TestClientHashKeyBytesMatter(t *testing.T) {
	// Flipping any single bit of the key must change the hash; this catches
	// a port that skips a word or reads the wrong byte order.
	base := key(10, 1, 2, 3)
	h0 := ClientHash(7, base)
	for i := 0; i < 16; i++ {
		for b := 0; b < 8; b++ {
			k := base
			k[i] ^= 1 << b
			if ClientHash(7, k) == h0 {
				t.Errorf("flipping bit %d of byte %d did not change the hash", b, i)
			}
		}
	}
}
