// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * skprof probes: entry/exit of every socket-lookup helper function and entry
 * of bpf_sk_release. Everything is aggregated here, per CPU: a latency
 * histogram per (helper, outcome) and reference counters. Nothing is sent
 * per call; user space reads and merges the per-CPU maps each interval.
 *
 * Two probe modes, chosen by user space through autoload:
 *   fentry/fexit (default): the exit sees the arguments, so an entry is
 *     matched to its exit by (ctx, tuple) pointers.
 *   kprobe/kretprobe (fallback): the return probe sees no arguments, so an
 *     entry is matched by (pid_tgid, helper), most recent first, and the miss
 *     reason is computed at entry.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "shared.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define S32_MAX_ 0x7fffffffULL
#define ERR_E2BIG 7	/* a full hash map refuses inserts with -E2BIG */
#define TUPLE_V4_LEN 12 /* sizeof(((struct bpf_sock_tuple *)0)->ipv4) */
#define TUPLE_V6_LEN 36 /* sizeof(((struct bpf_sock_tuple *)0)->ipv6) */

/* One call between its entry and exit. ts == 0 marks a free slot. */
struct inflight_slot {
	__u64 ts;
	__u64 k1;	/* fentry: ctx pointer;   kprobe: pid_tgid */
	__u64 k2;	/* fentry: tuple pointer; kprobe: 0 */
	__u64 tuple;	/* tuple pointer, for the ledger */
	__u64 pctx;	/* the calling program's ctx pointer */
	__u32 helper;
	__u32 reason;	/* kprobe mode: miss reason computed at entry */
	__u32 prog_slot;	/* calling program, 0 if not traced */
	__u32 len;	/* tuple length argument */
	__u64 run_id;	/* calling run, 0 if not traced */
	__u32 prog_id;	/* calling program, 0 if not attributed */
	__u32 pad;
};

struct inflight {
	struct inflight_slot s[SKPROF_INFLIGHT];
};

/* key: 0; value: this CPU's calls between entry and exit */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct inflight);
} inflight SEC(".maps");

/* key: (program, helper, outcome); value: latency histogram and hit classes.
 * A hash so that only the triples that occur take memory (--max-series). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct skprof_hist_key);
	__type(value, struct skprof_hist);
} hists SEC(".maps");

/* key: program slot; value: how long references were held (acquire to
 * release), by the program that acquired them */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SKPROF_MAX_PROGS);
	__type(key, __u32);
	__type(value, struct skprof_hist);
} holds SEC(".maps");

/* key: 0; value: all zero, the initial value of new histogram entries */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_hist);
} zero_hist SEC(".maps");

/* key: 0; value: scratch space to build a new ledger entry (too big for
 * the BPF stack) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_ref);
} ref_scratch SEC(".maps");

/* kernel stacks of acquires, referenced by skprof_holder.stack_id */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 32 * sizeof(__u64));
} stacks SEC(".maps");

/* key: 0 or 1; value: JIT images of the untraced calling programs (see
 * struct skprof_jit_table). Two copies: user space rewrites the idle one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct skprof_jit_table);
} jit_ranges SEC(".maps");

/* key: 0; value: which jit_ranges entry is current */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} jit_active SEC(".maps");

/*
 * Written by user space through the mmapped .bss while the probes run:
 * whether any program is traced (so the run table is worth searching) and
 * whether the JIT table lists any program (so a stack is worth taking).
 * Plain loads, where the map lookups they guard are helper calls: without
 * attribution the hot path does neither.
 */
volatile __u32 runs_in_use;
volatile __u32 jit_in_use;

/* Whether to keep the reference ledger on acquire/release. */
const volatile bool ledger_on = true;
/* Whether to read where each lookup happened (netns, ifindex) into the
 * histogram key. Up to six probe reads per call (skb->dev, dev->ifindex,
 * the namespace chains): the largest part of the exit probe after the
 * histogram update, so only on when something groups by place (stat --by
 * netns|interface, top, record). Off, every call is keyed netns 0,
 * ifindex 0. */
const volatile bool places_on = true;
/* Whether to record the kernel stack of each acquire: a stack walk per new
 * ledger entry, the costliest part of the ledger, so off unless asked. */
const volatile bool ledger_stacks = false;

const volatile struct skprof_layout skprof_layout = {
	.nr_helpers = SKPROF_NR_HELPERS,
	.nr_outcomes = SKPROF_NR_OUTCOMES,
	.nr_classes = SKPROF_NR_CLASSES,
	.hist_sub_bits = SKPROF_HIST_SUB_BITS,
	.hist_max_exp = SKPROF_HIST_MAX_EXP,
	.hist_slots = SKPROF_HIST_SLOTS,
	.ev_run_leak = SKPROF_EV_RUN_LEAK,
	.ev_run_end = SKPROF_EV_RUN_END,
	.tf_matched = SKPROF_TF_MATCHED,
};

/* Never read: brings the ring-buffer record types (run leaks are written
 * by attrib.bpf.c) into this object's BTF, hence into the skeleton's
 * generated types. */
const volatile struct skprof_event skprof_event_type_anchor = {
	.type = SKPROF_EV_RUN_LEAK,
};
const volatile struct skprof_trace skprof_trace_type_anchor = {
	.type = SKPROF_EV_ACQUIRE,
};

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* Slot of a latency value; see SKPROF_HIST_* in skprof.h. */
static __always_inline __u32 hist_slot(__u64 v)
{
	__u32 e;

	if (v < SKPROF_HIST_SUB)
		return v;
	if (v >= (1ULL << SKPROF_HIST_MAX_EXP))
		return SKPROF_HIST_SLOTS - 1;
	e = log2_u64(v);
	return (e - SKPROF_HIST_SUB_BITS) * SKPROF_HIST_SUB +
	       (__u32)(v >> (e - SKPROF_HIST_SUB_BITS));
}

/* The histogram of `key`, created (zeroed) on first use. */
static __always_inline struct skprof_hist *hist_of(void *map, void *key)
{
	struct skprof_hist *h = bpf_map_lookup_elem(map, key);
	struct skprof_counters *c;
	__u32 zero = 0;
	void *z;

	if (h)
		return h;
	z = bpf_map_lookup_elem(&zero_hist, &zero);
	if (!z)
		return NULL;
	/* EEXIST when a nested call created it first: fine, look up again. */
	bpf_map_update_elem(map, key, z, BPF_NOEXIST);
	h = bpf_map_lookup_elem(map, key);
	if (!h) {
		c = get_counters();
		if (c)
			c->hists_full++;
	}
	return h;
}

static __always_inline void hist_record(struct skprof_hist *h, __u64 delta)
{
	__u32 slot = hist_slot(delta);

	/* Keep clang from checking one copy of slot and indexing with
	 * another, which the verifier cannot follow. */
	barrier_var(slot);
	if (slot < SKPROF_HIST_SLOTS)
		h->slots[slot]++;
	if (delta >= (1ULL << SKPROF_HIST_MAX_EXP))
		h->overflow++;
	h->count++;
	h->sum_ns += delta;
	if (delta > h->max_ns)
		h->max_ns = delta;
}

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

/*
 * Whether bpf_sk_release() of this socket drops a reference: the kernel's
 * sk_is_refcounted() is !sk_fullsock(sk) || !sock_flag(sk, SOCK_RCU_FREE).
 * skc_flags shares a union with skc_listener / skc_tw_dr, so it is read only
 * for full sockets. SOCK_RCU_FREE moved (24 on 5.4, 23 on 6.12): CO-RE enum.
 */
static __always_inline bool refcounted(struct sock_common *skc, __u8 state)
{
	unsigned long flags;

	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return true;
	flags = BPF_CORE_READ(skc, skc_flags);
	return !(flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_RCU_FREE)));
}

static __always_inline __u32 sock_class(struct sock_common *skc, __u8 state)
{
	struct sock *sk = (struct sock *)skc;
	__u16 proto;

	if (state == TCP_TIME_WAIT)
		return SKPROF_C_TIME_WAIT;
	if (state == TCP_NEW_SYN_RECV)
		return SKPROF_C_REQUEST;
	/* sk_protocol is a u16 since 5.6, a bitfield before: the probed
	 * bitfield read handles both. */
	proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	if (proto == IPPROTO_UDP)
		return SKPROF_C_UDP;
	if (proto != IPPROTO_TCP)
		return SKPROF_C_OTHER;
	return state == TCP_LISTEN ? SKPROF_C_LISTENER : SKPROF_C_ESTABLISHED;
}

/* The range of `t` holding `ip`, or NULL: a binary search. */
static __always_inline struct skprof_jit_range *jit_find(struct skprof_jit_table *t, __u64 ip)
{
	__u32 lo = 0, hi = t->n, mid;
	int i;

	if (hi > SKPROF_JIT_RANGES)
		return NULL;
	/* log2(SKPROF_JIT_RANGES) + 1 halvings find any range. */
	for (i = 0; i < 10 && lo < hi; i++) {
		mid = (lo + hi) / 2;
		barrier_var(mid);
		if (mid >= SKPROF_JIT_RANGES)
			return NULL;
		if (ip < t->r[mid].start)
			hi = mid;
		else if (ip >= t->r[mid].end)
			lo = mid + 1;
		else
			return &t->r[mid];
	}
	return NULL;
}

/*
 * The untraced program that called the helper, from the kernel stack: the
 * first frame inside a listed JIT image. In kprobe mode the frame after the
 * helper's own is the caller; under fentry the trampoline's frames come
 * first. The ORC unwinder walks JIT code by frame pointer (the BPF JIT and
 * trampolines keep one). Costs a stack walk, so only done when the table
 * lists some program and the call was not attributed by program tracing.
 */
static __always_inline struct skprof_jit_range *stack_caller(void *tctx)
{
	__u64 frames[SKPROF_JIT_FRAMES];
	struct skprof_jit_table *t;
	struct skprof_jit_range *r;
	__u32 zero = 0, *active;
	long n;
	int i;

	if (!jit_in_use)
		return NULL;
	active = bpf_map_lookup_elem(&jit_active, &zero);
	if (!active)
		return NULL;
	t = bpf_map_lookup_elem(&jit_ranges, active);
	if (!t || t->n == 0)
		return NULL;
	n = bpf_get_stack(tctx, frames, sizeof(frames), 0);
	if (n <= 0)
		return NULL;
	n /= sizeof(__u64);
	for (i = 0; i < SKPROF_JIT_FRAMES; i++) {
		if (i >= n)
			break;
		/* Cheap rejection of kernel text before the search. */
		if (frames[i] < t->r[0].start)
			continue;
		r = jit_find(t, frames[i]);
		if (r)
			return r;
	}
	return NULL;
}

static __always_inline void on_entry(void *tctx, __u32 helper, __u64 k1, __u64 k2, __u32 reason,
				     __u64 pctx, __u64 tuple, __u64 len)
{
	struct inflight_slot *slot = NULL, *oldest = NULL;
	struct skprof_counters *c;
	struct skprof_runs *rs;
	struct skprof_run *run;
	struct inflight *f;
	__u32 zero = 0;
	int i;

	f = bpf_map_lookup_elem(&inflight, &zero);
	if (!f)
		return;
	for (i = 0; i < SKPROF_INFLIGHT; i++) {
		struct inflight_slot *s = &f->s[i];

		/* Claim atomically: a softirq lookup may interrupt a
		 * process-context (sock_addr) probe on this CPU. */
		if (s->ts == 0 && __sync_val_compare_and_swap(&s->ts, 0, 1) == 0) {
			slot = s;
			break;
		}
		if (!oldest || s->ts < oldest->ts)
			oldest = s;
	}
	if (!slot) {
		/* Every slot is held by a call whose exit never came (e.g. a
		 * recursion-missed fexit): reuse the oldest, and say so. */
		if (!oldest)
			return;
		slot = oldest;
		c = get_counters();
		if (c && slot->helper < SKPROF_NR_HELPERS)
			c->evicted_entry[slot->helper]++;
	}
	slot->k1 = k1;
	slot->k2 = k2;
	slot->tuple = tuple;
	slot->pctx = pctx;
	slot->len = (__u32)len;
	slot->helper = helper;
	slot->reason = reason;
	slot->prog_slot = 0;
	slot->prog_id = 0;
	slot->run_id = 0;
	/* The calling program, if traced: its run is recorded under the same
	 * ctx pointer the helper gets (skb, xdp_buff, bpf_sock_addr_kern). */
	rs = runs_in_use ? get_runs() : NULL;
	run = rs ? find_run(rs, pctx, 0) : NULL;
	if (run) {
		slot->prog_slot = run->prog_slot;
		slot->prog_id = run->prog_id;
		slot->run_id = run->run_id;
	} else {
		struct skprof_jit_range *r = stack_caller(tctx);

		if (r) {
			slot->prog_slot = r->prog_slot;
			slot->prog_id = r->prog_id;
		}
	}
	/* Last, so the probe's own work stays outside the timed window. */
	slot->ts = bpf_ktime_get_ns();
}

/* Records an acquired reference in the ledger and in the calling run;
 * false if the ledger could not (full). */
static __always_inline bool ledger_acquire(void *tctx, struct inflight_slot *call,
					   struct sock_common *skc, __u8 state,
					   __u32 cls, __u64 now)
{
	struct skprof_holder *hd = NULL, *free_hd = NULL;
	__u64 sk = (__u64)skc;
	struct skprof_counters *c;
	struct skprof_runs *rs;
	struct skprof_run *run = NULL;
	struct skprof_ref *ref;
	__u32 zero = 0, n, prog_id = call->prog_id;
	int i;

	ref = bpf_map_lookup_elem(&ledger, &sk);
	if (!ref) {
		ref = bpf_map_lookup_elem(&ref_scratch, &zero);
		if (!ref)
			return false;
		__builtin_memset(ref, 0, sizeof(*ref));
		ref->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
		ref->tuple_len = call->len > SKPROF_TUPLE_MAX ? SKPROF_TUPLE_MAX : call->len;
		/* Always 36 bytes, a constant size for the verifier: past an
		 * IPv4 tuple this copies a little of the caller's stack,
		 * which tuple_len tells user space to ignore. */
		bpf_probe_read_kernel(ref->tuple, sizeof(ref->tuple), (void *)call->tuple);
		/* One insert per socket; a concurrent insert wins the race
		 * and we count on top of it below. */
		if (bpf_map_update_elem(&ledger, &sk, ref, BPF_NOEXIST) == -ERR_E2BIG) {
			c = get_counters();
			if (c)
				c->ledger_full++;
			return false;
		}
		ref = bpf_map_lookup_elem(&ledger, &sk);
		if (!ref)
			return false;
	}
	ref->sock_class = cls;
	ref->state = state;

	if (call->run_id) {
		rs = get_runs();
		if (rs) {
			run = find_run(rs, call->pctx, 0);
			if (run && run->run_id != call->run_id)
				run = NULL;
		}
	}
	/* This acquirer's holder, else a free one, else the last (shared). */
	for (i = 0; i < SKPROF_REF_HOLDERS; i++) {
		struct skprof_holder *x = &ref->h[i];

		if (x->count && x->prog_slot == call->prog_slot && x->helper == call->helper) {
			hd = x;
			break;
		}
		if (!x->count && !free_hd)
			free_hd = x;
	}
	if (!hd)
		hd = free_hd ? free_hd : &ref->h[SKPROF_REF_HOLDERS - 1];
	if (!hd->count) {
		hd->stack_id = ledger_stacks ? bpf_get_stackid(tctx, &stacks, 0) : -1;
		hd->prog_slot = call->prog_slot;
		hd->helper = call->helper;
	}
	__sync_fetch_and_add(&hd->count, 1);
	hd->acquired_ns = now;
	hd->run_id = call->run_id;
	hd->prog_id = prog_id;
	hd->cpu = bpf_get_smp_processor_id();
	hd->refcnt = BPF_CORE_READ(skc, skc_refcnt.refs.counter);

	if (!run)
		return true;
	n = run->nr_acquired;
	if (n < SKPROF_RUN_REFS)
		run->acquired[n] = sk;
	run->nr_acquired = n + 1;
	return true;
}

static __always_inline void on_exit(void *tctx, __u32 helper, __u64 k1, __u64 k2, __u64 ret,
				    bool reason_at_exit, __u64 len, __u64 netns_id,
				    __u64 flags)
{
	__u64 now = bpf_ktime_get_ns();	/* first: see on_entry */
	struct inflight_slot *match = NULL;
	struct skprof_counters *c;
	struct skprof_hist_key key = {};
	struct skprof_hist *h;
	struct inflight *f;
	__u32 zero = 0, outcome;
	__u64 delta, ts = 0;
	int i;

	f = bpf_map_lookup_elem(&inflight, &zero);
	if (!f)
		return;
	/* The most recent entry with our key: in kprobe mode the same task can
	 * have nested calls (a softirq lookup on top of a sock_addr one). */
	for (i = 0; i < SKPROF_INFLIGHT; i++) {
		struct inflight_slot *s = &f->s[i];

		if (s->ts > 1 && s->k1 == k1 && s->k2 == k2 && s->helper == helper &&
		    s->ts > ts) {
			match = s;
			ts = s->ts;
		}
	}
	if (!match) {
		c = get_counters();
		if (c && helper < SKPROF_NR_HELPERS)
			c->unmatched_exit[helper]++;
		return;
	}
	if (ret)
		outcome = SKPROF_O_HIT;
	else if (reason_at_exit)
		outcome = miss_reason(helper, len, netns_id, flags);
	else
		outcome = match->reason;

	delta = now > ts ? now - ts : 0;
	key.prog_slot = match->prog_slot;
	key.helper = helper;
	key.outcome = outcome;
	if (places_on)
		lookup_place(helper, match->pctx, ret, &key);
	h = hist_of(&hists, &key);
	if (h) {
		hist_record(h, delta);
		if (ret) {
			struct sock_common *skc = (struct sock_common *)ret;
			__u8 state = BPF_CORE_READ(skc, skc_state);
			__u32 cls = sock_class(skc, state);

			if (cls < SKPROF_NR_CLASSES) {
				__u32 flags = 0;

				h->hits[cls]++;
				if (refcounted(skc, state)) {
					h->acquired[cls]++;
					flags = SKPROF_TF_REFCOUNTED;
					if (ledger_on && ledger_acquire(tctx, match, skc, state, cls, now))
						flags |= SKPROF_TF_RECORDED;
				}
				if (ledger_on)
					trace_ledger(SKPROF_EV_ACQUIRE, ret, match->run_id,
						     match->prog_slot, helper, cls, flags, now);
			}
		}
	}
	match->ts = 0;
}

/*
 * bpf_sk_release(sk): count whether it drops a reference, and close the
 * ledger entry. Read the socket here, at entry: after the call it may
 * already be freed.
 */
static __always_inline void on_release(__u64 sk)
{
	struct sock_common *skc = (struct sock_common *)sk;
	struct skprof_counters *c = get_counters();
	struct skprof_holder *hd = NULL;
	struct skprof_ref *ref;
	struct skprof_hist *h;
	__u32 slot, held = 0;
	__u64 now;
	int i;
	__u8 state;
	__u32 cls;

	if (!c)
		return;
	if (!sk) {
		c->release_null++;
		if (ledger_on)
			trace_ledger(SKPROF_EV_RELEASE, 0, 0, 0, 0, 0, 0, bpf_ktime_get_ns());
		return;
	}
	state = BPF_CORE_READ(skc, skc_state);
	cls = sock_class(skc, state);
	if (cls >= SKPROF_NR_CLASSES)
		return;
	if (!refcounted(skc, state)) {
		c->release_noop[cls]++;
		if (ledger_on)
			trace_ledger(SKPROF_EV_RELEASE, sk, 0, 0, 0, cls, 0, bpf_ktime_get_ns());
		return;
	}
	c->released[cls]++;
	if (!ledger_on)
		return;
	ref = bpf_map_lookup_elem(&ledger, &sk);
	if (ref) {
		/* The most recent acquirer's reference: runs nest (LIFO). */
		for (i = 0; i < SKPROF_REF_HOLDERS; i++) {
			struct skprof_holder *x = &ref->h[i];

			if (x->count && (!hd || x->acquired_ns > hd->acquired_ns))
				hd = x;
			if (x->count)
				held++;
		}
	}
	now = bpf_ktime_get_ns();
	if (!hd) {
		c->release_unmatched[cls]++;
		trace_ledger(SKPROF_EV_RELEASE, sk, 0, 0, 0, cls, SKPROF_TF_REFCOUNTED, now);
		return;
	}
	slot = hd->prog_slot;
	h = hist_of(&holds, &slot);
	if (h)
		hist_record(h, now - hd->acquired_ns);
	trace_ledger(SKPROF_EV_RELEASE, sk, hd->run_id, slot, hd->helper, cls,
		     SKPROF_TF_REFCOUNTED | SKPROF_TF_MATCHED, now);
	/* Last reference of the last holder: the socket leaves the ledger. */
	if (__sync_fetch_and_add(&hd->count, -1) <= 1 && held <= 1)
		bpf_map_delete_elem(&ledger, &sk);
}

/*
 * Every helper is BPF_CALL_5(name, ctx, tuple, len, netns_id, flags): in BTF
 * the traced function is u64 name(u64, u64, u64, u64, u64) returning the
 * struct sock * (or NULL) as u64.
 */
#define FENTRY_PAIR(fn, id)						\
SEC("fentry/" #fn)							\
int BPF_PROG(fentry_##fn, __u64 pctx, __u64 tuple, __u64 len)		\
{									\
	on_entry(ctx, id, pctx, tuple, 0, pctx, tuple, len);			\
	return 0;							\
}									\
SEC("fexit/" #fn)							\
int BPF_PROG(fexit_##fn, __u64 pctx, __u64 tuple, __u64 len,		\
	     __u64 netns_id, __u64 flags, __u64 ret)			\
{									\
	on_exit(ctx, id, pctx, tuple, ret, true, len, netns_id, flags);	\
	return 0;							\
}									\
SEC("kprobe/" #fn)							\
int BPF_KPROBE(kprobe_##fn, __u64 pctx, __u64 tuple, __u64 len,		\
	       __u64 netns_id, __u64 flags)				\
{									\
	on_entry(ctx, id, bpf_get_current_pid_tgid(), 0,			\
		 miss_reason(id, len, netns_id, flags), pctx, tuple, len); \
	return 0;							\
}									\
SEC("kretprobe/" #fn)							\
int BPF_KRETPROBE(kretprobe_##fn, __u64 ret)				\
{									\
	on_exit(ctx, id, bpf_get_current_pid_tgid(), 0, ret, false, 0, 0, 0); \
	return 0;							\
}

FENTRY_PAIR(bpf_sk_lookup_tcp, SKPROF_H_SK_LOOKUP_TCP)
FENTRY_PAIR(bpf_sk_lookup_udp, SKPROF_H_SK_LOOKUP_UDP)
FENTRY_PAIR(bpf_skc_lookup_tcp, SKPROF_H_SKC_LOOKUP_TCP)
FENTRY_PAIR(bpf_tc_sk_lookup_tcp, SKPROF_H_TC_SK_LOOKUP_TCP)
FENTRY_PAIR(bpf_tc_sk_lookup_udp, SKPROF_H_TC_SK_LOOKUP_UDP)
FENTRY_PAIR(bpf_tc_skc_lookup_tcp, SKPROF_H_TC_SKC_LOOKUP_TCP)
FENTRY_PAIR(bpf_xdp_sk_lookup_tcp, SKPROF_H_XDP_SK_LOOKUP_TCP)
FENTRY_PAIR(bpf_xdp_sk_lookup_udp, SKPROF_H_XDP_SK_LOOKUP_UDP)
FENTRY_PAIR(bpf_xdp_skc_lookup_tcp, SKPROF_H_XDP_SKC_LOOKUP_TCP)
FENTRY_PAIR(bpf_sock_addr_sk_lookup_tcp, SKPROF_H_SOCK_ADDR_SK_LOOKUP_TCP)
FENTRY_PAIR(bpf_sock_addr_sk_lookup_udp, SKPROF_H_SOCK_ADDR_SK_LOOKUP_UDP)
FENTRY_PAIR(bpf_sock_addr_skc_lookup_tcp, SKPROF_H_SOCK_ADDR_SKC_LOOKUP_TCP)

SEC("fentry/bpf_sk_release")
int BPF_PROG(fentry_bpf_sk_release, __u64 sk)
{
	on_release(sk);
	return 0;
}

SEC("kprobe/bpf_sk_release")
int BPF_KPROBE(kprobe_bpf_sk_release, __u64 sk)
{
	on_release(sk);
	return 0;
}
