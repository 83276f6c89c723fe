// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The built-in workload's opt-in "sockhash" case: bpf_sk_release() of
 * references that no lookup helper took.
 *
 * bpf_map_lookup_elem() on a SOCKMAP or SOCKHASH returns the socket with a
 * reference taken (sock_map_lookup() / sock_hash_lookup() in
 * net/core/sock_map.c: refcount_inc_not_zero() unless SOCK_RCU_FREE), and
 * the verifier treats the call as an acquire (is_acquire_function() in
 * kernel/bpf/verifier.c), so the program must bpf_sk_release() it.
 * check_map_func_compatibility() allows BPF_FUNC_map_lookup_elem on both
 * map types whatever the program type; a tc program is used so that
 * BPF_PROG_TEST_RUN drives it an exact number of times, with no traffic.
 *
 * Each armed run first takes a reference with bpf_sk_lookup_tcp() (an
 * established socket: refcounted) and holds it while it takes another
 * established socket out of wl_sockhash and releases that one, then
 * releases the first: a release that matches no traced lookup happens
 * while the run holds one that does, so a ledger must pair releases with
 * acquires by socket, not by order.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "workload.h"
#include "workload.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TC_ACT_OK 0

/* Filled by user space with one connected TCP socket (its fd as value). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} wl_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_sockhash_config);
} wl_sockhash_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_sockhash_counters);
} wl_sockhash_results SEC(".maps");


/* counts[class] += 1 with constant indices only (trivial bounds for the
 * verifier). */
static __always_inline void count_class(__u64 *counts, __u32 class)
{
	switch (class) {
	case SKPROF_C_LISTENER:
		__sync_fetch_and_add(&counts[SKPROF_C_LISTENER], 1);
		break;
	case SKPROF_C_ESTABLISHED:
		__sync_fetch_and_add(&counts[SKPROF_C_ESTABLISHED], 1);
		break;
	case SKPROF_C_TIME_WAIT:
		__sync_fetch_and_add(&counts[SKPROF_C_TIME_WAIT], 1);
		break;
	case SKPROF_C_REQUEST:
		__sync_fetch_and_add(&counts[SKPROF_C_REQUEST], 1);
		break;
	case SKPROF_C_UDP:
		__sync_fetch_and_add(&counts[SKPROF_C_UDP], 1);
		break;
	default:
		__sync_fetch_and_add(&counts[SKPROF_C_OTHER], 1);
		break;
	}
}

/* Driven by BPF_PROG_TEST_RUN only, never attached. */
SEC("tc")
int wl_sockhash_release(struct __sk_buff *skb)
{
	struct wl_sockhash_counters *res;
	struct wl_sockhash_config *cfg;
	struct bpf_sock_tuple tuple;
	struct bpf_sock *held, *sk;
	__u32 zero = 0, key;

	cfg = bpf_map_lookup_elem(&wl_sockhash_cfg, &zero);
	res = bpf_map_lookup_elem(&wl_sockhash_results, &zero);
	if (!cfg || !res)
		return TC_ACT_OK;
	__sync_fetch_and_add(&res->runs, 1);
	if (!cfg->armed)
		return TC_ACT_OK;
	__sync_fetch_and_add(&res->ours, 1);

	__builtin_memset(&tuple, 0, sizeof(tuple));
	tuple.ipv4.saddr = cfg->tuple.saddr[0];
	tuple.ipv4.daddr = cfg->tuple.daddr[0];
	tuple.ipv4.sport = cfg->tuple.sport;
	tuple.ipv4.dport = cfg->tuple.dport;
	/* The map's key must be on the stack or in a map value; the stack
	 * keeps it simple on every kernel. */
	key = cfg->key;

	held = bpf_sk_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (held)
		count_class(res->lookup_hits, class_of_sock(held));
	else
		__sync_fetch_and_add(&res->lookup_misses, 1);

	sk = bpf_map_lookup_elem(&wl_sockhash, &key);
	if (sk) {
		__u32 class = class_of_sock(sk);

		bpf_sk_release(sk);
		count_class(res->map_hits, class);
	} else {
		__sync_fetch_and_add(&res->map_misses, 1);
	}

	if (held)
		bpf_sk_release(held);
	return TC_ACT_OK;
}
