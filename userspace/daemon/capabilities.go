package daemon

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Capabilities tether run needs (include/uapi/linux/capability.h): BPF
// programs and maps; XDP attach and netlink; and CAP_PERFMON, without which
// the verifier rejects the packet pointer arithmetic of variable-length
// headers (IPv4 options, IPv6 extension headers). Mounting bpffs where none
// is mounted also needs CAP_SYS_ADMIN; EnsureBPFFS says so when it fails.
var requiredCapabilities = []struct {
	bit  uint
	name string
}{
	{39, "CAP_BPF"},
	{12, "CAP_NET_ADMIN"},
	{38, "CAP_PERFMON"},
}

// missingCapabilities lists the required capabilities the process lacks,
// read from the effective set in /proc/self/status.
func missingCapabilities() ([]string, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("reading capabilities: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		effective, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parsing CapEff %q: %w", hex, err)
		}
		var missing []string
		for _, c := range requiredCapabilities {
			if effective&(1<<c.bit) == 0 {
				missing = append(missing, c.name)
			}
		}
		return missing, nil
	}
	return nil, fmt.Errorf("no CapEff line in /proc/self/status")
}
