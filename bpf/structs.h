/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Map keys and values. The Go side uses the bpf2go-generated copies of these
 * (loader/tether_*.go), never hand-written mirrors. */
#ifndef TETHER_STRUCTS_H
#define TETHER_STRUCTS_H

#include <linux/types.h>
#include "consts.h"

/* Addresses are stored in network byte order; IPv4 uses addr[0..3] and
 * leaves the rest zero. Ports are in network byte order too. */
struct vip_key {
	__u8 addr[16];
	__u16 port; /* 0: alias used for port-less fragments, see tether.c */
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;
};

struct vip_info {
	__u32 vip_id; /* < max_vips; selects the Maglev and counter slots */
	__u32 flags;  /* enum vip_flag */
	__u64 affinity_timeout_ns;
	__u32 table_size; /* prime M of this VIP, <= table_stride */
	__u8 prefix4;     /* client key = source address masked to these bits */
	__u8 prefix6;
	__u8 table_slot; /* which of the VIP's two Maglev tables is live */
	__u8 pad;
};

/* A per-CPU copy of a VIP entry (vip_cache in maps.h), valid while the
 * epoch it was copied under is vip_epoch's. */
struct vip_cache_entry {
	struct vip_key key;
	__u32 pad;
	__u64 epoch;
	struct vip_info info;
};

struct backend {
	__u8 mac[6];      /* destination MAC written into forwarded frames */
	__u8 src_mac[6];  /* source MAC: the egress interface's own */
	__u32 ifindex;    /* 0 or the ingress interface: XDP_TX; else devmap */
	__u32 generation; /* bumped by the daemon to void affinity entries */
	__u8 addr[16];
	__u8 family;
	__u8 state; /* enum backend_state */
	__u16 pad;
};

/* The affinity table is a set-associative cache of clients in a BPF array
 * (see affinity.h): bucket = hash of {vip_id, client} into the array, then
 * AFFINITY_WAYS entries of 32 bytes, two to a cache line. A lookup reads one
 * bucket, not a hash chain. */
struct affinity_entry {
	__u8 client[16]; /* source address masked to the VIP's prefix */
	/* 0: empty. Else vip_id | backend_id << 16 | generation << 32, in one
	 * word so a reader sees all three from the same writer. */
	__u64 route;
	__u64 last_seen_ns; /* bpf_ktime_get_coarse_ns(), CLOCK_MONOTONIC */
};

struct affinity_bucket {
	struct affinity_entry way[AFFINITY_WAYS];
};

struct lb_counters {
	__u64 packets[OUTCOME_MAX];
	__u64 bytes[OUTCOME_MAX];
	__u64 affinity[AFFINITY_EVENT_MAX];
};

/* Mutable settings, which the daemon rewrites, all in one map update, while
 * the program runs. Not pinned (loader/pin.go pins only state maps): each
 * program has its own, all zero, so it passes every packet until the daemon
 * that loaded it writes them. */
struct lb_settings {
	__u32 seed;   /* Maglev hash seed; identical on LB hosts behind ECMP */
	__u32 active; /* 0: pass everything to the stack */
	__u64 watchdog_ns; /* daemon's last heartbeat, CLOCK_MONOTONIC */
	__u64 watchdog_timeout_ns; /* 0: no watchdog */
};

#endif
