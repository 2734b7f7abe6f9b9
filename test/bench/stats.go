package bench

import (
	"slices"
)

// samples collects one measurement per round for each named variant.
type samples map[string][]float64

func (s samples) add(name string, value float64) { s[name] = append(s[name], value) }

// median of the variant's samples; 0 when it has none.
func (s samples) median(name string) float64 { return median(s[name]) }

// spread is the smallest and largest sample of the variant.
func (s samples) spread(name string) (low, high float64) {
	values := s[name]
	if len(values) == 0 {
		return 0, 0
	}
	return slices.Min(values), slices.Max(values)
}

func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	mid := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[mid]
	}
	return (sorted[mid-1] + sorted[mid]) / 2
}

// ratio is a / b, or 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// quantile q (0 to 1) of the variant's samples, nearest rank; 0 when it
// has none.
func (s samples) quantile(name string, q float64) float64 {
	values := s[name]
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}
