package control

import (
	"os"
	"testing"
)

// TestExampleConfig keeps deploy/tether.yaml valid.
func TestExampleConfig(t *testing.T) {
	f, err := os.Open("../../deploy/tether.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := ParseConfig(f)
	if err != nil {
		t.Fatalf("deploy/tether.yaml: %v", err)
	}
	merged, err := cfg.Merge(State{Seed: DefaultSeed})
	if err != nil {
		t.Fatalf("deploy/tether.yaml: %v", err)
	}
	if len(merged.VIPs) != 1 || len(merged.VIPs[0].Backends) != 3 || merged.Seed != DefaultSeed {
		t.Fatalf("deploy/tether.yaml parsed as %+v", merged)
	}
}
