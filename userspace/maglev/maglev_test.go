package maglev

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

const testSize = DefaultTableSize

// equalBackends returns n backends named backend-000, backend-001, ... with
// IDs 1..n and weight 1.
func equalBackends(n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Name: fmt.Sprintf("backend-%03d", i), ID: uint32(i + 1), Weight: 1}
	}
	return bs
}

func mustBuild(t testing.TB, bs []Backend, size, seed uint32) []uint32 {
	t.Helper()
	table, err := Build(bs, size, seed)
	if err != nil {
		t.Fatalf("Build(%d backends, size %d, seed %d): %v", len(bs), size, seed, err)
	}
	if len(table) != int(size) {
		t.Fatalf("Build returned %d slots, want %d", len(table), size)
	}
	return table
}

func counts(table []uint32) map[uint32]int {
	c := make(map[uint32]int)
	for _, id := range table {
		c[id]++
	}
	return c
}

func TestIsPrime(t *testing.T) {
	primes := []uint32{2, 3, 5, 7, 11, 13, 251, 257, 1021, 65521, 65537, 4294967291}
	composites := []uint32{0, 1, 4, 6, 9, 25, 49, 121, 1000, 65535, 65536, 4294967295, 4293001441 /* 65521² */, 4294049777 /* 65521·65537 */}
	for _, n := range primes {
		if !IsPrime(n) {
			t.Errorf("IsPrime(%d) = false, want true", n)
		}
	}
	for _, n := range composites {
		if IsPrime(n) {
			t.Errorf("IsPrime(%d) = true, want false", n)
		}
	}
}

func TestEqualWeightsShare(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10, 100} {
		t.Run(fmt.Sprintf("backends=%d", n), func(t *testing.T) {
			bs := equalBackends(n)
			table := mustBuild(t, bs, testSize, 1)
			c := counts(table)
			want := float64(testSize) / float64(n)
			for _, b := range bs {
				got := c[b.ID]
				if d := abs(float64(got)-want) / testSize; d > 0.01 {
					t.Errorf("%s got %d slots, want %.0f ± 1%% of the table (off by %.3f%%)", b.Name, got, want, 100*d)
				}
			}
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// changed counts the slots whose ID differs between two tables.
func changed(a, b []uint32) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// Names for the added backend: one sorting after, one before and one in the
// middle of the existing names, since the name decides the turn order.
var addedNames = []string{"backend-zzz", "aaa-first", "backend-000a"}

func TestAddBackendDisruption(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10, 50} {
		t.Run(fmt.Sprintf("backends=%d", n), func(t *testing.T) {
			limit := 1/float64(n+1) + 0.01
			worst := 0.0
			for seed := uint32(1); seed <= 5; seed++ {
				bs := equalBackends(n)
				before := mustBuild(t, bs, testSize, seed)
				for _, name := range addedNames {
					after := mustBuild(t, append(slices.Clone(bs), Backend{Name: name, ID: 1000, Weight: 1}), testSize, seed)
					d := float64(changed(before, after)) / testSize
					worst = max(worst, d)
					if d > limit {
						t.Errorf("seed %d, adding %q: %.3f%% of slots changed, want at most %.3f%%", seed, name, 100*d, 100*limit)
					}
				}
			}
			t.Logf("worst disruption %.3f%% (ideal %.3f%%, limit %.3f%%)", 100*worst, 100/float64(n+1), 100*limit)
		})
	}
}

// Adding a weighted backend should move little more than the new backend's
// share, also when it changes the largest weight and thereby the schedule of
// the credit rounds.
func TestAddWeightedBackendDisruption(t *testing.T) {
	bases := [][]uint32{{1, 2, 3, 4}, {1, 10}, {5, 5, 5, 1}, {100, 1, 1, 1, 1, 1, 1, 1, 1, 1}}
	for _, base := range bases {
		for _, added := range []uint32{1, 3, 5, 20} {
			t.Run(fmt.Sprintf("%v+%d", base, added), func(t *testing.T) {
				var bs []Backend
				var sum uint32
				for i, w := range base {
					bs = append(bs, Backend{Name: fmt.Sprintf("backend-%03d", i), ID: uint32(i + 1), Weight: w})
					sum += w
				}
				limit := float64(added)/float64(sum+added) + 0.01
				for seed := uint32(1); seed <= 3; seed++ {
					before := mustBuild(t, bs, testSize, seed)
					for _, name := range addedNames {
						after := mustBuild(t, append(slices.Clone(bs), Backend{Name: name, ID: 1000, Weight: added}), testSize, seed)
						if d := float64(changed(before, after)) / testSize; d > limit {
							t.Errorf("seed %d, adding %q: %.3f%% of slots changed, want at most %.3f%%", seed, name, 100*d, 100*limit)
						}
					}
				}
			})
		}
	}
}

func TestRemoveBackendDisruption(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10, 50} {
		t.Run(fmt.Sprintf("backends=%d", n), func(t *testing.T) {
			worst := 0.0
			for seed := uint32(1); seed <= 5; seed++ {
				bs := equalBackends(n)
				before := mustBuild(t, bs, testSize, seed)
				for _, k := range []int{0, n / 2, n - 1} {
					gone := bs[k]
					rest := slices.Delete(slices.Clone(bs), k, k+1)
					after := mustBuild(t, rest, testSize, seed)
					others := 0
					for i := range before {
						if before[i] != gone.ID && before[i] != after[i] {
							others++
						}
						if after[i] == gone.ID {
							t.Fatalf("seed %d: slot %d still holds removed backend %s", seed, i, gone.Name)
						}
					}
					d := float64(others) / testSize
					worst = max(worst, d)
					if d > 0.01 {
						t.Errorf("seed %d, removing %s: %.3f%% of the slots of other backends changed, want at most 1%%", seed, gone.Name, 100*d)
					}
				}
			}
			t.Logf("worst collateral disruption %.3f%%", 100*worst)
		})
	}
}

func TestWeightedShare(t *testing.T) {
	for _, weights := range [][]uint32{{1, 2, 3, 4}, {1, 10}, {10, 1}, {7, 7, 1}, {1, 1000}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			bs := make([]Backend, len(weights))
			var sum uint32
			for i, w := range weights {
				bs[i] = Backend{Name: fmt.Sprintf("w%d-%d", i, w), ID: uint32(i + 1), Weight: w}
				sum += w
			}
			for _, seed := range []uint32{1, 2, 3} {
				table := mustBuild(t, bs, testSize, seed)
				c := counts(table)
				for _, b := range bs {
					got := float64(c[b.ID]) / testSize
					want := float64(b.Weight) / float64(sum)
					if abs(got-want) > 0.02 {
						t.Errorf("seed %d: %s (weight %d) got %.3f%% of the table, want %.3f%% ± 2%%", seed, b.Name, b.Weight, 100*got, 100*want)
					}
				}
			}
		})
	}
}

func TestOrderIndependent(t *testing.T) {
	cases := map[string][]Backend{
		"equal":    equalBackends(10),
		"weighted": {{"a", 1, 1}, {"b", 2, 2}, {"c", 3, 3}, {"d", 4, 4}, {"off", 5, 0}},
		"ids not in name order": {
			{"zeta", 1, 3}, {"alpha", 9, 1}, {"mid", 4, 2}, {"beta", 7, 5},
		},
	}
	for name, bs := range cases {
		t.Run(name, func(t *testing.T) {
			const seed = 7
			want := mustBuild(t, bs, 1021, seed)
			r := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 20; i++ {
				shuffled := slices.Clone(bs)
				r.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
				orig := slices.Clone(shuffled)
				got := mustBuild(t, shuffled, 1021, seed)
				if !slices.Equal(got, want) {
					t.Fatalf("shuffle %d (%v): table differs in %d slots", i, shuffled, changed(got, want))
				}
				if !slices.Equal(shuffled, orig) {
					t.Fatalf("Build modified its input: %v became %v", orig, shuffled)
				}
			}
		})
	}
}

func TestSeedChangesTable(t *testing.T) {
	for _, n := range []int{2, 3, 10} {
		t.Run(fmt.Sprintf("backends=%d", n), func(t *testing.T) {
			bs := equalBackends(n)
			seen := map[uint32][]uint32{}
			for _, seed := range []uint32{0, 1, 2, 3, 0xffffffff} {
				table := mustBuild(t, bs, 257, seed)
				for other, prev := range seen {
					if slices.Equal(table, prev) {
						t.Errorf("seeds %d and %d give the same table", other, seed)
					}
				}
				seen[seed] = table
			}
		})
	}
}

func TestFillAndZeroWeights(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
		size     uint32
	}{
		{"one backend", []Backend{{"only", 42, 1}}, 251},
		{"one of three weighted", []Backend{{"a", 1, 0}, {"b", 2, 5}, {"c", 3, 0}}, 251},
		{"mixed", []Backend{{"a", 1, 3}, {"b", 2, 0}, {"c", 3, 1}, {"d", 4, 0}}, 1021},
		{"as many as slots", equalBackends(257), 257},
		{"as many weighted as slots plus idle", append(equalBackends(3), Backend{"idle", 99, 0}), 3},
		{"extreme weights", []Backend{{"heavy", 1, 1 << 31}, {"light", 2, 1}, {"max", 3, ^uint32(0)}}, 1021},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := mustBuild(t, tt.backends, tt.size, 3)
			ids := map[uint32]Backend{}
			for _, b := range tt.backends {
				ids[b.ID] = b
			}
			for i, id := range table {
				b, ok := ids[id]
				switch {
				case id == 0:
					t.Fatalf("slot %d is empty", i)
				case !ok:
					t.Fatalf("slot %d holds unknown ID %d", i, id)
				case b.Weight == 0:
					t.Fatalf("slot %d holds weight-0 backend %s", i, b.Name)
				}
			}
			// Weight-0 backends must not influence the table at all.
			var weighted []Backend
			for _, b := range tt.backends {
				if b.Weight > 0 {
					weighted = append(weighted, b)
				}
			}
			if !slices.Equal(table, mustBuild(t, weighted, tt.size, 3)) {
				t.Error("dropping the weight-0 backends changed the table")
			}
			// Equal weights with as many backends as slots: one slot each.
			if len(weighted) == int(tt.size) && weighted[0].Weight == weighted[len(weighted)-1].Weight {
				for id, n := range counts(table) {
					if n != 1 {
						t.Errorf("backend ID %d got %d slots, want 1", id, n)
					}
				}
			}
		})
	}
}

func TestEmptyTable(t *testing.T) {
	tests := map[string][]Backend{
		"nil":         nil,
		"empty":       {},
		"all weight0": {{"a", 1, 0}, {"b", 2, 0}},
	}
	for name, bs := range tests {
		t.Run(name, func(t *testing.T) {
			table := mustBuild(t, bs, 251, 1)
			for i, id := range table {
				if id != 0 {
					t.Fatalf("slot %d = %d, want 0", i, id)
				}
			}
		})
	}
}

func TestErrors(t *testing.T) {
	ok := equalBackends(3)
	tests := []struct {
		name     string
		backends []Backend
		size     uint32
		want     []string // substrings of the error
	}{
		{"size 0", ok, 0, []string{"table size 0", "prime"}},
		{"size 1", ok, 1, []string{"table size 1", "prime"}},
		{"size 2", ok, 2, []string{"table size 2", "at least 3"}},
		{"size 4", ok, 4, []string{"table size 4", "not a prime"}},
		{"size 1000", ok, 1000, []string{"table size 1000", "not a prime", "65537"}},
		{"size 65535", nil, 65535, []string{"table size 65535", "not a prime"}},
		{"empty name", []Backend{{"a", 1, 1}, {"", 17, 1}}, 251, []string{"empty name", "ID 17"}},
		{"empty name weight 0", []Backend{{"", 17, 0}}, 251, []string{"empty name", "ID 17"}},
		{"duplicate name", []Backend{{"web", 1, 1}, {"other", 2, 1}, {"web", 3, 1}}, 251, []string{`duplicate backend name "web"`}},
		{"duplicate name weight 0", []Backend{{"web", 1, 0}, {"web", 3, 1}}, 251, []string{`"web"`}},
		{"ID 0", []Backend{{"a", 1, 1}, {"zero", 0, 1}}, 251, []string{`"zero"`, "ID 0"}},
		{"ID 0 weight 0", []Backend{{"zero", 0, 0}}, 251, []string{`"zero"`, "ID 0"}},
		{"too many backends", equalBackends(4), 3, []string{"4 backends", "3 slots"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := Build(tt.backends, tt.size, 1)
			if err == nil {
				t.Fatalf("Build succeeded with a %d-slot table, want an error", len(table))
			}
			if table != nil {
				t.Errorf("Build returned a table together with error %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// referenceBuild is the population algorithm written as plainly as
// possible: materialized permutations and a credit counter per backend,
// visiting every backend in every round.
func referenceBuild(backends []Backend, size, seed uint32) []uint32 {
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
	bs = slices.DeleteFunc(bs, func(b Backend) bool { return b.Weight == 0 })
	table := make([]uint32, size)
	if len(bs) == 0 {
		return table
	}
	var maxWeight uint64
	perms := make([][]uint32, len(bs))
	for i, b := range bs {
		maxWeight = max(maxWeight, uint64(b.Weight))
		h1, h2 := nameHashes(seed, b.Name)
		offset, skip := h1%uint64(size), h2%uint64(size-1)+1
		perms[i] = make([]uint32, size)
		for j := range perms[i] {
			perms[i][j] = uint32((offset + uint64(j)*skip) % uint64(size))
		}
	}
	next := make([]int, len(bs))
	credit := make([]uint64, len(bs))
	filled := uint32(0)
	for {
		for i, b := range bs {
			credit[i] += uint64(b.Weight)
			for credit[i] >= maxWeight {
				credit[i] -= maxWeight
				for table[perms[i][next[i]]] != 0 {
					next[i]++
				}
				table[perms[i][next[i]]] = b.ID
				next[i]++
				if filled++; filled == size {
					return table
				}
			}
		}
	}
}

func TestMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, size := range []uint32{3, 5, 13, 251, 1021} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			for i := 0; i < 100; i++ {
				n := 1 + r.IntN(min(int(size), 30))
				maxW := []uint32{1, 3, 10, 1000}[r.IntN(4)]
				bs := make([]Backend, n)
				for j := range bs {
					bs[j] = Backend{Name: fmt.Sprintf("b%d", r.Uint32()), ID: uint32(j + 1), Weight: r.Uint32N(maxW + 1)}
				}
				seed := r.Uint32()
				got, err := Build(bs, size, seed)
				if err != nil {
					continue // a random duplicate name
				}
				if want := referenceBuild(bs, size, seed); !slices.Equal(got, want) {
					t.Fatalf("seed %d, backends %v: Build and the reference differ in %d slots", seed, bs, changed(got, want))
				}
			}
		})
	}
}

// Load balancers that share a configuration must compute the same table,
// also across versions of this package, so the output for a fixed input is
// pinned here. If this test fails, the population algorithm or the name hash
// changed: that reshuffles clients on every upgrade and must be deliberate.
func TestBuildPinned(t *testing.T) {
	if h1, h2 := nameHashes(1, "web-a"); h1 != 0x5c414996f7d080ad || h2 != 0x8e0931ac0bd1ed2f {
		t.Errorf("nameHashes(1, \"web-a\") = %#x, %#x; the name hash changed", h1, h2)
	}
	bs := []Backend{{"web-a", 1, 1}, {"web-b", 2, 2}, {"web-c", 3, 1}}
	want := []uint32{2, 3, 2, 1, 1, 2, 2, 3, 1, 3, 2, 2, 2}
	if got := mustBuild(t, bs, 13, 1); !slices.Equal(got, want) {
		t.Errorf("Build = %v, want %v", got, want)
	}
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			bs := equalBackends(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Build(bs, DefaultTableSize, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// A few heavy backends next to many light ones: the case that makes a
	// naive round-by-round loop cost O(size*N).
	b.Run("backends=1000/skewed", func(b *testing.B) {
		bs := equalBackends(1000)
		for i := range bs {
			if i%100 == 0 {
				bs[i].Weight = 1000
			}
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Build(bs, DefaultTableSize, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
