package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/userspace/daemon"
)

func runCommand() *cli.Command {
	defaults := loader.DefaultOptions()
	return &cli.Command{
		Name:  "run",
		Usage: "run the daemon in the foreground (SIGTERM stops it and leaves forwarding in place)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "iface", Required: true, Usage: "interface to attach the XDP program to"},
			&cli.StringFlag{Name: "mode", Value: "native", Usage: "attach mode: native, generic or auto (native, else generic)"},
			&cli.StringFlag{Name: "config", Usage: "YAML file declaring VIPs and backends (re-read on SIGHUP)"},
			&cli.StringFlag{Name: "state-dir", Value: daemon.DefaultStateDir, Usage: "where the desired state is saved"},
			&cli.StringFlag{Name: "socket-group", Usage: "group allowed to use the control socket besides root"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve /metrics and /healthz on ADDR:PORT"},
			&cli.StringFlag{Name: "bpffs", Value: loader.DefaultBPFFS, Usage: "bpffs mount point for pins (mounted if missing)"},
			&cli.UintFlag{Name: "max-vips", Value: uint(defaults.MaxVIPs), Usage: "VIP capacity (fixed when the maps are first created)"},
			&cli.UintFlag{Name: "max-backends", Value: uint(defaults.MaxBackends), Usage: "backend capacity (fixed when the maps are first created)"},
			&cli.UintFlag{Name: "max-table-size", Value: uint(defaults.TableStride), Usage: "largest Maglev table size"},
			&cli.UintFlag{Name: "affinity-capacity", Value: uint(defaults.AffinityCapacity), Usage: "clients the affinity table is sized for (about 1% of them find their bucket full at that load; it holds up to 3x as many, evicting more)"},
			&cli.DurationFlag{Name: "watchdog-timeout", Usage: "pass all traffic to the stack if the daemon is silent this long (0: never)"},
			&cli.IntFlag{Name: "check-workers", Value: 32, Usage: "health checks in flight at most"},
			&cli.BoolFlag{Name: "discard-pinned", Usage: "start even when the pins hold VIPs but the state directory has no state file, and remove them"},
		},
		Action: run,
	}
}

func uint32Flag(c *cli.Context, name string) (uint32, error) {
	v := c.Uint(name)
	if v > 1<<32-1 {
		return 0, fmt.Errorf("--%s %d is out of range", name, v)
	}
	return uint32(v), nil
}

func loaderOptions(c *cli.Context) (loader.Options, error) {
	opts := loader.DefaultOptions()
	for name, dst := range map[string]*uint32{
		"max-vips": &opts.MaxVIPs, "max-backends": &opts.MaxBackends,
		"max-table-size": &opts.TableStride, "affinity-capacity": &opts.AffinityCapacity,
	} {
		v, err := uint32Flag(c, name)
		if err != nil {
			return opts, err
		}
		*dst = v
	}
	return opts, opts.Validate()
}

func socketGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("socket group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

func run(c *cli.Context) error {
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))
	// Signals are caught from the start: a SIGHUP during start-up waits
	// for the daemon's loop instead of killing the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg, err := runConfig(c)
	if err != nil {
		return err
	}
	return daemon.Run(ctx, cfg, log, hup)
}

// runConfig reads tether run's flags.
func runConfig(c *cli.Context) (daemon.Config, error) {
	if _, err := args(c); err != nil {
		return daemon.Config{}, err
	}
	mode, err := loader.ParseMode(c.String("mode"))
	if err != nil {
		return daemon.Config{}, err
	}
	opts, err := loaderOptions(c)
	if err != nil {
		return daemon.Config{}, err
	}
	gid, err := socketGroup(c.String("socket-group"))
	if err != nil {
		return daemon.Config{}, err
	}
	if c.IsSet("config") && c.String("config") == "" {
		return daemon.Config{}, errors.New("--config is empty, expected the path of a YAML file")
	}
	return daemon.Config{
		Interface:       c.String("iface"),
		Mode:            mode,
		ConfigFile:      c.String("config"),
		StateDir:        c.String("state-dir"),
		Socket:          c.String(socketFlag),
		SocketGID:       gid,
		MetricsAddr:     c.String("metrics-addr"),
		BPFFS:           c.String("bpffs"),
		Loader:          opts,
		WatchdogTimeout: c.Duration("watchdog-timeout"),
		CheckWorkers:    c.Int("check-workers"),
		DiscardPinned:   c.Bool("discard-pinned"),
	}, nil
}
