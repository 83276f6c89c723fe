// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * skprof's built-in workload: one program per helper family, each performing
 * the socket lookup described by `wl_cfg` and releasing what it found, and
 * recording what really happened in `wl_results`. User space (src/workload/)
 * drives them with exact counts: tc and XDP through BPF_PROG_TEST_RUN,
 * cgroup/connect4 through connect(), cgroup_skb/ingress through UDP datagrams.
 *
 * Which kernel function a call lands in depends on the calling program type
 * (net/core/filter.c: tc_cls_act_func_proto, xdp_func_proto,
 * sock_addr_func_proto, cg_skb_func_proto), which is why there are four.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "workload.h"
#include "workload.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TC_ACT_OK 0

/* Written by user space through the mmap'ed .bss between batches. */
struct wl_config wl_cfg;
/* Read by user space; updated with atomic adds (cgroup_skb runs in softirq
 * on any CPU). */
struct wl_counters wl_results[WL_NR_FAMILIES];


/*
 * Class of a socket returned by bpf_skc_lookup_tcp: a sock_common
 * (PTR_TO_SOCK_COMMON), on which only family/state/addresses may be read,
 * and the helper only finds TCP sockets, so the state tells everything.
 * bpf_sk_fullsock() would do no better and is not offered to XDP or
 * sock_addr programs.
 */
static __always_inline __u32 class_of_sock_common(struct bpf_sock *sk)
{
	__u32 state = sk->state;

	if (state == BPF_TCP_TIME_WAIT)
		return SKPROF_C_TIME_WAIT;
	if (state == BPF_TCP_NEW_SYN_RECV)
		return SKPROF_C_REQUEST;
	if (state == BPF_TCP_LISTEN)
		return SKPROF_C_LISTENER;
	return SKPROF_C_ESTABLISHED;
}

static __always_inline void count_hit(struct wl_counters *res, __u32 proto, __u32 class)
{
	/* Constant indices only: keeps the verifier's bounds trivial. */
	switch (class) {
	case SKPROF_C_LISTENER:
		__sync_fetch_and_add(&res->hits[proto][SKPROF_C_LISTENER], 1);
		__sync_fetch_and_add(&res->releases[SKPROF_C_LISTENER], 1);
		break;
	case SKPROF_C_ESTABLISHED:
		__sync_fetch_and_add(&res->hits[proto][SKPROF_C_ESTABLISHED], 1);
		__sync_fetch_and_add(&res->releases[SKPROF_C_ESTABLISHED], 1);
		break;
	case SKPROF_C_TIME_WAIT:
		__sync_fetch_and_add(&res->hits[proto][SKPROF_C_TIME_WAIT], 1);
		__sync_fetch_and_add(&res->releases[SKPROF_C_TIME_WAIT], 1);
		break;
	case SKPROF_C_REQUEST:
		__sync_fetch_and_add(&res->hits[proto][SKPROF_C_REQUEST], 1);
		__sync_fetch_and_add(&res->releases[SKPROF_C_REQUEST], 1);
		break;
	case SKPROF_C_UDP:
		__sync_fetch_and_add(&res->hits[proto][SKPROF_C_UDP], 1);
		__sync_fetch_and_add(&res->releases[SKPROF_C_UDP], 1);
		break;
	default:
		__sync_fetch_and_add(&res->hits[proto][SKPROF_C_OTHER], 1);
		__sync_fetch_and_add(&res->releases[SKPROF_C_OTHER], 1);
		break;
	}
}

/*
 * Perform the configured lookup once and release what it returned. `ctx` is
 * the program's context: the helper's variant is chosen by program type.
 */
static __always_inline void do_case(void *ctx, struct wl_counters *res)
{
	struct bpf_sock_tuple tuple;
	struct bpf_sock *sk;
	__u32 proto = wl_cfg.proto;
	__u64 len = wl_cfg.len;
	__u64 netns_id = wl_cfg.netns_id;
	__u64 flags = wl_cfg.flags;
	__u32 class;

	/*
	 * ARG_CONST_SIZE: the verifier needs len bounded and non-zero. The
	 * 6.1 verifier cannot narrow [0, 36] to [1, 36] on a "!= 0" test (what
	 * clang makes of "len < 1"), so test len - 1 <= 35 in 64 bits (no
	 * truncation into a second register) and add the 1 back afterwards;
	 * barrier_var() keeps clang from folding the two.
	 */
	len -= 1;
	barrier_var(len);
	if (proto >= WL_NR_PROTOS || len > sizeof(tuple) - 1) {
		__sync_fetch_and_add(&res->bad_config, 1);
		return;
	}
	barrier_var(len);
	len += 1;

	__builtin_memset(&tuple, 0, sizeof(tuple));
	if (wl_cfg.tuple.ipv6) {
		__builtin_memcpy(tuple.ipv6.saddr, wl_cfg.tuple.saddr, sizeof(tuple.ipv6.saddr));
		__builtin_memcpy(tuple.ipv6.daddr, wl_cfg.tuple.daddr, sizeof(tuple.ipv6.daddr));
		tuple.ipv6.sport = wl_cfg.tuple.sport;
		tuple.ipv6.dport = wl_cfg.tuple.dport;
	} else {
		tuple.ipv4.saddr = wl_cfg.tuple.saddr[0];
		tuple.ipv4.daddr = wl_cfg.tuple.daddr[0];
		tuple.ipv4.sport = wl_cfg.tuple.sport;
		tuple.ipv4.dport = wl_cfg.tuple.dport;
	}

	__sync_fetch_and_add(&res->ours, 1);
	switch (proto) {
	case WL_P_TCP:
		__sync_fetch_and_add(&res->lookups[WL_P_TCP], 1);
		sk = bpf_sk_lookup_tcp(ctx, &tuple, len, netns_id, flags);
		if (!sk) {
			__sync_fetch_and_add(&res->misses[WL_P_TCP], 1);
			return;
		}
		class = class_of_sock(sk);
		bpf_sk_release(sk);
		count_hit(res, WL_P_TCP, class);
		break;
	case WL_P_UDP:
		__sync_fetch_and_add(&res->lookups[WL_P_UDP], 1);
		sk = bpf_sk_lookup_udp(ctx, &tuple, len, netns_id, flags);
		if (!sk) {
			__sync_fetch_and_add(&res->misses[WL_P_UDP], 1);
			return;
		}
		class = class_of_sock(sk);
		bpf_sk_release(sk);
		count_hit(res, WL_P_UDP, class);
		break;
	default:
		__sync_fetch_and_add(&res->lookups[WL_P_SKC_TCP], 1);
		sk = bpf_skc_lookup_tcp(ctx, &tuple, len, netns_id, flags);
		if (!sk) {
			__sync_fetch_and_add(&res->misses[WL_P_SKC_TCP], 1);
			return;
		}
		class = class_of_sock_common(sk);
		bpf_sk_release(sk);
		count_hit(res, WL_P_SKC_TCP, class);
		break;
	}
}

/* Driven by BPF_PROG_TEST_RUN only, never attached. */
SEC("tc")
int wl_tc_lookup(struct __sk_buff *skb)
{
	struct wl_counters *res = &wl_results[WL_F_TC];

	__sync_fetch_and_add(&res->runs, 1);
	if (wl_cfg.armed && wl_cfg.family == WL_F_TC)
		do_case(skb, res);
	return TC_ACT_OK;
}

/* Driven by BPF_PROG_TEST_RUN only, never attached. */
SEC("xdp")
int wl_xdp_lookup(struct xdp_md *ctx)
{
	struct wl_counters *res = &wl_results[WL_F_XDP];

	__sync_fetch_and_add(&res->runs, 1);
	if (wl_cfg.armed && wl_cfg.family == WL_F_XDP)
		do_case(ctx, res);
	return XDP_PASS;
}

/*
 * Runs for connect() of any socket created in the workload's cgroup; only
 * our driver socket, connecting to our port, performs the case. Always
 * allows the connect.
 */
SEC("cgroup/connect4")
int wl_connect4(struct bpf_sock_addr *ctx)
{
	struct wl_counters *res = &wl_results[WL_F_SOCK_ADDR];

	__sync_fetch_and_add(&res->runs, 1);
	if (!wl_cfg.armed || wl_cfg.family != WL_F_SOCK_ADDR)
		return 1;
	if (bpf_get_socket_cookie(ctx) != wl_cfg.connect_cookie ||
	    ctx->user_port != bpf_htons(wl_cfg.connect_port))
		return 1;
	do_case(ctx, res);
	return 1;
}

/*
 * Runs once per packet delivered to a socket created in the workload's
 * cgroup (skb->sk is the receiving socket here); only datagrams to our
 * receiving socket perform the case. Always lets the packet through.
 */
SEC("cgroup_skb/ingress")
int wl_skb_ingress(struct __sk_buff *skb)
{
	struct wl_counters *res = &wl_results[WL_F_GENERIC];

	__sync_fetch_and_add(&res->runs, 1);
	if (!wl_cfg.armed || wl_cfg.family != WL_F_GENERIC)
		return 1;
	if (bpf_get_socket_cookie(skb) != wl_cfg.ingress_cookie ||
	    skb->local_port != wl_cfg.ingress_port)
		return 1;
	do_case(skb, res);
	return 1;
}
