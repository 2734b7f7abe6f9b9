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
		{func(o *Options) { o.MaxVIPs = 0 }, "max VIPs is 0"},
		{func(o *Options) { o.TableStride = 2 }, "table size 2"},
		{func(o *Options) { o.MaxVIPs = 1 << 20 }, "does not fit"},
		{func(o *Options) { o.MaxBackends = 1 }, "max backends 1"},
		{func(o *Options) { o.AffinityCapacity = 0 }, "affinity capacity is 0"},
		{func(o *Options) { o.MaxTxPorts = 0 }, "max tx ports is 0"},
	} {
		o := DefaultOptions()
		tc.change(&o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("options %+v: error %v, want one containing %q", o, err, tc.want)
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
