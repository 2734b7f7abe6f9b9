// Package neigh finds where the datapath must send a backend's frames: the
// egress interface, that interface's own MAC and the backend's MAC, taken
// from the kernel's routing and neighbour tables over netlink, and it follows
// changes to the neighbour table.
//
// tether forwards a client's frame by rewriting only its Ethernet header
// (L2 direct server return), so a backend must sit on a directly connected
// network: a backend reached through a gateway is refused.
//
// Every function works in the network namespace of the calling OS thread.
// The daemon runs inside the namespace it serves, so it needs nothing
// special; code that switches namespaces must lock its goroutine to a thread
// moved into the right one (runtime.LockOSThread and netns.Set) first.
package neigh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Target is the next hop of a backend as the datapath needs it.
type Target struct {
	Ifindex   int              // egress interface
	IfName    string           // name of the egress interface, for messages
	SourceMAC net.HardwareAddr // the egress interface's MAC: source of forwarded frames
	MAC       net.HardwareAddr // the backend's MAC: destination of forwarded frames
}

// Change is one change of the neighbour table.
type Change struct {
	Addr    netip.Addr
	Ifindex int
	// MAC is the neighbour's usable MAC, or nil when the entry has none:
	// resolution is under way or failed, or the entry was deleted.
	MAC     net.HardwareAddr
	Deleted bool
}

// usableStates are the neighbour states whose MAC the kernel itself would
// send to. STALE, DELAY and PROBE entries are being re-confirmed, but their
// MAC is still the best known one.
const usableStates = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY |
	netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// pollInterval is how often Resolve reads the neighbour table while the
// kernel resolves an address.
const pollInterval = 20 * time.Millisecond

// discardPort is where the datagram that triggers neighbour resolution goes:
// the discard service, which a backend that listens on it throws away.
const discardPort = 9

// Resolve finds the next hop of the backend at addr. It looks up the route to
// addr, refuses a route through a gateway, and reads addr's neighbour entry
// on the egress interface. If there is no usable entry and the kernel is not
// already resolving addr, Resolve sends one empty UDP datagram to addr, port
// 9, which makes the kernel send an ARP request or IPv6 neighbour
// solicitation; then it polls the neighbour table until a usable entry
// appears or ctx ends. The error then wraps ctx's error.
func Resolve(ctx context.Context, addr netip.Addr) (Target, error) {
	addr = addr.Unmap()
	target, err := egress(addr)
	if err != nil {
		return Target{}, err
	}
	start := time.Now()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		entry, found, err := lookupNeighbour(addr, target)
		if err != nil {
			return Target{}, err
		}
		if mac, ok := usableMAC(entry); ok {
			target.MAC = mac
			return target, nil
		}
		if !found || entry.State == netlink.NUD_NONE || entry.State&netlink.NUD_FAILED != 0 {
			if err := triggerResolution(addr, target); err != nil {
				return Target{}, err
			}
		}
		select {
		case <-ctx.Done():
			return Target{}, fmt.Errorf("no neighbour entry for %s on %s after %s (is the backend up and on this network?): %w",
				addr, target.IfName, time.Since(start).Round(10*time.Millisecond), ctx.Err())
		case <-ticker.C:
		}
	}
}

// ResolveWithMAC finds the egress interface of the backend at addr like
// Resolve, for a backend whose MAC the operator gave: it neither reads nor
// fills the neighbour table, and the Target carries mac.
func ResolveWithMAC(addr netip.Addr, mac net.HardwareAddr) (Target, error) {
	addr = addr.Unmap()
	if !isEthernetAddr(mac) {
		return Target{}, fmt.Errorf("MAC %q of backend %s is not a non-zero Ethernet address", mac, addr)
	}
	target, err := egress(addr)
	if err != nil {
		return Target{}, err
	}
	target.MAC = mac
	return target, nil
}

// Watch calls changed for every change of the neighbour table, for any
// address on any interface, until ctx ends; then it returns nil. The caller
// picks out its backends. changed runs on Watch's goroutine, one change at a
// time, and must return promptly: while it runs, changes queue up in the
// kernel, and if they overflow the subscription fails.
//
// Watch returns an error if the subscription cannot be created or fails
// later, for example when the kernel drops changes because they came faster
// than they were read. Changes may then have been missed: the caller should
// resolve its backends again and call Watch anew.
func Watch(ctx context.Context, changed func(Change)) error {
	updates := make(chan netlink.NeighUpdate)
	done := make(chan struct{})
	// Written by the subscription's receiving goroutine before it closes
	// updates, so it is safe to read once updates is closed.
	var subscriptionErr error
	err := netlink.NeighSubscribeWithOptions(updates, done, netlink.NeighSubscribeOptions{
		ErrorCallback: func(err error) { subscriptionErr = err },
		ListExisting:  false,
	})
	if err != nil {
		close(done)
		return fmt.Errorf("subscribing to neighbour table changes: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			close(done)
			// The receiving goroutine may be blocked handing over a change;
			// take what it still sends until it sees the closed socket and
			// closes updates.
			for range updates {
			}
			return nil
		case update, open := <-updates:
			if !open {
				return fmt.Errorf("neighbour table subscription failed: %w", subscriptionErr)
			}
			if change, ok := changeFrom(update); ok {
				changed(change)
			}
		}
	}
}

// changeFrom turns a netlink update into a Change. It reports false for
// entries that are not IP neighbours, such as bridge forwarding entries.
func changeFrom(update netlink.NeighUpdate) (Change, bool) {
	if update.Family != netlink.FAMILY_V4 && update.Family != netlink.FAMILY_V6 {
		return Change{}, false
	}
	addr, ok := netip.AddrFromSlice(update.IP)
	if !ok {
		return Change{}, false
	}
	change := Change{Addr: addr.Unmap(), Ifindex: update.LinkIndex, Deleted: update.Type == unix.RTM_DELNEIGH}
	if mac, usable := usableMAC(update.Neigh); usable && !change.Deleted {
		change.MAC = mac
	}
	return change, true
}

// egress looks up the route to addr and returns the egress interface and
// its MAC, refusing routes that do not reach addr directly over Ethernet.
func egress(addr netip.Addr) (Target, error) {
	if !addr.IsValid() {
		return Target{}, errors.New("resolving a backend: no address given")
	}
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return Target{}, fmt.Errorf("looking up the route to backend %s: %w", addr, err)
	}
	if len(routes) == 0 {
		return Target{}, fmt.Errorf("looking up the route to backend %s: the kernel returned no route", addr)
	}
	route := routes[0]
	if route.Type == unix.RTN_LOCAL {
		return Target{}, fmt.Errorf("backend %s is an address of this host, not a separate machine", addr)
	}
	if route.Type != unix.RTN_UNICAST {
		return Target{}, fmt.Errorf("the route to backend %s is not a unicast route (route type %d)", addr, route.Type)
	}
	link, err := netlink.LinkByIndex(route.LinkIndex)
	if err != nil {
		return Target{}, fmt.Errorf("reading egress interface %d of the route to backend %s: %w", route.LinkIndex, addr, err)
	}
	target := Target{Ifindex: link.Attrs().Index, IfName: link.Attrs().Name, SourceMAC: link.Attrs().HardwareAddr}
	if gateway := gatewayOf(route); gateway != "" {
		return Target{}, fmt.Errorf("backend %s is reached through gateway %s on %s, but L2 direct server return needs the backend on a directly connected network",
			addr, gateway, target.IfName)
	}
	if !isEthernetAddr(target.SourceMAC) {
		return Target{}, fmt.Errorf("egress interface %s of backend %s has no Ethernet address (it has %q), but L2 direct server return rewrites Ethernet headers",
			target.IfName, addr, target.SourceMAC)
	}
	if kind := link.Type(); kind == "vlan" || kind == "macvlan" || kind == "ipvlan" {
		// The datapath sends frames with XDP_TX or a devmap redirect, and
		// these devices take neither: frames would vanish while counted as
		// forwarded.
		return Target{}, fmt.Errorf("backend %s is reached through %s, a %s device, which XDP cannot transmit on: put the backend on an interface without VLAN or macvlan stacking", addr, target.IfName, kind)
	}
	return target, nil
}

// gatewayOf returns the gateway of route, or "" if route reaches its
// destination directly.
func gatewayOf(route netlink.Route) string {
	switch {
	case route.Gw != nil:
		return route.Gw.String()
	case route.Via != nil:
		return route.Via.String()
	default:
		return ""
	}
}

// lookupNeighbour returns the neighbour entry of addr on target's interface
// and whether there is one.
func lookupNeighbour(addr netip.Addr, target Target) (netlink.Neigh, bool, error) {
	family := netlink.FAMILY_V6
	if addr.Is4() {
		family = netlink.FAMILY_V4
	}
	entries, err := netlink.NeighList(target.Ifindex, family)
	// An interrupted dump may miss entries; the next poll reads the table
	// again, so what it did return is good enough for now.
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return netlink.Neigh{}, false, fmt.Errorf("reading the neighbour table of %s for backend %s: %w", target.IfName, addr, err)
	}
	for _, entry := range entries {
		if entryAddr, ok := netip.AddrFromSlice(entry.IP); ok && entryAddr.Unmap() == addr.WithZone("") {
			return entry, true, nil
		}
	}
	return netlink.Neigh{}, false, nil
}

// triggerResolution makes the kernel resolve addr's MAC by sending one empty
// UDP datagram to addr itself; the kernel queues it and sends an ARP request
// or neighbour solicitation.
func triggerResolution(addr netip.Addr, target Target) error {
	destination := net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, discardPort))
	conn, err := net.DialUDP("udp", nil, destination)
	if err != nil {
		return fmt.Errorf("opening a UDP socket to %s to trigger neighbour resolution on %s: %w", destination, target.IfName, err)
	}
	defer conn.Close()
	if _, err := conn.Write(nil); err != nil {
		return fmt.Errorf("sending an empty datagram to %s to trigger neighbour resolution on %s: %w", destination, target.IfName, err)
	}
	return nil
}

// usableMAC returns entry's MAC if the entry is in a state the kernel sends
// to and its MAC is a non-zero Ethernet address.
func usableMAC(entry netlink.Neigh) (net.HardwareAddr, bool) {
	if entry.State&usableStates == 0 || !isEthernetAddr(entry.HardwareAddr) {
		return nil, false
	}
	return entry.HardwareAddr, true
}

// isEthernetAddr reports whether mac is a 6-byte, non-zero address.
func isEthernetAddr(mac net.HardwareAddr) bool {
	if len(mac) != 6 {
		return false
	}
	for _, b := range mac {
		if b != 0 {
			return true
		}
	}
	return false
}
