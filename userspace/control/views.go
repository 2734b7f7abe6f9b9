package control

import (
	"fmt"
	"slices"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

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
	// UnhealthySince is when the backend became unhealthy, if it is.
	UnhealthySince *time.Time `json:"unhealthy_since,omitempty"`
}

// VIPStatus is a VIP as status shows it.
type VIPStatus struct {
	VIP
	Backends     []BackendStatus `json:"backends"`
	TableSlot    uint8           `json:"table_slot"`
	TableVersion uint64          `json:"table_version"`
	FailingOpen  bool            `json:"failing_open,omitempty"`
	// MassFailure: so many backends fail at once that every pinned client
	// is kept where it is.
	MassFailure bool `json:"mass_failure,omitempty"`
}

// DatapathInfo says where and how the program runs.
type DatapathInfo struct {
	Interface string `json:"interface"`
	Mode      string `json:"mode"`
	ProgramID uint32 `json:"program_id"`
	PinDir    string `json:"pin_dir"`
	Problem   string `json:"problem,omitempty"` // pins removed behind the daemon's back
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
	info.Problem = d.info.Problem
	d.info = info
}

// SetDatapathProblem records what is wrong with the datapath's pins ("" for
// nothing), for Status and the metrics.
func (d *Daemon) SetDatapathProblem(problem string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.info.Problem = problem
}

// BackendInventory is a backend as metrics label it.
type BackendInventory struct {
	Name    string
	ID      maps.BackendID
	State   maps.BackendState
	Healthy bool         // Health is Up
	Health  health.State // what the checks say
	Checked bool
	Weight  uint32
}

// VIPInventory is a VIP as metrics label it.
type VIPInventory struct {
	Name         string // VIPRef.String()
	ID           uint32
	TableVersion uint64 // table swaps since the daemon started
	FailingOpen  bool
	MassFailure  bool
	Backends     []BackendInventory
}

// Inventory is everything metrics need besides the counters, read cheaply
// (no map iteration).
type Inventory struct {
	DatapathInfo
	VIPs []VIPInventory
}

// view is one consistent copy of what the daemon manages, taken under the
// lock; Status, Inventory, Stats and the drain count are all read from one.
type view struct {
	info DatapathInfo
	seed uint32
	vips []vipView
}

// vipView is a VIP with what the daemon installed for it.
type vipView struct {
	VIP
	installed vipRuntime
	backends  []backendRuntime // runtime of VIP.Backends[i]
}

// view copies the state and runtime out from under the lock.
func (d *Daemon) view() view {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := view{info: d.info, seed: d.state.Seed, vips: make([]vipView, len(d.state.VIPs))}
	for i, v := range d.state.VIPs {
		vv := vipView{VIP: v, backends: make([]backendRuntime, len(v.Backends))}
		vv.Backends = slices.Clone(v.Backends)
		if rt := d.vips[v.ID]; rt != nil {
			vv.installed = *rt
		}
		for j, b := range v.Backends {
			vv.backends[j] = *d.backends[b.ID]
		}
		out.vips[i] = vv
	}
	return out
}

// pinnedCounts counts every backend's fresh established affinity entries
// in one pass over the affinity map: entries of its VIP, with its current
// generation, seen within the VIP's affinity timeout. Entries on probation
// are left out: a flood of forged SYNs must not hold up a drain.
func (vw view) pinnedCounts(m maps.Maps) (map[maps.BackendID]int, error) {
	type owner struct {
		vip        *vipView
		generation uint32
	}
	owners := map[maps.BackendID]owner{}
	for i := range vw.vips {
		v := &vw.vips[i]
		for j, b := range v.Backends {
			owners[b.ID] = owner{vip: v, generation: v.backends[j].generation}
		}
	}
	now := monotonicNow()
	counts := map[maps.BackendID]int{}
	err := m.ForEachAffinity(func(key maps.AffinityKey, a maps.Affinity) {
		o, ok := owners[a.Backend]
		if !ok || a.Probationary || key.VIPID != o.vip.ID || a.Generation != o.generation {
			return
		}
		if maps.Fresh(now, a.LastSeen, o.vip.AffinityTimeout) {
			counts[a.Backend]++
		}
	})
	if err != nil {
		return nil, fmt.Errorf("counting pinned clients: %w", err)
	}
	return counts, nil
}

// PinnedClients counts the fresh affinity entries that point at a backend:
// the clients a drain is waiting for.
func (d *Daemon) PinnedClients(ref VIPRef, name string) (int, error) {
	vw := d.view()
	v, err := vw.find(ref)
	if err != nil {
		return 0, err
	}
	b, err := findBackend(&v.VIP, name)
	if err != nil {
		return 0, err
	}
	counts, err := vw.pinnedCounts(d.opts.Maps)
	return counts[b.ID], err
}

// find returns the VIP ref.
func (vw view) find(ref VIPRef) (*vipView, error) {
	for i := range vw.vips {
		if vw.vips[i].VIPRef == ref {
			return &vw.vips[i], nil
		}
	}
	return nil, notFound("VIP %s is not configured", ref)
}

// Status reports every VIP and backend with its live state.
func (d *Daemon) Status() (Status, error) {
	vw := d.view()
	pinned, err := vw.pinnedCounts(d.opts.Maps)
	if err != nil {
		return Status{}, err
	}
	out := Status{DatapathInfo: vw.info, Seed: vw.seed, VIPs: []VIPStatus{}}
	for _, v := range vw.vips {
		vs := VIPStatus{VIP: v.VIP, Backends: []BackendStatus{}, TableSlot: v.installed.info.TableSlot,
			TableVersion: v.installed.tableVersion, FailingOpen: v.installed.failingOpen, MassFailure: v.installed.guarded}
		vs.VIP.Backends = nil
		for j, b := range v.Backends {
			rt := v.backends[j]
			bs := BackendStatus{Backend: b, State: rt.datapath.String(), Health: rt.health.String(), HealthNote: rt.healthNote,
				Generation: rt.generation, FailingOpen: rt.failingOpen, Ifindex: rt.nextHop.Ifindex, Pinned: pinned[b.ID]}
			if !rt.checked {
				bs.Health = "unchecked"
			}
			if rt.nextHop.MAC != nil {
				bs.MACInUse = rt.nextHop.MAC.String()
			}
			if rt.resolveErr != nil {
				bs.Problem = rt.resolveErr.Error()
			}
			if rt.health == health.Unhealthy {
				since := rt.unhealthySince
				bs.UnhealthySince = &since
			}
			vs.Backends = append(vs.Backends, bs)
		}
		out.VIPs = append(out.VIPs, vs)
	}
	return out, nil
}

// Inventory returns the VIPs and backends with their current states.
func (d *Daemon) Inventory() Inventory {
	vw := d.view()
	out := Inventory{DatapathInfo: vw.info}
	for _, v := range vw.vips {
		vi := VIPInventory{Name: v.VIPRef.String(), ID: v.ID, TableVersion: v.installed.tableVersion,
			FailingOpen: v.installed.failingOpen, MassFailure: v.installed.guarded}
		for j, b := range v.Backends {
			rt := v.backends[j]
			vi.Backends = append(vi.Backends, BackendInventory{Name: b.Name, ID: b.ID, State: rt.datapath,
				Healthy: rt.health == health.Up, Health: rt.health, Checked: rt.checked, Weight: b.Weight})
		}
		out.VIPs = append(out.VIPs, vi)
	}
	return out
}

// Problems lists a VIP's backends that cannot be used and why, for a
// command to report right after it changed something; name, if not empty,
// limits the list to that backend.
func (d *Daemon) Problems(ref VIPRef, name string) []string {
	v, err := d.view().find(ref)
	if err != nil {
		return nil
	}
	var out []string
	for j, b := range v.Backends {
		if err := v.backends[j].resolveErr; err != nil && (name == "" || name == b.Name) {
			out = append(out, fmt.Sprintf("backend %s (%s) is out of service: %v", b.Name, b.Addr, err))
		}
	}
	return out
}
