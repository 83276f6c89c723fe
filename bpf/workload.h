/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire types of the built-in workload (workload.bpf.c) shared with user space
 * (src/workload/). User space uses the skeleton's generated `types`, never a
 * hand-written twin, so a layout change here is followed by both sides.
 *
 * Included after vmlinux.h (BPF side); uses the skprof.h class numbering.
 */
#ifndef SKPROF_WORKLOAD_H
#define SKPROF_WORKLOAD_H

#include "skprof.h"

/* Program families; the order mirrors `model::Family` (checked by a unit
 * test against the skeleton's enum). Index into `wl_results`. */
enum wl_family {
	WL_F_GENERIC = 0,	/* cgroup_skb/ingress: bpf_sk_lookup_* */
	WL_F_TC,		/* tc (BPF_PROG_TEST_RUN): bpf_tc_sk_lookup_* on 6.5+ */
	WL_F_XDP,		/* xdp (BPF_PROG_TEST_RUN): bpf_xdp_sk_lookup_* */
	WL_F_SOCK_ADDR,		/* cgroup/connect4: bpf_sock_addr_sk_lookup_* */
	WL_NR_FAMILIES,
};

/* Which lookup helper a case calls; the order mirrors `model::Proto`. */
enum wl_proto {
	WL_P_TCP = 0,		/* bpf_sk_lookup_tcp */
	WL_P_UDP,		/* bpf_sk_lookup_udp */
	WL_P_SKC_TCP,		/* bpf_skc_lookup_tcp */
	WL_NR_PROTOS,
};

/* The tuple of a case, copied into a struct bpf_sock_tuple on the program's
 * stack (as a real caller would pass it). Addresses and ports are in network
 * byte order; an IPv4 address is saddr[0] / daddr[0]. */
struct wl_tuple {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u32 ipv6;		/* fill bpf_sock_tuple.ipv6, else .ipv4 */
};

/* The case to perform, set by user space between batches (.bss). */
struct wl_config {
	__u32 armed;		/* 0: programs only count the run */
	enum wl_family family;	/* the only program that may perform the case */
	enum wl_proto proto;
	__u32 len;		/* tuple size argument; 1..sizeof(bpf_sock_tuple) */
	__u64 netns_id;		/* passed as is: XDP's helper truncates it to u32 */
	__u64 flags;
	struct wl_tuple tuple;
	/* Filters of the cgroup programs: only our own driver sockets count. */
	__u64 connect_cookie;	/* SO_COOKIE of the connect() driver socket */
	__u64 ingress_cookie;	/* SO_COOKIE of the receiving UDP socket */
	__u32 connect_port;	/* destination port of our connect() calls (host order) */
	__u32 ingress_port;	/* local port of the receiving socket (host order) */
};

/* Ground truth recorded by the programs, one per family (.bss). */
struct wl_counters {
	__u64 runs;		/* every run of the program */
	__u64 ours;		/* runs that passed the filter, armed, and did a lookup */
	__u64 bad_config;	/* armed runs whose config was refused (no lookup) */
	__u64 lookups[WL_NR_PROTOS];
	__u64 misses[WL_NR_PROTOS];	/* the helper returned NULL */
	/* the helper returned a socket, by class as seen through struct bpf_sock */
	__u64 hits[WL_NR_PROTOS][SKPROF_NR_CLASSES];
	/* bpf_sk_release() calls, by class of the released socket */
	__u64 releases[SKPROF_NR_CLASSES];
};

/*
 * The opt-in "sockhash" case (sockhash.bpf.c), a BPF object of its own so
 * the other cases' programs stay as they are. Both live in ARRAY maps of one
 * entry (not .bss) so user space reads and writes them with plain map
 * syscalls.
 */
struct wl_sockhash_config {
	__u32 armed;		/* 0: the program only counts the run */
	__u32 key;		/* key of the socket in wl_sockhash */
	struct wl_tuple tuple;	/* IPv4: the established socket bpf_sk_lookup_tcp finds */
};

struct wl_sockhash_counters {
	__u64 runs;		/* every run of the program */
	__u64 ours;		/* armed runs: one lookup and one map lookup each */
	__u64 lookup_misses;	/* bpf_sk_lookup_tcp returned NULL */
	/* bpf_sk_lookup_tcp returned a socket (then released), by class */
	__u64 lookup_hits[SKPROF_NR_CLASSES];
	__u64 map_misses;	/* bpf_map_lookup_elem(wl_sockhash) returned NULL */
	/* it returned a socket (then released), by class */
	__u64 map_hits[SKPROF_NR_CLASSES];
};

/*
 * The opt-in "sites" case (sites.bpf.c): one tc program with four lookup
 * call sites, two of them in a __noinline subprogram and one taken on a
 * branch, and two release sites, each counted by the program itself.
 */
enum wl_site {
	WL_S_MAIN_TCP = 0,	/* main: bpf_sk_lookup_tcp, established: acquires */
	WL_S_MAIN_UDP,		/* main, every third run: bpf_sk_lookup_udp, UDP: no reference */
	WL_S_SUB_SKC,		/* subprogram, odd runs: bpf_skc_lookup_tcp, established: acquires */
	WL_S_SUB_TCP,		/* subprogram, even runs: bpf_sk_lookup_tcp, no such socket: a miss */
	WL_NR_SITES,
};

enum wl_release_site {
	WL_R_MAIN = 0,		/* releases the main lookups' sockets */
	WL_R_SUB,		/* releases the subprogram's */
	WL_NR_RELEASE_SITES,
};

struct wl_sites_config {
	__u32 armed;		/* 0: the program only counts the run */
	__u32 pad;
	struct wl_tuple tcp;	/* IPv4: an established socket */
	struct wl_tuple udp;	/* IPv4: a bound UDP socket */
	struct wl_tuple none;	/* IPv4: no socket */
};

struct wl_site_counts {
	__u64 calls;
	__u64 hits;
	__u64 acquired;		/* hits on a refcounted socket */
};

struct wl_sites_counters {
	__u64 runs;		/* armed runs */
	struct wl_site_counts lookup[WL_NR_SITES];
	__u64 released[WL_NR_RELEASE_SITES];	/* bpf_sk_release() calls */
};

#endif /* SKPROF_WORKLOAD_H */
