package bench

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/tether-lb/tether/test/testenv"
)

// nsPrefix starts the name of every network namespace the benchmark makes.
const nsPrefix = "tether-bn-"

// lab owns what a part of the benchmark sets up (namespaces, processes,
// programs, mounts) and takes it down in reverse order, also when the part
// fails half way.
type lab struct {
	undo []undoStep
	// prefix replaces nsPrefix, for tests that run beside a benchmark.
	prefix string
}

type undoStep struct {
	what string
	fn   func() error
}

// onTeardown registers fn to run at teardown, before everything registered
// earlier.
func (l *lab) onTeardown(what string, fn func() error) {
	l.undo = append(l.undo, undoStep{what, fn})
}

// teardown undoes every step, newest first, and reports every failure.
func (l *lab) teardown() error {
	var errs []error
	for i := len(l.undo) - 1; i >= 0; i-- {
		if err := l.undo[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l.undo[i].what, err))
		}
	}
	l.undo = nil
	return errors.Join(errs...)
}

// netns creates the namespace tether-bn-<name> (or the lab's prefix and
// name) with loopback up.
func (l *lab) netns(name string) (*testenv.Netns, error) {
	full := cmp.Or(l.prefix, nsPrefix) + name
	_ = testenv.Run("ip", "netns", "del", full) // left over from a killed run
	if err := testenv.Run("ip", "netns", "add", full); err != nil {
		return nil, err
	}
	h, err := netns.GetFromName(full)
	if err != nil {
		_ = testenv.Run("ip", "netns", "del", full)
		return nil, fmt.Errorf("opening netns %s: %w", full, err)
	}
	l.onTeardown("deleting netns "+full, func() error {
		h.Close()
		return testenv.Run("ip", "netns", "del", full)
	})
	ns := &testenv.Netns{Name: full, Handle: h}
	if err := ns.Exec("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return ns, nil
}

// removeLeftoverNamespaces deletes tether-bn-* namespaces a killed run left.
func removeLeftoverNamespaces() error {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing /run/netns: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			errs = append(errs, testenv.Run("ip", "netns", "del", e.Name()))
		}
	}
	return errors.Join(errs...)
}

// execAll runs each command in ns, stopping at the first failure.
func execAll(ns *testenv.Netns, commands ...string) error {
	for _, c := range commands {
		f := strings.Fields(c)
		if err := ns.Exec(f[0], f[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// output runs a command inside ns and returns its standard output.
func output(ns *testenv.Netns, name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns.Name, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// process is a long-running command the lab started.
type process struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

// start runs a long-lived command, inside ns unless ns is nil. It runs in
// its own process group, so a Ctrl-C reaches the benchmark first and the
// teardown stops it in order; it dies with the benchmark if that is killed.
func (l *lab) start(ns *testenv.Netns, name string, args ...string) (*process, error) {
	if ns != nil {
		args = append([]string{"netns", "exec", ns.Name, name}, args...)
		name = "ip"
	}
	p := &process{cmd: exec.Command(name, args...), log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	l.onTeardown("stopping "+name+" "+strings.Join(args, " "), p.stop)
	return p, nil
}

// pid is the process id; ip netns exec execs the command in place.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after 5 s.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// interfaceIn returns an interface of ns by name.
func interfaceIn(ns *testenv.Netns, name string) (*net.Interface, error) {
	var iface *net.Interface
	err := ns.Do(func() error {
		var err error
		iface, err = net.InterfaceByName(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("looking up %s: %w", name, err)
	}
	return iface, nil
}
