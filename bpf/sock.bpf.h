/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reading a socket the lookup helpers returned or bpf_sk_release() got: its
 * state, whether a release of it drops a reference, its class (enum
 * skprof_sock_class), and its own 4-tuple.
 */
#ifndef SKPROF_SOCK_BPF_H
#define SKPROF_SOCK_BPF_H

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "skprof.h"

#define AF_INET6_ 10
#define TUPLE_V4_LEN 12 /* sizeof(((struct bpf_sock_tuple *)0)->ipv4) */
#define TUPLE_V6_LEN 36 /* sizeof(((struct bpf_sock_tuple *)0)->ipv6) */

/*
 * The socket's own 4-tuple, as a lookup that finds it would pass it (the
 * packet's view: source = the peer, destination = the local end), for a
 * reference whose lookup tuple is gone (a run leak: the run's stack is).
 * sock_common holds these for full, request and TIME_WAIT sockets alike.
 */
static __always_inline void tuple_of_sock(struct sock_common *skc, struct skprof_ref *ref)
{
	struct bpf_sock_tuple *t = (struct bpf_sock_tuple *)ref->tuple;

	if (BPF_CORE_READ(skc, skc_family) == AF_INET6_) {
		BPF_CORE_READ_INTO(&t->ipv6.saddr, skc, skc_v6_daddr.in6_u.u6_addr32);
		BPF_CORE_READ_INTO(&t->ipv6.daddr, skc, skc_v6_rcv_saddr.in6_u.u6_addr32);
		t->ipv6.sport = BPF_CORE_READ(skc, skc_dport);
		t->ipv6.dport = bpf_htons(BPF_CORE_READ(skc, skc_num));
		ref->tuple_len = TUPLE_V6_LEN;
	} else {
		t->ipv4.saddr = BPF_CORE_READ(skc, skc_daddr);
		t->ipv4.daddr = BPF_CORE_READ(skc, skc_rcv_saddr);
		t->ipv4.sport = BPF_CORE_READ(skc, skc_dport);
		t->ipv4.dport = bpf_htons(BPF_CORE_READ(skc, skc_num));
		ref->tuple_len = TUPLE_V4_LEN;
	}
}

/*
 * bpf_rdonly_cast (6.2+) turns a socket address into an untrusted BTF
 * pointer: the verifier then lets the probe read fields with plain loads,
 * which the JIT guards with an exception table (BPF_PROBE_MEM), instead of
 * a bpf_probe_read_kernel() call per field. Weak: 6.1 lacks it, and there
 * the verifier drops the branch that calls it.
 */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* sock_view.state of a socket whose state read_sock() did not read (the
 * kernel's socket states start at 1, TCP_ESTABLISHED). */
#define SOCK_STATE_UNREAD 0

/* What the probes need to know of a socket. */
struct sock_view {
	__u8 state;		/* skc_state */
	bool refcounted;	/* bpf_sk_release() of it drops a reference */
	__u8 cls;		/* enum skprof_sock_class */
};

/* The class of a full socket (not TIME_WAIT or request) of protocol
 * `proto`. */
static __always_inline __u8 full_class(__u8 state, __u16 proto)
{
	if (proto == IPPROTO_UDP)
		return SKPROF_C_UDP;
	if (proto != IPPROTO_TCP)
		return SKPROF_C_OTHER;
	return state == TCP_LISTEN ? SKPROF_C_LISTENER : SKPROF_C_ESTABLISHED;
}

/* TIME_WAIT and request sockets are not full sockets, and a release of one
 * always drops a reference: true (class set) if `v->state` is one. */
static __always_inline bool mini_sock(struct sock_view *v)
{
	v->refcounted = true;
	if (v->state == TCP_TIME_WAIT) {
		v->cls = SKPROF_C_TIME_WAIT;
		return true;
	}
	if (v->state == TCP_NEW_SYN_RECV) {
		v->cls = SKPROF_C_REQUEST;
		return true;
	}
	return false;
}

/*
 * Reads a socket: its state, whether bpf_sk_release() of it drops a
 * reference (the kernel's sk_is_refcounted(): !sk_fullsock(sk) ||
 * !sock_flag(sk, SOCK_RCU_FREE)), and its class. `proto`: the protocol of
 * a full socket when the caller knows it (a lookup helper's own: the TCP
 * helpers search only TCP tables, the UDP ones UDP's), 0 to read it. The
 * class is decided here, along with the state tests the reference rule
 * needs anyway, so each test is made once (as separate steps, clang made
 * the TIME_WAIT and request tests twice on the exit's short path).
 * skc_flags shares a union with skc_listener / skc_tw_dr, so it is read
 * only for full sockets; SOCK_RCU_FREE moved (24 on 5.4, 23 on 6.12): CO-RE
 * enum value.
 */
static __always_inline void read_sock(__u64 sk, __u16 proto, struct sock_view *v)
{
	__u32 rcu_free = bpf_core_enum_value(enum sock_flags, SOCK_RCU_FREE);
	unsigned long flags;

	if (bpf_ksym_exists(bpf_rdonly_cast)) {
		struct sock *s = bpf_rdonly_cast((void *)sk, bpf_core_type_id_kernel(struct sock));

		v->state = s->__sk_common.skc_state;
		if (mini_sock(v))
			return;
		flags = s->__sk_common.skc_flags;
		v->refcounted = !(flags & (1UL << rcu_free));
		v->cls = full_class(v->state, proto ? proto : s->sk_protocol);
		return;
	}
	/*
	 * 6.1: probe reads, each a helper call. Two small ones: the state
	 * byte, and the flags word only for a full socket. (One read from
	 * the state's word through the flags, 88 bytes on 6.1, saved a call
	 * but cost more instructions: copy_from_kernel_nofault copies it 8
	 * bytes at a time.)
	 *
	 * A UDP lookup finds only full UDP sockets (the UDP tables hold no
	 * mini sockets), so its class is known without the state, and only
	 * the flags are read: one call instead of two. The state is left
	 * unread (0, no socket state), for acquire() to read if the
	 * reference goes into the global ledger, whose entries show it (rare:
	 * hashed UDP sockets are SOCK_RCU_FREE and take no reference).
	 */
	if (proto == IPPROTO_UDP) {
		v->state = SOCK_STATE_UNREAD;
		v->refcounted = !(BPF_CORE_READ((struct sock_common *)sk, skc_flags) &
				  (1UL << rcu_free));
		v->cls = SKPROF_C_UDP;
		return;
	}
	v->state = BPF_CORE_READ((struct sock_common *)sk, skc_state);
	if (mini_sock(v))
		return;
	flags = BPF_CORE_READ((struct sock_common *)sk, skc_flags);
	v->refcounted = !(flags & (1UL << rcu_free));
	/* sk_protocol is a u16 since 5.6, a bitfield before: the probed
	 * bitfield read handles both. */
	if (!proto)
		proto = BPF_CORE_READ_BITFIELD_PROBED((struct sock *)sk, sk_protocol);
	v->cls = full_class(v->state, proto);
}

#endif /* SKPROF_SOCK_BPF_H */
