// Package testenv holds what the datapath and netns tests share: the check
// that BPF is usable here, and running code inside a fresh network namespace.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netns"
)

// RequireBPF skips the test on machines where BPF programs cannot be loaded
// (not root, no BPF syscall), saying why. With TETHER_REQUIRE_BPF=1, as in
// CI, it fails instead: there a skip would hide a broken test.
func RequireBPF(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "needs root to load BPF programs"
	} else if err := rlimit.RemoveMemlock(); err != nil {
		reason = fmt.Sprintf("cannot lift the memlock limit for BPF maps: %v", err)
	}
	if reason == "" {
		return
	}
	if os.Getenv("TETHER_REQUIRE_BPF") == "1" {
		t.Fatalf("TETHER_REQUIRE_BPF=1 but this machine cannot run BPF tests: %s", reason)
	}
	t.Skipf("skipping: %s (set TETHER_REQUIRE_BPF=1 to make this an error)", reason)
}

// InNetns runs fn on a thread moved into the network namespace ns, and
// moves the thread back afterwards.
func InNetns(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("getting current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Stay locked: the thread is in the wrong namespace and must not
		// run other goroutines; it ends with this goroutine.
		return fmt.Errorf("returning from netns: %w", err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Run runs a command and returns its error with the command's output.
func Run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PrivateBPFFS mounts a bpffs of the test's own in a temporary directory
// and unmounts it when the test ends.
func PrivateBPFFS(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Run("mount", "-t", "bpf", "bpf", dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Run("umount", dir); err != nil {
			t.Errorf("unmounting the test's bpffs: %v", err)
		}
	})
	return dir
}

// Netns is a named network namespace made by a test.
type Netns struct {
	Name   string
	Handle netns.NsHandle
}

// NewNetns creates the named namespace (ip netns add) and deletes it when
// the test ends, even on failure.
func NewNetns(t testing.TB, name string) *Netns {
	t.Helper()
	_ = Run("ip", "netns", "del", name) // left over from a killed run
	if err := Run("ip", "netns", "add", name); err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = Run("ip", "netns", "del", name)
		t.Fatalf("opening netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		h.Close()
		if err := Run("ip", "netns", "del", name); err != nil {
			t.Errorf("deleting netns: %v", err)
		}
	})
	return &Netns{Name: name, Handle: h}
}

// Exec runs a command inside the namespace. ip netns exec is fine here: it
// hides /sys/fs/bpf, which these commands do not need.
func (n *Netns) Exec(name string, args ...string) error {
	return Run("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// MustExec runs commands inside the namespace and fails the test on error.
func (n *Netns) MustExec(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		f := strings.Fields(c)
		if err := n.Exec(f[0], f[1:]...); err != nil {
			t.Fatal(err)
		}
	}
}

// Do runs fn on a thread inside the namespace.
func (n *Netns) Do(fn func() error) error {
	if err := InNetns(n.Handle, fn); err != nil {
		return fmt.Errorf("in netns %s: %w", n.Name, err)
	}
	return nil
}
