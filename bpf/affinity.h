/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The affinity table: the backend each client of each VIP is pinned to.
 *
 * A set-associative cache in a BPF array (maps.h). A client's bucket comes
 * from affinity_hash of its key and VIP, which has no seed: a new Maglev
 * seed leaves every entry where it is. The
 * client may sit in any of the bucket's AFFINITY_WAYS entries; a lookup
 * reads that one bucket, where a hash map walks a chain of random elements.
 *
 * A new client is admitted on probation (ROUTE_PROBATION in its route) and
 * established once it proves itself real (tether.c says how). An insert
 * reuses the client's own entry if it has one, else takes the first empty
 * way, else the least recently seen way that holds a client on probation
 * or whose entry has expired (the first of equals). A fresh established
 * client is never a victim: a flood of forged sources, which never prove
 * themselves, only churns the ways on probation. A way a writer holds is
 * never a victim either: a user-space writer killed in the middle of a
 * write (the daemon only deletes; tests and make bench write) costs its
 * bucket that one way, not its inserts.
 *
 * CPUs share the table without locks. A writer claims a way by swapping its
 * route for ROUTE_BUSY (compare-and-swap: of two writers only one wins), then
 * writes the client and the time and publishes the route last, with a
 * sequentially consistent atomic exchange, which orders the writes before
 * it on every CPU. A reader accepts an entry only when the route it read
 * before comparing the client is still there after. On x86, where loads are not
 * reordered with each other, a reader thus never pairs one client's address
 * with another's route; on weakly ordered CPUs (arm64) it may, rarely, for one
 * packet. Two limits hold everywhere: a route is not a version, so a way
 * rewritten for another client with an equal route (same VIP, backend and
 * generation) looks unchanged; and two CPUs inserting the same client at once
 * may both succeed, in two ways of its bucket (readers take the first; user
 * space counts and deletes both). The daemon clears entries with the same
 * compare-and-swap. */
#ifndef TETHER_AFFINITY_H
#define TETHER_AFFINITY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "structs.h"
#include "maps.h"

/* A claimed way. Its vip_id, 0x7fff, is never a VIP's (max_vips <= 0x7fff),
 * but affinity_find does not rely on the loader for that. */
#define ROUTE_BUSY (~0ULL)

#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))

/* An entry's route: vip_id in the low 15 bits, the probation flag in bit
 * 15, backend_id in the next 16, the backend's generation in the high 32. */
enum route_layout {
	ROUTE_VIP_MASK = 0x7fff,
	ROUTE_PROBATION = 0x8000, /* admitted, not yet proven real */
	ROUTE_ID_MASK = 0xffff,   /* of backend_id */
	ROUTE_BACKEND_SHIFT = 16,
	ROUTE_GENERATION_SHIFT = 32,
};

/* vip_id < max_vips <= 0x7fff and backend_id < max backends <= 0x10000,
 * which the loader checks. */
static __always_inline __u64 route_make(__u32 vip_id, __u32 backend_id,
					__u32 generation)
{
	return (__u64)vip_id | (__u64)backend_id << ROUTE_BACKEND_SHIFT |
	       (__u64)generation << ROUTE_GENERATION_SHIFT;
}

static __always_inline __u32 route_vip(__u64 route)
{
	return route & ROUTE_VIP_MASK;
}

static __always_inline __u32 route_backend(__u64 route)
{
	return (route >> ROUTE_BACKEND_SHIFT) & ROUTE_ID_MASK;
}

static __always_inline __u32 route_generation(__u64 route)
{
	return route >> ROUTE_GENERATION_SHIFT;
}

/* affinity_hash's multipliers: odd, 64 bits, immediates in the code.
 * maps/layout_test.go reads them here to check maps/affinity.go's. */
#define AFFINITY_HASH_VIP_MUL 0xd6e8feb86659fd93ULL
#define AFFINITY_HASH_LOW_MUL 0x9e3779b97f4a7c15ULL
#define AFFINITY_HASH_HIGH_MUL 0xc2b2ae3d27d4eb4fULL
#define AFFINITY_HASH_FINAL_MUL 0x165667b19e3779f9ULL

/* The bucket hash of {vip_id, client} under the table's secret salt: each
 * 64-bit half of the key salted and folded onto itself (a multiply carries
 * bits only upwards, and an IPv6 /64 varies in the high bytes), the second
 * mixed with the VIP, two independent multiplies, then a multiply-xorshift
 * finalizer. Murmur3 (client_hash, kept for Maglev because every host must
 * agree) is a chain of dependent multiplies three times as long, on every
 * packet. The salt keeps anyone who can choose source addresses from
 * working out which ones share a client's bucket and evicting it. */
static __always_inline __u32 affinity_hash(__u64 salt, __u32 vip_id,
					   const __u8 *client)
{
	const __u64 *half = (const __u64 *)client;
	__u64 a = half[0] ^ salt;
	__u64 b = half[1] ^ ((__u64)vip_id * AFFINITY_HASH_VIP_MUL + salt);
	__u64 h;

	a ^= a >> 32;
	b ^= b >> 32;
	h = a * AFFINITY_HASH_LOW_MUL ^ b * AFFINITY_HASH_HIGH_MUL;
	h ^= h >> 29;
	return (h * AFFINITY_HASH_FINAL_MUL) >> 32;
}

/* Multiply-shift maps the hash onto [0, affinity_buckets) without a
 * division, for any bucket count. */
static __always_inline struct affinity_bucket *affinity_bucket_of(__u32 hash)
{
	__u32 index = ((__u64)hash * affinity_buckets) >> 32;

	return bpf_map_lookup_elem(&affinity, &index);
}

static __always_inline int same_client(const struct affinity_entry *e,
				       const __u8 *client)
{
	const __u32 *a = (const __u32 *)e->client;
	const __u32 *b = (const __u32 *)client;

	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		(a[3] ^ b[3])) == 0;
}

/* The client's entry in bucket b and its route, or NULL. */
static __always_inline struct affinity_entry *
affinity_find(struct affinity_bucket *b, __u32 vip_id, const __u8 *client,
	      __u64 *route)
{
#pragma unroll
	for (int w = 0; w < AFFINITY_WAYS; w++) {
		struct affinity_entry *e = &b->way[w];
		__u64 r = READ_ONCE_U64(e->route);

		if (r == 0 || r == ROUTE_BUSY || route_vip(r) != vip_id)
			continue;
		/* The client's words are plain loads: the barriers keep the
		 * compiler from moving them before the first read of the route
		 * or after the second. */
		barrier();
		if (!same_client(e, client))
			continue;
		barrier();
		if (READ_ONCE_U64(e->route) != r)
			continue;
		*route = r;
		return e;
	}
	return NULL;
}

/* Whether a stamp is fresh at now: at most timeout old, or at most
 * MAX_CLOCK_SKEW_NS ahead. The rule of affinity entries and of the
 * watchdog. */
static __always_inline int fresh(__u64 now, __u64 stamp, __u64 timeout)
{
	if (now < stamp)
		return stamp - now <= MAX_CLOCK_SKEW_NS;
	return now - stamp <= timeout;
}

/* The way a new client takes, and its route as judged: the first empty
 * way, else the least recently seen one on probation or not fresh by
 * timeout that no writer holds (the first of equals). The route returned is
 * the one judged, so the writer's compare-and-swap fails if the way changed
 * since (promoted, say). NULL when every way holds a fresh established
 * client: no room. When no way can be taken but a writer holds one, way 0,
 * busy: the insert fails. */
static __always_inline struct affinity_entry *
affinity_victim(struct affinity_bucket *b, __u64 now, __u64 timeout,
		__u64 *route)
{
	struct affinity_entry *victim = NULL;
	__u64 victim_route = 0;
	int busy = 0;

#pragma unroll
	for (int w = 0; w < AFFINITY_WAYS; w++) {
		struct affinity_entry *e = &b->way[w];
		__u64 r = READ_ONCE_U64(e->route);

		if (r == 0) {
			*route = 0;
			return e;
		}
		if (r == ROUTE_BUSY) {
			busy = 1;
			continue;
		}
		if (!(r & ROUTE_PROBATION) &&
		    fresh(now, e->last_seen_ns, timeout))
			continue;
		if (!victim || e->last_seen_ns < victim->last_seen_ns) {
			victim = e;
			victim_route = r;
		}
	}
	if (!victim) {
		*route = ROUTE_BUSY;
		return busy ? &b->way[0] : NULL;
	}
	*route = victim_route;
	return victim;
}

/* Writes the client's route into e, which held `seen`. Fails (returns
 * nonzero) if another writer changed e first. */
static __always_inline int affinity_write(struct affinity_entry *e, __u64 seen,
					  const __u8 *client, __u64 route,
					  __u64 now)
{
	__u32 *dst = (__u32 *)e->client;
	const __u32 *src = (const __u32 *)client;

	if (seen == ROUTE_BUSY ||
	    __sync_val_compare_and_swap(&e->route, seen, ROUTE_BUSY) != seen)
		return -1;
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
	e->last_seen_ns = now;
	/* Sequentially consistent, not __sync_lock_test_and_set's acquire:
	 * the compiler must not move the writes above below the publish. */
	__atomic_exchange_n(&e->route, route, __ATOMIC_SEQ_CST);
	return 0;
}

#endif
