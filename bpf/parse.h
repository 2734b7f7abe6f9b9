/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Header parsing. Each function either fills struct packet and returns
 * PARSE_OK, or returns the outcome that ends the packet. Nothing reads past
 * data_end: every access is preceded by a bounds check the verifier sees. */
#ifndef TETHER_PARSE_H
#define TETHER_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "structs.h"

#define PARSE_OK (-1)

#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV6_FRAG_OFFSET_MASK 0xfff8

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

struct packet {
	struct vip_key key; /* destination; port 0 for port-less fragments */
	__u8 source[16];
	__u8 fragment;  /* a fragment without the L4 header: no ports */
	__u8 tcp_flags; /* byte 13 of the TCP header: FIN, SYN, RST, ACK... */
};

/* ip_end is where the IP packet ends by its own length: Ethernet padding
 * after it is no L4 header. Both bounds are checked, data_end for the
 * verifier. */
static __always_inline int parse_l4(void *l4, void *data_end, void *ip_end,
				    __u8 proto, struct packet *pkt)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end || (void *)(tcp + 1) > ip_end)
			return OUTCOME_DROP_MALFORMED_L4;
		if (tcp->doff < 5 || l4 + tcp->doff * 4 > ip_end)
			return OUTCOME_DROP_MALFORMED_L4;
		pkt->key.port = tcp->dest;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end || (void *)(udp + 1) > ip_end)
			return OUTCOME_DROP_MALFORMED_L4;
		pkt->key.port = udp->dest;
	} else {
		return OUTCOME_PASS_NOT_TCP_UDP;
	}
	pkt->key.proto = proto;
	return PARSE_OK;
}

static __always_inline int parse_ipv4(void *l3, void *data_end,
				      struct packet *pkt)
{
	struct iphdr *ip = l3;
	__u32 header_len, total_len;

	if ((void *)(ip + 1) > data_end)
		return OUTCOME_DROP_MALFORMED_IPV4;
	if (ip->version != 4 || ip->ihl < 5)
		return OUTCOME_DROP_MALFORMED_IPV4;
	header_len = ip->ihl * 4;
	total_len = bpf_ntohs(ip->tot_len);
	/* Trailing padding is allowed; a frame shorter than tot_len is not. */
	if (total_len < header_len || l3 + total_len > data_end)
		return OUTCOME_DROP_MALFORMED_IPV4;

	pkt->key.family = FAMILY_IPV4;
	__builtin_memcpy(pkt->key.addr, &ip->daddr, 4);
	__builtin_memcpy(pkt->source, &ip->saddr, 4);
	if (bpf_ntohs(ip->frag_off) & IPV4_FRAG_OFFSET_MASK) {
		pkt->fragment = 1;
		pkt->key.proto = ip->protocol;
		return PARSE_OK;
	}
	return parse_l4(l3 + header_len, data_end, l3 + total_len, ip->protocol,
			pkt);
}

static __always_inline int ipv6_is_skippable(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT;
}

static __always_inline int parse_ipv6(void *l3, void *data_end,
				      struct packet *pkt)
{
	struct ipv6hdr *ip6 = l3;
	void *next = (void *)(ip6 + 1);
	void *ip_end;
	__u8 nexthdr;

	if ((void *)(ip6 + 1) > data_end)
		return OUTCOME_DROP_MALFORMED_IPV6;
	ip_end = next + bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || ip_end > data_end)
		return OUTCOME_DROP_MALFORMED_IPV6;

	pkt->key.family = FAMILY_IPV6;
	__builtin_memcpy(pkt->key.addr, &ip6->daddr, 16);
	__builtin_memcpy(pkt->source, &ip6->saddr, 16);
	nexthdr = ip6->nexthdr;

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
		if (!ipv6_is_skippable(nexthdr))
			break;
		if (nexthdr == IPPROTO_FRAGMENT) {
			struct ipv6_frag *frag = next;

			if ((void *)(frag + 1) > data_end ||
			    (void *)(frag + 1) > ip_end)
				return OUTCOME_DROP_MALFORMED_IPV6_EXT;
			nexthdr = frag->nexthdr;
			next = (void *)(frag + 1);
			if (bpf_ntohs(frag->frag_off) & IPV6_FRAG_OFFSET_MASK) {
				pkt->fragment = 1;
				pkt->key.proto = nexthdr;
				return PARSE_OK;
			}
		} else {
			struct ipv6_opt_hdr *opt = next;

			if ((void *)(opt + 1) > data_end ||
			    (void *)(opt + 1) > ip_end)
				return OUTCOME_DROP_MALFORMED_IPV6_EXT;
			nexthdr = opt->nexthdr;
			next += (opt->hdrlen + 1) * 8;
			if (next > ip_end)
				return OUTCOME_DROP_MALFORMED_IPV6_EXT;
		}
	}
	if (ipv6_is_skippable(nexthdr))
		return OUTCOME_PASS_IPV6_EXT_LIMIT;
	return parse_l4(next, data_end, ip_end, nexthdr, pkt);
}

static __always_inline int parse_packet(void *data, void *data_end,
					struct packet *pkt)
{
	struct ethhdr *eth = data;
	void *l3 = (void *)(eth + 1);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return OUTCOME_DROP_MALFORMED_ETH;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q)) {
		struct vlan_tag *tag = l3;

		if ((void *)(tag + 1) > data_end)
			return OUTCOME_DROP_MALFORMED_VLAN;
		proto = tag->proto;
		l3 = (void *)(tag + 1);
	}
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(l3, data_end, pkt);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(l3, data_end, pkt);
	return OUTCOME_PASS_NOT_IP;
}

#endif
