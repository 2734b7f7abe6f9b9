// Package metrics exports tether's state to Prometheus. The collector reads
// the datapath's per-CPU counters and the daemon's inventory at scrape
// time; histograms for table builds and health checks are fed as events
// happen. Exposition is client_golang's, never hand-formatted.
package metrics

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
)

// Source is what the collector reads at scrape time.
type Source interface {
	Inventory() control.Inventory
}

// Events records what happens in the daemon as it happens: table builds
// and health probes. It is the daemon's control.Observer.
type Events struct {
	tableBuilds  *prometheus.HistogramVec
	checks       *prometheus.CounterVec
	checkLatency *prometheus.HistogramVec
}

// NewEvents returns empty event metrics, for New to register.
func NewEvents() *Events {
	return &Events{
		tableBuilds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_maglev_build_seconds",
			Help:    "Time to build and install a VIP's Maglev table.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
		}, []string{"vip"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_health_checks_total",
			Help: "Health check probes by result (success, failure, or inconclusive: timed out while the LB itself stalled) and, for failures, evidence (hard: the node is gone; soft: slow or unwell).",
		}, []string{"vip", "backend", "result", "evidence"}),
		checkLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_health_check_duration_seconds",
			Help:    "Duration of health check probes.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"vip", "backend"}),
	}
}

// TableBuilt records a table build and swap.
func (e *Events) TableBuilt(vip string, took time.Duration) {
	e.tableBuilds.WithLabelValues(vip).Observe(took.Seconds())
}

// HealthChecked records one probe.
func (e *Events) HealthChecked(vip, backend string, r health.Result) {
	result, evidence := "success", ""
	switch {
	case r.Inconclusive:
		result = "inconclusive"
	case health.IsHard(r.Err):
		result, evidence = "failure", "hard"
	case r.Err != nil:
		result, evidence = "failure", "soft"
	}
	e.checks.WithLabelValues(vip, backend, result, evidence).Inc()
	e.checkLatency.WithLabelValues(vip, backend).Observe(r.Latency.Seconds())
}

// New returns the registry /metrics serves for a daemon whose maps are m:
// a collector that reads m and source at scrape time, events, and the Go
// runtime's and the process's metrics.
func New(m maps.Maps, source Source, events *Events, log *slog.Logger, affinityCapacity uint32, started time.Time) *prometheus.Registry {
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		newCollector(m, source, log, affinityCapacity, started),
		events.tableBuilds, events.checks, events.checkLatency,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return registry
}

type collector struct {
	maps             maps.Maps
	source           Source
	log              *slog.Logger
	affinityCapacity uint32
	started          time.Time
	collectionErrors prometheus.Counter

	packets, bytes                 *prometheus.Desc
	vipPackets, vipBytes           *prometheus.Desc
	backendPackets, backendBytes   *prometheus.Desc
	affinityEvents, vipAffinity    *prometheus.Desc
	affinityEntries, affinityCap   *prometheus.Desc
	affinityProbation              *prometheus.Desc
	backendState, backendWeight    *prometheus.Desc
	backendHealthy, vipFailingOpen *prometheus.Desc
	backendHealth, vipMassFailure  *prometheus.Desc
	tableSwaps, attachInfo         *prometheus.Desc
	startTime, active              *prometheus.Desc
	pinsIntact                     *prometheus.Desc
}

func newCollector(m maps.Maps, source Source, log *slog.Logger, affinityCapacity uint32, started time.Time) *collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &collector{
		maps: m, source: source, log: log, affinityCapacity: affinityCapacity, started: started,
		collectionErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_collection_errors_total", Help: "Errors reading the datapath's maps during scrapes."}),
		packets:         desc("tether_packets_total", "Packets seen by the XDP program, by outcome.", "outcome"),
		bytes:           desc("tether_bytes_total", "Bytes of packets seen by the XDP program, by outcome.", "outcome"),
		vipPackets:      desc("tether_vip_packets_total", "Packets to a VIP, by outcome.", "vip", "outcome"),
		vipBytes:        desc("tether_vip_bytes_total", "Bytes of packets to a VIP, by outcome.", "vip", "outcome"),
		backendPackets:  desc("tether_backend_packets_total", "Packets sent to a backend, by outcome.", "vip", "backend", "outcome"),
		backendBytes:    desc("tether_backend_bytes_total", "Bytes of packets sent to a backend, by outcome.", "vip", "backend", "outcome"),
		affinityEvents:  desc("tether_affinity_events_total", "Affinity table lookups and writes, by event.", "event"),
		vipAffinity:     desc("tether_vip_affinity_events_total", "Affinity table lookups and writes of a VIP, by event.", "vip", "event"),
		affinityEntries: desc("tether_affinity_entries", "Clients in the affinity table."),
		affinityProbation: desc("tether_affinity_probationary_entries",
			"Clients in the affinity table on probation: admitted by a first packet, not yet proven real. A flood of forged sources shows here, and leaves established clients alone."),
		affinityCap:    desc("tether_affinity_capacity", "Clients the affinity table is sized for; near it, new clients start to find no room (affinity event full)."),
		backendState:   desc("tether_backend_state", "1 for the backend's datapath state.", "vip", "backend", "state"),
		backendWeight:  desc("tether_backend_weight", "The backend's weight.", "vip", "backend"),
		backendHealthy: desc("tether_backend_healthy", "1 if the backend's health checks pass (or it has none).", "vip", "backend"),
		vipFailingOpen: desc("tether_vip_failing_open", "1 if no backend of the VIP can take a new client and tether forwards to those not up anyway.", "vip"),
		backendHealth:  desc("tether_backend_health", "1 for what the backend's checks say: up, unhealthy (slow or unwell: no new clients, pinned ones stay for the session grace) or down (gone: its clients move).", "vip", "backend", "health"),
		vipMassFailure: desc("tether_vip_mass_failure", "1 while so many of the VIP's backends fail at once that every pinned client is kept where it is.", "vip"),
		tableSwaps:     desc("tether_maglev_rebuilds_total", "Maglev tables built and swapped in since the daemon started.", "vip"),
		attachInfo:     desc("tether_attach_info", "Where and how the XDP program is attached.", "interface", "mode", "program_id"),
		pinsIntact:     desc("tether_datapath_pins_intact", "0 when pins the datapath needs (its link, its state maps) were removed behind the daemon's back, as by a detach while it runs."),
		startTime:      desc("tether_start_time_seconds", "When the daemon started, in Unix seconds."),
		active:         desc("tether_datapath_active", "1 if the datapath is switched on."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	inv := c.source.Inventory()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	fail := func(err error) {
		c.collectionErrors.Inc()
		c.log.Warn("reading the datapath for metrics", "error", err)
	}

	if global, err := c.maps.Counters(maps.GlobalSlot); err != nil {
		fail(err)
	} else {
		for o, name := range maps.OutcomeNames {
			counter(c.packets, global.Packets[o], name)
			counter(c.bytes, global.Bytes[o], name)
		}
		for e, name := range maps.AffinityEventNames {
			counter(c.affinityEvents, global.Affinity[e], name)
		}
	}
	limits := c.maps.Limits()
	for _, v := range inv.VIPs {
		if vc, err := c.maps.Counters(limits.VIPSlot(v.ID)); err != nil {
			fail(err)
		} else {
			for o, name := range maps.OutcomeNames {
				counter(c.vipPackets, vc.Packets[o], v.Name, name)
				counter(c.vipBytes, vc.Bytes[o], v.Name, name)
			}
			for e, name := range maps.AffinityEventNames {
				counter(c.vipAffinity, vc.Affinity[e], v.Name, name)
			}
		}
		counter(c.tableSwaps, v.TableVersion, v.Name)
		gauge(c.vipFailingOpen, boolValue(v.FailingOpen), v.Name)
		gauge(c.vipMassFailure, boolValue(v.MassFailure), v.Name)
		for _, b := range v.Backends {
			if bc, err := c.maps.Counters(limits.BackendSlot(b.ID)); err != nil {
				fail(err)
			} else {
				for _, o := range maps.BackendOutcomes {
					counter(c.backendPackets, bc.Packets[o], v.Name, b.Name, maps.OutcomeNames[o])
					counter(c.backendBytes, bc.Bytes[o], v.Name, b.Name, maps.OutcomeNames[o])
				}
			}
			for _, s := range []maps.BackendState{maps.BackendUp, maps.BackendDraining, maps.BackendDown} {
				gauge(c.backendState, boolValue(b.State == s), v.Name, b.Name, s.String())
			}
			gauge(c.backendWeight, float64(b.Weight), v.Name, b.Name)
			gauge(c.backendHealthy, boolValue(b.Healthy || !b.Checked), v.Name, b.Name)
			for _, h := range []health.State{health.Up, health.Unhealthy, health.Down} {
				gauge(c.backendHealth, boolValue(b.Health == h || (h == health.Up && !b.Checked)), v.Name, b.Name, h.String())
			}
		}
	}
	if n, err := c.maps.AffinityCount(); err != nil {
		fail(err)
	} else {
		gauge(c.affinityEntries, float64(n.Entries))
		gauge(c.affinityProbation, float64(n.Probationary))
	}
	gauge(c.affinityCap, float64(c.affinityCapacity))
	if inv.Interface != "" {
		gauge(c.attachInfo, 1, inv.Interface, inv.Mode, fmt.Sprint(inv.ProgramID))
		gauge(c.pinsIntact, boolValue(inv.Problem == ""))
	}
	gauge(c.startTime, float64(c.started.UnixNano())/1e9)
	if s, err := c.maps.Settings(); err != nil {
		fail(err)
	} else {
		gauge(c.active, boolValue(s.Active))
	}
	ch <- c.collectionErrors
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
