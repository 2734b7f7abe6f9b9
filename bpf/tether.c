// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//go:build ignore

/* tether_lb: sticky source-address load balancing with L2 direct server
 * return. README.md, "How it works", has the steps; the Go model
 * in test/model implements the same rules and is checked against this. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "affinity.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define NO_VIP ((__u32)-1)

/* Never read by the program: they put these enums into BTF, where bpf2go
 * -type finds them and generates their Go constants. */
volatile const enum outcome outcome_type = OUTCOME_MAX;
volatile const enum affinity_event affinity_event_type = AFFINITY_EVENT_MAX;
volatile const enum backend_state backend_state_type = BACKEND_DOWN;
volatile const enum vip_flag vip_flag_type = VIP_FLAG_NO_BACKEND_PASS;
volatile const enum family family_type = FAMILY_IPV4;
volatile const enum limits limits_type = AFFINITY_WAYS;
volatile const enum time_limit_ms time_limit_ms_type = MAX_CLOCK_SKEW_MS;
volatile const enum route_layout route_layout_type = ROUTE_ID_MASK;

/* What one packet did, for accounting. */
struct result {
	__u32 vip_id;          /* NO_VIP until a VIP matched */
	__u32 backend_id;      /* 0 until a backend was chosen */
	__u32 affinity_events; /* bit (1 << enum affinity_event) */
};

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* Murmur3-style 32-bit hash of the 16-byte client key, read as big-endian
 * words so every host computes the same value (ECMP across LB hosts). */
static __always_inline __u32 client_hash(__u32 seed, const __u8 *client)
{
	const __u32 *words = (const __u32 *)client;
	__u32 h = seed;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 w = bpf_ntohl(words[i]);

		w *= 0xcc9e2d51;
		w = rotl32(w, 15);
		w *= 0x1b873593;
		h ^= w;
		h = rotl32(h, 13);
		h = h * 5 + 0xe6546b64;
	}
	h ^= 16;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Network-order mask for 32-bit word `word` of a prefix of `prefix` bits. */
static __always_inline __be32 prefix_mask(__u32 prefix, __u32 word)
{
	__u32 bits;

	if (prefix <= word * 32)
		return 0;
	bits = prefix - word * 32;
	if (bits >= 32)
		return 0xffffffff;
	return bpf_htonl(~(0xffffffffU >> bits));
}

/* The client's key: its source address masked to the VIP's prefix. */
static __always_inline void client_key(__u8 *client, const struct packet *pkt,
				       const struct vip_info *vip)
{
	const __be32 *src = (const __be32 *)pkt->source;
	__be32 *dst = (__be32 *)client;
	__u32 prefix =
		pkt->key.family == FAMILY_IPV4 ? vip->prefix4 : vip->prefix6;

#pragma unroll
	for (int i = 0; i < 4; i++)
		dst[i] = src[i] & prefix_mask(prefix, i);
}

static __always_inline int same_vip_key(const struct vip_key *a,
					const struct vip_key *b)
{
	const __u32 *x = (const __u32 *)a;
	const __u32 *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) |
		(x[4] ^ y[4])) == 0;
}

/* The VIP entry of key: this CPU's copy if it was made under the current
 * epoch, else the vips map's, copied for the next packets. The daemon bumps
 * the epoch after it changes `vips`, so no copy outlives a change. A parsed
 * key has a nonzero family, so the zeroed slots of a new cache never match. */
static __always_inline struct vip_info *vip_lookup(const struct vip_key *key)
{
	const __u32 *addr = (const __u32 *)key->addr;
	__u32 mix = addr[0] ^ addr[1] ^ addr[2] ^ addr[3] ^ key->port ^
		    (__u32)key->proto << 16;
	__u32 zero = 0, slot = (mix ^ mix >> 7 ^ mix >> 16 ^ mix >> 24) &
			       (VIP_CACHE_SLOTS - 1);
	struct vip_cache_entry *copy = bpf_map_lookup_elem(&vip_cache, &slot);
	__u64 *epoch = bpf_map_lookup_elem(&vip_epoch, &zero);
	struct vip_info *vip;
	__u64 current;

	if (!copy || !epoch)
		return bpf_map_lookup_elem(&vips, key);
	current = READ_ONCE_U64(*epoch);
	if (copy->epoch == current && same_vip_key(&copy->key, key))
		return &copy->info;
	vip = bpf_map_lookup_elem(&vips, key);
	if (vip) {
		copy->key = *key;
		copy->info = *vip;
		copy->epoch = current;
	}
	return vip;
}

static __always_inline int backend_usable(const struct backend *be)
{
	return be->state == BACKEND_UP || be->state == BACKEND_DRAINING;
}

static __always_inline __u32 maglev_backend(const struct vip_info *vip,
					    __u32 hash)
{
	__u32 slot = vip->table_slot & 1;
	__u32 size = vip->table_size;
	__u32 index, *id;

	if (size == 0 || size > table_stride)
		return 0;
	index = (vip->vip_id * 2 + slot) * table_stride + hash % size;
	id = bpf_map_lookup_elem(&maglev, &index);
	return id ? *id : 0;
}

static __always_inline int no_backend(const struct vip_info *vip)
{
	return vip->flags & VIP_FLAG_NO_BACKEND_PASS ? OUTCOME_PASS_NO_BACKEND :
						       OUTCOME_DROP_NO_BACKEND;
}

static __always_inline int forward(struct xdp_md *ctx, const struct backend *be)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return OUTCOME_DROP_MALFORMED_ETH;
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	if (be->ifindex == 0 || be->ifindex == ctx->ingress_ifindex)
		return OUTCOME_FORWARD_TX;
	if (bpf_redirect_map(&tx_ports, be->ifindex, 0) == XDP_REDIRECT)
		return OUTCOME_FORWARD_REDIRECT;
	return OUTCOME_DROP_TX_PORT_MISSING;
}

#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* A packet admits a client without an entry, on probation, when it opens
 * a conversation: a TCP SYN (no ACK, no RST), or any UDP datagram. Anything
 * else from an unknown source (a bare ACK, a fragment) is forwarded by
 * Maglev's choice and leaves no trace. */
static __always_inline int admits(const struct packet *pkt)
{
	if (pkt->fragment)
		return 0;
	if (pkt->key.proto == IPPROTO_UDP)
		return 1;
	return (pkt->tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
}

/* A client on probation proves itself real with a later TCP segment that
 * is neither SYN nor RST (the handshake went on), or a UDP datagram sent
 * AFFINITY_PROBATION_NS or more after it was admitted. */
static __always_inline int proves(const struct packet *pkt, __u64 now,
				  __u64 admitted)
{
	if (pkt->fragment)
		return 0;
	if (pkt->key.proto == IPPROTO_UDP)
		return now >= admitted + AFFINITY_PROBATION_NS;
	return !(pkt->tcp_flags & (TCP_SYN | TCP_RST));
}

/* Writes the client's new backend into its bucket: into entry, its own
 * way, when it has one (seen is its route), else into a victim way, on
 * probation. Counts the affinity events of the write. */
static __always_inline void pin(struct affinity_bucket *bucket,
				struct affinity_entry *entry, __u64 seen,
				const __u8 *client, const struct vip_info *vip,
				__u32 id, __u32 generation, __u64 probation,
				__u64 now, struct result *res)
{
	int evict = 0;

	if (!entry) {
		entry = affinity_victim(bucket, now, vip->affinity_timeout_ns,
					&seen);
		if (!entry) {
			res->affinity_events |= 1 << AFFINITY_FULL;
			return;
		}
		evict = seen != 0 && seen != ROUTE_BUSY &&
			fresh(now, entry->last_seen_ns,
			      vip->affinity_timeout_ns);
	}
	if (affinity_write(entry, seen, client,
			   route_make(vip->vip_id, id, generation) | probation,
			   now)) {
		res->affinity_events |= 1 << AFFINITY_INSERT_FAILED;
		return;
	}
	res->affinity_events |= 1 << AFFINITY_INSERT;
	if (evict)
		res->affinity_events |= 1 << AFFINITY_EVICT_PROBATION;
}

static __always_inline int balance(struct xdp_md *ctx, struct result *res)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet pkt = {};
	__u8 client[16] __attribute__((aligned(8)));
	struct affinity_bucket *bucket;
	struct affinity_entry *entry;
	struct lb_settings *cfg;
	struct vip_info *vip;
	struct backend *be;
	__u32 zero = 0, id;
	__u64 now, route = 0, probation, *salt;
	int ret;

	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || !cfg->active)
		return OUTCOME_PASS_INACTIVE;
	now = bpf_ktime_get_coarse_ns();
	if (cfg->watchdog_timeout_ns &&
	    !fresh(now, cfg->watchdog_ns, cfg->watchdog_timeout_ns))
		return OUTCOME_PASS_WATCHDOG;

	ret = parse_packet(data, data_end, &pkt);
	if (ret != PARSE_OK)
		return ret;

	vip = vip_lookup(&pkt.key);
	if (!vip)
		return pkt.fragment ? OUTCOME_PASS_FRAGMENT :
				      OUTCOME_PASS_NOT_VIP;
	res->vip_id = vip->vip_id;
	/* A VIP entry the daemon got wrong must not reach another VIP's
	 * tables or clients. */
	if (vip->vip_id >= max_vips)
		return no_backend(vip);

	client_key(client, &pkt, vip);
	salt = bpf_map_lookup_elem(&affinity_salt, &zero);
	bucket = NULL;
	if (salt)
		bucket = affinity_bucket_of(
			affinity_hash(*salt, vip->vip_id, client));
	entry = bucket ? affinity_find(bucket, vip->vip_id, client, &route) :
			 NULL;
	probation = ROUTE_PROBATION;
	if (!entry) {
		res->affinity_events |= 1 << AFFINITY_MISS;
	} else if (!fresh(now, entry->last_seen_ns, vip->affinity_timeout_ns)) {
		/* Back after the timeout: admitted afresh, into its way. */
		res->affinity_events |= 1 << AFFINITY_EXPIRED;
	} else {
		id = route_backend(route);
		be = id ? bpf_map_lookup_elem(&backends, &id) : NULL;
		if (be && be->generation == route_generation(route) &&
		    backend_usable(be)) {
			res->affinity_events |= 1 << AFFINITY_HIT;
			res->backend_id = id;
			if (!(route & ROUTE_PROBATION)) {
				if (now >
				    entry->last_seen_ns + AFFINITY_REFRESH_NS)
					entry->last_seen_ns = now;
			} else if (proves(&pkt, now, entry->last_seen_ns) &&
				   __sync_val_compare_and_swap(
					   &entry->route, route,
					   route & ~ROUTE_PROBATION) == route) {
				/* One swap: the way is never busy, so no
				 * other CPU misses the client meanwhile. */
				entry->last_seen_ns = now;
				res->affinity_events |= 1 << AFFINITY_PROMOTE;
			}
			return forward(ctx, be);
		}
		/* Its backend is gone: it keeps its standing with the next. */
		res->affinity_events |= 1 << AFFINITY_STALE;
		probation = route & ROUTE_PROBATION;
	}

	id = maglev_backend(vip, client_hash(cfg->seed, client));
	be = id ? bpf_map_lookup_elem(&backends, &id) : NULL;
	if (!be || !backend_usable(be))
		return no_backend(vip);
	res->backend_id = id;

	if (probation && !admits(&pkt))
		return forward(ctx, be);
	if (!bucket)
		res->affinity_events |= 1 << AFFINITY_INSERT_FAILED;
	else
		pin(bucket, entry, route, client, vip, id, be->generation,
		    probation, now, res);
	return forward(ctx, be);
}

/* The one place that maps an outcome to its verdict. */
static __always_inline int outcome_verdict(int outcome)
{
	switch (outcome) {
	case OUTCOME_FORWARD_TX:
		return XDP_TX;
	case OUTCOME_FORWARD_REDIRECT:
		return XDP_REDIRECT;
	case OUTCOME_PASS_INACTIVE:
	case OUTCOME_PASS_WATCHDOG:
	case OUTCOME_PASS_NOT_IP:
	case OUTCOME_PASS_NOT_TCP_UDP:
	case OUTCOME_PASS_NOT_VIP:
	case OUTCOME_PASS_FRAGMENT:
	case OUTCOME_PASS_IPV6_EXT_LIMIT:
	case OUTCOME_PASS_NO_BACKEND:
		return XDP_PASS;
	default:
		return XDP_DROP;
	}
}

static __always_inline void count(__u32 slot, int outcome, __u64 bytes,
				  __u32 affinity_events)
{
	struct lb_counters *c = bpf_map_lookup_elem(&counters, &slot);

	/* The bound check is for the verifier: outcome indexes an array. */
	if (!c || outcome < 0 || outcome >= OUTCOME_MAX)
		return;
	c->packets[outcome]++;
	c->bytes[outcome] += bytes;
#pragma unroll
	for (int i = 0; i < AFFINITY_EVENT_MAX; i++)
		if (affinity_events & (1 << i))
			c->affinity[i]++;
}

SEC("xdp")
int tether_lb(struct xdp_md *ctx)
{
	/* Subtracting packet pointers, like the variable-length header
	 * arithmetic in parse.h, needs CAP_PERFMON besides CAP_BPF: without it
	 * the verifier forbids pointer arithmetic it cannot sanitise against
	 * speculative execution. */
	__u64 bytes = ctx->data_end - ctx->data;
	struct result res = { .vip_id = NO_VIP };
	int outcome = balance(ctx, &res);

	count(0, outcome, bytes, res.affinity_events);
	if (res.vip_id < max_vips)
		count(1 + res.vip_id, outcome, bytes, res.affinity_events);
	if (res.backend_id)
		count(1 + max_vips + res.backend_id, outcome, bytes, 0);
	return outcome_verdict(outcome);
}
