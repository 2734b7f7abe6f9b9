// Package tetherd runs the real tether binary for tests: the daemon inside
// the load balancer's network namespace, with a private bpffs, state
// directory and control socket, and CLI commands against it.
package tetherd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/tether-lb/tether/test/testenv"
	"github.com/tether-lb/tether/test/topology"
	"github.com/tether-lb/tether/userspace/control"
)

// Build compiles cmd/tether into dir and returns the binary's path.
func Build(dir string) (string, error) {
	binary := filepath.Join(dir, "tether")
	build := exec.Command("go", "build", "-o", binary, "github.com/tether-lb/tether/cmd/tether")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building tether: %w: %s", err, out)
	}
	return binary, nil
}

// Main builds the tether binary into a temporary directory, stores its path
// in binary, runs the package's tests and exits with their status.
func Main(m *testing.M, binary *string) {
	dir, err := os.MkdirTemp("", "tether-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*binary, err = Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Daemon is a tether daemon in the LB namespace.
type Daemon struct {
	t        testing.TB
	binary   string
	lb       *topology.Node
	BPFFS    string
	StateDir string
	Socket   string
	cmd      *exec.Cmd
	log      *syncBuffer
	done     chan struct{}
	// Wrapper runs before the binary inside the namespace, e.g. setpriv
	// to drop capabilities.
	Wrapper []string
}

// syncBuffer is a bytes.Buffer safe for the daemon's output goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// New prepares a daemon with a private bpffs mounted in a temporary
// directory; the test's cleanup kills it, detaches and unmounts.
func New(t testing.TB, binary string, lb *topology.Node) *Daemon {
	dir := t.TempDir()
	d := &Daemon{t: t, binary: binary, lb: lb, BPFFS: filepath.Join(dir, "bpffs"),
		StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "tether.sock"), log: &syncBuffer{}}
	if err := os.Mkdir(d.BPFFS, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Run("mount", "-t", "bpf", "bpf", d.BPFFS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Kill()
		_ = d.CLI("detach", "--iface", "eth0", "--bpffs", d.BPFFS)
		if err := testenv.Run("umount", d.BPFFS); err != nil {
			t.Errorf("unmounting test bpffs: %v", err)
		}
		if t.Failed() {
			t.Logf("tether daemon output:\n%s", d.log.String())
		}
	})
	return d
}

// Start runs `tether run` in the LB namespace and waits for its socket.
// nsenter --net keeps the test's mount namespace, where the bpffs is.
func (d *Daemon) Start(extra ...string) {
	d.t.Helper()
	args := append([]string{"--net=/run/netns/" + d.lb.Name}, d.Wrapper...)
	args = append(args, d.binary, "--socket", d.Socket, "run", "--iface", "eth0", "--bpffs", d.BPFFS, "--state-dir", d.StateDir)
	args = append(args, extra...)
	d.cmd = exec.Command("nsenter", args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(d.cmd, d.done)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.Status(); err == nil {
			return
		}
		select {
		case <-d.done:
			d.t.Fatalf("tether run exited early:\n%s", d.log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	d.t.Fatalf("tether run did not answer on its socket within 15s:\n%s", d.log.String())
}

// Signal sends sig and waits up to 10 s for the daemon to exit.
func (d *Daemon) Signal(sig syscall.Signal) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
}

// Kill stops the daemon with SIGKILL, as a crash would.
func (d *Daemon) Kill() { d.Signal(syscall.SIGKILL) }

// LB is the node the daemon runs on.
func (d *Daemon) LB() *topology.Node { return d.lb }

// Log returns what the daemon printed so far.
func (d *Daemon) Log() string { return d.log.String() }

// CLI runs a tether command against the daemon and returns its output.
func (d *Daemon) CLI(args ...string) error {
	_, err := d.Output(args...)
	return err
}

// Output runs a tether command and returns its combined output.
func (d *Daemon) Output(args ...string) (string, error) {
	out, err := exec.Command(d.binary, append([]string{"--socket", d.Socket}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tether %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Must runs a tether command and fails the test on error.
func (d *Daemon) Must(args ...string) {
	d.t.Helper()
	if err := d.CLI(args...); err != nil {
		d.t.Fatal(err)
	}
}

// Status returns `tether status -o json`.
func (d *Daemon) Status() (control.Status, error) {
	out, err := exec.Command(d.binary, "--socket", d.Socket, "status", "-o", "json").Output()
	if err != nil {
		return control.Status{}, err
	}
	var st control.Status
	return st, json.Unmarshal(out, &st)
}

// Scrape reads /metrics at addr from inside the LB's namespace.
func Scrape(lb *topology.Node, addr string) (map[string]*dto.MetricFamily, error) {
	var families map[string]*dto.MetricFamily
	err := lb.Do(func() error {
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nAccept: text/plain\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err = parser.TextToMetricFamilies(resp.Body)
		return err
	})
	return families, err
}

// Value returns the value of the sample of family with exactly labels, or
// -1 if there is none.
func Value(families map[string]*dto.MetricFamily, family string, labels map[string]string) float64 {
	f := families[family]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		}
	}
	return -1
}
