package daemon

import (
	"strings"
	"testing"
	"time"
)

// TestConfigCheck: a config Run cannot start with is refused with the bad
// value and what is expected, before anything is touched.
func TestConfigCheck(t *testing.T) {
	good := Config{CheckWorkers: 1}
	if err := good.check(); err != nil {
		t.Fatalf("a good config was refused: %v", err)
	}
	for _, c := range []struct {
		cfg  Config
		want []string
	}{
		{Config{CheckWorkers: 1, WatchdogTimeout: -time.Second}, []string{"-1s", "negative", "30s"}},
		{Config{CheckWorkers: 0}, []string{"check workers 0", "at least 1"}},
	} {
		err := c.cfg.check()
		if err == nil {
			t.Fatalf("%+v was accepted", c.cfg)
		}
		for _, want := range c.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%+v: error %q does not say %q", c.cfg, err, want)
			}
		}
	}
}
