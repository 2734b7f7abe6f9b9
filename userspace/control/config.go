package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/maglev"
)

// Config is the YAML config file: VIPs and backends declared by the
// operator. On start and on SIGHUP the daemon merges it into its state:
// entries in the file are created or updated, entries that came from the
// file and left it are removed, and entries added with the CLI stay.
type Config struct {
	Seed *uint32     `yaml:"seed"`
	VIPs []ConfigVIP `yaml:"vips"`
}

// ConfigVIP is a VIP in the config file.
type ConfigVIP struct {
	VIP             string `yaml:"vip"` // ADDR:PORT
	Proto           string `yaml:"proto"`
	Prefix4         *int   `yaml:"prefix4"`
	Prefix6         *int   `yaml:"prefix6"`
	AffinityTimeout string `yaml:"affinity_timeout"`
	TableSize       uint32 `yaml:"table_size"`
	NoBackend       string `yaml:"no_backend"`
	AllDown         string `yaml:"all_down"`
	SessionGrace    string `yaml:"session_grace"`
	// MassFailurePercent: 0 or absent takes the default.
	MassFailurePercent int             `yaml:"mass_failure_percent"`
	Check              *ConfigCheck    `yaml:"check"`
	Backends           []ConfigBackend `yaml:"backends"`
}

// ConfigBackend is a backend in the config file.
type ConfigBackend struct {
	Name    string       `yaml:"name"`
	Address string       `yaml:"address"`
	MAC     string       `yaml:"mac"`
	Weight  *uint32      `yaml:"weight"`
	Port    uint16       `yaml:"port"`
	Check   *ConfigCheck `yaml:"check"`
	Drained bool         `yaml:"drained"`
}

// ConfigCheck is a health check in the config file.
type ConfigCheck struct {
	Kind     string `yaml:"kind"`
	Port     uint16 `yaml:"port"`
	Path     string `yaml:"path"`
	Method   string `yaml:"method"`
	Status   int    `yaml:"status"`
	Interval string `yaml:"interval"`
	Timeout  string `yaml:"timeout"`
	Rise     int    `yaml:"rise"`
	Fall     int    `yaml:"fall"`
}

func parseDuration(what, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q is not a positive duration (expected e.g. 500ms, 2s, 2m)", what, s)
	}
	return d, nil
}

func (c ConfigCheck) check() (health.Check, error) {
	kind, err := health.ParseKind(c.Kind)
	if err != nil {
		return health.Check{}, err
	}
	out := health.Check{Kind: kind, Port: c.Port, Path: c.Path, Method: strings.ToUpper(c.Method), Status: c.Status, Rise: c.Rise, Fall: c.Fall}
	if out.Interval, err = parseDuration("check interval", c.Interval); err != nil {
		return health.Check{}, err
	}
	if out.Timeout, err = parseDuration("check timeout", c.Timeout); err != nil {
		return health.Check{}, err
	}
	out = out.WithDefaults()
	return out, validateCheck(out)
}

// ParseConfig reads a config file's contents; unknown fields are errors.
func ParseConfig(r io.Reader) (Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	err := dec.Decode(&cfg)
	if err == nil {
		var next yaml.Node
		if dec.Decode(&next) == nil {
			return Config{}, errors.New("the file holds a second YAML document (after ---), expected one")
		}
	}
	var typeErr *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return cfg, nil
	case errors.As(err, &typeErr):
		// "yaml: unmarshal errors:" and then a line per problem, each
		// starting with its line number: those lines are the message. A
		// problem quotes the bad value, which may span lines itself.
		return Config{}, oneLineError{text: joinLines(strings.Join(typeErr.Errors, "\n")), err: err}
	default:
		return Config{}, oneLine(err)
	}
}

// toState turns the file's entries into VIPs, checking every value.
func (cfg Config) toState() ([]VIP, error) {
	var out []VIP
	for i, cv := range cfg.VIPs {
		where := fmt.Sprintf("vips[%d]", i)
		v, err := cv.vip()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for j, cb := range cv.Backends {
			b, err := cb.backend()
			if err != nil {
				return nil, fmt.Errorf("%s.backends[%d]: %w", where, j, err)
			}
			v.Backends = append(v.Backends, b)
		}
		// The table size the datapath allows is checked when the state is
		// applied; everything else is checked here, where the position is
		// known.
		withDefaults := v.withDefaults(maglev.DefaultTableSize)
		if err := withDefaults.validateSettings(); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if err := withDefaults.validateBackends(); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for _, other := range out {
			if other.VIPRef == v.VIPRef {
				return nil, fmt.Errorf("%s: VIP %s is declared twice", where, v.VIPRef)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// vip returns the VIP's own settings, without its backends.
func (cv ConfigVIP) vip() (VIP, error) {
	ap, err := ParseVIPAddr(cv.VIP)
	if err != nil {
		return VIP{}, err
	}
	proto, err := ParseProto(cv.Proto)
	if err != nil {
		return VIP{}, err
	}
	v := NewVIP(VIPRef{Addr: ap, Proto: proto})
	v.Source, v.TableSize, v.NoBackend, v.AllDown = SourceConfig, cv.TableSize, cv.NoBackend, cv.AllDown
	v.MassFailurePercent = cv.MassFailurePercent
	if cv.Prefix4 != nil {
		v.Prefix4 = *cv.Prefix4
	}
	if cv.Prefix6 != nil {
		v.Prefix6 = *cv.Prefix6
	}
	if v.AffinityTimeout, err = parseDuration("affinity timeout", cv.AffinityTimeout); err != nil {
		return VIP{}, err
	}
	if v.SessionGrace, err = parseDuration("session grace", cv.SessionGrace); err != nil {
		return VIP{}, err
	}
	if cv.Check != nil {
		if v.Check, err = cv.Check.check(); err != nil {
			return VIP{}, err
		}
	}
	return v, nil
}

// backend returns the backend the config declares.
func (cb ConfigBackend) backend() (Backend, error) {
	addr, err := ParseBackendAddr(cb.Address)
	if err != nil {
		return Backend{}, err
	}
	b := Backend{Name: cb.Name, Addr: addr, MAC: cb.MAC, Weight: DefaultWeight, Port: cb.Port, Drained: cb.Drained, Source: SourceConfig}
	if cb.Weight != nil {
		b.Weight = *cb.Weight
	}
	if cb.Check != nil {
		check, err := cb.Check.check()
		if err != nil {
			return Backend{}, err
		}
		b.Check = &check
	}
	if err := b.validate(); err != nil {
		return Backend{}, err
	}
	return b, nil
}

// Merge returns s with the config's entries merged in, keeping ids.
func (cfg Config) Merge(s State) (State, error) {
	declared, err := cfg.toState()
	if err != nil {
		return State{}, err
	}
	out := cloneState(s)
	if cfg.Seed != nil {
		if *cfg.Seed == 0 {
			return State{}, errors.New("seed 0 is not allowed, expected a non-zero number (leave it out for the default 0x74657468)")
		}
		out.Seed = *cfg.Seed
	}
	inFile := map[VIPRef]bool{}
	for _, v := range declared {
		inFile[v.VIPRef] = true
		existing, err := findVIP(&out, v.VIPRef)
		if err != nil {
			out.VIPs = append(out.VIPs, v)
			continue
		}
		v.ID = existing.ID
		v.Backends = mergeBackends(existing.Backends, v.Backends)
		*existing = v
	}
	out.VIPs = slices.DeleteFunc(out.VIPs, func(v VIP) bool { return v.Source == SourceConfig && !inFile[v.VIPRef] })
	return out, nil
}

// mergeBackends updates backends from the file, keeps the CLI's, and drops
// file backends that left the file.
func mergeBackends(current, declared []Backend) []Backend {
	byName := map[string]Backend{}
	for _, b := range declared {
		byName[b.Name] = b
	}
	var out []Backend
	for _, b := range current {
		if d, ok := byName[b.Name]; ok {
			d.ID = b.ID
			// A drain started with the CLI lasts until tether backend
			// enable, whatever a reload says.
			d.Drained = d.Drained || b.Drained
			out = append(out, d)
			delete(byName, b.Name)
		} else if b.Source != SourceConfig {
			out = append(out, b)
		}
	}
	for _, b := range declared {
		if _, ok := byName[b.Name]; ok {
			out = append(out, b)
		}
	}
	return out
}

func readConfig(path string) (Config, error) {
	data, err := readSmallFile("config file", path)
	if err != nil {
		return Config{}, err
	}
	cfg, err := ParseConfig(bytes.NewReader(data))
	if err != nil {
		return Config{}, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

// MergeConfigFile merges the config file at path into s.
func MergeConfigFile(s State, path string) (State, error) {
	cfg, err := readConfig(path)
	if err != nil {
		return State{}, err
	}
	merged, err := cfg.Merge(s)
	if err != nil {
		return State{}, fmt.Errorf("config file %s: %w", path, err)
	}
	return merged, nil
}

// ReloadConfig merges the config file into the running state. On error
// nothing changes.
func (d *Daemon) ReloadConfig(ctx context.Context, path string) error {
	cfg, err := readConfig(path)
	if err != nil {
		return err
	}
	stride := d.opts.Maps.Limits().TableStride
	var removed []string
	err = d.change(ctx, func(s *State) error {
		merged, err := cfg.Merge(*s)
		if err != nil {
			return invalid(fmt.Errorf("config file %s: %w", path, err))
		}
		removed = removedVIPs(*s, merged)
		if cfg.VIPs == nil && len(removed) > 0 {
			return invalid(fmt.Errorf("config file %s has no vips key (empty, only comments, or cut short?) and would remove all %d VIPs it declared: write \"vips: []\" to remove them", path, len(removed)))
		}
		for i := range merged.VIPs {
			merged.VIPs[i] = merged.VIPs[i].withDefaults(stride)
		}
		*s = merged
		return nil
	})
	if err == nil && len(removed) > 0 {
		d.log.Warn("config reload removed VIPs, and with them their clients' affinity", "path", path, "vips", strings.Join(removed, ", "))
	}
	return err
}

// removedVIPs names the VIPs of before that after lacks.
func removedVIPs(before, after State) []string {
	var out []string
	for _, v := range before.VIPs {
		if _, err := findVIP(&after, v.VIPRef); err != nil {
			out = append(out, v.VIPRef.String())
		}
	}
	return out
}
