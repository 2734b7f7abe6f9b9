// Package e2e runs tether end to end: real Socket.IO 4 nodes (npm
// socket.io) in backend namespaces, the real tether daemon in the load
// balancer's namespace, and real socket.io-client clients forced to HTTP
// long-polling from many source addresses.
package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/test/tetherd"
	"github.com/tether-lb/tether/test/topology"
)

const (
	nodePort    = 3000
	clientCount = 200
	// The first addresses carry the long-running clients; the rest are
	// fresh addresses for clients that arrive after a change.
	steadyAddrs = 64
	freshAddrs  = 32
)

var (
	tetherBinary string
	nodeDir      string // test/e2e/node, with node_modules from npm ci
)

func TestMain(m *testing.M) {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	nodeDir = filepath.Join(wd, "node")
	tetherd.Main(m, &tetherBinary)
}

// requireNode skips without root and BPF, and fails when the npm packages
// are missing (make test installs them with npm ci).
func requireNode(t *testing.T) {
	testenv.RequireBPF(t)
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "socket.io")); err != nil {
		t.Fatalf("socket.io is not installed in %s: run npm ci there (make test does)", nodeDir)
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("node is not installed")
	}
}

// cluster is the network, tether in front, and one Socket.IO node per
// backend namespace.
type cluster struct {
	t          *testing.T
	net        *topology.Network
	tether     *tetherd.Daemon
	ipv6       bool
	transports string
	nodes      map[string]*exec.Cmd
}

type clusterOptions struct {
	prefix     string
	backends   int // namespaces with a running node; the first `inTether` are added to tether
	inTether   int
	ipv6       bool
	transports string
	vipFlags   []string
}

func newCluster(t *testing.T, opts clusterOptions) *cluster {
	return newClusterWith(t, opts)
}

// newClusterWith is newCluster with extra flags for tether run.
func newClusterWith(t *testing.T, opts clusterOptions, runFlags ...string) *cluster {
	requireNode(t)
	if opts.transports == "" {
		opts.transports = "polling"
	}
	c := &cluster{
		t:          t,
		net:        topology.New(t, topology.Options{Prefix: opts.prefix, Backends: opts.backends, ClientCount: steadyAddrs + freshAddrs}),
		ipv6:       opts.ipv6,
		transports: opts.transports,
		nodes:      map[string]*exec.Cmd{},
	}
	for i := range opts.backends {
		c.startNode(i)
	}
	c.tether = tetherd.New(t, tetherBinary, c.net.LB)
	c.tether.Start(runFlags...)
	args := append([]string{"vip", "add", c.vip(), "--check", "engineio", "--check-interval", "1s",
		"--check-timeout", "500ms", "--check-rise", "1", "--check-fall", "2"}, opts.vipFlags...)
	c.tether.Must(args...)
	for i := range opts.inTether {
		c.addBackend(i)
	}
	return c
}

func nodeName(i int) string { return fmt.Sprintf("node%d", i+1) }

func (c *cluster) vipAddr() netip.Addr {
	if c.ipv6 {
		return topology.VIP6
	}
	return topology.VIP4
}

func (c *cluster) vip() string { return netip.AddrPortFrom(c.vipAddr(), nodePort).String() }

func (c *cluster) backendAddr(i int) netip.Addr {
	if c.ipv6 {
		return c.net.Backends[i].Addr6
	}
	return c.net.Backends[i].Addr4
}

func (c *cluster) clientAddrs() []netip.Addr {
	if c.ipv6 {
		return c.net.ClientAddrs6
	}
	return c.net.ClientAddrs4
}

func (c *cluster) addBackend(i int) {
	c.tether.Must("backend", "add", "--vip", c.vip(), nodeName(i), c.backendAddr(i).String())
}

// startNode runs server.js in backend i's namespace and waits until it
// answers.
func (c *cluster) startNode(i int) {
	name := nodeName(i)
	cmd := exec.Command("ip", "netns", "exec", c.net.Backends[i].Name, "node", filepath.Join(nodeDir, "server.js"))
	cmd.Env = append(os.Environ(), "NODE_NAME="+name, fmt.Sprintf("PORT=%d", nodePort), "TRANSPORTS="+c.transports)
	cmd.Dir = nodeDir
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.nodes[name] = cmd
	c.t.Cleanup(func() { c.stopNode(name) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := c.nodeStats(i); err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not start within 15s", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopNode kills a node's process, as a crash would.
func (c *cluster) stopNode(name string) {
	cmd := c.nodes[name]
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	delete(c.nodes, name)
}

// nodeStats is GET /stats of backend i, asked from the LB's namespace.
type nodeStats struct {
	Node           string `json:"node"`
	Connections    int    `json:"connections"`
	Handshakes     int    `json:"handshakes"`
	SessionUnknown int    `json:"sessionUnknown"`
	Open           int    `json:"open"`
	EngineSessions int    `json:"engineSessions"`
}

func (c *cluster) nodeStats(i int) (nodeStats, error) {
	var stats nodeStats
	err := c.net.LB.Do(func() error {
		// The socket is created on this thread, inside the namespace.
		conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(c.backendAddr(i), nodePort).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(conn, "GET /stats HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&stats)
	})
	return stats, err
}

// sessionUnknown sums the HTTP 400 "Session ID unknown" answers of the
// running nodes.
func (c *cluster) sessionUnknown() int {
	total := 0
	for i := range c.net.Backends {
		if c.nodes[nodeName(i)] == nil {
			continue
		}
		stats, err := c.nodeStats(i)
		if err != nil {
			c.t.Fatalf("reading %s's stats: %v", nodeName(i), err)
		}
		total += stats.SessionUnknown
	}
	return total
}

// totals is one line of client.js output.
type totals struct {
	Final         bool           `json:"final"`
	Clients       int            `json:"clients"`
	Connected     int            `json:"connected"`
	Acks          int            `json:"acks"`
	AckTimeouts   int            `json:"ackTimeouts"`
	ConnectErrors int            `json:"connectErrors"`
	Disconnects   int            `json:"disconnects"`
	Mismatches    int            `json:"mismatches"`
	Moved         int            `json:"moved"`
	PerNode       map[string]int `json:"perNode"`
	Detail        []clientDetail `json:"detail"`
}

type clientDetail struct {
	Addr          string   `json:"addr"`
	Nodes         []string `json:"nodes"`
	Acks          int      `json:"acks"`
	AckTimeouts   int      `json:"ackTimeouts"`
	ConnectErrors int      `json:"connectErrors"`
	Disconnects   int      `json:"disconnects"`
	Reasons       []string `json:"reasons"`
}

func (d clientDetail) errors() int { return d.AckTimeouts + d.ConnectErrors + d.Disconnects }

// clients is one client.js process.
type clients struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	latest totals
	final  *totals
	done   chan struct{}
}

// startClients runs n clients spread over addrs, for at most two minutes.
func (c *cluster) startClients(addrs []netip.Addr, n int) *clients {
	var list []string
	for _, a := range addrs {
		list = append(list, a.String())
	}
	url := "http://" + c.vip()
	cmd := exec.Command("ip", "netns", "exec", c.net.Client.Name, "node", filepath.Join(nodeDir, "client.js"),
		"--url", url, "--addrs", strings.Join(list, ","), "--clients", fmt.Sprint(n), "--duration", "120", "--transports", c.transports)
	cmd.Dir = nodeDir
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	cl := &clients{t: c.t, cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(cl.done)
		scanner := bufio.NewScanner(stdout)
		scanner.Buffer(make([]byte, 1<<20), 16<<20)
		for scanner.Scan() {
			var line totals
			if json.Unmarshal(scanner.Bytes(), &line) != nil {
				continue
			}
			cl.mu.Lock()
			if line.Final {
				cl.final = &line
			} else {
				cl.latest = line
			}
			cl.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	c.t.Cleanup(func() { _ = cmd.Process.Kill(); <-cl.done })
	return cl
}

func (cl *clients) now() totals {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.latest
}

// waitConnected waits until every client is connected.
func (cl *clients) waitConnected(timeout time.Duration) {
	cl.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		now := cl.now()
		if now.Clients > 0 && now.Connected == now.Clients {
			return
		}
		if time.Now().After(deadline) {
			cl.t.Fatalf("only %d of %d clients connected after %s", now.Connected, now.Clients, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop ends the clients and returns their final report.
func (cl *clients) stop() totals {
	cl.t.Helper()
	_ = cl.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cl.done:
	case <-time.After(20 * time.Second):
		cl.t.Fatal("client.js did not exit within 20s of SIGTERM")
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.final == nil {
		cl.t.Fatal("client.js exited without a final report")
	}
	return *cl.final
}

// requireUndisturbed fails for any client among those selected that saw
// an error or changed node.
func requireUndisturbed(t *testing.T, what string, final totals, selected func(clientDetail) bool) int {
	t.Helper()
	count := 0
	for _, d := range final.Detail {
		if !selected(d) {
			continue
		}
		count++
		if d.errors() != 0 || len(d.Nodes) != 1 || d.Acks == 0 {
			t.Fatalf("%s: client from %s was disturbed: nodes %v, %d acks, %d errors %v", what, d.Addr, d.Nodes, d.Acks, d.errors(), d.Reasons)
		}
	}
	return count
}

func all(clientDetail) bool { return true }

// firstNodes counts clients by the node they first reached.
func firstNodes(final totals) map[string]int {
	out := map[string]int{}
	for _, d := range final.Detail {
		if len(d.Nodes) > 0 {
			out[d.Nodes[0]]++
		}
	}
	return out
}

// summary prints the one-line summary of a scenario.
func summary(t *testing.T, scenario string, final totals, sessionUnknown int) {
	errors, moved := 0, 0
	for _, d := range final.Detail {
		errors += d.errors()
		if len(d.Nodes) > 1 {
			moved++
		}
	}
	t.Logf("e2e %s: %d sessions, %d acks, %d client errors, %d Session ID unknown, %d moved clients, nodes %v",
		scenario, final.Clients, final.Acks, errors, sessionUnknown, moved, final.PerNode)
}
