// Package control is the tether daemon: the desired state (VIPs, backends,
// weights, checks), its validation and persistence, and the reconcile logic
// that writes it into the datapath's maps. The daemon is the maps' only
// writer; the CLI talks to it over a unix socket (api.go).
package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
)

// Defaults a VIP gets when a setting is not given.
const (
	DefaultPrefix4         = 32
	DefaultPrefix6         = 64
	DefaultAffinityTimeout = 120 * time.Second // > Engine.IO's 45 s of silence
	DefaultSeed            = 0x74657468        // same on every host: same tables
	DefaultWeight          = 1
	MaxWeight              = 10000
	maxAffinityTimeout     = 24 * time.Hour
	// DefaultSessionGrace is how long an unhealthy backend keeps its
	// pinned clients: Engine.IO's 45 s of possible silence, which a
	// client itself survives.
	DefaultSessionGrace = 45 * time.Second
	maxSessionGrace     = time.Hour
	// DefaultMassFailurePercent: when this share of a VIP's checked
	// backends fails at once, the fault is more likely the LB's own or
	// fleet-wide, and no pinned client is moved for soft failures.
	DefaultMassFailurePercent = 50
)

// What happens to a VIP's packets when no backend can take them.
const (
	NoBackendDrop = "drop"
	NoBackendPass = "pass"
)

// What happens when every backend of a VIP is down.
const (
	AllDownFailOpen   = "fail-open"   // keep the last table: forward anyway
	AllDownFailClosed = "fail-closed" // no backend: drop or pass per NoBackend
)

// Where a VIP or backend was declared. The config file's entries follow the
// file on reload; the CLI's stay until removed from the CLI.
const (
	SourceCLI    = "cli"
	SourceConfig = "config"
)

// VIPRef names a VIP: address, port and protocol.
type VIPRef struct {
	Addr  netip.AddrPort `json:"addr"`
	Proto string         `json:"proto"`
}

func (r VIPRef) String() string { return r.Addr.String() + "/" + r.Proto }

func (r VIPRef) key() maps.VIPKey {
	proto := maps.TCP
	if r.Proto == "udp" {
		proto = maps.UDP
	}
	return maps.VIPKey{Addr: r.Addr.Addr(), Port: r.Addr.Port(), Proto: proto}
}

// VIP is one VIP's desired state.
type VIP struct {
	VIPRef
	Prefix4         int           `json:"prefix4"`
	Prefix6         int           `json:"prefix6"`
	AffinityTimeout time.Duration `json:"affinity_timeout"`
	TableSize       uint32        `json:"table_size"`
	NoBackend       string        `json:"no_backend"`
	AllDown         string        `json:"all_down"`
	// SessionGrace is how long an unhealthy backend keeps its pinned
	// clients before they move.
	SessionGrace time.Duration `json:"session_grace"`
	// MassFailurePercent of the checked backends failing at once holds
	// every pinned client where it is (hard evidence still counts).
	MassFailurePercent int          `json:"mass_failure_percent"`
	Check              health.Check `json:"check"` // default for its backends
	Backends           []Backend    `json:"backends"`
	Source             string       `json:"source"`
	// ID is the datapath's vip_id, kept across restarts.
	ID uint32 `json:"id"`
}

// Backend is one backend's desired state.
type Backend struct {
	Name    string        `json:"name"`
	Addr    netip.Addr    `json:"addr"`
	Port    uint16        `json:"port,omitempty"` // service port for checks; 0: the VIP's
	MAC     string        `json:"mac,omitempty"`  // operator override of the neighbour table
	Weight  uint32        `json:"weight"`
	Check   *health.Check `json:"check,omitempty"` // overrides the VIP's
	Drained bool          `json:"drained"`
	Source  string        `json:"source"`
	// ID is the datapath's backend id, kept across restarts so affinity
	// entries stay valid.
	ID maps.BackendID `json:"id"`
}

// State is everything the daemon persists.
type State struct {
	Seed uint32 `json:"seed"`
	VIPs []VIP  `json:"vips"`
}

// ParseVIPAddr parses ADDR:PORT, with IPv6 as [ADDR]:PORT.
func ParseVIPAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("VIP %q is not ADDR:PORT (expected e.g. 198.18.1.1:80 or [2001:db8::1]:80)", s)
	}
	if err := checkServiceAddr("VIP", ap.Addr()); err != nil {
		return netip.AddrPort{}, err
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("VIP %q has port 0, expected a port from 1 to 65535", s)
	}
	return ap, nil
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (string, error) {
	switch strings.ToLower(s) {
	case "", "tcp":
		return "tcp", nil
	case "udp":
		return "udp", nil
	}
	return "", fmt.Errorf("protocol %q is not supported, expected tcp or udp", s)
}

// ParseBackendAddr parses a backend's address.
func ParseBackendAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("backend address %q is not an IP address (expected e.g. 198.18.0.3 or 2001:db8::3)", s)
	}
	return a, checkServiceAddr("backend address", a)
}

func checkServiceAddr(what string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("%s is missing, expected an IP address", what)
	case a.Zone() != "":
		// Quoted: a zone may hold any character, a newline too.
		return fmt.Errorf("%s %q has a zone, expected a global address", what, a)
	case a.Is4In6():
		return fmt.Errorf("%s %s is IPv4-mapped IPv6, expected plain IPv4 (%s)", what, a, a.Unmap())
	case a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast(), a.IsLoopback(), a == limitedBroadcast:
		return fmt.Errorf("%s %s is not a unicast address a host can serve", what, a)
	}
	return nil
}

// limitedBroadcast is 255.255.255.255: a VIP there would catch DHCP.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// maxFileBytes bounds the state and config files the daemon reads.
const maxFileBytes = 16 << 20

// readSmallFile reads a regular file of at most maxFileBytes: a FIFO, a
// device (/dev/zero) or a huge file is an error, not a hang or an
// out-of-memory crash.
func readSmallFile(what, path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("reading %s: %s is a %s, expected a regular file", what, path, info.Mode().Type())
	}
	if info.Size() > maxFileBytes {
		return nil, fmt.Errorf("reading %s: %s has %d bytes, expected at most %d", what, path, info.Size(), maxFileBytes)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("reading %s: %s grew past %d bytes while read", what, path, maxFileBytes)
	}
	return data, nil
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateName checks a backend name.
func ValidateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("backend name %q is not valid, expected 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// ParseMAC parses a backend MAC override.
func ParseMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("MAC %q is not an Ethernet address, expected e.g. 02:00:00:00:00:01", s)
	}
	if mac[0]&1 == 1 || mac.String() == "00:00:00:00:00:00" {
		return nil, fmt.Errorf("MAC %q is not a unicast Ethernet address", s)
	}
	return mac, nil
}

// withDefaults fills unset VIP settings.
func (v VIP) withDefaults(tableStride uint32) VIP {
	if v.Proto == "" {
		v.Proto = "tcp"
	}
	if v.AffinityTimeout == 0 {
		v.AffinityTimeout = DefaultAffinityTimeout
	}
	if v.TableSize == 0 {
		v.TableSize = largestPrimeAtMost(tableStride)
	}
	if v.NoBackend == "" {
		v.NoBackend = NoBackendDrop
	}
	if v.AllDown == "" {
		v.AllDown = AllDownFailOpen
	}
	if v.SessionGrace == 0 {
		v.SessionGrace = DefaultSessionGrace
	}
	if v.MassFailurePercent == 0 {
		v.MassFailurePercent = DefaultMassFailurePercent
	}
	if v.Source == "" {
		v.Source = SourceCLI
	}
	if v.Check.Kind == "" {
		v.Check.Kind = health.KindNone
	}
	v.Check = v.Check.WithDefaults()
	return v
}

func largestPrimeAtMost(n uint32) uint32 {
	for p := n; p >= 3; p-- {
		if maglev.IsPrime(p) {
			return p
		}
	}
	return 3
}

// validate checks a VIP's own settings (not its backends).
func (v VIP) validate(tableStride uint32) error {
	if err := v.validateSettings(); err != nil {
		return err
	}
	if v.TableSize > tableStride {
		return fmt.Errorf("table size %d is above %d, the largest the datapath was loaded with", v.TableSize, tableStride)
	}
	return nil
}

// validateSettings checks a VIP's own settings except what depends on the
// loaded datapath.
func (v VIP) validateSettings() error {
	if err := checkServiceAddr("VIP", v.Addr.Addr()); err != nil {
		return err
	}
	if v.Addr.Port() == 0 {
		return fmt.Errorf("VIP %s has port 0, expected a port from 1 to 65535", v.Addr)
	}
	if _, err := ParseProto(v.Proto); err != nil {
		return err
	}
	if v.Prefix4 < 0 || v.Prefix4 > 32 {
		return fmt.Errorf("prefix4 %d is out of range, expected 0 to 32", v.Prefix4)
	}
	if v.Prefix6 < 0 || v.Prefix6 > 128 {
		return fmt.Errorf("prefix6 %d is out of range, expected 0 to 128", v.Prefix6)
	}
	if v.AffinityTimeout < time.Second || v.AffinityTimeout > maxAffinityTimeout {
		return fmt.Errorf("affinity timeout %s is out of range, expected 1s to 24h (default 120s)", v.AffinityTimeout)
	}
	if v.TableSize < 3 || !maglev.IsPrime(v.TableSize) {
		return fmt.Errorf("table size %d is not a prime of at least 3 (such as %d)", v.TableSize, maglev.DefaultTableSize)
	}
	if v.NoBackend != NoBackendDrop && v.NoBackend != NoBackendPass {
		return fmt.Errorf("no-backend action %q is not known, expected drop or pass", v.NoBackend)
	}
	if v.AllDown != AllDownFailOpen && v.AllDown != AllDownFailClosed {
		return fmt.Errorf("all-down action %q is not known, expected fail-open or fail-closed", v.AllDown)
	}
	if err := checkSessionGrace(v.SessionGrace); err != nil {
		return err
	}
	if err := checkMassFailurePercent(v.MassFailurePercent); err != nil {
		return err
	}
	if err := validateCheck(v.Check); err != nil {
		return fmt.Errorf("VIP %s: %w", v.VIPRef, err)
	}
	return nil
}

// Bounds of a health check an operator may set: probing more often than
// every 100 ms burns a core per backend; a timeout under 10 ms measures the
// scheduler, not the backend.
const (
	minCheckInterval = 100 * time.Millisecond
	maxCheckInterval = time.Hour
	minCheckTimeout  = 10 * time.Millisecond
)

// validateCheck checks a health check and its bounds, in one line.
func validateCheck(c health.Check) error {
	if err := c.Validate(); err != nil {
		return oneLine(err)
	}
	if c.Kind == health.KindNone {
		return nil
	}
	if c.Interval < minCheckInterval || c.Interval > maxCheckInterval {
		return fmt.Errorf("health check interval %s is out of range, expected 100ms to 1h", c.Interval)
	}
	if c.Timeout < minCheckTimeout {
		return fmt.Errorf("health check timeout %s is out of range, expected 10ms or more (and less than the interval)", c.Timeout)
	}
	return nil
}

// withDefaults fills unset backend settings.
func (b Backend) withDefaults() Backend {
	if b.Source == "" {
		b.Source = SourceCLI
	}
	if b.Check != nil {
		c := b.Check.WithDefaults()
		b.Check = &c
	}
	return b
}

func (b Backend) validate() error {
	if err := ValidateName(b.Name); err != nil {
		return err
	}
	if err := checkServiceAddr("backend address", b.Addr); err != nil {
		return err
	}
	if b.MAC != "" {
		if _, err := ParseMAC(b.MAC); err != nil {
			return err
		}
	}
	if b.Weight > MaxWeight {
		return fmt.Errorf("weight %d of backend %s is out of range, expected 0 to %d", b.Weight, b.Name, MaxWeight)
	}
	if b.Check != nil {
		if err := validateCheck(*b.Check); err != nil {
			return fmt.Errorf("backend %s: %w", b.Name, err)
		}
	}
	return nil
}

// validateBackends checks a VIP's backend set as a whole.
func (v VIP) validateBackends() error {
	names := map[string]bool{}
	addrs := map[netip.Addr]string{}
	weighted := 0
	for _, b := range v.Backends {
		if err := b.validate(); err != nil {
			return err
		}
		if b.Weight > 0 {
			weighted++
		}
		if names[b.Name] {
			return fmt.Errorf("backend name %q is used twice in VIP %s", b.Name, v.VIPRef)
		}
		names[b.Name] = true
		if other, ok := addrs[b.Addr]; ok {
			return fmt.Errorf("backend address %s of %s is already used by %s in VIP %s", b.Addr, b.Name, other, v.VIPRef)
		}
		addrs[b.Addr] = b.Name
	}
	if uint64(weighted) > uint64(v.TableSize) {
		return fmt.Errorf("VIP %s has %d backends with a non-zero weight but a table of %d slots, expected at most one per slot", v.VIPRef, weighted, v.TableSize)
	}
	return nil
}

// oneLineError is an error of several lines read as one, its lines
// joined by "; ": the CLI prints every error on one line.
type oneLineError struct {
	text string
	err  error
}

func (e oneLineError) Error() string { return e.text }
func (e oneLineError) Unwrap() error { return e.err }

// oneLine returns err as one line, or nil for nil. health.Check.Validate
// reports each problem on a line of its own.
func oneLine(err error) error {
	if err == nil || !strings.ContainsAny(err.Error(), "\n\r") {
		return err
	}
	return oneLineError{text: joinLines(err.Error()), err: err}
}

// joinLines joins the lines of text with "; ".
func joinLines(text string) string {
	lines := strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

// checkFor returns the effective check of a backend and its target.
func (v VIP) checkFor(b Backend) (health.Check, netip.AddrPort) {
	check := v.Check
	if b.Check != nil {
		check = *b.Check
	}
	port := b.Port
	if port == 0 {
		port = v.Addr.Port()
	}
	return check, netip.AddrPortFrom(b.Addr, port)
}

// LoadState reads the state file. A missing file is an empty state; a
// corrupt one is an error: the daemon must not start empty and wipe the
// datapath.
func LoadState(path string) (State, bool, error) {
	data, err := readSmallFile("state file", path)
	if errors.Is(err, os.ErrNotExist) {
		return State{Seed: DefaultSeed}, false, nil
	}
	if err != nil {
		return State{}, false, err
	}
	s, err := decodeState(data)
	if err != nil {
		return State{}, false, fmt.Errorf("state file %s is corrupt (%w); fix or remove it, the previous good copy is %s.prev", path, err, path)
	}
	return s, true, nil
}

// decodeState reads what SaveState wrote: one JSON object and nothing
// after it, holding a state the daemon would accept but for the limits of
// the loaded datapath. A file that is null, or a good state followed by
// more, is not what SaveState wrote either.
func decodeState(data []byte) (State, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return State{}, errors.New("the file is empty")
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return State{}, err
	}
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		return State{}, errors.New("not a JSON object")
	}
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		return State{}, fmt.Errorf("data after the state at byte %d", dec.InputOffset())
	}
	if err := checkState(s); err != nil {
		return State{}, err
	}
	return s, nil
}

// checkState checks a state as New does, but for the datapath's limits: a
// value no daemon would have saved means the file was damaged.
func checkState(s State) error {
	keys := map[maps.VIPKey]bool{}
	vipIDs := map[uint32]bool{}
	backendIDs := map[maps.BackendID]bool{}
	for i, v := range s.VIPs {
		v = v.withDefaults(maglev.DefaultTableSize)
		if err := v.validateSettings(); err != nil {
			return fmt.Errorf("vips[%d]: %w", i, err)
		}
		if err := v.validateBackends(); err != nil {
			return fmt.Errorf("vips[%d]: %w", i, err)
		}
		if keys[v.key()] {
			return fmt.Errorf("vips[%d]: VIP %s is listed twice", i, v.VIPRef)
		}
		keys[v.key()] = true
		if v.ID != unassignedVIP && vipIDs[v.ID] {
			return fmt.Errorf("vips[%d]: VIP id %d is used twice", i, v.ID)
		}
		vipIDs[v.ID] = true
		for _, b := range v.Backends {
			if b.ID != 0 && backendIDs[b.ID] {
				return fmt.Errorf("vips[%d]: backend id %d of %s is used twice", i, b.ID, b.Name)
			}
			backendIDs[b.ID] = true
		}
	}
	return nil
}

// SaveState writes the state file atomically, keeping the one it replaces
// as .prev: each is written to a temporary file, synced, renamed into
// place, and the directory synced, so a crash leaves either the old or the
// new file, never a torn one.
func SaveState(path string, s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	if previous, err := os.ReadFile(path); err == nil {
		if err := writeAtomic(path+".prev", previous); err != nil {
			return fmt.Errorf("keeping previous state: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("keeping previous state: %w", err)
	}
	if err := writeAtomic(path, append(data, '\n')); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// checkSessionGrace refuses a session grace out of range.
func checkSessionGrace(grace time.Duration) error {
	if grace < time.Second || grace > maxSessionGrace {
		return fmt.Errorf("session grace %s is out of range, expected 1s to 1h (default 45s)", grace)
	}
	return nil
}

// checkMassFailurePercent refuses a mass-failure share out of range.
func checkMassFailurePercent(percent int) error {
	if percent < 1 || percent > 100 {
		return fmt.Errorf("mass-failure percent %d is out of range, expected 1 to 100 (default 50)", percent)
	}
	return nil
}
