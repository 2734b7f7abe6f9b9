package netns

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/tether-lb/tether/loader"
	"github.com/tether-lb/tether/test/testenv"
)

// TestChangedMapLayoutIsAnError pins a vips map whose value size differs
// from this build's, as an older or newer tether would have left it: Open
// must refuse with ErrLayoutChanged and leave the pinned map alone.
func TestChangedMapLayoutIsAnError(t *testing.T) {
	testenv.RequireBPF(t)
	bpffs := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Run("mount", "-t", "bpf", "bpf", bpffs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = testenv.Run("umount", bpffs) })
	dir := loader.PinDir(bpffs, "eth0")
	first, _, err := loader.Open(dir, loader.Options{MaxVIPs: 4, TableStride: 257, MaxBackends: 16, AffinityCapacity: 1024, MaxTxPorts: 4})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()

	vips := filepath.Join(dir, loader.TetherMapVips)
	if err := os.Remove(vips); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "vips", Type: ebpf.Hash, KeySize: 20, ValueSize: 16, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(vips); err != nil {
		t.Fatal(err)
	}
	if err := old.Put(make([]byte, 20), make([]byte, 16)); err != nil {
		t.Fatal(err)
	}

	_, _, err = loader.Open(dir, loader.DefaultOptions())
	if !errors.Is(err, loader.ErrLayoutChanged) {
		t.Fatalf("opening pins with a changed vips layout: %v, want ErrLayoutChanged", err)
	}
	t.Logf("error: %v", err)
	kept, err := ebpf.LoadPinnedMap(vips, nil)
	if err != nil {
		t.Fatalf("the pinned map is gone: %v", err)
	}
	defer kept.Close()
	if info, err := kept.Info(); err != nil || info.ValueSize != 16 {
		t.Fatalf("the pinned map was replaced: %+v, %v", info, err)
	}
}
