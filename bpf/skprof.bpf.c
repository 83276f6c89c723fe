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
#include "hist.bpf.h"
#include "sock.bpf.h"
#include "lookup.bpf.h"
#include "jit.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A call between its entry and exit, kept for the calls that need one: in
 * fentry mode the timed calls (the exit finds its start time), in kprobe
 * mode every call (the return probe sees no arguments). */
struct inflight_slot {
	__u64 ts;	/* entry time; 0: the call is not timed */
	__u64 k1;	/* fentry: ctx pointer;   kprobe: pid_tgid */
	__u64 k2;	/* fentry: tuple pointer; kprobe: 0 */
	__u64 seq;	/* claim order on this CPU (the oldest is evicted) */
	/* kprobe mode, from the entry's arguments: */
	__u64 tuple;	/* tuple pointer, for the ledger */
	__u64 pctx;	/* the calling program's ctx pointer */
	__u64 run_id;	/* calling run, 0 if not traced */
	__u32 busy;	/* 0: free */
	__u32 helper;
	__u32 reason;	/* miss reason computed at entry */
	__u32 prog_slot;	/* calling program, 0 if not attributed */
	__u32 prog_id;
	__u32 len;	/* tuple length argument */
};

/*
 * Latency sampling, per (CPU, helper). Counting a call costs a few loads
 * and stores; timing it costs two clock reads (bpf_ktime_get_ns(), each a
 * call into the timekeeping code and a TSC read), which are most of what a
 * probe pair adds beyond the empty trampolines. So every call is counted
 * and a call is timed unless the sampler says to let it pass: after each
 * timed call it draws how many to let pass, uniformly at random (so that no
 * periodic pattern in the calls aliases with the sampling), with a mean of
 * sample_every - 1, or in auto mode such that timed calls of this helper on
 * this CPU are spaced sample_budget_ns apart on average. A helper called
 * less often than that is timed on every call.
 */
struct sampler {
	__u32 skip;	/* calls to let pass untimed before the next timed one */
	__u32 span;	/* calls from the last timed one's entry to the next's */
	__u64 last_ts;	/* entry time of the last timed call */
};

/* Per-CPU state of the helper probes. */
struct probe_cpu {
	struct inflight_slot s[SKPROF_INFLIGHT];
	struct sampler sm[SKPROF_NR_HELPERS];
	__u64 rng;	/* xorshift64 state; 0 until first used */
	__u64 seq;	/* claims made */
	/* (how many slots are in use, and this CPU's number: in struct
	 * skprof_runs, which the exit's common path looks up anyway) */
};

/* key: 0; value: this CPU's calls between entry and exit, and samplers */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct probe_cpu);
} inflight SEC(".maps");

/* key: (program, helper, outcome, netns, ifindex); value: latency
 * histogram, and with places_on the calls and hit classes. Preallocated
 * (--max-series entries): a map that allocates on insert can fail to in a
 * tracing program while its per-CPU cache waits for a refill, and every
 * call of a new key would be lost (seen on 6.1: a fifth of the calls of
 * `stat --by interface`). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct skprof_hist_key);
	__type(value, struct skprof_hist);
} hists SEC(".maps");

/* Without places_on: every call, by (CPU, program slot, helper); index
 * (cpu * SKPROF_MAX_PROGS + prog_slot) * SKPROF_NR_HELPERS + helper. An
 * array indexed by CPU rather than a per-CPU map, so that user space reads
 * it through mmap, with no system call per element; sized by user space
 * (possible CPUs x SKPROF_MAX_PROGS x SKPROF_NR_HELPERS). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SKPROF_MAX_PROGS * SKPROF_NR_HELPERS);
	__type(key, __u32);
	__type(value, struct skprof_calls);
} calls SEC(".maps");

/* key: program slot; value: how long references were held (acquire to
 * release), by the program that acquired them */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SKPROF_MAX_PROGS);
	__type(key, __u32);
	__type(value, struct skprof_hist);
} holds SEC(".maps");

/* --sites: key: bpf_sk_release()'s call site; value: what it released */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct skprof_release_site);
} release_sites SEC(".maps");

/* --sites: references released, by (acquire site, release site) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct skprof_site_pair);
	__type(value, __u64);
} site_pairs SEC(".maps");

/* kernel stacks of acquires, referenced by skprof_holder.stack_id */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 32 * sizeof(__u64));
} stacks SEC(".maps");

/*
 * Written by user space through the mmapped .bss while the probes run:
 * whether any program is traced (so the run table is worth searching). A
 * plain load, where the map lookup it guards is a helper call: without
 * attribution the hot path makes none (jit_in_use, in jit.bpf.h, does the
 * same for the JIT table).
 */
volatile __u32 runs_in_use;

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
/*
 * The tests of the fast paths, each one constant set by user space with
 * the flags above (a const volatile is a load and a branch per test, on
 * every call): exit_fast_ok is !places_on && !ledger_stacks &&
 * !ledger_trace, release_fast_ok is ledger_on && !ledger_trace. False
 * (their default) sends every call down the slow paths, which handle all.
 */
const volatile bool exit_fast_ok = false;
const volatile bool release_fast_ok = false;
/*
 * Call sites (--sites): every lookup's and release's return address into
 * the calling program, in the histogram key, the held stack and the
 * ledger. site_fn: the traced kernel functions' addresses (the lookup
 * helpers by enum skprof_helper, then bpf_sk_release), from kallsyms.
 */
const volatile bool sites_on = false;
const volatile __u64 site_fn[SKPROF_NR_HELPERS + 1] = {};
/*
 * fentry mode: where in the trampoline's frame the call site is, in words
 * above the probe's ctx (the saved arguments), for the lookup helpers [0]
 * and bpf_sk_release [1]; 0 until found. The x86-64 trampoline
 * (arch_prepare_bpf_trampoline) pushes rbp over the return address into the
 * traced function, which sits over the return address into its caller, the
 * call site; the saved arguments lie a distance below that depends on the
 * kernel, the function's arity and the trampoline's flags. So the distance
 * is found, not assumed: the word holding the return into the traced
 * function (its address + 5, or + 9 after an endbr64) is searched for, and
 * checked again on every call. In a section of its own: user space writes
 * the whole .bss, which would undo what a probe found.
 */
volatile __u32 site_slot[2] SEC(".data.sites");
/* Words of the trampoline's frame searched above ctx. */
#define SITE_SEARCH_CHUNKS 8
#define SITE_CHUNK 8

/* Latency sampling (struct sampler): time one call in sample_every on
 * average; 0: auto, spacing timed calls sample_budget_ns apart per (CPU,
 * helper) on average; 1: time every call. */
const volatile __u32 sample_every = 0;
const volatile __u64 sample_budget_ns = 50000;
/* Calls a sampler lets pass at most between two timed ones (on average
 * half this): bounds how stale the sampler's view of the call rate gets. */
#define SAMPLE_MAX_SKIP 4096

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
	.rf_refcounted = SKPROF_RF_REFCOUNTED,
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

/* xorshift64: cheap randomness for the sampler (bpf_get_prandom_u32() is a
 * helper call as costly as a clock read). */
static __always_inline __u64 next_rand(struct probe_cpu *f)
{
	__u64 x = f->rng;

	if (!x)
		x = bpf_ktime_get_ns() | 1;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	f->rng = x;
	return x;
}

/*
 * After a timed call whose entry was at `ts`: how many of this helper's
 * next calls on this CPU to let pass untimed (see struct sampler).
 */
static __always_inline void sampler_update(struct probe_cpu *f, struct sampler *sm, __u64 ts)
{
	__u64 mean, gap, target, skip;

	if (sample_every == 1)
		return;
	if (sample_every) {
		target = sample_every - 1;
	} else {
		/* Calls came every `gap / span` ns since the last timed one. */
		gap = ts - sm->last_ts;
		mean = sm->span && sm->last_ts && ts > sm->last_ts ? gap / sm->span : 0;
		target = mean && mean < sample_budget_ns ? sample_budget_ns / mean - 1 : 0;
	}
	sm->last_ts = ts;
	if (target > SAMPLE_MAX_SKIP / 2)
		target = SAMPLE_MAX_SKIP / 2;
	/* Uniform in [0, 2 * target]: mean `target`. */
	skip = target ? next_rand(f) % (2 * target + 1) : 0;
	sm->skip = skip;
	sm->span = skip + 1;
}

/*
 * The index of the most recent in-flight entry with this key, or -1. A
 * global function, checked once by the verifier (see find_run_scan).
 */
__noinline int inflight_find(struct probe_cpu *f, __u64 k1, __u64 k2, __u32 helper)
{
	__u64 seq = 0;
	int i, found = -1;

	if (!f)
		return -1;
	for (i = 0; i < SKPROF_INFLIGHT; i++) {
		struct inflight_slot *s = &f->s[i];

		if (s->busy && s->k1 == k1 && s->k2 == k2 && s->helper == helper && s->seq > seq) {
			found = i;
			seq = s->seq;
		}
	}
	return found;
}

/* Whether `w` is the return address of a call at the entry of `fn`: the
 * fentry call site is the function's first instruction, or follows its
 * endbr64 (4 bytes) with IBT. */
static __always_inline bool returns_into(__u64 w, __u64 fn)
{
	return w == fn + 5 || w == fn + 9;
}

/* The search of site_tramp: the frame read in overlapping chunks of
 * SITE_CHUNK + 1 words, so a return address in a chunk's last word still
 * has its caller's next to it. Out of line: only the first call, or one
 * after the layout changed, comes here. */
static __noinline __u64 site_search(__u64 *ctx, __u32 kind, __u64 fn)
{
	struct skprof_counters *c = get_counters();
	__u64 w[SITE_CHUNK + 1];
	int i, j;

	if (c)
		c->site_searches++;
#pragma unroll
	for (i = 0; i < SITE_SEARCH_CHUNKS; i++) {
		if (bpf_probe_read_kernel(w, sizeof(w), (void *)ctx + i * SITE_CHUNK * 8))
			break;
#pragma unroll
		for (j = 0; j < SITE_CHUNK; j++) {
			if (returns_into(w[j], fn)) {
				site_slot[kind & 1] = i * SITE_CHUNK + j;
				return w[j + 1];
			}
		}
	}
	if (c)
		c->site_unknown++;
	return 0;
}

/*
 * fentry/fexit mode: the call site of the traced function `fn` (kind 0: a
 * lookup helper, 1: bpf_sk_release), from the trampoline's frame above the
 * probe's `ctx`: two words at the known distance, the first checked to be
 * the return into `fn` (so a frame laid out differently is never read as
 * a site), else searched for.
 */
static __always_inline __u64 site_tramp(__u64 *ctx, __u32 kind, __u64 fn)
{
	__u32 k = site_slot[kind & 1];
	__u64 w[2];

	if (k && k < SITE_SEARCH_CHUNKS * SITE_CHUNK &&
	    !bpf_probe_read_kernel(w, sizeof(w), (void *)ctx + k * 8) && returns_into(w[0], fn))
		return w[1];
	return site_search(ctx, kind, fn);
}

/* kprobe mode: at a function's first instruction its return address, the
 * call site, is at the stack pointer (bpf_sk_release: no return probe
 * has replaced it). */
static __always_inline __u64 site_kprobe(void *tctx)
{
	__u64 site = 0;

	if (bpf_probe_read_kernel(&site, sizeof(site), (void *)PT_REGS_SP((struct pt_regs *)tctx)))
		return 0;
	return site;
}

/* The calling program of a call, and its run when traced. */
struct caller {
	__u64 run_id;
	__u32 prog_slot;
	__u32 prog_id;
	struct skprof_runs *rs;	/* with `run`: this CPU's run table */
	int run;		/* index of the run in rs->r, -1: none */
};

/*
 * Which program made the call: a traced program's run is recorded under the
 * ctx pointer the helper gets (skb, xdp_buff, bpf_sock_addr_kern); an
 * untraced one is found from the kernel stack when the JIT table lists it.
 */
static __always_inline void find_caller(void *tctx, __u64 pctx, struct caller *who)
{
	struct skprof_runs *rs = runs_in_use ? get_runs() : NULL;
	struct skprof_jit_range *r;
	int k = rs ? find_run(rs, pctx, 0, false) : -1;

	who->run = -1;
	if (rs && k >= 0 && k < SKPROF_RUN_SLOTS) {
		who->rs = rs;
		k = bounded(k, SKPROF_RUN_SLOTS);
		who->run = k;
		who->run_id = rs->r[k].run_id;
		who->prog_slot = rs->r[k].prog_slot;
		who->prog_id = rs->r[k].prog_id;
		return;
	}
	r = stack_caller(tctx);
	if (r) {
		who->prog_slot = r->prog_slot;
		who->prog_id = r->prog_id;
	}
}

/*
 * Claims an in-flight slot on this CPU for a call of `helper` (the oldest
 * slot, counted as evicted, when all are held). NULL only when there is no
 * slot at all.
 */
static __always_inline struct inflight_slot *entry_claim(struct probe_cpu *f, __u32 helper)
{
	struct inflight_slot *slot = NULL, *oldest = NULL;
	struct skprof_counters *c;
	struct skprof_runs *rs;
	int i;

	for (i = 0; i < SKPROF_INFLIGHT; i++) {
		struct inflight_slot *s = &f->s[i];

		/* Claim atomically: a softirq lookup may interrupt a
		 * process-context (sock_addr) probe on this CPU. */
		if (!s->busy && __sync_val_compare_and_swap(&s->busy, 0, 1) == 0) {
			slot = s;
			break;
		}
		if (!oldest || s->seq < oldest->seq)
			oldest = s;
	}
	if (slot) {
		rs = get_runs();
		if (rs)
			__sync_fetch_and_add(&rs->inflight, 1);
	} else {
		/* Every slot is held by a call whose exit never came (e.g. a
		 * recursion-missed fexit): reuse the oldest, and say so. */
		if (!oldest)
			return NULL;
		slot = oldest;
		c = get_counters();
		if (c && slot->helper < SKPROF_NR_HELPERS)
			c->evicted_entry[slot->helper]++;
	}
	slot->seq = ++f->seq;
	slot->helper = helper;
	return slot;
}

/*
 * A timed call's entry in fentry mode, keyed by the helper's first two
 * arguments (ctx and tuple pointers).
 *
 * Out of line, like the exit's and the release's slow paths (exit_slow,
 * release_slow): a function not inlined is JITed as an image of its own,
 * so what nearly every call runs (an untimed entry, fexit_fast,
 * release_fast) stays a short image instead of the head of a long one
 * (hot/cold splitting: fewer cache lines and pages touched per call; in
 * the bench's TCG guests a jump across a page also costs a translation
 * block lookup).
 */
__noinline int entry_timed(struct probe_cpu *f, __u32 helper, __u64 k1, __u64 k2)
{
	struct inflight_slot *slot;

	if (!f)
		return 0;
	slot = entry_claim(f, helper);
	if (!slot)
		return 0;
	slot->k1 = k1;
	slot->k2 = k2;
	/* Last, so the probe's own work stays outside the timed window. */
	slot->ts = bpf_ktime_get_ns();
	return 0;
}

/*
 * A helper's entry. `args` are the helper's five arguments (ctx, tuple,
 * len, netns_id, flags): the fentry program's own context, read only when
 * needed, so an untimed call reads none.
 */
static __always_inline void on_entry(void *tctx, __u32 helper, bool kprobe, __u64 *args)
{
	struct inflight_slot *slot;
	struct caller who = {};
	struct probe_cpu *f;
	struct sampler *sm;
	__u32 zero = 0;
	bool timed = true;

	f = bpf_map_lookup_elem(&inflight, &zero);
	if (!f || helper >= SKPROF_NR_HELPERS)
		return;
	sm = &f->sm[helper];
	if (sm->skip) {
		sm->skip--;
		timed = false;
	}
	/* fentry: an untimed call's exit sees everything it needs. */
	if (!kprobe) {
		if (timed)
			entry_timed(f, helper, args[0], args[1]);
		return;
	}
	slot = entry_claim(f, helper);
	if (!slot)
		return;
	/* The return probe sees no arguments: keep what it needs. */
	slot->k1 = bpf_get_current_pid_tgid();
	slot->k2 = 0;
	slot->pctx = args[0];
	slot->tuple = args[1];
	slot->len = (__u32)args[2];
	slot->reason = miss_reason(helper, args[2], args[3], args[4]);
	find_caller(tctx, args[0], &who);
	slot->prog_slot = who.prog_slot;
	slot->prog_id = who.prog_id;
	slot->run_id = who.run_id;
	/* Last, so the probe's own work stays outside the timed window. */
	slot->ts = timed ? bpf_ktime_get_ns() : 0;
}

/* This CPU's cell of the calls array for (program slot, helper), once
 * rs->cpu1 is known. */
static __always_inline struct skprof_calls *calls_cell_known(struct skprof_runs *rs,
							     __u32 prog_slot, __u32 helper)
{
	__u32 idx = prog_slot < SKPROF_MAX_PROGS ? prog_slot : 0;

	idx = ((rs->cpu1 - 1) * SKPROF_MAX_PROGS + idx) * SKPROF_NR_HELPERS + helper;
	return bpf_map_lookup_elem(&calls, &idx);
}

/* This CPU's cell of the calls array for (program slot, helper). */
static __always_inline struct skprof_calls *calls_cell(struct skprof_runs *rs, __u32 prog_slot,
						       __u32 helper)
{
	if (!rs->cpu1)
		rs->cpu1 = bpf_get_smp_processor_id() + 1;
	return calls_cell_known(rs, prog_slot, helper);
}

/* Counts a call in its calls cell `n`. */
static __always_inline void count_in(struct skprof_calls *n, __u32 outcome, __u64 ret, __u32 cls,
				     bool refcounted)
{
	if (outcome < SKPROF_NR_OUTCOMES)
		n->outcomes[outcome]++;
	if (ret) {
		n->hits[cls]++;
		if (refcounted)
			n->acquired[cls]++;
	}
}

/* Counts a call not grouped by place in the directly indexed calls array. */
static __always_inline void count_call(struct skprof_runs *rs, __u32 prog_slot, __u32 helper,
				       __u32 outcome, __u64 ret, __u32 cls, bool refcounted)
{
	struct skprof_calls *n = calls_cell(rs, prog_slot, helper);

	if (n)
		count_in(n, outcome, ret, cls, refcounted);
}

/*
 * A lookup returned `ret` (the ledger is on): the reference goes on the held
 * stack of the caller's run, else (an untraced caller, or the stack full)
 * into the global ledger when it is refcounted. `now`: the lookup's return
 * time when timed, else 0; `tuple`, `len`: the lookup's tuple argument.
 */
static __always_inline void acquire(void *tctx, struct caller *who, __u64 ret, __u64 now,
				    __u32 helper, __u32 cls, struct sock_view *v, __u64 tuple,
				    __u32 len, __u64 site)
{
	__u32 tf = v->refcounted ? SKPROF_TF_REFCOUNTED : 0;
	bool recorded = false;
	__s32 stack_id = -1;

	if (ledger_stacks && v->refcounted)
		stack_id = bpf_get_stackid(tctx, &stacks, 0);
	/* The reference's time is the lookup's return, as the trace reports
	 * it; an untimed lookup on the held stack reads no clock (0). */
	if (who->run >= 0 && who->rs)
		recorded = held_push(who->rs, who->run, ret, now, helper, cls, v->refcounted,
				     stack_id, site);
	if (now)
		tf |= SKPROF_TF_TIMED;
	if (!recorded && v->refcounted) {
		if (!now)
			now = bpf_ktime_get_ns();
		struct ledger_holder w = {
			.acquired_ns = now,
			.run_id = who->run_id,
			.tuple = tuple,
			.site = site,
			.len = len,
			.prog_slot = who->prog_slot,
			.prog_id = who->prog_id,
			.stack_id = stack_id,
			.helper = helper,
			.sock_class = cls,
			.state = v->state != SOCK_STATE_UNREAD ?
					 v->state :
					 BPF_CORE_READ((struct sock_common *)ret, skc_state),
		};

		if (who->run >= 0 && who->rs)
			who->rs->counters.run_refs_full++;
		recorded = ledger_hold(ret, &w);
	}
	if (recorded)
		tf |= SKPROF_TF_RECORDED;
	trace_ledger(SKPROF_EV_ACQUIRE, ret, who->run_id, who->prog_slot, helper, cls, tf, now);
}

/*
 * The fexit probe's common case, in as few instructions as it can be done
 * (what a probe runs beyond the empty trampoline pair is skprof's whole
 * cost): an untimed call (nothing in flight on this CPU, so no entry to
 * find and no clock to read), not grouped by place, with no stacks, from
 * the run in the run table's last slot or, without attribution, from any
 * caller, and no reference for the global ledger (a hit of an untraced
 * caller, or with the held stack full). False, having changed nothing,
 * when the call is not that case: on_exit then handles it.
 *
 * It makes no call (on 6.2+, where the socket is read with loads): every
 * case that needs one is left to on_exit. In a function without calls the
 * compiler keeps what it needs in the registers a call would clobber,
 * instead of spilling to the stack (each spill a store and a load more, on
 * the path nearly every lookup takes).
 */
static __always_inline bool fexit_fast(__u64 *ctx, __u32 helper, __u64 ret)
{
	struct skprof_runs *rs;
	struct skprof_run *r = NULL;
	struct skprof_calls *n;
	struct sock_view v;
	__u32 slot = 0, held = 0;
	bool ledger;

	/* Not grouped by place, no stacks, no trace (one constant: see
	 * exit_fast_ok). */
	if (!exit_fast_ok || helper >= SKPROF_NR_HELPERS)
		return false;
	rs = get_runs();
	/* A timed call in flight on this CPU (an entry to find), or this
	 * CPU's number not yet known (calls_cell learns it): on_exit. */
	if (!rs || rs->inflight || !rs->cpu1)
		return false;
	if (runs_in_use) {
		r = &rs->r[rs->last & (SKPROF_RUN_SLOTS - 1)];
		if (r->ctx != ctx[0])
			return false;
		slot = r->prog_slot;
	} else if (jit_in_use) {
		return false;
	}
	/* Looked up before the ledger's tests below: what they compute is
	 * then not kept across the lookup (to the compiler a helper call,
	 * which clobbers r1-r5, so it would spill it to the stack). */
	n = calls_cell_known(rs, slot, helper);
	if (!n)
		return false;
	if (!ret) {
		count_in(n, miss_reason(helper, ctx[2], ctx[3], ctx[4]), 0, 0, false);
		return true;
	}
	/* A hit for the global ledger (an untraced caller's, or with the held
	 * stack full): on_exit. ledger_on is read once (a const volatile is a
	 * load each time it is named), and so is the stack's size. */
	ledger = ledger_on;
	if (ledger) {
		held = rs->nr_held;
		if (!r || held >= SKPROF_HELD)
			return false;
	}
	read_sock(ret, helper_proto(helper), &v);
	count_in(n, SKPROF_O_HIT, ret, v.cls, v.refcounted);
	if (ledger && r)
		held_put(rs, held, r, ret, 0, helper, v.cls, v.refcounted, -1);
	return true;
}

/* A helper's exit; `args` as for on_entry (fentry only), `ret` the socket
 * found or 0. */
static __always_inline void on_exit(void *tctx, __u32 helper, bool kprobe, __u64 *args,
				    __u64 ret)
{
	struct inflight_slot *match = NULL;
	struct skprof_hist_key key = {};
	struct skprof_hist *h = NULL;
	struct caller who = {};
	struct sock_view v = {};
	struct skprof_runs *rs;
	struct probe_cpu *f;
	__u64 now = 0, ts = 0, k1, k2, pctx, tuple, site = 0;
	__u32 zero = 0, outcome, cls = 0;
	int i;

	f = bpf_map_lookup_elem(&inflight, &zero);
	rs = get_runs();
	if (!f || !rs || helper >= SKPROF_NR_HELPERS)
		return;
	k1 = kprobe ? bpf_get_current_pid_tgid() : args[0];
	k2 = kprobe ? 0 : args[1];
	/* The most recent entry with our key: in kprobe mode the same task can
	 * have nested calls (a softirq lookup on top of a sock_addr one). With
	 * nothing in flight (fentry mode, an untimed call) no search. */
	if (rs->inflight) {
		i = inflight_find(f, k1, k2, helper);
		if (i >= 0 && i < SKPROF_INFLIGHT)
			match = &f->s[i];
	}
	if (match && match->ts) {
		now = bpf_ktime_get_ns();
		ts = match->ts;
	}
	if (kprobe) {
		if (!match) {
			rs->counters.unmatched_exit[helper]++;
			return;
		}
		pctx = match->pctx;
		tuple = match->tuple;
		who.prog_slot = match->prog_slot;
		who.prog_id = match->prog_id;
		who.run_id = match->run_id;
		who.run = -1;
		if (who.run_id) {
			who.rs = get_runs();
			who.run = who.rs ? find_run(who.rs, pctx, 0, false) : -1;
			if (who.run >= 0 && who.run < SKPROF_RUN_SLOTS &&
			    who.rs->r[bounded(who.run, SKPROF_RUN_SLOTS)].run_id != who.run_id)
				who.run = -1;
		}
		outcome = ret ? SKPROF_O_HIT : match->reason;
		/* The return probe runs with the return address restored as
		 * the instruction pointer (kretprobe/rethook trampoline
		 * handler, kernel/kprobes.c, kernel/trace/rethook.c): at entry
		 * the stack holds the kretprobe trampoline's instead. */
		if (sites_on)
			site = PT_REGS_IP((struct pt_regs *)tctx);
	} else {
		pctx = k1;
		tuple = k2;
		find_caller(tctx, pctx, &who);
		outcome = ret ? SKPROF_O_HIT : miss_reason(helper, args[2], args[3], args[4]);
		if (sites_on)
			site = site_tramp(args, 0, site_fn[helper]);
	}

	if (ret) {
		read_sock(ret, helper_proto(helper), &v);
		cls = v.cls;
	}
	/* Count the call: in the hash cell when grouped by place or site,
	 * else in the directly indexed array (and the hash cell only when
	 * timed). */
	if (places_on || sites_on || ts) {
		key.prog_slot = who.prog_slot;
		key.helper = helper;
		key.outcome = outcome;
		key.site = site;
		if (places_on)
			lookup_place(helper, pctx, ret, &key);
		h = hist_of(&hists, &key);
		if (h && ts)
			hist_add(h, now > ts ? now - ts : 0);
	}
	if (places_on || sites_on) {
		if (h) {
			h->calls++;
			if (ret) {
				h->hits[cls]++;
				if (v.refcounted)
					h->acquired[cls]++;
			}
		}
	} else {
		count_call(rs, who.prog_slot, helper, outcome, ret, cls, v.refcounted);
	}
	if (ret && ledger_on)
		acquire(tctx, &who, ret, now, helper, cls, &v, tuple,
			(__u32)(kprobe ? (match ? match->len : 0) : args[2]), site);
	if (ts)
		sampler_update(f, &f->sm[helper], ts);
	if (match) {
		match->ts = 0;
		match->busy = 0;
		__sync_fetch_and_sub(&rs->inflight, 1);
	}
}

/*
 * bpf_sk_release's common case, in as few instructions as it can be done:
 * the socket is the top entry of this CPU's held stack (a traced run
 * releases what it looked up before its next lookup) and its lookup was not
 * timed (no hold time to record). False, having changed nothing, otherwise:
 * release_slow then handles it.
 */
static __always_inline bool release_fast(struct skprof_runs *rs, __u64 sk)
{
	struct skprof_held *e;
	__u32 n, cls;

	/* (Not runs_in_use: without traced runs the held stack is empty.) */
	if (!release_fast_ok)
		return false;
	n = rs->nr_held - 1;
	if (n >= SKPROF_HELD)
		return false;
	e = &rs->held[n];
	if (e->sk != sk || e->acquired_ns)
		return false;
	cls = e->sock_class < SKPROF_NR_CLASSES ? e->sock_class : SKPROF_C_OTHER;
	if (e->flags & SKPROF_RF_REFCOUNTED)
		rs->counters.released[cls]++;
	else
		rs->counters.release_noop[cls]++;
	held_remove(rs, n, n + 1);
	return true;
}

/*
 * --sites: a release at `site` of a socket of class `cls`: `what` is 0 for
 * a dropped reference, 1 a no-op, 2 a NULL socket, 3 an unmatched one;
 * `acq` the call site of the lookup whose reference it dropped, 0: none.
 */
static __noinline int release_at(__u64 site, __u32 what, __u32 cls, __u64 acq)
{
	struct skprof_release_site zero = {}, *r;
	struct skprof_site_pair pair;
	__u64 one = 1, *n;

	r = bpf_map_lookup_elem(&release_sites, &site);
	if (!r) {
		bpf_map_update_elem(&release_sites, &site, &zero, BPF_NOEXIST);
		r = bpf_map_lookup_elem(&release_sites, &site);
		if (!r)
			return 0;
	}
	cls = cls < SKPROF_NR_CLASSES ? cls : SKPROF_C_OTHER;
	if (what == 0)
		r->released[cls]++;
	else if (what == 1)
		r->noop[cls]++;
	else if (what == 2)
		r->null++;
	else
		r->unmatched++;
	if (!acq)
		return 0;
	pair.acquire = acq;
	pair.release = site;
	n = bpf_map_lookup_elem(&site_pairs, &pair);
	if (n)
		(*n)++;
	else
		bpf_map_update_elem(&site_pairs, &pair, &one, BPF_NOEXIST);
	return 0;
}

/* bpf_sk_release past its fast path (see release_fast), out of line (see
 * entry_timed). `site`: its call site (--sites), else 0. */
static __noinline int release_slow(struct skprof_runs *rs, __u64 sk, __u64 site)
{
	struct skprof_counters *c = &rs->counters;
	struct skprof_holder *hd = NULL;
	struct skprof_held rr;
	struct skprof_ref *ref;
	struct skprof_hist *h;
	struct sock_view v;
	__u32 slot, held = 0;
	__u64 now;
	int i;
	__u32 cls;

	if (ledger_on && runs_in_use && held_take(rs, sk, &rr)) {
		slot = rr.prog_slot;
		/* Clamped, not checked: every copy clang makes of it is then
		 * in bounds (the 6.1 verifier does not carry a check's bound
		 * to a spilled copy). */
		cls = rr.sock_class < SKPROF_NR_CLASSES ? rr.sock_class : SKPROF_C_OTHER;
		if (!(rr.flags & SKPROF_RF_REFCOUNTED)) {
			c->release_noop[cls]++;
			if (sites_on)
				release_at(site, 1, cls, rr.site);
			trace_ledger(SKPROF_EV_RELEASE, sk, rr.run_id, slot, rr.helper, cls,
				     SKPROF_TF_MATCHED, 0);
			return 0;
		}
		c->released[cls]++;
		if (sites_on)
			release_at(site, 0, cls, rr.site);
		/* Hold time of the references whose lookup was timed. */
		now = rr.acquired_ns ? bpf_ktime_get_ns() : 0;
		if (rr.acquired_ns) {
			h = hist_of(&holds, &slot);
			if (h) {
				h->calls++;
				hist_add(h, now > rr.acquired_ns ? now - rr.acquired_ns : 0);
			}
		}
		trace_ledger(SKPROF_EV_RELEASE, sk, rr.run_id, slot, rr.helper, cls,
			     SKPROF_TF_REFCOUNTED | SKPROF_TF_MATCHED, now);
		return 0;
	}
	read_sock(sk, 0, &v);
	cls = v.cls;
	if (cls >= SKPROF_NR_CLASSES)
		return 0;
	if (!v.refcounted) {
		c->release_noop[cls]++;
		if (sites_on)
			release_at(site, 1, cls, 0);
		if (ledger_on)
			trace_ledger(SKPROF_EV_RELEASE, sk, 0, 0, 0, cls, 0, 0);
		return 0;
	}
	c->released[cls]++;
	if (!ledger_on) {
		if (sites_on)
			release_at(site, 0, cls, 0);
		return 0;
	}
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
		if (sites_on)
			release_at(site, 3, cls, 0);
		trace_ledger(SKPROF_EV_RELEASE, sk, 0, 0, 0, cls, SKPROF_TF_REFCOUNTED, now);
		return 0;
	}
	slot = hd->prog_slot;
	if (sites_on)
		release_at(site, 0, cls, hd->site);
	h = hist_of(&holds, &slot);
	if (h) {
		h->calls++;
		hist_add(h, now - hd->acquired_ns);
	}
	trace_ledger(SKPROF_EV_RELEASE, sk, hd->run_id, slot, hd->helper, cls,
		     SKPROF_TF_REFCOUNTED | SKPROF_TF_MATCHED, now);
	/* Last reference of the last holder: the socket leaves the ledger. */
	if (__sync_fetch_and_add(&hd->count, -1) <= 1 && held <= 1)
		bpf_map_delete_elem(&ledger, &sk);
	return 0;
}

/*
 * bpf_sk_release(sk): count whether it drops a reference, and close the
 * ledger entry. The run tables first: a socket a traced run looked up is
 * there with its class, so the socket is not read. Otherwise read it here,
 * at entry: after the call it may already be freed.
 */
static __always_inline void on_release(void *tctx, __u64 sk, bool kprobe)
{
	struct skprof_runs *rs = get_runs();
	__u64 site = 0;

	if (!rs)
		return;
	if (sites_on)
		site = kprobe ? site_kprobe(tctx) :
				site_tramp(tctx, 1, site_fn[SKPROF_SITE_FN_RELEASE]);
	if (!sk) {
		rs->counters.release_null++;
		if (sites_on)
			release_at(site, 2, 0, 0);
		if (ledger_on)
			trace_ledger(SKPROF_EV_RELEASE, 0, 0, 0, 0, 0, 0, 0);
		return;
	}
	if (!release_fast(rs, sk))
		release_slow(rs, sk, site);
}

/* An fexit past its fast path (see fexit_fast), out of line (see
 * entry_timed). Static, not global: it takes the probe's context, which a
 * global function cannot. */
static __noinline int exit_slow(__u64 *ctx, __u32 helper)
{
	on_exit(ctx, helper, false, ctx, ctx[5]);
	return 0;
}

/*
 * Every helper is BPF_CALL_5(name, ctx, tuple, len, netns_id, flags): in BTF
 * the traced function is u64 name(u64, u64, u64, u64, u64) returning the
 * struct sock * (or NULL) as u64, so the fentry/fexit context is six u64s
 * (the fexit's last is the return value), read in place as needed.
 */
#define FENTRY_PAIR(fn, id)						\
SEC("fentry/" #fn)							\
int fentry_##fn(__u64 *ctx)						\
{									\
	on_entry(ctx, id, false, ctx);					\
	return 0;							\
}									\
SEC("fexit/" #fn)							\
int fexit_##fn(__u64 *ctx)						\
{									\
	if (!fexit_fast(ctx, id, ctx[5]))				\
		exit_slow(ctx, id);					\
	return 0;							\
}									\
SEC("kprobe/" #fn)							\
int BPF_KPROBE(kprobe_##fn, __u64 pctx, __u64 tuple, __u64 len,		\
	       __u64 netns_id, __u64 flags)				\
{									\
	__u64 args[5] = { pctx, tuple, len, netns_id, flags };		\
									\
	on_entry(ctx, id, true, args);					\
	return 0;							\
}									\
SEC("kretprobe/" #fn)							\
int BPF_KRETPROBE(kretprobe_##fn, __u64 ret)				\
{									\
	on_exit(ctx, id, true, NULL, ret);				\
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
	on_release(ctx, sk, false);
	return 0;
}

SEC("kprobe/bpf_sk_release")
int BPF_KPROBE(kprobe_bpf_sk_release, __u64 sk)
{
	on_release(ctx, sk, true);
	return 0;
}
