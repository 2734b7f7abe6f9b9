package control

import (
	"github.com/tether-lb/tether/maps"
)

// CounterSet is one counter slot with named fields; zero counters are left
// out.
type CounterSet struct {
	Packets  map[string]uint64 `json:"packets"`
	Bytes    map[string]uint64 `json:"bytes"`
	Affinity map[string]uint64 `json:"affinity,omitempty"`
}

func namedCounters(c maps.Counters, withAffinity bool) CounterSet {
	out := CounterSet{Packets: map[string]uint64{}, Bytes: map[string]uint64{}}
	for o, name := range maps.OutcomeNames {
		if c.Packets[o] != 0 {
			out.Packets[name] = c.Packets[o]
			out.Bytes[name] = c.Bytes[o]
		}
	}
	if withAffinity {
		out.Affinity = map[string]uint64{}
		for e, name := range maps.AffinityEventNames {
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
	// AffinityProbationary of the entries are on probation: admitted, not
	// yet proven real clients (a flood of forged sources shows here).
	AffinityProbationary int        `json:"affinity_probationary"`
	VIPs                 []VIPStats `json:"vips"`
}

// Stats reads every counter slot in use.
func (d *Daemon) Stats() (Stats, error) {
	vw := d.view()
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
	out := Stats{Global: namedCounters(global, true), AffinityEntries: entries.Entries,
		AffinityProbationary: entries.Probationary, VIPs: []VIPStats{}}
	for _, v := range vw.vips {
		c, err := m.Counters(limits.VIPSlot(v.ID))
		if err != nil {
			return Stats{}, err
		}
		vs := VIPStats{VIP: v.VIPRef.String(), CounterSet: namedCounters(c, true), Backends: []BackendStats{}}
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
