/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What a lookup helper's id and arguments say about a call: the program type
 * that made it, the protocol of the sockets it finds, why it missed, and
 * where (netns, interface) it looked.
 */
#ifndef SKPROF_LOOKUP_BPF_H
#define SKPROF_LOOKUP_BPF_H

#include <bpf/bpf_core_read.h>
#include "skprof.h"
#include "sock.bpf.h"

#define S32_MAX_ 0x7fffffffULL

static __always_inline bool is_xdp(__u32 helper)
{
	return helper >= SKPROF_H_XDP_SK_LOOKUP_TCP &&
	       helper <= SKPROF_H_XDP_SKC_LOOKUP_TCP;
}

static __always_inline bool is_sock_addr(__u32 helper)
{
	return helper >= SKPROF_H_SOCK_ADDR_SK_LOOKUP_TCP &&
	       helper <= SKPROF_H_SOCK_ADDR_SKC_LOOKUP_TCP;
}

/*
 * The network namespace a lookup searched and the packet's device, for the
 * (netns, interface) grouping. A hit searched its socket's namespace. A miss
 * is put under the caller's namespace, found from the helper's ctx the way
 * net/core/filter.c finds caller_net: skb->dev (else skb->sk) for the skb
 * helpers, the receive queue's device for XDP, the socket for sock_addr.
 * Read after the timed window closes, so it costs no measured latency.
 */
static __always_inline void lookup_place(__u32 helper, __u64 pctx, __u64 ret,
					 struct skprof_hist_key *key)
{
	struct net_device *dev = NULL;
	struct sock *sk = NULL;

	if (is_xdp(helper)) {
		dev = BPF_CORE_READ((struct xdp_buff *)pctx, rxq, dev);
	} else if (is_sock_addr(helper)) {
		sk = BPF_CORE_READ((struct bpf_sock_addr_kern *)pctx, sk);
	} else {
		dev = BPF_CORE_READ((struct sk_buff *)pctx, dev);
		if (!dev)
			sk = BPF_CORE_READ((struct sk_buff *)pctx, sk);
	}
	if (dev)
		key->ifindex = BPF_CORE_READ(dev, ifindex);
	if (ret)
		key->netns = BPF_CORE_READ((struct sock_common *)ret, skc_net.net, ns.inum);
	else if (dev)
		key->netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	else if (sk)
		key->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/*
 * Why a lookup that returned NULL missed, from its arguments, in the order
 * __bpf_skc_lookup() (net/core/filter.c) checks them. An explicit netns id
 * that names no namespace is indistinguishable here from "no socket".
 */
static __always_inline __u32 miss_reason(__u32 helper, __u64 len, __u64 netns_id,
					 __u64 flags)
{
	__u32 l = (__u32)len;	/* declared u32 in every BPF_CALL_5 */

	if (l != TUPLE_V4_LEN && l != TUPLE_V6_LEN)
		return SKPROF_O_BAD_LEN;
	/* The XDP variants declare netns_id as u32 (bpf_xdp_sk_lookup_tcp). */
	if (is_xdp(helper))
		netns_id = (__u32)netns_id;
	if (flags)
		return SKPROF_O_BAD_FLAGS;
	if (!((__s32)netns_id < 0 || netns_id <= S32_MAX_))
		return SKPROF_O_BAD_NETNS;
	return SKPROF_O_NO_SOCKET;
}

/* The protocol of the sockets `helper` finds. */
static __always_inline __u16 helper_proto(__u32 helper)
{
	if (helper == SKPROF_H_SK_LOOKUP_UDP || helper == SKPROF_H_TC_SK_LOOKUP_UDP ||
	    helper == SKPROF_H_XDP_SK_LOOKUP_UDP || helper == SKPROF_H_SOCK_ADDR_SK_LOOKUP_UDP)
		return IPPROTO_UDP;
	return IPPROTO_TCP;
}

#endif /* SKPROF_LOOKUP_BPF_H */
