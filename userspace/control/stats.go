package control

import (
	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
)

// OutcomeNames name the datapath's outcomes, indexed by enum outcome; the
// same names label the metrics.
var OutcomeNames = [loader.TetherOutcomeOUTCOME_MAX]string{
	loader.TetherOutcomeOUTCOME_FORWARD_TX:             "forwarded_tx",
	loader.TetherOutcomeOUTCOME_FORWARD_REDIRECT:       "forwarded_redirect",
	loader.TetherOutcomeOUTCOME_PASS_INACTIVE:          "passed_inactive",
	loader.TetherOutcomeOUTCOME_PASS_WATCHDOG:          "passed_watchdog",
	loader.TetherOutcomeOUTCOME_PASS_NOT_IP:            "passed_not_ip",
	loader.TetherOutcomeOUTCOME_PASS_NOT_TCP_UDP:       "passed_not_tcp_udp",
	loader.TetherOutcomeOUTCOME_PASS_NOT_VIP:           "passed_not_vip",
	loader.TetherOutcomeOUTCOME_PASS_FRAGMENT:          "passed_fragment",
	loader.TetherOutcomeOUTCOME_PASS_IPV6EXT_LIMIT:     "passed_ipv6_ext_limit",
	loader.TetherOutcomeOUTCOME_PASS_NO_BACKEND:        "passed_no_backend",
	loader.TetherOutcomeOUTCOME_DROP_NO_BACKEND:        "dropped_no_backend",
	loader.TetherOutcomeOUTCOME_DROP_TX_PORT_MISSING:   "dropped_tx_port_missing",
	loader.TetherOutcomeOUTCOME_DROP_MALFORMED_ETH:     "dropped_malformed_ethernet",
	loader.TetherOutcomeOUTCOME_DROP_MALFORMED_VLAN:    "dropped_malformed_vlan",
	loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV4:    "dropped_malformed_ipv4",
	loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6:    "dropped_malformed_ipv6",
	loader.TetherOutcomeOUTCOME_DROP_MALFORMED_IPV6EXT: "dropped_malformed_ipv6_ext",
	loader.TetherOutcomeOUTCOME_DROP_MALFORMED_L4:      "dropped_malformed_l4",
}

// AffinityEventNames name the datapath's affinity events, indexed by enum
// affinity_event.
var AffinityEventNames = [loader.TetherAffinityEventAFFINITY_EVENT_MAX]string{
	loader.TetherAffinityEventAFFINITY_HIT:           "hit",
	loader.TetherAffinityEventAFFINITY_MISS:          "miss",
	loader.TetherAffinityEventAFFINITY_EXPIRED:       "expired",
	loader.TetherAffinityEventAFFINITY_STALE:         "stale",
	loader.TetherAffinityEventAFFINITY_INSERT:        "insert",
	loader.TetherAffinityEventAFFINITY_INSERT_FAILED: "insert_failed",
	loader.TetherAffinityEventAFFINITY_EVICT:         "evicted",
}

// CounterSet is one counter slot with named fields; zero counters are left
// out.
type CounterSet struct {
	Packets  map[string]uint64 `json:"packets"`
	Bytes    map[string]uint64 `json:"bytes"`
	Affinity map[string]uint64 `json:"affinity,omitempty"`
}

func namedCounters(c maps.Counters, withAffinity bool) CounterSet {
	out := CounterSet{Packets: map[string]uint64{}, Bytes: map[string]uint64{}}
	for o, name := range OutcomeNames {
		if c.Packets[o] != 0 {
			out.Packets[name] = c.Packets[o]
			out.Bytes[name] = c.Bytes[o]
		}
	}
	if withAffinity {
		out.Affinity = map[string]uint64{}
		for e, name := range AffinityEventNames {
			if c.Affinity[e] != 0 {
				out.Affinity[name] = c.Affinity[e]
			}
		}
	}
	return out
}

// BackendStats are one backend's counters.
type BackendStats struct {
	Name string `json:"name"`
	CounterSet
}

// VIPStats are one VIP's counters and its backends'.
type VIPStats struct {
	VIP string `json:"vip"`
	CounterSet
	Backends []BackendStats `json:"backends"`
}

// Stats are the datapath's counters, summed over CPUs.
type Stats struct {
	Global          CounterSet `json:"global"`
	AffinityEntries int        `json:"affinity_entries"`
	VIPs            []VIPStats `json:"vips"`
}

// Stats reads every counter slot in use.
func (d *Daemon) Stats() (Stats, error) {
	inv := d.Inventory()
	m := d.opts.Maps
	limits := m.Limits()
	global, err := m.Counters(maps.GlobalSlot)
	if err != nil {
		return Stats{}, err
	}
	entries, err := m.AffinityCount()
	if err != nil {
		return Stats{}, err
	}
	out := Stats{Global: namedCounters(global, true), AffinityEntries: entries, VIPs: []VIPStats{}}
	for _, v := range inv.VIPs {
		c, err := m.Counters(limits.VIPSlot(v.ID))
		if err != nil {
			return Stats{}, err
		}
		vs := VIPStats{VIP: v.Name, CounterSet: namedCounters(c, true), Backends: []BackendStats{}}
		for _, b := range v.Backends {
			c, err := m.Counters(limits.BackendSlot(b.ID))
			if err != nil {
				return Stats{}, err
			}
			vs.Backends = append(vs.Backends, BackendStats{Name: b.Name, CounterSet: namedCounters(c, false)})
		}
		out.VIPs = append(out.VIPs, vs)
	}
	return out, nil
}
