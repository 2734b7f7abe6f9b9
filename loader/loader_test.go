package loader

import (
	"strings"
	"testing"
)

func TestOptionsValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatalf("default options: %v", err)
	}
	for _, tc := range []struct {
		change func(*Options)
		want   string
	}{
		{func(o *Options) { o.MaxVIPs = 0 }, "max VIPs 0 is out of range"},
		{func(o *Options) { o.MaxVIPs = 1 << 15 }, "max VIPs 32768 is out of range, expected 1..32767"},
		{func(o *Options) { o.TableStride = 2 }, "table size 2"},
		{func(o *Options) { o.MaxVIPs, o.TableStride = 32000, 70001 }, "does not fit"},
		{func(o *Options) { o.MaxBackends = 1 }, "max backends 1"},
		{func(o *Options) { o.MaxBackends = 1<<16 + 1 }, "max backends 65537 is out of range"},
		{func(o *Options) { o.AffinityCapacity = 0 }, "affinity capacity 0 is out of range"},
		{func(o *Options) { o.AffinityCapacity = 1 << 27 }, "affinity capacity 134217728 is out of range"},
		{func(o *Options) { o.MaxTxPorts = 0 }, "max tx ports is 0"},
	} {
		o := DefaultOptions()
		tc.change(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("options %+v: error %v, want one containing %q", o, err, tc.want)
		}
	}
}

func TestAffinityBuckets(t *testing.T) {
	for _, capacity := range []uint32{1, 2, 3, 4, 5, 1000, 1 << 20, 1_000_000, AffinityCapacityLimit} {
		buckets := AffinityBuckets(capacity)
		if got := AffinityBuckets(AffinityCapacityOf(buckets)); got != buckets {
			t.Errorf("capacity %d: %d buckets, read back as capacity %d = %d buckets", capacity, buckets, AffinityCapacityOf(buckets), got)
		}
		if slots := 4 * uint64(buckets); slots < 3*uint64(capacity) {
			t.Errorf("capacity %d: %d buckets hold %d entries, want at least %d", capacity, buckets, slots, 3*uint64(capacity))
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"native", "generic", "auto"} {
		m, err := ParseMode(s)
		if err != nil || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMode("fast"); err == nil || !strings.Contains(err.Error(), `"fast"`) {
		t.Errorf("ParseMode(fast) error %v, want one naming the value", err)
	}
}
