/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The datapath's maps. Sizes here are defaults; the loader sets the real
 * ones (loader.Options) before loading. */
#ifndef TETHER_MAPS_H
#define TETHER_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "structs.h"

/* Load-time constants, rewritten by the loader to match the map sizes. */
volatile const __u32 max_vips = 64;
volatile const __u32 table_stride = 65537;       /* largest table size M */
volatile const __u32 affinity_buckets = 1 << 18; /* entries of `affinity` */

/* vip_key -> vip_info; written by the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128); /* 2 * max_vips: VIPs plus fragment aliases */
	__type(key, struct vip_key);
	__type(value, struct vip_info);
} vips SEC(".maps");

/* Single entry: the affinity table's secret hash salt, random, written by
 * the loader when it creates the table and pinned with it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} affinity_salt SEC(".maps");

/* Single entry: bumped by the daemon after every change to `vips`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} vip_epoch SEC(".maps");

/* Each CPU's copies of the VIP entries it saw last, by a hash of the key:
 * an array lookup and a compare instead of a hash map lookup (jhash of 20
 * bytes, a bucket walk, memcmp) per packet. See vip_lookup in tether.c. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VIP_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct vip_cache_entry);
} vip_cache SEC(".maps");

/* (vip_id * 2 + slot) * table_stride + hash % table_size -> backend_id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64 * 2 * 65537);
	__type(key, __u32);
	__type(value, __u32);
} maglev SEC(".maps");

/* backend_id -> backend; id 0 is never used. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* Buckets of client entries, see affinity.h. One table shared by all CPUs:
 * RSS spreads a client's connections over CPUs and all must agree.
 * Mmapable: the array's data is page-aligned, so a bucket starts on a cache
 * line, and the daemon reads and clears entries in place. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 18);
	__type(key, __u32);
	__type(value, struct affinity_bucket);
} affinity SEC(".maps");

/* Slot 0 global, 1 + vip_id per VIP, 1 + max_vips + backend_id per backend. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 + 64 + 4096);
	__type(key, __u32);
	__type(value, struct lb_counters);
} counters SEC(".maps");

/* ifindex -> ifindex, for backends reached through another interface. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/* Single entry: struct lb_settings. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_settings);
} settings SEC(".maps");

#endif
