// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The floor of `skprof bench`: empty fentry/fexit programs on the same
 * functions skprof's probes use. What they add to a lookup is the price of
 * the probe method itself (the trampoline, saving and restoring arguments,
 * entering and leaving two BPF programs); no tracer built on fentry/fexit
 * can add less. skprof's own cost is reported as a ratio to it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define FLOOR_PAIR(fn)							\
SEC("fentry/" #fn)							\
int BPF_PROG(fentry_##fn)						\
{									\
	return 0;							\
}									\
SEC("fexit/" #fn)							\
int BPF_PROG(fexit_##fn)						\
{									\
	return 0;							\
}

FLOOR_PAIR(bpf_sk_lookup_tcp)
FLOOR_PAIR(bpf_sk_lookup_udp)
FLOOR_PAIR(bpf_skc_lookup_tcp)
FLOOR_PAIR(bpf_tc_sk_lookup_tcp)
FLOOR_PAIR(bpf_tc_sk_lookup_udp)
FLOOR_PAIR(bpf_tc_skc_lookup_tcp)
FLOOR_PAIR(bpf_xdp_sk_lookup_tcp)
FLOOR_PAIR(bpf_xdp_sk_lookup_udp)
FLOOR_PAIR(bpf_xdp_skc_lookup_tcp)
FLOOR_PAIR(bpf_sock_addr_sk_lookup_tcp)
FLOOR_PAIR(bpf_sock_addr_sk_lookup_udp)
FLOOR_PAIR(bpf_sock_addr_skc_lookup_tcp)

/* Empty fentry/fexit on the calling BPF program itself (its attach target
 * is set at load): with them the floor is that of attribution by tracing,
 * which puts a probe pair on the program as well as on the helpers. */
SEC("fentry")
int BPF_PROG(floor_prog_entry)
{
	return 0;
}
SEC("fexit")
int BPF_PROG(floor_prog_exit)
{
	return 0;
}

/* skprof puts only an entry probe on the release. */
SEC("fentry/bpf_sk_release")
int BPF_PROG(fentry_bpf_sk_release)
{
	return 0;
}
