/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Constants shared by the datapath and, through bpf2go, by the Go side. */
#ifndef TETHER_CONSTS_H
#define TETHER_CONSTS_H

/* Enum members rather than #defines so that they reach BTF and, through
 * bpf2go, the Go side; maps/layout_test.go checks every value Go uses. */
enum limits {
	/* IPv6 extension headers skipped, at most, to reach TCP/UDP. */
	MAX_IPV6_EXT_HEADERS = 4,
	/* Slots of each CPU's VIP cache (a power of two). */
	VIP_CACHE_SLOTS = 16,
	/* Entries per affinity bucket: 4 x 32 bytes, two cache lines. */
	AFFINITY_WAYS = 4,
};

/* Times in milliseconds: an enum member holds only 32 bits. The datapath
 * uses them in nanoseconds, below. */
enum time_limit_ms {
	/* An affinity entry's last_seen_ns is rewritten only when it is older
	 * than this, so a busy client does not bounce the entry's cache line
	 * between CPUs on every packet. */
	AFFINITY_REFRESH_MS = 1000,
	/* A timestamp ahead of this CPU's clock is trusted by at most this
	 * much: another CPU's coarse clock or the daemon's fine one may lead a
	 * little, a bogus stamp must not make an entry or the watchdog fresh
	 * forever. */
	MAX_CLOCK_SKEW_MS = 1000,
	/* A UDP client on probation proves itself real by sending again
	 * this long after it was admitted (UDP has no handshake). */
	AFFINITY_PROBATION_MS = 1000,
};

#define NS_PER_MS 1000000ULL
#define AFFINITY_REFRESH_NS (AFFINITY_REFRESH_MS * NS_PER_MS)
#define MAX_CLOCK_SKEW_NS (MAX_CLOCK_SKEW_MS * NS_PER_MS)
#define AFFINITY_PROBATION_NS (AFFINITY_PROBATION_MS * NS_PER_MS)

enum family {
	FAMILY_IPV4 = 4,
	FAMILY_IPV6 = 6,
};

enum vip_flag {
	/* With no usable backend, hand the packet to the stack instead of
	 * dropping it. */
	VIP_FLAG_NO_BACKEND_PASS = 1 << 0,
};

enum backend_state {
	BACKEND_DOWN = 0,
	BACKEND_UP = 1,
	BACKEND_DRAINING = 2,
};

/* Every packet ends in exactly one outcome; outcome_verdict() in tether.c is
 * the one place that maps an outcome to its XDP verdict. */
enum outcome {
	OUTCOME_FORWARD_TX = 0,
	OUTCOME_FORWARD_REDIRECT,
	OUTCOME_PASS_INACTIVE,
	OUTCOME_PASS_WATCHDOG,
	OUTCOME_PASS_NOT_IP,
	OUTCOME_PASS_NOT_TCP_UDP,
	OUTCOME_PASS_NOT_VIP,
	OUTCOME_PASS_FRAGMENT,
	OUTCOME_PASS_IPV6_EXT_LIMIT,
	OUTCOME_PASS_NO_BACKEND,
	OUTCOME_DROP_NO_BACKEND,
	OUTCOME_DROP_TX_PORT_MISSING,
	OUTCOME_DROP_MALFORMED_ETH,
	OUTCOME_DROP_MALFORMED_VLAN,
	OUTCOME_DROP_MALFORMED_IPV4,
	OUTCOME_DROP_MALFORMED_IPV6,
	OUTCOME_DROP_MALFORMED_IPV6_EXT,
	OUTCOME_DROP_MALFORMED_L4,
	OUTCOME_MAX,
};

/* Affinity events, counted beside the outcome of the same packet. */
enum affinity_event {
	AFFINITY_HIT = 0, /* fresh entry, usable backend: it decided */
	AFFINITY_MISS,    /* no entry: a new client */
	AFFINITY_EXPIRED, /* entry older than the VIP's affinity timeout */
	AFFINITY_STALE,   /* entry's backend gone, down or re-generated */
	AFFINITY_INSERT,  /* Maglev's choice written to the map */
	AFFINITY_INSERT_FAILED,
	/* A new client took the place of another client's fresh entry, one
	 * on probation (a fresh established entry is never taken). */
	AFFINITY_EVICT_PROBATION,
	/* A client on probation proved itself real: established. */
	AFFINITY_PROMOTE,
	/* No room for a new client: every way of its bucket holds a fresh
	 * established client. It is forwarded by Maglev's choice, unpinned. */
	AFFINITY_FULL,
	AFFINITY_EVENT_MAX,
};

#endif
