// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Attribution probes, loaded once per traced BPF program: fentry/fexit on
 * that program itself (as `bpftool prog profile` does, 5.7+). User space sets
 * the attach target (bpf_program__set_attach_target) and the program's slot
 * and id before load, and shares the maps of shared.bpf.h with the helper
 * probes.
 *
 * Entry records the run in this CPU's run table under its ctx pointer, so
 * the helper probes can attribute calls and keep the sockets the run looks
 * up in its slot (the run-local ledger); exit checks that the run holds no
 * reference it acquired (the verifier's promise) and reports any it does.
 *
 * User space attaches prog_exit before prog_entry and detaches in the
 * opposite order: a run that slips in between then has an exit without an
 * entry (harmless: no run is found) instead of an entry without an exit,
 * which would hold a run slot forever.
 *
 * The object also carries `prog_refs`, a bpf_prog iterator loaded once (not
 * per target) that user space reads to tell when a traced program is held
 * only by our own links (see the comment there).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "shared.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile __u32 prog_slot = 0;
const volatile __u32 prog_id = 0;

/* One record of the prog_refs iterator, written with bpf_seq_write. */
struct attrib_prog_ref {
	__u32 id;	/* bpf_prog_aux.id */
	__u32 pad;
	__u64 refcnt;	/* bpf_prog_aux.refcnt, including the iterator's own */
};

/* Never read by the programs: it only puts the record layout into the
 * skeleton's generated types, so user space parses it with those. */
const volatile struct attrib_prog_ref attrib_prog_ref_layout = {};

SEC("fentry/skprof_target")
int BPF_PROG(prog_entry, __u64 pctx)
{
	struct skprof_runs *rs = get_runs();
	/* Read once: a const volatile is a load each time it is named, even
	 * as an argument trace_ledger() drops when tracing is off. */
	__u32 slot = prog_slot;
	struct skprof_run *r;
	int i;

	if (!rs)
		return 0;
	/* Run ids: this CPU's number in the top 16 bits, a count below. */
	if (!rs->seq)
		rs->seq = (__u64)bpf_get_smp_processor_id() << 48;
	for (i = 0; i < SKPROF_RUN_SLOTS; i++) {
		r = &rs->r[i];
		/* No atomic claim needed: only a run nested on this CPU (a
		 * softirq interrupting a process-context sock_addr run) can
		 * come between the test and the store, and it ends, freeing
		 * what it claimed, before this run goes on. */
		if (r->ctx == 0) {
			r->ctx = pctx;
			r->run_id = ++rs->seq;
			r->prog_slot = slot;
			r->prog_id = prog_id;
			rs->last = i;
			trace_ledger(SKPROF_EV_RUN_START, 0, r->run_id, slot, 0, 0, 0, 0);
			return 0;
		}
	}
	rs->counters.run_table_full++;
	return 0;
}

/*
 * A reference the run ended holding: a run leak. It moves to the global
 * ledger (where `skprof leaks` lists it and a later release can still close
 * it) and is reported with the ledger entry.
 */
__noinline int run_leak(struct skprof_held *e, __u64 now)
{
	struct ledger_holder w = {};
	struct skprof_counters *c;
	struct skprof_event *ev;
	struct skprof_ref *ref;
	__u64 sk;
	int j;

	if (!e)
		return 0;
	sk = e->sk;
	/* The lookup's time when it was timed, else the run's end. */
	w.acquired_ns = e->acquired_ns ? e->acquired_ns : now;
	w.run_id = e->run_id;
	w.prog_slot = prog_slot;
	w.prog_id = prog_id;
	w.stack_id = e->stack_id;
	w.site = e->site;
	w.helper = e->helper;
	w.sock_class = e->sock_class;
	w.state = BPF_CORE_READ((struct sock_common *)sk, skc_state);
	if (!ledger_hold(sk, &w))
		return 0;
	ref = bpf_map_lookup_elem(&ledger, &sk);
	if (!ref)
		return 0;
	for (j = 0; j < SKPROF_REF_HOLDERS; j++) {
		if (!ref->h[j].count || ref->h[j].run_id != w.run_id ||
		    ref->h[j].helper != w.helper || ref->h[j].site != w.site)
			continue;
		ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
		if (!ev) {
			c = get_counters();
			if (c)
				c->events_dropped++;
			return 0;
		}
		ev->type = SKPROF_EV_RUN_LEAK;
		ev->holder = j;
		ev->sk = sk;
		ev->ts = now;
		__builtin_memcpy(&ev->ref, ref, sizeof(*ref));
		bpf_ringbuf_submit(ev, 0);
		return 0;
	}
	return 0;
}

/*
 * A run ended holding entries of the held stack: they leave it, and the
 * refcounted ones are run leaks, all at time `now`. A global function: the
 * verifier checks its loops once, not on every path of prog_exit.
 */
__noinline int run_sweep(struct skprof_runs *rs, __u64 run_id, __u64 now)
{
	__u32 i, j, n;

	if (!rs)
		return 0;
	n = rs->nr_held;
	if (n > SKPROF_HELD)
		n = SKPROF_HELD;
	for (i = 0; i < SKPROF_HELD; i++) {
		j = SKPROF_HELD - 1 - i;
		if (j >= n || !rs->held[j].sk || rs->held[j].run_id != run_id)
			continue;
		if (rs->held[j].flags & SKPROF_RF_REFCOUNTED) {
			struct skprof_held e = rs->held[j];

			run_leak(&e, now);
		}
		rs->held[j].sk = 0;
	}
	held_trim(rs, n);
	return 0;
}

SEC("fexit/skprof_target")
int BPF_PROG(prog_exit, __u64 pctx)
{
	struct skprof_runs *rs = get_runs();
	__u32 slot = prog_slot;	/* read once, as in prog_entry */
	struct skprof_run *r;
	__u64 now = 0;
	int k;

	if (!rs)
		return 0;
	k = find_run(rs, pctx, slot, true);
	if (k < 0 || k >= SKPROF_RUN_SLOTS)
		return 0;
	r = &rs->r[k];
	/* The verifier's promise: nothing the run looked up is still held.
	 * Its entries leave the held stack; refcounted ones are run leaks.
	 * (Entries are normally all released: the verifier makes a program
	 * release every lookup's result, listeners and UDP sockets too.) One
	 * time for all of the run's leaks and its end record, so a replay
	 * can tell them apart from the lookups' times. The stack is empty at
	 * nearly every run's end; entries left may be those of a run this one
	 * interrupted, which the sweep leaves. (No count per run is kept: it
	 * cost every lookup and release a load and a store, to spare this
	 * rare sweep.) */
	if (rs->nr_held) {
		now = bpf_ktime_get_ns();
		run_sweep(rs, r->run_id, now);
	}
	trace_ledger(SKPROF_EV_RUN_END, 0, r->run_id, slot, 0, 0, 0, now);
	r->ctx = 0;
	return 0;
}

/*
 * Every loaded program's id and reference count. A tracing link on a BPF
 * program holds a reference on its target (bpf_tracing_prog_attach() moves
 * the target into link->tgt_prog, put in bpf_tracing_link_release(),
 * kernel/bpf/syscall.c), so a traced program outlives its loader until we
 * detach: user space compares this count with the references it knows it
 * holds (one per link, plus one the iterator holds while it shows the
 * program: bpf_prog_get_curr_or_next()) to see that nobody else uses it.
 * refcnt is an atomic64_t since 5.5; this object needs 5.5+ anyway (fentry).
 */
SEC("iter/bpf_prog")
int prog_refs(struct bpf_iter__bpf_prog *ctx)
{
	struct attrib_prog_ref rec = {};
	struct bpf_prog *prog = ctx->prog;

	if (!prog)
		return 0;
	rec.id = BPF_CORE_READ(prog, aux, id);
	rec.refcnt = BPF_CORE_READ(prog, aux, refcnt.counter);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
