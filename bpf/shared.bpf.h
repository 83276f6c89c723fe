/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps and ledger code shared by the helper probes (skprof.bpf.c) and the
 * per-program attribution probes (attrib.bpf.c). Each attribution object is
 * loaded with the shared maps replaced by the probe object's
 * (bpf_map__reuse_fd), so all objects see one run table, one ledger and one
 * ring buffer.
 */
#ifndef SKPROF_SHARED_BPF_H
#define SKPROF_SHARED_BPF_H

#include "skprof.h"
#include "sock.bpf.h"

#define ERR_E2BIG 7	/* a full hash map refuses inserts with -E2BIG */

/* key: 0; value: this CPU's traced program runs in flight, each with the
 * sockets it holds (the run-local ledger), and its counters */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_runs);
} runs SEC(".maps");

/* The global ledger. key: socket pointer; value: the references on it that
 * no run table holds: those of callers skprof does not trace, those a run
 * ended with (run leaks), and a run's overflow (size: --ledger-size) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct skprof_ref);
} ledger SEC(".maps");

/* leak events (struct skprof_event) and, with --trace, ledger steps */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* key: 0; value: scratch space to build a new ledger entry (too big for
 * the BPF stack); each object has its own */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_ref);
} ref_scratch SEC(".maps");

static __always_inline struct skprof_runs *get_runs(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&runs, &zero);
}

static __always_inline struct skprof_counters *get_counters(void)
{
	struct skprof_runs *rs = get_runs();

	return rs ? &rs->counters : NULL;
}

/* find_run's search of every slot. */
static __always_inline int scan_runs(struct skprof_runs *rs, __u64 ctx, __u32 slot)
{
	int i, found = -1;
	__u64 best = 0;

	for (i = 0; i < SKPROF_RUN_SLOTS; i++) {
		struct skprof_run *r = &rs->r[i];

		if (r->ctx == ctx && (!slot || r->prog_slot == slot) && r->run_id >= best) {
			found = i;
			best = r->run_id;
		}
	}
	return found;
}

/*
 * scan_runs as a global function: the verifier checks it once, on its own,
 * instead of following each outcome of the unrolled loop through the rest
 * of every caller (which made each helper's exit probe take seconds to
 * load under TCG). `ctx` must be a plain number: a global function takes
 * no typed pointer.
 */
__noinline int find_run_scan(struct skprof_runs *rs, __u64 ctx, __u32 slot)
{
	if (!rs)
		return -1;
	return scan_runs(rs, ctx, slot);
}

/* The index of the newest run in flight on this CPU with this ctx (and,
 * unless `slot` is 0, of that program slot), or -1. The helper probes do
 * not know the program (slot 0); a program's own exit probe does, and
 * its ctx is typed (the traced program's ctx pointer: `typed_ctx`), so it
 * searches inline. */
static __always_inline int find_run(struct skprof_runs *rs, __u64 ctx, __u32 slot,
				    bool typed_ctx)
{
	int i;

	if (!ctx)
		return -1;
	/* The run claimed last is the newest, and the one running unless a
	 * nested run has come and gone: one compare in the common case. */
	i = rs->last & (SKPROF_RUN_SLOTS - 1);
	if (rs->r[i].ctx == ctx && (!slot || rs->r[i].prog_slot == slot))
		return i;
	if (typed_ctx)
		return scan_runs(rs, ctx, slot);
	return find_run_scan(rs, ctx, slot);
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "held_put packs skprof_held.meta for a little-endian target"
#endif

/*
 * A lookup of `run` returned `sk`: it goes on this CPU's held stack as entry
 * `n` (the stack's top; the caller checked n < SKPROF_HELD), where a release
 * takes it back or the run's end finds it. Five stores: helper, class,
 * flags and stack id go in as one word (meta), as on every traced hit this
 * is most of what the ledger costs.
 */
static __always_inline void held_put(struct skprof_runs *rs, __u32 n, struct skprof_run *run,
				     __u64 sk, __u64 acquired_ns, __u32 helper, __u32 cls,
				     bool refcounted, __s32 stack_id)
{
	struct skprof_held *e = &rs->held[n & (SKPROF_HELD - 1)];

	e->sk = sk;
	e->run_id = run->run_id;
	e->acquired_ns = acquired_ns;
	e->meta = (__u64)(__u16)helper | (__u64)(__u8)cls << 16 |
		  (__u64)(refcounted ? SKPROF_RF_REFCOUNTED : 0) << 24 |
		  (__u64)(__u32)stack_id << 32;
	e->prog_slot = run->prog_slot;
	rs->nr_held = n + 1;
}

/* held_put for run `k` of the run table; false when the stack is full. */
static __always_inline bool held_push(struct skprof_runs *rs, int k, __u64 sk, __u64 acquired_ns,
				      __u32 helper, __u32 cls, bool refcounted, __s32 stack_id,
				      __u64 site)
{
	__u32 n = rs->nr_held;

	if (n >= SKPROF_HELD)
		return false;
	held_put(rs, n, &rs->r[k & (SKPROF_RUN_SLOTS - 1)], sk, acquired_ns, helper, cls,
		 refcounted, stack_id);
	/* Only here, not in held_put: fexit_fast never runs with sites on,
	 * so without sites every entry's site stays 0 (the map starts
	 * zeroed) and the fast path has no store for it. */
	rs->held[n & (SKPROF_HELD - 1)].site = site;
	return true;
}

/*
 * Drops the emptied entries (sk 0) off the top of this CPU's held stack.
 * An entry taken from the middle stays as a hole until everything above it
 * is gone, which keeps the stack in acquire order without moving entries.
 */
static __always_inline void held_trim(struct skprof_runs *rs, __u32 n)
{
	__u32 i, j;

	for (i = 0; i < SKPROF_HELD; i++) {
		j = SKPROF_HELD - 1 - i;
		if (j >= n)
			continue;
		if (rs->held[j].sk)
			break;
		n = j;
	}
	rs->nr_held = n;
}

/* held_trim as a global function, out of the callers' hot paths (a hole
 * under the top entry is rare) and checked once by the verifier. */
__noinline int held_trim_fn(struct skprof_runs *rs, __u32 n)
{
	if (!rs)
		return 0;
	held_trim(rs, n);
	return 0;
}

/*
 * Takes entry `j` of `n` off the held stack; callers read what they need of
 * it first (a lookup nested on this CPU may reuse the slot right after).
 * The top entry is never a hole (held_trim keeps it so), so only taking the
 * top entry needs a trim, and only when a hole lies under it.
 */
static __always_inline void held_remove(struct skprof_runs *rs, __u32 j, __u32 n)
{
	j &= SKPROF_HELD - 1;
	rs->held[j].sk = 0;
	if (j + 1 == n) {
		rs->nr_held = j;
		if (j && !rs->held[(j - 1) & (SKPROF_HELD - 1)].sk)
			held_trim_fn(rs, j);
	}
}

/*
 * A release of `sk`: the newest entry for it on this CPU's held stack (runs
 * nest: last in, first out), taken out into `out`. False if none. Searched
 * from the top down with a constant index in each unrolled step, so the
 * verifier carries no index range beyond the loop.
 */
static __always_inline bool held_take(struct skprof_runs *rs, __u64 sk, struct skprof_held *out)
{
	__u32 n = rs->nr_held, i, j;

	if (n > SKPROF_HELD)
		n = SKPROF_HELD;
	if (!n)
		return false;
	/* The common case: a lookup released before the next one, the top
	 * entry, without a search. */
	j = (n - 1) & (SKPROF_HELD - 1);
	if (rs->held[j].sk == sk) {
		*out = rs->held[j];
		held_remove(rs, j, n);
		return true;
	}
	for (i = 0; i < SKPROF_HELD; i++) {
		j = SKPROF_HELD - 1 - i;
		if (j >= n || rs->held[j].sk != sk)
			continue;
		*out = rs->held[j];
		held_remove(rs, j, n);
		return true;
	}
	return false;
}

/* Ledger trace switch; each object sets its own copy before load. */
const volatile bool ledger_trace = false;

/* Emits one ledger trace record; a full ring buffer is counted. `ts` 0:
 * now. (A clock read passed as an argument would be made on every call,
 * tracing or not: the call is not dead code even when the body is.) */
static __always_inline void trace_ledger(__u32 type, __u64 sk, __u64 run_id, __u32 prog_slot,
					 __u32 helper, __u32 cls, __u32 flags, __u64 ts)
{
	struct skprof_counters *c;
	struct skprof_trace *t;

	if (!ledger_trace)
		return;
	t = bpf_ringbuf_reserve(&events, sizeof(*t), 0);
	if (!t) {
		c = get_counters();
		if (c)
			c->events_dropped++;
		return;
	}
	t->type = type;
	t->helper = helper;
	if (!ts)
		ts = bpf_ktime_get_ns();
	t->sock_class = cls;
	t->flags = flags;
	t->ts = ts;
	t->sk = sk;
	t->run_id = run_id;
	t->prog_slot = prog_slot;
	t->cpu = bpf_get_smp_processor_id();
	bpf_ringbuf_submit(t, 0);
}

/* Who takes a reference into the global ledger. */
struct ledger_holder {
	__u64 acquired_ns;
	__u64 run_id;
	__u64 tuple;		/* the lookup's tuple pointer, 0: from the socket */
	__u64 site;		/* the lookup's call site, 0: unknown */
	__u32 len;		/* the lookup's tuple length */
	__u32 prog_slot;
	__u32 prog_id;
	__s32 stack_id;
	__u16 helper;
	__u8 sock_class;
	__u8 state;
};

/*
 * Records a reference in the global ledger: one entry per socket, a holder
 * per (program, helper), a fifth acquirer sharing the last holder. 0 if the
 * ledger is full (counted), else 1. The slow path: callers skprof does not
 * trace, runs that ended holding a reference, and a run's overflow.
 *
 * A global function: the verifier checks it once, not once per path that
 * reaches a call (which made prog_exit too complex to load).
 */
__noinline int ledger_hold(__u64 sk, struct ledger_holder *w)
{
	struct skprof_holder *hd = NULL, *free_hd = NULL;
	struct sock_common *skc = (struct sock_common *)sk;
	struct skprof_counters *c;
	struct skprof_ref *ref;
	__u32 zero = 0;
	int i;

	if (!w)
		return 0;

	ref = bpf_map_lookup_elem(&ledger, &sk);
	if (!ref) {
		ref = bpf_map_lookup_elem(&ref_scratch, &zero);
		if (!ref)
			return 0;
		__builtin_memset(ref, 0, sizeof(*ref));
		ref->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
		if (w->tuple) {
			ref->tuple_len = w->len > SKPROF_TUPLE_MAX ? SKPROF_TUPLE_MAX : w->len;
			/* Always 36 bytes, a constant size for the verifier:
			 * past an IPv4 tuple this copies a little of the
			 * caller's stack, which tuple_len tells user space to
			 * ignore. */
			bpf_probe_read_kernel(ref->tuple, sizeof(ref->tuple), (void *)w->tuple);
		} else {
			tuple_of_sock(skc, ref);
		}
		/* One insert per socket; a concurrent insert wins the race
		 * and we count on top of it below. */
		if (bpf_map_update_elem(&ledger, &sk, ref, BPF_NOEXIST) == -ERR_E2BIG) {
			c = get_counters();
			if (c)
				c->ledger_full++;
			return 0;
		}
		ref = bpf_map_lookup_elem(&ledger, &sk);
		if (!ref)
			return 0;
	}
	ref->sock_class = w->sock_class;
	ref->state = w->state;
	/* This acquirer's holder, else a free one, else the last (shared). */
	for (i = 0; i < SKPROF_REF_HOLDERS; i++) {
		struct skprof_holder *x = &ref->h[i];

		if (x->count && x->prog_slot == w->prog_slot && x->helper == w->helper &&
		    x->site == w->site) {
			hd = x;
			break;
		}
		if (!x->count && !free_hd)
			free_hd = x;
	}
	if (!hd)
		hd = free_hd ? free_hd : &ref->h[SKPROF_REF_HOLDERS - 1];
	if (!hd->count) {
		hd->stack_id = w->stack_id;
		hd->prog_slot = w->prog_slot;
		hd->helper = w->helper;
		hd->site = w->site;
	}
	__sync_fetch_and_add(&hd->count, 1);
	hd->acquired_ns = w->acquired_ns;
	hd->run_id = w->run_id;
	hd->prog_id = w->prog_id;
	hd->cpu = bpf_get_smp_processor_id();
	hd->refcnt = BPF_CORE_READ(skc, skc_refcnt.refs.counter);
	return 1;
}

#endif /* SKPROF_SHARED_BPF_H */
