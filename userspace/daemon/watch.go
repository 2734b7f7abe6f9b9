package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/neigh"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// neighResolver resolves next hops with the kernel's route and neighbour
// tables.
type neighResolver struct{}

func (neighResolver) Resolve(ctx context.Context, addr netip.Addr, override net.HardwareAddr) (control.NextHop, error) {
	var target neigh.Target
	var err error
	if override != nil {
		target, err = neigh.ResolveWithMAC(addr, override)
	} else {
		target, err = neigh.Resolve(ctx, addr)
	}
	return control.NextHop{Ifindex: target.Ifindex, SourceMAC: target.SourceMAC, MAC: target.MAC}, err
}

// watchInterface follows the interface the program runs on. Down and up
// keep the attachment; deleted and created again gives a new index and a
// defunct link, so the program is attached afresh (the maps, and with them
// every client's affinity, stay) and the daemon told.
func watchInterface(ctx context.Context, name string, ifindex int, attach func(int) error, daemon *control.Daemon, log *slog.Logger) error {
	for ctx.Err() == nil {
		updates := make(chan netlink.LinkUpdate, 16)
		failed := make(chan error, 1)
		done := make(chan struct{})
		err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
			ErrorCallback: func(err error) {
				select {
				case failed <- err:
				default:
				}
			},
		})
		if err != nil {
			return fmt.Errorf("subscribing to link changes: %w", err)
		}
		// A re-creation missed while not subscribed is caught here.
		if link, err := netlink.LinkByName(name); err == nil && link.Attrs().Index != ifindex {
			updates <- netlink.LinkUpdate{Link: link, Header: unix.NlMsghdr{Type: unix.RTM_NEWLINK}}
		}
	watch:
		for {
			select {
			case <-ctx.Done():
				close(done)
				return nil
			case err := <-failed:
				log.Warn("link subscription failed; subscribing again", "error", err)
				close(done)
				break watch
			case u, ok := <-updates:
				if !ok {
					close(done)
					break watch
				}
				if u.Attrs().Name != name {
					continue
				}
				switch {
				case u.Header.Type == unix.RTM_DELLINK:
					log.Error("the interface was deleted: nothing is forwarded until it is back", "iface", name)
				case u.Attrs().Index != ifindex:
					if err := attach(u.Attrs().Index); err != nil {
						log.Error("attaching to the re-created interface", "iface", name, "error", err)
						continue
					}
					ifindex = u.Attrs().Index
					daemon.InterfaceChanged(ifindex)
					log.Info("the interface was created again: attached to it", "iface", name, "ifindex", ifindex)
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

// watchNeighbours follows the neighbour table, re-subscribing if the
// subscription fails.
func watchNeighbours(ctx context.Context, daemon *control.Daemon, log *slog.Logger) error {
	for ctx.Err() == nil {
		err := neigh.Watch(ctx, func(ch neigh.Change) {
			if ch.MAC != nil {
				daemon.NeighbourChanged(ch.Addr, ch.Ifindex, ch.MAC)
			}
		})
		if err != nil && ctx.Err() == nil {
			log.Warn("neighbour subscription failed; subscribing again", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}
