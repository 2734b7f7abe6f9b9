package bench

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/test/testenv"
)

// smokeDatapath is tether with 1000 clients of each family and the
// floors, closed when t ends. The table is sized so that no bucket fills:
// every cold lookup hits. The backends' MAC is a placeholder the live bed
// replaces.
func smokeDatapath(t *testing.T) (*benchDatapath, *floors) {
	t.Helper()
	testenv.RequireBPF(t)
	opts := loader.DefaultOptions()
	opts.AffinityCapacity = 1 << 16
	placeholder := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x03}
	dp, err := newBenchDatapath(opts, families(1000, 1000), placeholder, placeholder)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	fl, err := newFloors(opts.AffinityCapacity)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Close() })
	return dp, fl
}

// TestProgRunSmoke runs the prog.Run part of make bench with tiny sizes, so
// the benchmark keeps building and measuring the paths it names.
func TestProgRunSmoke(t *testing.T) {
	dp, fl := smokeDatapath(t)
	results, err := measureProgRun(context.Background(), dp, fl, 1000, 1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(results.Rows) != 16 {
		t.Fatalf("%d rows, want 16 (2 families x hot/cold x 4 programs)", len(results.Rows))
	}
	for _, row := range results.Rows {
		if row.ThreadNs <= 0 {
			t.Errorf("%+v: no time measured", row)
		}
	}
	for name, rate := range results.ColdHitRate {
		if rate != 100 {
			t.Errorf("%s cold runs hit the affinity map %.2f%% of the time, want 100%%", name, rate)
		}
	}
	for _, row := range results.Rows {
		t.Logf("%s %7d clients %-22s kernel %4.0f ns  thread %6.2f ns", row.Family, row.Clients, row.Program, row.KernelNs, row.ThreadNs)
	}
}

// TestLiveSmoke runs the live veth part with tiny sizes: every traffic
// shape, mode and program forwards all its frames, and tether's lookups hit.
func TestLiveSmoke(t *testing.T) {
	dp, fl := smokeDatapath(t)
	l := &lab{prefix: "tether-bt-"}
	t.Cleanup(func() {
		if err := l.teardown(); err != nil {
			t.Errorf("tearing down: %v", err)
		}
	})
	bed, err := newLiveBed(l)
	if err != nil {
		t.Fatal(err)
	}
	results, err := measureLive(context.Background(), l, bed, dp, fl, 6000, 1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// 2 families: every-frame traffic native and generic, flows native.
	if len(results.Rows) != 2*3*4 {
		t.Fatalf("%d rows, want 24 (2 families x 3 traffic and mode pairs x 4 programs)", len(results.Rows))
	}
	for _, row := range results.Rows {
		if row.Delivered != row.Sent || row.Sent == 0 || row.NsPerPacket <= 0 {
			t.Errorf("%+v: frames lost or no time measured", row)
		}
	}
	for name, rate := range results.HitRate {
		if rate != 100 {
			t.Errorf("%s: tether's lookups hit %.2f%%, want 100%%", name, rate)
		}
	}
}
