// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The workload's opt-in "sites" case (src/workload/sites.rs): one tc
 * program, driven by BPF_PROG_TEST_RUN, whose every lookup and release call
 * site counts its own calls, hits and acquired references, so skprof's
 * per-site figures can be checked exactly. Four lookup sites (two in a
 * __noinline subprogram, one on a branch taken every third run) and two
 * release sites, each a __noinline function of its own so that the
 * compiler cannot duplicate the call. The comment `SITE:<name>` marks the
 * line of each call: the tests find the lines there.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "workload.h"
#include "workload.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TC_ACT_OK 0
#define CURRENT_NETNS (-1)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_sites_config);
} wl_sites_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_sites_counters);
} wl_sites_results SEC(".maps");

static __always_inline void put_tuple(struct bpf_sock_tuple *t, const struct wl_tuple *w)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->ipv4.saddr = w->saddr[0];
	t->ipv4.daddr = w->daddr[0];
	t->ipv4.sport = w->sport;
	t->ipv4.dport = w->dport;
}

/* A hit at `c`: counted, and as acquired when the socket is refcounted (an
 * established TCP socket; listeners and UDP sockets are SOCK_RCU_FREE). */
static __always_inline void count_hit(struct wl_site_counts *c, struct bpf_sock *sk)
{
	__sync_fetch_and_add(&c->hits, 1);
	if (sk->state != BPF_TCP_LISTEN && sk->protocol == IPPROTO_TCP)
		__sync_fetch_and_add(&c->acquired, 1);
}

/* The same for a bpf_skc_lookup_tcp result, a sock_common of which only
 * the state may be read: every TCP state but LISTEN holds a reference. */
static __always_inline void count_hit_common(struct wl_site_counts *c, struct bpf_sock *sk)
{
	__sync_fetch_and_add(&c->hits, 1);
	if (sk->state != BPF_TCP_LISTEN)
		__sync_fetch_and_add(&c->acquired, 1);
}

static __noinline void release_main(struct bpf_sock *sk, struct wl_sites_counters *res)
{
	if (!sk || !res)
		return;
	__sync_fetch_and_add(&res->released[WL_R_MAIN], 1);
	bpf_sk_release(sk); /* SITE:release_main */
}

static __noinline void release_sub(struct bpf_sock *sk, struct wl_sites_counters *res)
{
	if (!sk || !res)
		return;
	__sync_fetch_and_add(&res->released[WL_R_SUB], 1);
	bpf_sk_release(sk); /* SITE:release_sub */
}

/* The subprogram's two lookups: odd runs the established socket through
 * bpf_skc_lookup_tcp, even runs a tuple with no socket. */
static __noinline struct bpf_sock *sub_lookup(struct __sk_buff *skb,
					       struct wl_sites_counters *res,
					       const struct wl_sites_config *cfg, __u64 run)
{
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;

	if (!res || !cfg)
		return NULL;
	if (run & 1) {
		put_tuple(&t, &cfg->tcp);
		__sync_fetch_and_add(&res->lookup[WL_S_SUB_SKC].calls, 1);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), CURRENT_NETNS, 0); /* SITE:sub_skc */
		if (sk)
			count_hit_common(&res->lookup[WL_S_SUB_SKC], sk);
		return sk;
	}
	put_tuple(&t, &cfg->none);
	__sync_fetch_and_add(&res->lookup[WL_S_SUB_TCP].calls, 1);
	sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), CURRENT_NETNS, 0); /* SITE:sub_tcp */
	if (sk)
		count_hit(&res->lookup[WL_S_SUB_TCP], sk);
	return sk;
}

SEC("tc")
int wl_sites(struct __sk_buff *skb)
{
	struct wl_sites_config *cfg;
	struct wl_sites_counters *res;
	struct bpf_sock_tuple t;
	struct bpf_sock *sk;
	__u32 zero = 0;
	__u64 run;

	cfg = bpf_map_lookup_elem(&wl_sites_cfg, &zero);
	res = bpf_map_lookup_elem(&wl_sites_results, &zero);
	if (!cfg || !res || !cfg->armed)
		return TC_ACT_OK;
	run = __sync_fetch_and_add(&res->runs, 1);

	put_tuple(&t, &cfg->tcp);
	__sync_fetch_and_add(&res->lookup[WL_S_MAIN_TCP].calls, 1);
	sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), CURRENT_NETNS, 0); /* SITE:main_tcp */
	if (sk)
		count_hit(&res->lookup[WL_S_MAIN_TCP], sk);
	release_main(sk, res);

	if (run % 3 == 0) {
		put_tuple(&t, &cfg->udp);
		__sync_fetch_and_add(&res->lookup[WL_S_MAIN_UDP].calls, 1);
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), CURRENT_NETNS, 0); /* SITE:main_udp */
		if (sk)
			count_hit(&res->lookup[WL_S_MAIN_UDP], sk);
		release_main(sk, res);
	}

	sk = sub_lookup(skb, res, cfg, run);
	release_sub(sk, res);
	return TC_ACT_OK;
}
