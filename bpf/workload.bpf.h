// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* What the workload's BPF programs share (workload.bpf.c, sockhash.bpf.c). */
#ifndef SKPROF_WORKLOAD_BPF_H
#define SKPROF_WORKLOAD_BPF_H

/*
 * Class of a socket returned by bpf_sk_lookup_{tcp,udp}: a full socket
 * (PTR_TO_SOCKET), so protocol and state are readable. The request-socket
 * and TIME_WAIT cases never reach here: the kernel returns the listener or
 * NULL for them (__bpf_sk_lookup).
 */
static __always_inline __u32 class_of_sock(struct bpf_sock *sk)
{
	__u32 protocol = sk->protocol;

	if (protocol == IPPROTO_UDP)
		return SKPROF_C_UDP;
	if (protocol != IPPROTO_TCP)
		return SKPROF_C_OTHER;
	return sk->state == BPF_TCP_LISTEN ? SKPROF_C_LISTENER : SKPROF_C_ESTABLISHED;
}

#endif /* SKPROF_WORKLOAD_BPF_H */
