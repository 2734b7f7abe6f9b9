package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/userspace/control"
)

// The connection bench: real HTTP requests from wrk, through tether (L2
// direct server return), through nginx's stream module (hash $remote_addr
// consistent, a proxy in user space), and straight to a backend.
//
//	tether-bn-client  198.18.0.10  wrk; VIP route via the LB
//	tether-bn-lb      198.18.0.2   the tether daemon, XDP native on eth0
//	tether-bn-fwd     198.18.0.6   a minimal XDP L2 forwarder in tether's place
//	tether-bn-nginx   198.18.0.5   nginx stream proxy on :80
//	tether-bn-b1, b2  198.18.0.3-4 nginx HTTP on :80, VIPs 198.18.1.1-2 on lo
//	tether-bn-sw      br0 joining them all
//
// Replies from the backends go straight to the client with tether, the
// forwarder and no balancer, and back through nginx with nginx. The
// forwarder (VIP 198.18.1.2) sends everything to b1 with the least work an
// XDP program can do; it shows what the veth path itself costs.

// Setups as the report names them.
const (
	setupTether = "tether (L2 DSR, XDP native)"
	setupNginx  = "nginx stream, hash $remote_addr consistent"
	setupFloor  = "XDP L2 forwarder floor (MAC rewrite, XDP_TX)"
	setupDirect = "direct to the backend"
)

// Request modes.
const (
	modeKeepAlive = "keep-alive"
	modeNewConn   = "new connection per request"
)

// The connection bench's addresses.
const (
	connVIP      = "198.18.1.1"
	connFloorVIP = "198.18.1.2"
	connLB       = "198.18.0.2"
	connNginx    = "198.18.0.5"
	connFloor    = "198.18.0.6"
	connClient   = "198.18.0.10"
)

var connBackend = []string{"198.18.0.3", "198.18.0.4"}

// ConnConfig sizes the connection bench.
type ConnConfig struct {
	TetherBinary string
	Duration     time.Duration // of one wrk run
	Connections  int           // wrk -c
	Rounds       int
}

// ConnRow is one setup in one request mode, medians over rounds.
type ConnRow struct {
	Setup, Mode       string
	RequestsPerSec    float64
	Low, High         float64
	BalancerCPUus     float64 // balancer CPU per request in µs; 0 for direct
	PacketsPerRequest float64 // packets the balancer forwarded per request (tether)
	Errors            int     // wrk socket errors and non-2xx responses, all rounds
}

// ConnResults are the connection measurements.
type ConnResults struct {
	Rows        []ConnRow
	Config      ConnConfig
	AttachMode  string
	NginxWorker int
}

// Row returns a measured row.
func (r *ConnResults) Row(setup, mode string) (ConnRow, bool) {
	for _, row := range r.Rows {
		if row.Setup == setup && row.Mode == mode {
			return row, true
		}
	}
	return ConnRow{}, false
}

type connBed struct {
	dir           string
	client        *testenv.Netns
	socket, bpffs string
	tetherBinary  string
	daemon        *process
	program       *ebpf.Program // tether's, for its run time
	counters      *ebpf.Map     // tether's, for the packets it forwarded
	nginxPIDs     []int         // the balancer's master and workers
	attachMode    string
}

// measureConnections builds the network, starts the backends, tether and
// nginx, and runs wrk against each setup round-robin.
func measureConnections(ctx context.Context, l *lab, cfg ConnConfig, progress io.Writer) (*ConnResults, error) {
	for _, tool := range []string{"wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (make bench installs it with apt-get): %w", tool, err)
		}
	}
	bed, err := newConnBed(l, cfg.TetherBinary)
	if err != nil {
		return nil, err
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enabling BPF run time statistics: %w", err)
	}
	defer stats.Close()

	targets := []struct{ setup, url string }{
		{setupTether, "http://" + connVIP + "/"},
		{setupNginx, "http://" + connNginx + "/"},
		{setupFloor, "http://" + connFloorVIP + "/"},
		{setupDirect, "http://" + connBackend[0] + "/"},
	}
	modes := []string{modeKeepAlive, modeNewConn}
	fmt.Fprintln(progress, "connections: warming up every path")
	for _, t := range targets {
		if _, err := bed.wrk(t.url, modeNewConn, time.Second, cfg.Connections); err != nil {
			return nil, fmt.Errorf("warming up %s: %w", t.setup, err)
		}
	}
	rate, cpu, packets := samples{}, samples{}, samples{}
	errorsSeen := map[string]int{}
	for round := range cfg.Rounds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "connections round %d/%d\n", round+1, cfg.Rounds)
		for _, t := range targets {
			for _, mode := range modes {
				k := t.setup + "/" + mode
				before, err := bed.balancerUsage(t.setup)
				if err != nil {
					return nil, err
				}
				run, err := bed.wrk(t.url, mode, cfg.Duration, cfg.Connections)
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", t.setup, mode, err)
				}
				after, err := bed.balancerUsage(t.setup)
				if err != nil {
					return nil, err
				}
				if run.requests == 0 {
					return nil, fmt.Errorf("%s, %s: wrk completed no request", t.setup, mode)
				}
				rate.add(k, run.perSecond)
				cpu.add(k, float64((after.cpu-before.cpu).Nanoseconds())/1e3/float64(run.requests))
				packets.add(k, float64(after.packets-before.packets)/float64(run.requests))
				errorsSeen[k] += run.errors
			}
		}
	}
	results := &ConnResults{Config: cfg, AttachMode: bed.attachMode, NginxWorker: len(bed.nginxPIDs) - 1}
	for _, t := range targets {
		for _, mode := range modes {
			k := t.setup + "/" + mode
			low, high := rate.spread(k)
			row := ConnRow{Setup: t.setup, Mode: mode, RequestsPerSec: rate.median(k), Low: low, High: high, Errors: errorsSeen[k]}
			if t.setup == setupTether || t.setup == setupNginx {
				row.BalancerCPUus = cpu.median(k)
			}
			if t.setup == setupTether {
				row.PacketsPerRequest = packets.median(k)
			}
			results.Rows = append(results.Rows, row)
		}
	}
	return results, nil
}

func newConnBed(l *lab, tetherBinary string) (*connBed, error) {
	dir, err := os.MkdirTemp("", "tether-bench-")
	if err != nil {
		return nil, fmt.Errorf("creating work directory: %w", err)
	}
	l.onTeardown("removing "+dir, func() error { return os.RemoveAll(dir) })
	bed := &connBed{dir: dir, tetherBinary: tetherBinary, socket: filepath.Join(dir, "tether.sock"), bpffs: filepath.Join(dir, "bpffs")}

	sw, err := l.netns("sw")
	if err != nil {
		return nil, err
	}
	if err := execAll(sw, "ip link add br0 type bridge", "ip link set br0 up"); err != nil {
		return nil, err
	}
	hosts := []struct{ name, addr string }{
		{"client", connClient}, {"lb", connLB}, {"nginx", connNginx}, {"fwd", connFloor},
		{"b1", connBackend[0]}, {"b2", connBackend[1]},
	}
	nodes := map[string]*testenv.Netns{}
	for _, h := range hosts {
		ns, err := l.netns(h.name)
		if err != nil {
			return nil, err
		}
		nodes[h.name] = ns
		port := "bn-" + h.name
		if err := testenv.Run("ip", "link", "add", port, "netns", sw.Name, "type", "veth", "peer", "name", "eth0", "netns", ns.Name); err != nil {
			return nil, err
		}
		if err := execAll(sw, "ip link set "+port+" master br0", "ip link set "+port+" up"); err != nil {
			return nil, err
		}
		if err := execAll(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1", "ip addr add "+h.addr+"/24 dev eth0", "ip link set eth0 up"); err != nil {
			return nil, err
		}
	}
	bed.client = nodes["client"]
	// The client reaches the VIP through the LB. Frames the LB bounces with
	// XDP_TX lose the veth's checksum offload state, so the client computes
	// checksums itself; wide port range and port reuse for new-connection
	// runs.
	if err := execAll(bed.client,
		"ip route add "+connVIP+"/32 via "+connLB,
		"ip route add "+connFloorVIP+"/32 via "+connFloor,
		"ethtool -K eth0 tx off",
		"sysctl -qw net.ipv4.tcp_tw_reuse=1"); err != nil {
		return nil, err
	}
	for _, name := range []string{"client", "nginx"} {
		if err := nodes[name].Exec("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"); err != nil {
			return nil, err
		}
	}
	for i, name := range []string{"b1", "b2"} {
		if err := execAll(nodes[name],
			"ip addr add "+connVIP+"/32 dev lo",
			"ip addr add "+connFloorVIP+"/32 dev lo",
			"sysctl -qw net.ipv4.conf.all.arp_ignore=1",
			"sysctl -qw net.ipv4.conf.all.arp_announce=2"); err != nil {
			return nil, err
		}
		if _, err := bed.startNginx(l, nodes[name], fmt.Sprintf("backend%d", i+1), backendNginxConf); err != nil {
			return nil, err
		}
	}
	// A veth passes on frames its peer sends with XDP_TX only when it runs
	// an XDP program itself.
	pass, err := newPassProgram()
	if err != nil {
		return nil, err
	}
	l.onTeardown("closing the XDP_PASS program", pass.Close)
	for _, port := range []string{"bn-lb", "bn-fwd"} {
		iface, err := interfaceIn(sw, port)
		if err != nil {
			return nil, err
		}
		passLink, err := attachIn(sw, pass, iface.Index, loader.ModeNative)
		if err != nil {
			return nil, err
		}
		l.onTeardown("detaching XDP_PASS from "+port, passLink.Close)
	}
	if err := startForwarderFloor(l, nodes["fwd"], nodes["b1"]); err != nil {
		return nil, err
	}
	if err := bed.startTether(l, nodes["lb"]); err != nil {
		return nil, err
	}
	if bed.nginxPIDs, err = bed.startNginx(l, nodes["nginx"], "balancer", balancerNginxConf); err != nil {
		return nil, err
	}
	for _, addr := range append([]string{connNginx, connVIP, connFloorVIP}, connBackend...) {
		if err := waitForHTTP(bed.client, addr); err != nil {
			return nil, err
		}
	}
	return bed, nil
}

// startForwarderFloor attaches the minimal L2 forwarder to fwd's eth0,
// sending every IPv4 frame to the backend's eth0.
func startForwarderFloor(l *lab, fwd, backend *testenv.Netns) error {
	self, err := interfaceIn(fwd, "eth0")
	if err != nil {
		return err
	}
	target, err := interfaceIn(backend, "eth0")
	if err != nil {
		return err
	}
	prog, err := newL2ForwarderFloor(target.HardwareAddr, self.HardwareAddr)
	if err != nil {
		return err
	}
	l.onTeardown("closing the L2 forwarder floor", prog.Close)
	attached, err := attachIn(fwd, prog, self.Index, loader.ModeNative)
	if err != nil {
		return err
	}
	l.onTeardown("detaching the L2 forwarder floor", attached.Close)
	return nil
}

const backendNginxConf = `worker_processes 1;
events { worker_connections 16384; }
http {
	access_log off;
	keepalive_requests 1000000;
	keepalive_timeout 60s;
	server {
		listen 80 backlog=4096;
		location / { return 200 "ok\n"; }
	}
}
`

const balancerNginxConf = `load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
stream {
	upstream backends {
		hash $remote_addr consistent;
		server 198.18.0.3:80;
		server 198.18.0.4:80;
	}
	server {
		listen 198.18.0.5:80 backlog=4096 reuseport;
		proxy_pass backends;
	}
}
`

// startNginx runs nginx in ns with conf, its files under a directory of
// its own, and returns the pids of its master and workers.
func (bed *connBed) startNginx(l *lab, ns *testenv.Netns, name, conf string) ([]int, error) {
	dir := filepath.Join(bed.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	// Every path nginx writes goes under dir: pid, log and the temp paths
	// the http module opens even when nothing is buffered.
	files := fmt.Sprintf("pid %[1]s/nginx.pid;\nerror_log %[1]s/error.log warn;\n", dir)
	if strings.Contains(conf, "http {") {
		temp := ""
		for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
			temp += fmt.Sprintf("\t%s_temp_path %s/%s;\n", kind, dir, kind)
		}
		conf = strings.Replace(conf, "http {\n", "http {\n"+temp, 1)
	}
	if strings.HasPrefix(conf, "load_module") {
		if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err != nil {
			return nil, fmt.Errorf("nginx stream module missing (Debian package libnginx-mod-stream): %w", err)
		}
		first, rest, _ := strings.Cut(conf, "\n")
		conf = first + "\n" + files + rest
	} else {
		conf = files + conf
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	p, err := l.start(ns, "nginx", "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		workers := childrenOf(p.pid())
		if len(workers) > 0 {
			return append([]int{p.pid()}, workers...), nil
		}
		if p.exited() || time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx %s did not start its workers: %s %s", name, p.log.String(), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var children []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command, which may contain spaces: state ppid ...
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			children = append(children, child)
		}
	}
	return children
}

// startTether runs the real daemon in the LB namespace with a private
// bpffs, adds the VIP and both backends and waits until they are up.
func (bed *connBed) startTether(l *lab, lb *testenv.Netns) error {
	if err := os.Mkdir(bed.bpffs, 0o700); err != nil {
		return fmt.Errorf("creating bpffs mount point: %w", err)
	}
	if err := testenv.Run("mount", "-t", "bpf", "bpf", bed.bpffs); err != nil {
		return err
	}
	l.onTeardown("unmounting the bench bpffs", func() error { return testenv.Run("umount", bed.bpffs) })
	// Registered before the daemon starts, so it runs after the daemon
	// stopped: detach removes the link and every pin.
	l.onTeardown("detaching tether", func() error {
		return testenv.Run("nsenter", "--net=/run/netns/"+lb.Name, bed.tetherBinary, "detach", "--iface", "eth0", "--bpffs", bed.bpffs)
	})
	// nsenter --net keeps this mount namespace, where the bpffs is.
	daemon, err := l.start(nil, "nsenter", "--net=/run/netns/"+lb.Name, bed.tetherBinary, "--socket", bed.socket, "run",
		"--iface", "eth0", "--mode", "native", "--bpffs", bed.bpffs, "--state-dir", filepath.Join(bed.dir, "state"))
	if err != nil {
		return err
	}
	bed.daemon = daemon
	var status control.Status
	if err := bed.waitFor("the tether daemon to answer", func() (bool, error) {
		var err error
		status, err = bed.status()
		return err == nil, nil
	}); err != nil {
		return err
	}
	vip := connVIP + ":80"
	if err := bed.tether("vip", "add", vip); err != nil {
		return err
	}
	for i, addr := range connBackend {
		if err := bed.tether("backend", "add", "--vip", vip, fmt.Sprintf("b%d", i+1), addr); err != nil {
			return err
		}
	}
	if err := bed.waitFor("both backends to be up with a MAC", func() (bool, error) {
		var err error
		if status, err = bed.status(); err != nil {
			return false, err
		}
		up := 0
		for _, v := range status.VIPs {
			for _, b := range v.Backends {
				if b.State == "up" && b.MACInUse != "" {
					up++
				}
			}
		}
		return up == len(connBackend), nil
	}); err != nil {
		return err
	}
	bed.attachMode = status.Mode
	if bed.program, err = ebpf.NewProgramFromID(ebpf.ProgramID(status.ProgramID)); err != nil {
		return fmt.Errorf("opening tether's program by id: %w", err)
	}
	l.onTeardown("closing tether's program", bed.program.Close)
	if bed.counters, err = mapOfProgram(bed.program, loader.TetherMapCounters); err != nil {
		return err
	}
	l.onTeardown("closing tether's counters", bed.counters.Close)
	return nil
}

// mapOfProgram opens the map called name that prog uses.
func mapOfProgram(prog *ebpf.Program, name string) (*ebpf.Map, error) {
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("reading tether's program info: %w", err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("opening map %d of tether's program: %w", id, err)
		}
		if mi, err := m.Info(); err == nil && mi.Name == name {
			return m, nil
		}
		m.Close()
	}
	return nil, fmt.Errorf("tether's program uses no map called %s", name)
}

func (bed *connBed) tether(args ...string) error {
	return testenv.Run(bed.tetherBinary, append([]string{"--socket", bed.socket}, args...)...)
}

func (bed *connBed) status() (control.Status, error) {
	out, err := exec.Command(bed.tetherBinary, "--socket", bed.socket, "status", "-o", "json").Output()
	if err != nil {
		return control.Status{}, fmt.Errorf("tether status: %w", err)
	}
	var st control.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return control.Status{}, fmt.Errorf("parsing tether status: %w", err)
	}
	return st, nil
}

// waitFor polls cond for up to 30 s; the daemon's exit ends the wait.
func (bed *connBed) waitFor(what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if bed.daemon.exited() {
			return fmt.Errorf("tether run exited while waiting for %s: %s", what, bed.daemon.log.String())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s: %s", what, bed.daemon.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitForHTTP waits until an HTTP server answers on addr:80 from ns.
func waitForHTTP(ns *testenv.Netns, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ns.Do(func() error {
			conn, err := net.DialTimeout("tcp", addr+":80", time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
				return err
			}
			reply := make([]byte, 12)
			if _, err := io.ReadFull(conn, reply); err != nil {
				return err
			}
			if !strings.HasPrefix(string(reply), "HTTP/1.1 200") {
				return fmt.Errorf("unexpected reply %q", reply)
			}
			return nil
		})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no HTTP answer from %s:80: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// usage is the balancer's resource use so far.
type usage struct {
	cpu     time.Duration
	packets uint64 // forwarded by tether
}

// balancerUsage reads the CPU the setup's balancer has used: for tether the
// XDP program's run time (BPF statistics) plus the daemon's process, for
// nginx its master and worker processes.
func (bed *connBed) balancerUsage(setup string) (usage, error) {
	var u usage
	switch setup {
	case setupTether:
		stats, err := bed.program.Stats()
		if err != nil {
			return u, fmt.Errorf("reading tether's run time: %w", err)
		}
		daemon, err := processCPUTime(bed.daemon.pid())
		if err != nil {
			return u, err
		}
		u.cpu = stats.Runtime + daemon
		var perCPU []loader.TetherLbCounters
		if err := bed.counters.Lookup(uint32(0), &perCPU); err != nil {
			return u, fmt.Errorf("reading tether's counters: %w", err)
		}
		for _, c := range perCPU {
			u.packets += c.Packets[loader.TetherOutcomeOUTCOME_FORWARD_TX]
		}
	case setupNginx:
		for _, pid := range bed.nginxPIDs {
			t, err := processCPUTime(pid)
			if err != nil {
				return u, err
			}
			u.cpu += t
		}
	}
	return u, nil
}

// wrkRun is what one wrk run reported.
type wrkRun struct {
	requests  int
	perSecond float64
	errors    int
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkRate     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// wrk runs wrk with one thread from the client namespace.
func (bed *connBed) wrk(url, mode string, duration time.Duration, connections int) (wrkRun, error) {
	args := []string{"-t1", "-c" + strconv.Itoa(connections), "-d" + strconv.Itoa(int(duration.Seconds())) + "s", "--timeout", "2s"}
	if mode == modeNewConn {
		args = append(args, "-H", "Connection: close")
	}
	out, err := output(bed.client, "wrk", append(args, url)...)
	if err != nil {
		return wrkRun{}, err
	}
	var run wrkRun
	requests, rate := wrkRequests.FindStringSubmatch(out), wrkRate.FindStringSubmatch(out)
	if requests == nil || rate == nil {
		return wrkRun{}, errors.New("cannot read wrk's output: " + out)
	}
	run.requests, _ = strconv.Atoi(requests[1])
	run.perSecond, _ = strconv.ParseFloat(rate[1], 64)
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for _, n := range m[1:] {
			count, _ := strconv.Atoi(n)
			run.errors += count
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		count, _ := strconv.Atoi(m[1])
		run.errors += count
	}
	return run, nil
}
