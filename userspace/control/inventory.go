package control

import (
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
)

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
