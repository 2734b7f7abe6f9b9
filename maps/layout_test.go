package maps

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/tether-lb/tether/loader"
)

// The tests in this file hold the Go side to the committed BPF object
// (its BTF and its instructions) and to bpf/*.h, without loading anything
// into the kernel: they run unprivileged.

func tetherSpec(t *testing.T) *ebpf.CollectionSpec {
	t.Helper()
	spec, err := loader.LoadTether()
	if err != nil {
		t.Fatalf("reading the embedded BPF object: %v", err)
	}
	return spec
}

// enumValue is member of enum name in the object's BTF.
func enumValue(t *testing.T, spec *ebpf.CollectionSpec, name, member string) uint64 {
	t.Helper()
	var enum *btf.Enum
	if err := spec.Types.TypeByName(name, &enum); err != nil {
		t.Fatalf("finding enum %s in the object's BTF: %v", name, err)
	}
	for _, v := range enum.Values {
		if v.Name == member {
			return v.Value
		}
	}
	t.Fatalf("enum %s in the object's BTF has no member %s", name, member)
	return 0
}

// TestConstantsMatchTheObject: every limit and encoding constant Go shares
// with the datapath has the value the compiled program was built with.
func TestConstantsMatchTheObject(t *testing.T) {
	spec := tetherSpec(t)
	nsPerMS, err := cUint64(cDefines(t, "consts.h")["NS_PER_MS"])
	if err != nil {
		t.Fatalf("reading NS_PER_MS in bpf/consts.h: %v", err)
	}
	routeIDMask := enumValue(t, spec, "route_layout", "ROUTE_ID_MASK")
	routeVIPMask := enumValue(t, spec, "route_layout", "ROUTE_VIP_MASK")
	for _, c := range []struct {
		goName string
		goVal  uint64
		cName  string
		cVal   uint64
	}{
		{"maps.MaxClockSkew", uint64(MaxClockSkew), "MAX_CLOCK_SKEW_NS", enumValue(t, spec, "time_limit_ms", "MAX_CLOCK_SKEW_MS") * nsPerMS},
		{"maps.AffinityRefresh", uint64(AffinityRefresh), "AFFINITY_REFRESH_NS", enumValue(t, spec, "time_limit_ms", "AFFINITY_REFRESH_MS") * nsPerMS},
		{"maps.AffinityProbation", uint64(AffinityProbation), "AFFINITY_PROBATION_NS", enumValue(t, spec, "time_limit_ms", "AFFINITY_PROBATION_MS") * nsPerMS},
		{"maps.MaxIPv6ExtHeaders", uint64(MaxIPv6ExtHeaders), "MAX_IPV6_EXT_HEADERS", enumValue(t, spec, "limits", "MAX_IPV6_EXT_HEADERS")},
		{"maps.AffinityWays", uint64(AffinityWays), "AFFINITY_WAYS", enumValue(t, spec, "limits", "AFFINITY_WAYS")},
		{"maps.maxRouteID", uint64(maxRouteID), "ROUTE_ID_MASK", routeIDMask},
		{"maps.maxRouteVIP", uint64(maxRouteVIP), "ROUTE_VIP_MASK", routeVIPMask},
		{"maps.routeProbation", routeProbation, "ROUTE_PROBATION", enumValue(t, spec, "route_layout", "ROUTE_PROBATION")},
		{"maps.routeBackendShift", uint64(routeBackendShift), "ROUTE_BACKEND_SHIFT", enumValue(t, spec, "route_layout", "ROUTE_BACKEND_SHIFT")},
		{"maps.routeGenerationShift", uint64(routeGenerationShift), "ROUTE_GENERATION_SHIFT", enumValue(t, spec, "route_layout", "ROUTE_GENERATION_SHIFT")},
		// VIP ids stop below the mask: ROUTE_BUSY's VIP field is the mask.
		{"loader.MaxVIPsLimit", loader.MaxVIPsLimit, "ROUTE_VIP_MASK", routeVIPMask},
		// Backend ids, below MaxBackendsLimit, fit the mask.
		{"loader.MaxBackendsLimit - 1", loader.MaxBackendsLimit - 1, "ROUTE_ID_MASK", routeIDMask},
	} {
		if c.goVal != c.cVal {
			t.Errorf("%s: Go %s = %d, C %s = %d", c.cName, c.goName, c.goVal, c.cName, c.cVal)
		}
	}
}

// TestRouteEncoding: the widest VIP id, backend id and generation survive a
// route, with and without probation, and the busy route's VIP is no VIP's.
func TestRouteEncoding(t *testing.T) {
	for _, probation := range []bool{false, true} {
		want := Affinity{Backend: BackendID(maxRouteID), Generation: ^uint32(0), LastSeen: 7, Probationary: probation}
		route := makeRoute(maxRouteVIP-1, want)
		if vip, got := routeVIP(route), decodeRoute(route, want.LastSeen); vip != maxRouteVIP-1 || got != want {
			t.Errorf("route %#x decodes to VIP id %d, %+v; want %d, %+v", route, vip, got, maxRouteVIP-1, want)
		}
	}
	if vip := routeVIP(routeBusy); vip < loader.MaxVIPsLimit {
		t.Errorf("the busy route's VIP id %d is a valid VIP id (< %d)", vip, loader.MaxVIPsLimit)
	}
}

// cDefines reads the #defines of a header in bpf/.
func cDefines(t *testing.T, header string) map[string]string {
	t.Helper()
	text, err := os.ReadFile("../bpf/" + header)
	if err != nil {
		t.Fatalf("reading the datapath's %s: %v", header, err)
	}
	defines := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^#define (\w+) (.+)$`).FindAllStringSubmatch(string(text), -1) {
		defines[m[1]] = m[2]
	}
	return defines
}

// cUint64 parses an unsigned 64-bit C literal: 0x...ULL, optionally
// complemented (~) and parenthesized.
func cUint64(literal string) (uint64, error) {
	s := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(literal, "("), ")"), "ULL")
	s, complement := strings.CutPrefix(s, "~")
	v, err := strconv.ParseUint(s, 0, 64)
	if complement {
		v = ^v
	}
	return v, err
}

// TestAffinityHashMatchesTheHeader: 64-bit constants cannot be enum
// members, so these are #defines, compared as bpf/affinity.h spells them.
// The multipliers must also be immediates of the compiled program.
func TestAffinityHashMatchesTheHeader(t *testing.T) {
	shared := map[string]uint64{
		"ROUTE_BUSY":              routeBusy,
		"AFFINITY_HASH_VIP_MUL":   hashVIPMul,
		"AFFINITY_HASH_LOW_MUL":   hashLowMul,
		"AFFINITY_HASH_HIGH_MUL":  hashHighMul,
		"AFFINITY_HASH_FINAL_MUL": hashFinalMul,
	}
	defines := cDefines(t, "affinity.h")
	for name := range defines {
		if _, ok := shared[name]; !ok && strings.HasPrefix(name, "AFFINITY_HASH_") {
			t.Errorf("%s: Go has no copy, C has %s: add it to maps/affinity.go and this test", name, defines[name])
		}
	}
	var immediates []uint64
	for _, ins := range tetherSpec(t).Programs[loader.TetherProgTetherLb].Instructions {
		if ins.IsConstantLoad(asm.DWord) {
			immediates = append(immediates, uint64(ins.Constant))
		}
	}
	for name, goVal := range shared {
		literal, ok := defines[name]
		if !ok {
			t.Errorf("%s: Go has %#x, C has no #define %s in bpf/affinity.h", name, goVal, name)
			continue
		}
		cVal, err := cUint64(literal)
		switch {
		case err != nil:
			t.Errorf("%s: Go has %#x, C has %s, which this test cannot parse: %v", name, goVal, literal, err)
		case goVal != cVal:
			t.Errorf("%s: Go has %#x, C has %#x", name, goVal, cVal)
		case strings.HasSuffix(name, "_MUL") && !slices.Contains(immediates, cVal):
			t.Errorf("%s: Go and C have %#x, the compiled program has no such 64-bit immediate (stale object? run make generate)", name, cVal)
		}
	}
}

// TestStructLayouts: the generated Go structs that are copied to and from
// the maps, or mapped in place (affinity buckets), have the C layout, member
// by member.
func TestStructLayouts(t *testing.T) {
	spec := tetherSpec(t)
	for _, c := range []struct {
		name string
		goV  any
	}{
		{"vip_key", loader.TetherVipKey{}},
		{"vip_info", loader.TetherVipInfo{}},
		{"backend", loader.TetherBackend{}},
		{"affinity_entry", loader.TetherAffinityEntry{}},
		{"affinity_bucket", loader.TetherAffinityBucket{}},
		{"lb_counters", loader.TetherLbCounters{}},
		{"lb_settings", loader.TetherLbSettings{}},
	} {
		var s *btf.Struct
		if err := spec.Types.TypeByName(c.name, &s); err != nil {
			t.Errorf("finding struct %s in the object's BTF: %v", c.name, err)
			continue
		}
		goT := reflect.TypeOf(c.goV)
		if uintptr(s.Size) != goT.Size() {
			t.Errorf("sizeof(struct %s): Go %s is %d bytes, C %d", c.name, goT, goT.Size(), s.Size)
		}
		var fields []reflect.StructField
		for i := range goT.NumField() {
			if f := goT.Field(i); f.Name != "_" {
				fields = append(fields, f)
			}
		}
		if len(fields) != len(s.Members) {
			t.Errorf("struct %s: Go %s has %d fields, C %d members", c.name, goT, len(fields), len(s.Members))
			continue
		}
		for i, m := range s.Members {
			f := fields[i]
			size, err := btf.Sizeof(m.Type)
			if err != nil {
				t.Errorf("struct %s member %s: sizing its type: %v", c.name, m.Name, err)
				continue
			}
			if !strings.EqualFold(strings.ReplaceAll(m.Name, "_", ""), f.Name) || f.Offset != uintptr(m.Offset.Bytes()) || f.Type.Size() != uintptr(size) {
				t.Errorf("struct %s member %s: Go field %s at offset %d, %d bytes; C at offset %d, %d bytes",
					c.name, m.Name, f.Name, f.Offset, f.Type.Size(), m.Offset.Bytes(), size)
			}
		}
	}
}

// TestMapSizes: the keys and values Go reads and writes have the sizes of
// the maps' keys and values.
func TestMapSizes(t *testing.T) {
	spec := tetherSpec(t)
	for _, c := range []struct {
		name       string
		key, value any
	}{
		{loader.TetherMapVips, loader.TetherVipKey{}, loader.TetherVipInfo{}},
		{loader.TetherMapBackends, uint32(0), loader.TetherBackend{}},
		{loader.TetherMapMaglev, uint32(0), uint32(0)},
		{loader.TetherMapAffinity, uint32(0), loader.TetherAffinityBucket{}},
		{loader.TetherMapAffinitySalt, uint32(0), uint64(0)},
		{loader.TetherMapVipEpoch, uint32(0), uint64(0)},
		{loader.TetherMapCounters, uint32(0), loader.TetherLbCounters{}},
		{loader.TetherMapTxPorts, uint32(0), uint32(0)},
		{loader.TetherMapSettings, uint32(0), loader.TetherLbSettings{}},
	} {
		m, ok := spec.Maps[c.name]
		if !ok {
			t.Errorf("map %s: not in the object", c.name)
			continue
		}
		if k := reflect.TypeOf(c.key); uintptr(m.KeySize) != k.Size() {
			t.Errorf("map %s key: Go %s is %d bytes, C %d", c.name, k, k.Size(), m.KeySize)
		}
		if v := reflect.TypeOf(c.value); uintptr(m.ValueSize) != v.Size() {
			t.Errorf("map %s value: Go %s is %d bytes, C %d", c.name, v, v.Size(), m.ValueSize)
		}
	}
}
