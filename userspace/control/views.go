package control

import (
	"fmt"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

// PinnedClients counts the fresh affinity entries that point at a backend:
// the clients a drain is waiting for.
func (d *Daemon) PinnedClients(ref VIPRef, name string) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := findVIP(&d.state, ref)
	if err != nil {
		return 0, err
	}
	b, err := findBackend(v, name)
	if err != nil {
		return 0, err
	}
	counts, err := d.pinnedCounts()
	return counts[b.ID], err
}

// pinnedCounts counts every backend's fresh affinity entries in one pass
// over the affinity map: entries of its VIP, with its current generation,
// seen within the VIP's affinity timeout.
func (d *Daemon) pinnedCounts() (map[maps.BackendID]int, error) {
	vipOf := map[maps.BackendID]*VIP{}
	for i := range d.state.VIPs {
		for _, b := range d.state.VIPs[i].Backends {
			vipOf[b.ID] = &d.state.VIPs[i]
		}
	}
	now := monotonicNow()
	counts := map[maps.BackendID]int{}
	err := d.opts.Maps.ForEachAffinity(func(key maps.AffinityKey, a maps.Affinity) {
		v, rt := vipOf[a.Backend], d.backends[a.Backend]
		if v == nil || rt == nil || key.VIPID != v.ID || a.Generation != rt.generation {
			return
		}
		if maps.Fresh(now, a.LastSeen, v.AffinityTimeout) {
			counts[a.Backend]++
		}
	})
	if err != nil {
		return nil, fmt.Errorf("counting pinned clients: %w", err)
	}
	return counts, nil
}

// BackendStatus is a backend as status shows it.
type BackendStatus struct {
	Backend
	State       string `json:"state"` // up, down, draining
	Health      string `json:"health"`
	HealthNote  string `json:"health_note,omitempty"`
	MACInUse    string `json:"mac_in_use,omitempty"`
	Ifindex     int    `json:"ifindex,omitempty"`
	Problem     string `json:"problem,omitempty"`
	Generation  uint32 `json:"generation"`
	FailingOpen bool   `json:"failing_open,omitempty"`
	Pinned      int    `json:"pinned_clients"`
}

// VIPStatus is a VIP as status shows it.
type VIPStatus struct {
	VIP
	Backends     []BackendStatus `json:"backends"`
	TableSlot    uint8           `json:"table_slot"`
	TableVersion uint64          `json:"table_version"`
	FailingOpen  bool            `json:"failing_open,omitempty"`
}

// DatapathInfo says where and how the program runs.
type DatapathInfo struct {
	Interface string `json:"interface"`
	Mode      string `json:"mode"`
	ProgramID uint32 `json:"program_id"`
	PinDir    string `json:"pin_dir"`
}

// Status is the daemon's view of everything it manages.
type Status struct {
	DatapathInfo
	Seed uint32      `json:"seed"`
	VIPs []VIPStatus `json:"vips"`
}

// SetDatapathInfo records where the program runs, for Status.
func (d *Daemon) SetDatapathInfo(info DatapathInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.info = info
}

// Status reports every VIP and backend with its live state.
func (d *Daemon) Status() (Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pinned, err := d.pinnedCounts()
	if err != nil {
		return Status{}, err
	}
	out := Status{DatapathInfo: d.info, Seed: d.state.Seed, VIPs: []VIPStatus{}}
	for i := range d.state.VIPs {
		v := &d.state.VIPs[i]
		vs := VIPStatus{VIP: *v, Backends: []BackendStatus{}}
		vs.VIP.Backends = nil
		if rt := d.vips[v.ID]; rt != nil {
			vs.TableSlot, vs.TableVersion, vs.FailingOpen = rt.info.TableSlot, rt.tableVersion, rt.failingOpen
		}
		for _, b := range v.Backends {
			rt := d.backends[b.ID]
			bs := BackendStatus{Backend: b, State: rt.datapath.String(), Health: rt.health.String(), HealthNote: rt.healthNote,
				Generation: rt.generation, FailingOpen: rt.failingOpen, Ifindex: rt.nextHop.Ifindex}
			if !rt.checked {
				bs.Health = "unchecked"
			}
			if rt.nextHop.MAC != nil {
				bs.MACInUse = rt.nextHop.MAC.String()
			}
			if rt.resolveErr != nil {
				bs.Problem = rt.resolveErr.Error()
			}
			bs.Pinned = pinned[b.ID]
			vs.Backends = append(vs.Backends, bs)
		}
		out.VIPs = append(out.VIPs, vs)
	}
	return out, nil
}

// Problems lists a VIP's backends that cannot be used and why, for a
// command to report right after it changed something; name, if not empty,
// limits the list to that backend.
func (d *Daemon) Problems(ref VIPRef, name string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := findVIP(&d.state, ref)
	if err != nil {
		return nil
	}
	var out []string
	for _, b := range v.Backends {
		if rt := d.backends[b.ID]; rt.resolveErr != nil && (name == "" || name == b.Name) {
			out = append(out, fmt.Sprintf("backend %s (%s) is out of service: %v", b.Name, b.Addr, rt.resolveErr))
		}
	}
	return out
}

// BackendInventory is a backend as metrics label it.
type BackendInventory struct {
	Name    string
	ID      maps.BackendID
	State   maps.BackendState
	Healthy bool
	Checked bool
	Weight  uint32
}

// VIPInventory is a VIP as metrics label it.
type VIPInventory struct {
	Name         string // VIPRef.String()
	ID           uint32
	TableVersion uint64 // table swaps since the daemon started
	FailingOpen  bool
	Backends     []BackendInventory
}

// Inventory is everything metrics need besides the counters, read cheaply
// (no map iteration).
type Inventory struct {
	DatapathInfo
	VIPs []VIPInventory
}

// Inventory returns the VIPs and backends with their current states.
func (d *Daemon) Inventory() Inventory {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := Inventory{DatapathInfo: d.info}
	for _, v := range d.state.VIPs {
		vi := VIPInventory{Name: v.VIPRef.String(), ID: v.ID}
		if rt := d.vips[v.ID]; rt != nil {
			vi.TableVersion, vi.FailingOpen = rt.tableVersion, rt.failingOpen
		}
		for _, b := range v.Backends {
			rt := d.backends[b.ID]
			vi.Backends = append(vi.Backends, BackendInventory{Name: b.Name, ID: b.ID, State: rt.datapath,
				Healthy: rt.health == health.Up, Checked: rt.checked, Weight: b.Weight})
		}
		out.VIPs = append(out.VIPs, vi)
	}
	return out
}
