package control

import (
	"context"
	"slices"
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

// change applies edit to a copy of the state, validates it, writes it to
// the datapath and saves it. On any error nothing changes: the datapath is
// put back to the old state.
func (d *Daemon) change(ctx context.Context, edit func(s *State) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := cloneState(d.state)
	if err := edit(&next); err != nil {
		return err
	}
	if err := d.assignIDs(&next); err != nil {
		return err
	}
	limits := d.opts.Maps.Limits()
	for _, v := range next.VIPs {
		if err := v.validate(limits.TableStride); err != nil {
			return invalid(err)
		}
		if err := v.validateBackends(); err != nil {
			return invalid(err)
		}
	}
	// Saved first: a change that cannot be saved (a full or read-only
	// disk) never reaches the datapath, so it moves nobody.
	if err := d.save(next); err != nil {
		return err
	}
	// apply removes what d.state has and its argument lacks, so d.state is
	// next while previous is restored: what only next had goes away.
	previous := d.state
	if err := d.apply(ctx, next); err != nil {
		d.setState(next)
		if rollback := d.apply(ctx, previous); rollback != nil {
			d.log.Error("restoring the datapath after a failed change", "error", rollback)
		}
		d.setState(previous)
		if restore := d.save(previous); restore != nil {
			d.log.Error("restoring the state file after a failed change", "error", restore)
		}
		return err
	}
	d.setState(next)
	return nil
}

func cloneState(s State) State {
	out := State{Seed: s.Seed, VIPs: make([]VIP, len(s.VIPs))}
	for i, v := range s.VIPs {
		v.Backends = slices.Clone(v.Backends)
		out.VIPs[i] = v
	}
	return out
}
