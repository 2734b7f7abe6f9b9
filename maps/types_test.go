package maps

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestCodecRoundTrip(t *testing.T) {
	for _, key := range []VIPKey{
		{Addr: netip.MustParseAddr("198.18.1.1"), Port: 443, Proto: TCP},
		{Addr: netip.MustParseAddr("2001:db8::1"), Port: 1, Proto: UDP},
		{Addr: netip.MustParseAddr("2001:db8::1"), Port: 65535, Proto: TCP},
	} {
		if got := decodeVIPKey(encodeVIPKey(key)); got != key {
			t.Errorf("VIP key %v came back as %v", key, got)
		}
	}
	enc := encodeVIPKey(VIPKey{Addr: netip.MustParseAddr("198.18.1.1"), Port: 0x1234, Proto: TCP})
	if b := [2]byte{byte(enc.Port), byte(enc.Port >> 8)}; b != [2]byte{0x12, 0x34} {
		t.Errorf("port stored as % x in memory, want network order 12 34", b)
	}
	vip := VIP{ID: 3, NoBackendPass: true, AffinityTimeout: 2 * time.Minute, TableSize: 251, Prefix4: 24, Prefix6: 64, TableSlot: 1}
	if got := decodeVIP(encodeVIP(vip)); got != vip {
		t.Errorf("VIP %+v came back as %+v", vip, got)
	}
	b := Backend{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, SourceMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, Ifindex: 7,
		Generation: 9, Addr: netip.MustParseAddr("2001:db8::3"), State: BackendDraining}
	got := decodeBackend(encodeBackend(b))
	if got.MAC.String() != b.MAC.String() || got.SourceMAC.String() != b.SourceMAC.String() || got.Ifindex != 7 ||
		got.Generation != 9 || got.Addr != b.Addr || got.State != BackendDraining {
		t.Errorf("backend %+v came back as %+v", b, got)
	}
	s := Settings{Seed: 5, Active: true, Watchdog: 12345, WatchdogTimeout: time.Second}
	if got := decodeSettings(encodeSettings(s)); got != s {
		t.Errorf("settings %+v came back as %+v", s, got)
	}
}

func TestClientKey(t *testing.T) {
	for _, tc := range []struct {
		addr string
		bits int
		want string
	}{
		{"198.18.7.9", 32, "c6120709000000000000000000000000"},
		{"198.18.7.9", 24, "c6120700000000000000000000000000"},
		{"198.18.7.9", 0, "00000000000000000000000000000000"},
		{"198.18.7.9", 200, "c6120709000000000000000000000000"},
		{"2001:db8:1:2:3:4:5:6", 64, "20010db8000100020000000000000000"},
		{"2001:db8:1:2:3:4:5:6", 128, "20010db8000100020003000400050006"},
	} {
		key := ClientKey(netip.MustParseAddr(tc.addr), tc.bits)
		if got := net.HardwareAddr(key[:]).String(); got != hexColons(tc.want) {
			t.Errorf("ClientKey(%s, %d) = %s, want %s", tc.addr, tc.bits, got, hexColons(tc.want))
		}
	}
}

func hexColons(s string) string {
	out := ""
	for i := 0; i < len(s); i += 2 {
		if i > 0 {
			out += ":"
		}
		out += s[i : i+2]
	}
	return out
}

func TestInstallTableFillsThenFlipsSlotAndAlias(t *testing.T) {
	m := NewFake(Limits{MaxVIPs: 4, TableStride: 7, MaxBackends: 8, AffinityBuckets: 16})
	key := VIPKey{Addr: netip.MustParseAddr("198.18.1.1"), Port: 80, Proto: TCP}
	first, err := InstallTable(m, key, VIP{ID: 2, TableSlot: 1}, []BackendID{1, 1, 1})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := m.VIP(key); got != first || first.TableSlot != 0 || first.TableSize != 3 {
		t.Fatalf("first install: returned %+v, map holds %+v; want slot 0, size 3, the same", first, got)
	}
	_ = m.PutVIP(FragmentAlias(key), first)
	installed, err := InstallTable(m, key, first, []BackendID{1, 2, 1, 2, 1})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := m.VIP(key)
	alias, _ := m.VIP(FragmentAlias(key))
	if got != installed || got.TableSlot != 1 || got.TableSize != 5 || alias != got {
		t.Fatalf("after replacement VIP %+v, alias %+v: want slot 1, size 5, alias equal", got, alias)
	}
	if table, _ := m.Table(2, 1, 5); table[1] != 2 {
		t.Fatalf("new table %v not written to slot 1", table)
	}
	if table, _ := m.Table(2, 0, 3); table[0] != 1 {
		t.Fatalf("the live table %v was written while the new one was filled", table)
	}
	other := VIPKey{Addr: key.Addr, Port: 81, Proto: TCP}
	if _, err := InstallTable(m, other, VIP{ID: 3}, []BackendID{1}); err != nil {
		t.Fatal(err)
	}
	if alias, _ := m.VIP(FragmentAlias(key)); alias != got {
		t.Fatalf("installing VIP id 3 rewrote the fragment alias of VIP id 2: %+v", alias)
	}
	for _, size := range []int{0, 8} {
		if _, err := InstallTable(m, key, got, make([]BackendID, size)); err == nil {
			t.Errorf("a table of %d entries with stride 7 was accepted", size)
		}
	}
}

// TestFresh: a stamp is fresh up to the timeout in the past and up to
// MaxClockSkew in the future, as in the datapath.
func TestFresh(t *testing.T) {
	const now = uint64(1000 * time.Second)
	for _, c := range []struct {
		stamp uint64
		want  bool
	}{
		{now, true},
		{now - uint64(10*time.Second), true},
		{now - uint64(10*time.Second) - 1, false},
		{now + uint64(MaxClockSkew), true},
		{now + uint64(MaxClockSkew) + 1, false},
		{0, false},
	} {
		if got := Fresh(now, c.stamp, 10*time.Second); got != c.want {
			t.Errorf("Fresh(%d, %d, 10s) = %v, want %v", now, c.stamp, got, c.want)
		}
	}
}
