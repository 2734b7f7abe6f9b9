// Package loader loads the tether XDP program and its maps, attaches it to an
// interface and detaches it. The BPF object and its Go bindings are generated
// by bpf2go from bpf/ and committed, so building needs no clang. The compiler
// is named with its version: make check-toolchain (in make generate and
// check-generated) says which one the committed object was built with.
package loader

//go:generate go tool bpf2go -tags linux -target bpfel -cc clang-14 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -type vip_key -type vip_info -type backend -type affinity_entry -type affinity_bucket -type lb_counters -type lb_settings Tether ../bpf/tether.c
