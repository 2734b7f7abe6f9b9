package metrics

import (
	"errors"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
)

type inventory control.Inventory

func (i inventory) Inventory() control.Inventory { return control.Inventory(i) }

func testSource() (*maps.Fake, inventory) {
	limits := maps.Limits{MaxVIPs: 4, TableStride: 7, MaxBackends: 8, AffinityBuckets: 64}
	m := maps.NewFake(limits)
	_ = m.PutSettings(maps.Settings{Active: true})
	m.UpdateCounters(maps.GlobalSlot, func(c *maps.Counters) {
		c.Packets[maps.OutcomeForwardTX] = 10
		c.Bytes[maps.OutcomeForwardTX] = 640
		c.Affinity[maps.AffinityHit] = 9
	})
	m.UpdateCounters(limits.VIPSlot(1), func(c *maps.Counters) { c.Packets[maps.OutcomeForwardTX] = 10 })
	m.UpdateCounters(limits.BackendSlot(3), func(c *maps.Counters) { c.Packets[maps.OutcomeForwardTX] = 10 })
	_ = m.PutAffinity(maps.AffinityKey{VIPID: 1}, maps.Affinity{Backend: 3})
	_ = m.PutAffinity(maps.AffinityKey{VIPID: 1, Client: [16]byte{1}}, maps.Affinity{Backend: 3, Probationary: true})
	inv := inventory{
		DatapathInfo: control.DatapathInfo{Interface: "eth0", Mode: "native", ProgramID: 42},
		VIPs: []control.VIPInventory{{Name: "198.18.1.1:80/tcp", ID: 1, TableVersion: 2, MassFailure: true, Backends: []control.BackendInventory{
			{Name: "b1", ID: 3, State: maps.BackendDraining, Health: health.Unhealthy, Checked: true, Weight: 1},
		}}},
	}
	return m, inv
}

func TestCollectorReadsTheMaps(t *testing.T) {
	m, inv := testSource()
	events := NewEvents()
	registry := New(m, inv, events, slog.New(slog.DiscardHandler), 1024, time.Unix(1000, 0))
	events.TableBuilt("198.18.1.1:80/tcp", time.Millisecond)
	events.HealthChecked("198.18.1.1:80/tcp", "b1", health.Result{Latency: 2 * time.Millisecond})
	want := `
# HELP tether_packets_total Packets seen by the XDP program, by outcome.
# TYPE tether_packets_total counter
`
	got, err := testutil.GatherAndCount(registry, "tether_packets_total")
	if err != nil || got != len(maps.OutcomeNames) {
		t.Fatalf("tether_packets_total has %d series (%v), want one per outcome (%d)", got, err, len(maps.OutcomeNames))
	}
	expected := want + `tether_packets_total{outcome="forwarded_tx"} 10` + "\n"
	for _, name := range maps.OutcomeNames {
		if name != "forwarded_tx" {
			expected += `tether_packets_total{outcome="` + name + `"} 0` + "\n"
		}
	}
	if err := testutil.GatherAndCompare(registry, strings.NewReader(expected), "tether_packets_total"); err != nil {
		t.Error(err)
	}
	for _, series := range []struct {
		name  string
		value string
	}{
		{"tether_backend_packets_total", `tether_backend_packets_total{backend="b1",outcome="forwarded_tx",vip="198.18.1.1:80/tcp"} 10`},
		{"tether_affinity_entries", "tether_affinity_entries 2"},
		{"tether_affinity_probationary_entries", "tether_affinity_probationary_entries 1"},
		{"tether_affinity_capacity", "tether_affinity_capacity 1024"},
		{"tether_maglev_rebuilds_total", `tether_maglev_rebuilds_total{vip="198.18.1.1:80/tcp"} 2`},
		{"tether_attach_info", `tether_attach_info{interface="eth0",mode="native",program_id="42"} 1`},
		{"tether_datapath_active", "tether_datapath_active 1"},
		{"tether_backend_health", `tether_backend_health{backend="b1",health="unhealthy",vip="198.18.1.1:80/tcp"} 1`},
		{"tether_backend_health", `tether_backend_health{backend="b1",health="up",vip="198.18.1.1:80/tcp"} 0`},
		{"tether_backend_healthy", `tether_backend_healthy{backend="b1",vip="198.18.1.1:80/tcp"} 0`},
		{"tether_vip_mass_failure", `tether_vip_mass_failure{vip="198.18.1.1:80/tcp"} 1`},
		{"tether_health_checks_total", `tether_health_checks_total{backend="b1",evidence="",result="success",vip="198.18.1.1:80/tcp"} 1`},
	} {
		body, err := testutil.CollectAndFormat(registry, expfmt.TypeTextPlain, series.name)
		if err != nil {
			body = nil
		}
		if !strings.Contains(string(body), series.value) {
			t.Errorf("%s lacks %q:\n%s", series.name, series.value, body)
		}
	}
}

func TestCollectorPassesLint(t *testing.T) {
	m, inv := testSource()
	events := NewEvents()
	registry := New(m, inv, events, slog.New(slog.DiscardHandler), 1024, time.Now())
	events.TableBuilt("198.18.1.1:80/tcp", time.Millisecond)
	events.HealthChecked("198.18.1.1:80/tcp", "b1", health.Result{Err: errors.New("refused"), Latency: time.Millisecond})
	problems, err := testutil.GatherAndLint(registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestDashboardUsesRealMetrics keeps deploy/grafana-dashboard.json in line
// with the metrics tether exports.
func TestDashboardUsesRealMetrics(t *testing.T) {
	dashboard, err := os.ReadFile("../../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	m, inv := testSource()
	events := NewEvents()
	registry := New(m, inv, events, slog.New(slog.DiscardHandler), 1024, time.Now())
	events.TableBuilt("v", time.Millisecond)
	events.HealthChecked("v", "b", health.Result{Latency: time.Millisecond})
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, f := range families {
		exported[f.GetName()] = true
	}
	used := regexp.MustCompile(`tether_[a-z0-9_]+`).FindAllString(string(dashboard), -1)
	if len(used) == 0 {
		t.Fatal("the dashboard uses no tether metric")
	}
	for _, name := range used {
		base := strings.TrimSuffix(name, "_bucket")
		if !exported[base] {
			t.Errorf("the dashboard uses %s, which tether does not export", name)
		}
	}
}
