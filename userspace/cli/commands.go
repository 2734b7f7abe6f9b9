package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
)

const requestTimeout = 30 * time.Second

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}
}

func protoFlag() cli.Flag {
	return &cli.StringFlag{Name: "proto", Value: "tcp", Usage: "tcp or udp"}
}

func vipFlag() cli.Flag {
	return &cli.StringFlag{Name: "vip", Required: true, Usage: "the VIP, ADDR:PORT or [ADDR]:PORT"}
}

// checkSetting is a flag that sets one field of a health check.
type checkSetting struct {
	cli.Flag
	kinds []health.Kind // the check kinds that use the field
	// takes says what the flag takes. The daemon reads a zero field as
	// "the default", so an explicit zero is refused with this text.
	takes string
}

func checkSettings() []checkSetting {
	probing := []health.Kind{health.KindTCP, health.KindHTTP, health.KindEngineIO}
	return []checkSetting{
		{&cli.StringFlag{Name: "check-path", Usage: "http path or Engine.IO endpoint (default / or /socket.io/)"},
			[]health.Kind{health.KindHTTP, health.KindEngineIO}, "a path starting with /"},
		{&cli.UintFlag{Name: "check-port", Usage: "port to check (default: the service port)"}, probing, "1 to 65535"},
		{&cli.StringFlag{Name: "check-method", Usage: "http method: GET or HEAD"}, []health.Kind{health.KindHTTP}, "GET or HEAD"},
		{&cli.IntFlag{Name: "check-status", Usage: "http status that means healthy (default 200)"}, []health.Kind{health.KindHTTP}, "100 to 599"},
		{&cli.DurationFlag{Name: "check-interval", Usage: "time between checks (default 2s)"}, probing, "a positive duration such as 2s"},
		{&cli.DurationFlag{Name: "check-timeout", Usage: "limit of one check (default 1s)"}, probing, "a positive duration shorter than the interval"},
		{&cli.IntFlag{Name: "check-rise", Usage: "successes in a row to come up (default 2)"}, probing, "1 to 100"},
		{&cli.IntFlag{Name: "check-fall", Usage: "failures in a row to go down (default 3)"}, probing, "1 to 100"},
	}
}

// checkFlags configure a health check, on vip add (the VIP's default) and
// backend add (an override).
func checkFlags() []cli.Flag {
	flags := []cli.Flag{&cli.StringFlag{Name: "check", Usage: "health check kind: tcp, http, engineio or none"}}
	for _, s := range checkSettings() {
		flags = append(flags, s.Flag)
	}
	return flags
}

// checkFromFlags returns the check the flags describe, or nil when no check
// flag was given.
func checkFromFlags(c *cli.Context) (*health.Check, error) {
	var given []checkSetting
	for _, s := range checkSettings() {
		if c.IsSet(s.Names()[0]) {
			given = append(given, s)
		}
	}
	if !c.IsSet("check") {
		if len(given) > 0 {
			return nil, fmt.Errorf("--%s needs --check KIND (tcp, http, engineio or none)", given[0].Names()[0])
		}
		return nil, nil
	}
	kind, err := health.ParseKind(c.String("check"))
	if err != nil {
		return nil, err
	}
	for _, s := range given {
		name := s.Names()[0]
		if !slices.Contains(s.kinds, kind) {
			return nil, fmt.Errorf("--%s does not apply to --check %s", name, kind)
		}
		if value := c.Value(name); reflect.ValueOf(value).IsZero() {
			return nil, fmt.Errorf("--%s %q is not valid, expected %s", name, fmt.Sprint(value), s.takes)
		}
	}
	if c.Uint("check-port") > 65535 {
		return nil, fmt.Errorf("check port %d is out of range, expected 1 to 65535", c.Uint("check-port"))
	}
	check := health.Check{
		Kind: kind, Path: c.String("check-path"), Port: uint16(c.Uint("check-port")),
		Method: strings.ToUpper(c.String("check-method")), Status: c.Int("check-status"),
		Interval: c.Duration("check-interval"), Timeout: c.Duration("check-timeout"),
		Rise: c.Int("check-rise"), Fall: c.Int("check-fall"),
	}
	check = check.WithDefaults()
	if err := check.Validate(); err != nil {
		// Validate reports each problem on a line of its own.
		return nil, errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return &check, nil
}

func vipRef(c *cli.Context, addr string) (control.VIPRef, error) {
	ap, err := control.ParseVIPAddr(addr)
	if err != nil {
		return control.VIPRef{}, err
	}
	proto, err := control.ParseProto(c.String("proto"))
	if err != nil {
		return control.VIPRef{}, err
	}
	return control.VIPRef{Addr: ap, Proto: proto}, nil
}

func withTimeout(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, requestTimeout)
}

func printWarnings(w io.Writer, r control.Reply) {
	for _, warning := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
}

// sendWarned sends a request whose reply may carry warnings, and prints
// them.
func sendWarned(c *cli.Context, send func(context.Context, *control.Client) (control.Reply, error)) error {
	ctx, cancel := withTimeout(c)
	defer cancel()
	reply, err := send(ctx, client(c))
	if err != nil {
		return err
	}
	printWarnings(c.App.ErrWriter, reply)
	return nil
}

func vipCommand() *cli.Command {
	return &cli.Command{
		Name:        "vip",
		Usage:       "manage VIPs",
		Subcommands: []*cli.Command{vipAddCommand(), vipRemoveCommand(), vipListCommand()},
	}
}

func vipAddCommand() *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "add a VIP",
		ArgsUsage: "ADDR:PORT",
		Flags: append([]cli.Flag{
			protoFlag(),
			&cli.IntFlag{Name: "prefix4", Value: control.DefaultPrefix4, Usage: "IPv4 client key length: clients in one /N share a backend"},
			&cli.IntFlag{Name: "prefix6", Value: control.DefaultPrefix6, Usage: "IPv6 client key length"},
			&cli.DurationFlag{Name: "affinity-timeout", Value: control.DefaultAffinityTimeout, Usage: "how long an idle client stays pinned"},
			&cli.UintFlag{Name: "table-size", Usage: "Maglev table size, a prime (default: the largest the datapath holds)"},
			&cli.StringFlag{Name: "no-backend", Value: control.NoBackendDrop, Usage: "with no usable backend: drop or pass"},
			&cli.StringFlag{Name: "all-down", Value: control.AllDownFailOpen, Usage: "when every backend is down: fail-open (keep forwarding) or fail-closed"},
			&cli.DurationFlag{Name: "session-grace", Value: control.DefaultSessionGrace, Usage: "how long an unhealthy (slow, not gone) backend keeps its pinned clients"},
			&cli.IntFlag{Name: "mass-failure-percent", Value: control.DefaultMassFailurePercent, Usage: "when this share of the checked backends fails at once, keep every pinned client where it is"},
		}, checkFlags()...),
		Action: func(c *cli.Context) error {
			v, err := vipToAdd(c)
			if err != nil {
				return err
			}
			return sendWarned(c, func(ctx context.Context, cl *control.Client) (control.Reply, error) {
				return cl.AddVIP(ctx, v)
			})
		},
	}
}

// vipArg returns the VIP of a command that takes it as its one argument,
// with --proto.
func vipArg(c *cli.Context) (control.VIPRef, error) {
	a, err := args(c, "ADDR:PORT")
	if err != nil {
		return control.VIPRef{}, err
	}
	return vipRef(c, a[0])
}

// vipToAdd returns the VIP that vip add's argument and flags describe.
func vipToAdd(c *cli.Context) (control.VIP, error) {
	ref, err := vipArg(c)
	if err != nil {
		return control.VIP{}, err
	}
	v := control.NewVIP(ref)
	v.Prefix4, v.Prefix6 = c.Int("prefix4"), c.Int("prefix6")
	v.AffinityTimeout = c.Duration("affinity-timeout")
	if v.AffinityTimeout == 0 {
		return control.VIP{}, errors.New("affinity timeout 0s is out of range, expected 1s to 24h (default 120s)")
	}
	if c.IsSet("table-size") && (c.Uint("table-size") == 0 || c.Uint("table-size") > 1<<31) {
		return control.VIP{}, fmt.Errorf("table size %d is out of range, expected a prime such as 65537", c.Uint("table-size"))
	}
	v.TableSize = uint32(c.Uint("table-size"))
	v.NoBackend, v.AllDown = c.String("no-backend"), c.String("all-down")
	v.SessionGrace, v.MassFailurePercent = c.Duration("session-grace"), c.Int("mass-failure-percent")
	if v.SessionGrace == 0 {
		return control.VIP{}, errors.New("session grace 0s is out of range, expected 1s to 1h (default 45s)")
	}
	if v.MassFailurePercent == 0 {
		return control.VIP{}, errors.New("mass-failure percent 0 is out of range, expected 1 to 100 (default 50)")
	}
	check, err := checkFromFlags(c)
	if err != nil {
		return control.VIP{}, err
	}
	if check != nil {
		v.Check = *check
	}
	return v, nil
}

func vipRemoveCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "remove a VIP and its backends",
		ArgsUsage: "ADDR:PORT",
		Flags:     []cli.Flag{protoFlag()},
		Action: func(c *cli.Context) error {
			ref, err := vipArg(c)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(c)
			defer cancel()
			return client(c).RemoveVIP(ctx, ref)
		},
	}
}

func vipListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list VIPs",
		Flags: []cli.Flag{outputFlag()},
		Action: withStatus(func(c *cli.Context, st control.Status) error {
			return render(c, st.VIPs, func(w io.Writer) {
				fmt.Fprintln(w, "VIP\tPROTO\tPREFIX4\tPREFIX6\tAFFINITY\tTABLE\tNO-BACKEND\tCHECK\tBACKENDS")
				for _, v := range st.VIPs {
					fmt.Fprintf(w, "%s\t%s\t/%d\t/%d\t%s\t%d\t%s\t%s\t%d\n", v.Addr, v.Proto, v.Prefix4, v.Prefix6,
						v.AffinityTimeout, v.TableSize, v.NoBackend, v.Check.Kind, len(v.Backends))
				}
			})
		}),
	}
}

func backendArgs(c *cli.Context, names ...string) (control.VIPRef, []string, error) {
	a, err := args(c, names...)
	if err != nil {
		return control.VIPRef{}, nil, err
	}
	ref, err := vipRef(c, c.String("vip"))
	if err != nil {
		return control.VIPRef{}, nil, err
	}
	if err := control.ValidateName(a[0]); err != nil {
		return control.VIPRef{}, nil, err
	}
	return ref, a, nil
}

func backendCommand() *cli.Command {
	return &cli.Command{
		Name:  "backend",
		Usage: "manage a VIP's backends",
		Subcommands: []*cli.Command{
			backendAddCommand(),
			backendNameCommand("remove", "remove a backend; only its clients move", (*control.Client).RemoveBackend),
			backendSetCommand(),
			backendDrainCommand(),
			backendNameCommand("enable", "undo a drain", (*control.Client).Enable),
			backendListCommand(),
		},
	}
}

// backendNameCommand is a backend command that takes the backend's name and
// no other flags than the VIP's, and makes call.
func backendNameCommand(name, usage string, call func(*control.Client, context.Context, control.VIPRef, string) error) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "NAME",
		Flags: []cli.Flag{vipFlag(), protoFlag()},
		Action: func(c *cli.Context) error {
			ref, a, err := backendArgs(c, "NAME")
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(c)
			defer cancel()
			return call(client(c), ctx, ref, a[0])
		},
	}
}

func backendAddCommand() *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "add a backend to a VIP",
		ArgsUsage: "NAME ADDRESS",
		Flags: append([]cli.Flag{
			vipFlag(), protoFlag(),
			&cli.StringFlag{Name: "mac", Usage: "backend MAC (default: from the kernel's neighbour table)"},
			&cli.UintFlag{Name: "weight", Value: control.DefaultWeight, Usage: "relative share of new clients, 0 to 10000"},
			&cli.UintFlag{Name: "port", Usage: "the backend's service port for health checks (default: the VIP's)"},
		}, checkFlags()...),
		Action: func(c *cli.Context) error {
			ref, a, err := backendArgs(c, "NAME", "ADDRESS")
			if err != nil {
				return err
			}
			b, err := backendFromFlags(c, a[0], a[1])
			if err != nil {
				return err
			}
			return sendWarned(c, func(ctx context.Context, cl *control.Client) (control.Reply, error) {
				return cl.AddBackend(ctx, ref, b)
			})
		},
	}
}

// backendFromFlags returns the backend called name at address, with the
// settings of backend add's flags.
func backendFromFlags(c *cli.Context, name, address string) (control.Backend, error) {
	addr, err := control.ParseBackendAddr(address)
	if err != nil {
		return control.Backend{}, err
	}
	b := control.Backend{Name: name, Addr: addr}
	if c.IsSet("mac") {
		mac, err := control.ParseMAC(c.String("mac"))
		if err != nil {
			return control.Backend{}, err
		}
		b.MAC = mac.String()
	}
	if b.Weight, err = weightFromFlag(c); err != nil {
		return control.Backend{}, err
	}
	if c.Uint("port") > 65535 || (c.IsSet("port") && c.Uint("port") == 0) {
		return control.Backend{}, fmt.Errorf("port %d is out of range, expected 1 to 65535", c.Uint("port"))
	}
	b.Port = uint16(c.Uint("port"))
	if b.Check, err = checkFromFlags(c); err != nil {
		return control.Backend{}, err
	}
	return b, nil
}

// weightFromFlag returns --weight, or an error if it is over
// control.MaxWeight.
func weightFromFlag(c *cli.Context) (uint32, error) {
	if c.Uint("weight") > control.MaxWeight {
		return 0, fmt.Errorf("weight %d is out of range, expected 0 to %d", c.Uint("weight"), control.MaxWeight)
	}
	return uint32(c.Uint("weight")), nil
}

func backendSetCommand() *cli.Command {
	return &cli.Command{
		Name:      "set",
		Usage:     "change a backend's weight",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{vipFlag(), protoFlag(),
			&cli.UintFlag{Name: "weight", Required: true, Usage: "relative share of new clients, 0 to 10000"}},
		Action: func(c *cli.Context) error {
			ref, a, err := backendArgs(c, "NAME")
			if err != nil {
				return err
			}
			weight, err := weightFromFlag(c)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(c)
			defer cancel()
			return client(c).SetWeight(ctx, ref, a[0], weight)
		},
	}
}

func backendDrainCommand() *cli.Command {
	return &cli.Command{
		Name:      "drain",
		Usage:     "send a backend no new clients; its pinned clients stay until idle",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{vipFlag(), protoFlag(),
			&cli.BoolFlag{Name: "wait", Usage: "return when no client is pinned to it any more"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "with --wait: give up after this long"}},
		Action: drain,
	}
}

func backendListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list backends",
		Flags: []cli.Flag{&cli.StringFlag{Name: "vip", Usage: "only this VIP's"}, protoFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			if c.IsSet("proto") && !c.IsSet("vip") {
				return errors.New("--proto needs --vip")
			}
			st, err := status(c)
			if err != nil {
				return err
			}
			vips, err := listedVIPs(c, st)
			if err != nil {
				return err
			}
			var list []control.BackendStatus
			for _, v := range vips {
				list = append(list, v.Backends...)
			}
			return render(c, list, func(w io.Writer) { backendTable(w, vips) })
		},
	}
}

// listedVIPs returns the VIPs of st whose backends backend list shows: all,
// or the one --vip and --proto name.
func listedVIPs(c *cli.Context, st control.Status) ([]control.VIPStatus, error) {
	if !c.IsSet("vip") {
		return st.VIPs, nil
	}
	ref, err := vipRef(c, c.String("vip"))
	if err != nil {
		return nil, err
	}
	var vips []control.VIPStatus
	for _, v := range st.VIPs {
		if v.VIPRef == ref {
			vips = append(vips, v)
		}
	}
	if vips == nil {
		return nil, fmt.Errorf("VIP %s is not configured", ref)
	}
	return vips, nil
}

func drain(c *cli.Context) error {
	ref, a, err := backendArgs(c, "NAME")
	if err != nil {
		return err
	}
	if c.IsSet("timeout") && !c.Bool("wait") {
		return errors.New("--timeout needs --wait")
	}
	if c.Duration("timeout") <= 0 {
		return fmt.Errorf("drain timeout %s is not positive, expected a duration such as 10m", c.Duration("timeout"))
	}
	ctx, cancel := withTimeout(c)
	err = client(c).Drain(ctx, ref, a[0])
	cancel()
	if err != nil || !c.Bool("wait") {
		return err
	}
	deadline := time.Now().Add(c.Duration("timeout"))
	for {
		ctx, cancel := withTimeout(c)
		pinned, err := client(c).PinnedClients(ctx, ref, a[0])
		cancel()
		if err != nil {
			return err
		}
		if pinned == 0 {
			fmt.Fprintf(c.App.Writer, "%s drained: no client pinned\n", a[0])
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still has %d pinned client(s) after %s", a[0], pinned, c.Duration("timeout"))
		}
		select {
		case <-c.Context.Done():
			return c.Context.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// withStatus is the action of a command that takes no arguments and shows
// the daemon's status.
func withStatus(show func(*cli.Context, control.Status) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if _, err := args(c); err != nil {
			return err
		}
		st, err := status(c)
		if err != nil {
			return err
		}
		return show(c, st)
	}
}

func status(c *cli.Context) (control.Status, error) {
	ctx, cancel := withTimeout(c)
	defer cancel()
	return client(c).Status(ctx)
}

// render writes v as JSON or as the table table writes.
func render(c *cli.Context, v any, table func(io.Writer)) error {
	switch c.String("output") {
	case "json":
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table":
		w := tabwriter.NewWriter(c.App.Writer, 2, 8, 2, ' ', 0)
		table(w)
		return w.Flush()
	}
	return fmt.Errorf("output format %q is not known, expected table or json", c.String("output"))
}

func backendTable(w io.Writer, vips []control.VIPStatus) {
	fmt.Fprintln(w, "VIP\tNAME\tADDRESS\tWEIGHT\tSTATE\tHEALTH\tPINNED\tMAC\tNOTE")
	for _, v := range vips {
		for _, b := range v.Backends {
			note := b.Problem
			if note == "" {
				note = b.HealthNote
			}
			if b.UnhealthySince != nil {
				note = fmt.Sprintf("unhealthy for %s (pinned clients stay for the session grace, %s); %s",
					time.Since(*b.UnhealthySince).Round(time.Second), v.SessionGrace, note)
			}
			if b.FailingOpen {
				note = "ALL DOWN, failing open; " + note
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", v.VIPRef, b.Name, b.Addr, b.Weight, b.State, b.Health, b.Pinned, b.MACInUse, note)
		}
	}
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the datapath, VIPs and backends",
		Flags: []cli.Flag{outputFlag()},
		Action: withStatus(func(c *cli.Context, st control.Status) error {
			return render(c, st, func(w io.Writer) {
				fmt.Fprintf(w, "interface\t%s\n", st.Interface)
				fmt.Fprintf(w, "attach mode\t%s\n", st.Mode)
				fmt.Fprintf(w, "program id\t%d\n", st.ProgramID)
				if st.Problem != "" {
					fmt.Fprintf(w, "PROBLEM\t%s\n", st.Problem)
				}
				fmt.Fprintf(w, "seed\t%#x\n", st.Seed)
				fmt.Fprintln(w)
				fmt.Fprintln(w, "VIP\tPROTO\tTABLE\tVERSION\tBACKENDS\tNOTE")
				for _, v := range st.VIPs {
					var notes []string
					if v.FailingOpen {
						notes = append(notes, "ALL BACKENDS DOWN: failing open")
					}
					if v.MassFailure {
						notes = append(notes, "MASS FAILURE: every pinned client kept")
					}
					note := strings.Join(notes, "; ")
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\n", v.Addr, v.Proto, v.TableSize, v.TableVersion, len(v.Backends), note)
				}
				fmt.Fprintln(w)
				backendTable(w, st.VIPs)
			})
		}),
	}
}
