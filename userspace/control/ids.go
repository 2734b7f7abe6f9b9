package control

import (
	"fmt"

	"github.com/tether-lb/tether/maps"
)

const unassignedVIP = ^uint32(0)

func (d *Daemon) checkIDs(s State) error {
	limits := d.opts.Maps.Limits()
	vipIDs := map[uint32]bool{}
	backendIDs := map[maps.BackendID]bool{}
	for _, v := range s.VIPs {
		if v.ID >= limits.MaxVIPs || vipIDs[v.ID] {
			return fmt.Errorf("VIP %s has id %d, which is duplicate or not below %d", v.VIPRef, v.ID, limits.MaxVIPs)
		}
		vipIDs[v.ID] = true
		for _, b := range v.Backends {
			if b.ID == 0 || uint32(b.ID) >= limits.MaxBackends || backendIDs[b.ID] {
				return fmt.Errorf("backend %s of %s has id %d, which is duplicate or not in 1..%d", b.Name, v.VIPRef, b.ID, limits.MaxBackends-1)
			}
			backendIDs[b.ID] = true
		}
	}
	return nil
}

// assignIDs gives new VIPs and backends the lowest free ids.
func (d *Daemon) assignIDs(s *State) error {
	limits := d.opts.Maps.Limits()
	usedVIP := map[uint32]bool{}
	// A VIP removed by this same change keeps its id until the change is
	// in: a new VIP must not write into its live table slot.
	for _, v := range d.state.VIPs {
		usedVIP[v.ID] = true
	}
	usedBackend := map[maps.BackendID]bool{}
	for _, v := range s.VIPs {
		if v.ID != unassignedVIP {
			usedVIP[v.ID] = true
		}
		for _, b := range v.Backends {
			usedBackend[b.ID] = b.ID != 0
		}
	}
	nextVIP := uint32(0)
	nextBackend := maps.BackendID(1)
	for i := range s.VIPs {
		v := &s.VIPs[i]
		if v.ID == unassignedVIP {
			for usedVIP[nextVIP] {
				nextVIP++
			}
			if nextVIP >= limits.MaxVIPs {
				return invalid(fmt.Errorf("no room for VIP %s: all %d VIP slots are used (start the daemon with a larger --max-vips after tether detach)", v.VIPRef, limits.MaxVIPs))
			}
			v.ID = nextVIP
			usedVIP[nextVIP] = true
		}
		for j := range v.Backends {
			b := &v.Backends[j]
			if b.ID != 0 {
				continue
			}
			for usedBackend[nextBackend] || d.backends[nextBackend] != nil {
				nextBackend++
			}
			if uint32(nextBackend) >= limits.MaxBackends {
				return invalid(fmt.Errorf("no room for backend %s: all %d backend slots are used", b.Name, limits.MaxBackends-1))
			}
			b.ID = nextBackend
			usedBackend[nextBackend] = true
		}
	}
	return nil
}
