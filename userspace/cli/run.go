package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/maps"
	"github.com/tether-lb/tether/userspace/control"
	"github.com/tether-lb/tether/userspace/health"
	"github.com/tether-lb/tether/userspace/metrics"
	"github.com/tether-lb/tether/userspace/neigh"
)

const defaultStateDir = "/var/lib/tether"

func runCommand() *cli.Command {
	defaults := loader.DefaultOptions()
	return &cli.Command{
		Name:  "run",
		Usage: "run the daemon in the foreground (SIGTERM stops it and leaves forwarding in place)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "iface", Required: true, Usage: "interface to attach the XDP program to"},
			&cli.StringFlag{Name: "mode", Value: "native", Usage: "attach mode: native, generic or auto (native, else generic)"},
			&cli.StringFlag{Name: "config", Usage: "YAML file declaring VIPs and backends (re-read on SIGHUP)"},
			&cli.StringFlag{Name: "state-dir", Value: defaultStateDir, Usage: "where the desired state is saved"},
			&cli.StringFlag{Name: "socket-group", Usage: "group allowed to use the control socket besides root"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve /metrics and /healthz on ADDR:PORT"},
			&cli.StringFlag{Name: "bpffs", Value: loader.DefaultBPFFS, Usage: "bpffs mount point for pins (mounted if missing)"},
			&cli.UintFlag{Name: "max-vips", Value: uint(defaults.MaxVIPs), Usage: "VIP capacity (fixed when the maps are first created)"},
			&cli.UintFlag{Name: "max-backends", Value: uint(defaults.MaxBackends), Usage: "backend capacity (fixed when the maps are first created)"},
			&cli.UintFlag{Name: "max-table-size", Value: uint(defaults.TableStride), Usage: "largest Maglev table size"},
			&cli.UintFlag{Name: "affinity-capacity", Value: uint(defaults.AffinityCapacity), Usage: "clients the affinity table is sized for (about 1% of them find their bucket full at that load; it holds up to 3x as many, evicting more)"},
			&cli.DurationFlag{Name: "watchdog-timeout", Usage: "pass all traffic to the stack if the daemon is silent this long (0: never)"},
			&cli.IntFlag{Name: "check-workers", Value: 32, Usage: "health checks in flight at most"},
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

func run(c *cli.Context) error {
	started := time.Now()
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))
	// Signals are caught from the start: a SIGHUP during start-up waits
	// for the loop below instead of killing the daemon.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if _, err := args(c); err != nil {
		return err
	}
	mode, err := loader.ParseMode(c.String("mode"))
	if err != nil {
		return err
	}
	opts, err := loaderOptions(c)
	if err != nil {
		return err
	}
	gid, err := socketGroup(c.String("socket-group"))
	if err != nil {
		return err
	}
	ifaceName := c.String("iface")
	iface, err := net.InterfaceByName(ifaceName)
	if err != nil {
		return fmt.Errorf("interface %q: %w", ifaceName, err)
	}
	if c.Duration("watchdog-timeout") < 0 {
		return fmt.Errorf("watchdog timeout %s is negative, expected 0 (off) or a duration such as 30s", c.Duration("watchdog-timeout"))
	}
	if c.Int("check-workers") < 1 {
		return fmt.Errorf("check workers %d is out of range, expected at least 1", c.Int("check-workers"))
	}
	var metricsListener net.Listener
	if addr := c.String("metrics-addr"); addr != "" {
		if metricsListener, err = listenMetrics(addr); err != nil {
			return err
		}
		defer metricsListener.Close()
	}
	missing, err := missingCapabilities()
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("tether run lacks %s: it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run as root or grant them; see deploy/tether.service)", strings.Join(missing, " and "))
	}

	release, err := control.LockStateDir(c.String("state-dir"))
	if err != nil {
		return err
	}
	defer release()
	statePath := filepath.Join(c.String("state-dir"), "state.json")
	state, found, err := control.LoadState(statePath)
	if err != nil {
		return err
	}
	if c.IsSet("config") {
		if state, err = control.MergeConfigFile(state, c.String("config")); err != nil {
			return err
		}
	}

	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("lifting the memlock limit for BPF maps: %w", err)
	}
	mounted, err := loader.EnsureBPFFS(c.String("bpffs"))
	if err != nil {
		return err
	}
	if mounted {
		log.Info("no bpffs was mounted: mounted one", "path", c.String("bpffs"))
	}

	pinDir := loader.PinDir(c.String("bpffs"), ifaceName)
	dp, adopted, err := loader.Open(pinDir, opts)
	if err != nil {
		return err
	}
	defer dp.Close()
	if adopted {
		log.Info("adopted pinned maps: forwarding state kept", "pins", pinDir)
	}
	m, err := maps.NewKernel(&dp.Maps, maps.LimitsOf(dp.Options))
	if err != nil {
		return err
	}
	defer m.Close()

	var daemon *control.Daemon
	checker := health.NewScheduler(c.Int("check-workers"), func(r health.Result) { daemon.HealthResult(r) })
	observer := &lateObserver{}
	daemon, err = control.New(control.Options{
		Maps: m, Resolver: neighResolver{}, Checker: checker, StatePath: statePath,
		IngressIfindex: iface.Index, Log: log, Observer: observer,
	}, state)
	if err != nil {
		return err
	}
	if !found && adopted {
		log.Warn("no state file but pinned maps exist: entries the state does not know will be removed", "state", statePath)
	}
	if err := daemon.Start(ctx); err != nil {
		return fmt.Errorf("writing the desired state into the datapath: %w", err)
	}
	if err := daemon.SetWatchdogTimeout(c.Duration("watchdog-timeout")); err != nil {
		return err
	}
	attachment, err := dp.AttachPinned(pinDir, iface.Index, mode)
	if err != nil {
		return err
	}
	progInfo, err := dp.Program.Info()
	if err != nil {
		return fmt.Errorf("reading program info: %w", err)
	}
	progID, _ := progInfo.ID()
	daemon.SetDatapathInfo(control.DatapathInfo{Interface: ifaceName, Mode: attachment.Mode.String(), ProgramID: uint32(progID), PinDir: pinDir})
	log.Info("XDP program attached", "iface", ifaceName, "mode", attachment.Mode.String(), "program_id", progID, "replaced_running_program", attachment.Replaced)

	server := control.NewServer(daemon, log, gid)
	ln, err := server.Listen(c.String(socketFlag))
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	spawn := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- err
			}
		}()
	}
	spawn(func() error { return server.Serve(ctx, ln) })
	spawn(func() error { checker.Run(ctx); return nil })
	spawn(func() error { daemon.Maintain(ctx, time.Second); return nil })
	spawn(func() error { daemon.Heartbeat(ctx, time.Second); return nil })
	spawn(func() error { return watchNeighbours(ctx, daemon, log) })
	spawn(func() error {
		return watchInterface(ctx, ifaceName, iface.Index, func(ifindex int) error {
			attachment, err := dp.AttachPinned(pinDir, ifindex, mode)
			if err == nil {
				daemon.SetDatapathInfo(control.DatapathInfo{Interface: ifaceName, Mode: attachment.Mode.String(), ProgramID: uint32(progID), PinDir: pinDir})
			}
			return err
		}, daemon, log)
	})
	if metricsListener != nil {
		registry := metrics.New(m, daemon, log, dp.Options.AffinityCapacity, started)
		observer.set(registry)
		spawn(func() error { return serveMetrics(ctx, metricsListener, registry.Registry()) })
	}
	log.Info("tether running", "socket", c.String(socketFlag), "state", statePath)

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-errs:
			runErr = err
			stop()
			break loop
		case <-hup:
			if !c.IsSet("config") {
				log.Info("SIGHUP without --config: nothing to re-read")
				continue
			}
			if err := daemon.ReloadConfig(ctx, c.String("config")); err != nil {
				log.Error("re-reading config: keeping the current state", "error", err)
			} else {
				log.Info("config re-read", "path", c.String("config"))
			}
		}
	}
	wg.Wait()
	log.Info("tether stopped; the XDP program keeps forwarding (tether detach removes it)")
	return runErr
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

// lateObserver passes daemon events to the metrics registry once it
// exists; before that (and without --metrics-addr) they are dropped.
type lateObserver struct {
	mu       sync.Mutex
	registry *metrics.Metrics
}

func (o *lateObserver) set(registry *metrics.Metrics) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.registry = registry
}

func (o *lateObserver) get() *metrics.Metrics {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.registry
}

func (o *lateObserver) TableBuilt(vip string, took time.Duration) {
	if r := o.get(); r != nil {
		r.TableBuilt(vip, took)
	}
}

func (o *lateObserver) HealthChecked(vip, backend string, healthy bool, latency time.Duration) {
	if r := o.get(); r != nil {
		r.HealthChecked(vip, backend, healthy, latency)
	}
}

func listenMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	return ln, nil
}

func serveMetrics(ctx context.Context, ln net.Listener, registry *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = server.Close()
	}()
	if err := server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving metrics: %w", err)
	}
	return nil
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:  "detach",
		Usage: "remove the XDP program, its link and all pins from an interface (stop the daemon first)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "iface", Required: true, Usage: "interface tether is attached to"},
			&cli.StringFlag{Name: "bpffs", Value: loader.DefaultBPFFS, Usage: "bpffs mount point of the pins"},
		},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			// Any daemon that accepts a connection is running, even one that
			// would refuse this caller or is too busy to answer.
			if conn, err := net.DialTimeout("unix", c.String(socketFlag), time.Second); err == nil {
				conn.Close()
				return errors.New("the tether daemon is running: stop it first (SIGTERM), then detach")
			}
			dir := loader.PinDir(c.String("bpffs"), c.String("iface"))
			if err := loader.Detach(dir); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "detached tether from %s and removed %s\n", c.String("iface"), dir)
			return nil
		},
	}
}
