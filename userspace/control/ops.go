package control

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tether-lb/tether/maps"
)

// NewVIP returns a VIP with the given settings and no id yet.
func NewVIP(ref VIPRef) VIP {
	return VIP{VIPRef: ref, Prefix4: DefaultPrefix4, Prefix6: DefaultPrefix6, ID: unassignedVIP}
}

func findVIP(s *State, ref VIPRef) (*VIP, error) {
	for i := range s.VIPs {
		if s.VIPs[i].VIPRef == ref {
			return &s.VIPs[i], nil
		}
	}
	return nil, notFound("VIP %s is not configured", ref)
}

func findBackend(v *VIP, name string) (*Backend, error) {
	for i := range v.Backends {
		if v.Backends[i].Name == name {
			return &v.Backends[i], nil
		}
	}
	return nil, notFound("backend %q is not in VIP %s", name, v.VIPRef)
}

// AddVIP adds a VIP. Unset settings get their defaults.
func (d *Daemon) AddVIP(ctx context.Context, v VIP) error {
	return d.change(ctx, func(s *State) error {
		// The datapath knows tcp and udp only: "", "TCP" or "UDP" would
		// name a second VIP with the key of an existing one.
		proto, err := ParseProto(v.Proto)
		if err != nil {
			return invalid(err)
		}
		v.Proto = proto
		if _, err := findVIP(s, v.VIPRef); err == nil {
			return conflict("VIP %s already exists", v.VIPRef)
		}
		v = v.withDefaults(d.opts.Maps.Limits().TableStride)
		v.ID = unassignedVIP
		for i := range v.Backends {
			v.Backends[i] = v.Backends[i].withDefaults()
			v.Backends[i].ID = 0
		}
		s.VIPs = append(s.VIPs, v)
		return nil
	})
}

// RemoveVIP removes a VIP with its backends and forgets its clients.
func (d *Daemon) RemoveVIP(ctx context.Context, ref VIPRef) error {
	return d.change(ctx, func(s *State) error {
		if _, err := findVIP(s, ref); err != nil {
			return err
		}
		s.VIPs = slices.DeleteFunc(s.VIPs, func(v VIP) bool { return v.VIPRef == ref })
		return nil
	})
}

// AddBackend adds a backend to a VIP.
func (d *Daemon) AddBackend(ctx context.Context, ref VIPRef, b Backend) error {
	return d.change(ctx, func(s *State) error {
		v, err := findVIP(s, ref)
		if err != nil {
			return err
		}
		if _, err := findBackend(v, b.Name); err == nil {
			return conflict("backend %q already exists in VIP %s", b.Name, ref)
		}
		b = b.withDefaults()
		b.ID = 0
		v.Backends = append(v.Backends, b)
		return nil
	})
}

// RemoveBackend removes a backend; only its clients move.
func (d *Daemon) RemoveBackend(ctx context.Context, ref VIPRef, name string) error {
	return d.change(ctx, func(s *State) error {
		v, err := findVIP(s, ref)
		if err != nil {
			return err
		}
		if _, err := findBackend(v, name); err != nil {
			return err
		}
		v.Backends = slices.DeleteFunc(v.Backends, func(b Backend) bool { return b.Name == name })
		return nil
	})
}

// SetWeight changes a backend's weight.
func (d *Daemon) SetWeight(ctx context.Context, ref VIPRef, name string, weight uint32) error {
	return d.editBackend(ctx, ref, name, func(b *Backend) { b.Weight = weight })
}

// Drain takes a backend out of the table for new clients; clients pinned
// to it stay until idle past the affinity timeout.
func (d *Daemon) Drain(ctx context.Context, ref VIPRef, name string) error {
	return d.editBackend(ctx, ref, name, func(b *Backend) { b.Drained = true })
}

// Enable undoes Drain.
func (d *Daemon) Enable(ctx context.Context, ref VIPRef, name string) error {
	return d.editBackend(ctx, ref, name, func(b *Backend) { b.Drained = false })
}

func (d *Daemon) editBackend(ctx context.Context, ref VIPRef, name string, edit func(*Backend)) error {
	return d.change(ctx, func(s *State) error {
		v, err := findVIP(s, ref)
		if err != nil {
			return err
		}
		b, err := findBackend(v, name)
		if err != nil {
			return err
		}
		edit(b)
		return nil
	})
}

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

// removeStrays deletes datapath entries the state does not know: VIPs,
// and backends still marked usable. A daemon started after its state file
// was lost thus never serves stale configuration.
func (d *Daemon) removeStrays() error {
	known := map[maps.VIPKey]bool{}
	knownIDs := map[uint32]bool{}
	for _, v := range d.state.VIPs {
		known[v.key()] = true
		knownIDs[v.ID] = true
	}
	current, err := d.opts.Maps.VIPs()
	if err != nil {
		return err
	}
	strayIDs := map[uint32]bool{}
	for key, info := range current {
		if key.Port != 0 && !known[key] {
			d.log.Warn("removing a VIP the state does not know", "vip", key.String())
			if err := d.opts.Maps.DeleteVIP(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
				return err
			}
			if !knownIDs[info.ID] {
				strayIDs[info.ID] = true
			}
		}
	}
	if err := d.forgetClients(strayIDs); err != nil {
		return err
	}
	limits := d.opts.Maps.Limits()
	for id := maps.BackendID(1); uint32(id) < limits.MaxBackends; id++ {
		if d.backends[id] != nil {
			continue
		}
		entry, err := d.opts.Maps.Backend(id)
		if err != nil {
			return err
		}
		if entry.State.Usable() {
			if err := d.opts.Maps.PutBackend(id, maps.Backend{Generation: entry.Generation + 1, State: maps.BackendDown}); err != nil {
				return err
			}
		}
	}
	return nil
}

// forgetClients deletes the affinity entries of the VIP ids removed from
// the datapath without removeVIP, so that a VIP given one of those ids
// later does not inherit their clients.
func (d *Daemon) forgetClients(vipIDs map[uint32]bool) error {
	if len(vipIDs) == 0 {
		return nil
	}
	var stale []maps.AffinityKey
	if err := d.opts.Maps.ForEachAffinity(func(key maps.AffinityKey, _ maps.Affinity) {
		if vipIDs[key.VIPID] {
			stale = append(stale, key)
		}
	}); err != nil {
		return fmt.Errorf("reading affinity entries: %w", err)
	}
	for _, key := range stale {
		if err := d.opts.Maps.DeleteAffinity(key); err != nil && !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("forgetting clients of a removed VIP: %w", err)
		}
	}
	return nil
}
