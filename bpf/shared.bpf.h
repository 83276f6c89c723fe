/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps shared by the helper probes (skprof.bpf.c) and the per-program
 * attribution probes (attrib.bpf.c). Each attribution object is loaded with
 * these maps replaced by the probe object's (bpf_map__reuse_fd), so all
 * objects see one run table, one ledger and one ring buffer.
 */
#ifndef SKPROF_SHARED_BPF_H
#define SKPROF_SHARED_BPF_H

#include "skprof.h"

/* key: 0; value: reference and health counters */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_counters);
} counters SEC(".maps");

/* key: 0; value: this CPU's traced program runs in flight */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_runs);
} runs SEC(".maps");

/* key: socket pointer; value: the outstanding reference (size: --ledger-size) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct skprof_ref);
} ledger SEC(".maps");

/* leak events (struct skprof_event) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline struct skprof_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

static __always_inline struct skprof_runs *get_runs(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&runs, &zero);
}

/* The newest run in flight on this CPU with this ctx (and, unless `slot` is
 * 0, of that program slot), or NULL. The helper probes do not know the
 * program (slot 0); a program's own exit probe does. */
static __always_inline struct skprof_run *find_run(struct skprof_runs *rs, __u64 ctx,
						   __u32 slot)
{
	struct skprof_run *found = NULL;
	__u64 best = 0;
	int i;

	if (!ctx)
		return NULL;
	for (i = 0; i < SKPROF_RUN_SLOTS; i++) {
		struct skprof_run *r = &rs->r[i];

		if (r->ctx == ctx && (!slot || r->prog_slot == slot) && r->run_id >= best) {
			found = r;
			best = r->run_id;
		}
	}
	return found;
}

/* Ledger trace switch; each object sets its own copy before load. */
const volatile bool ledger_trace = false;

/* Emits one ledger trace record; a full ring buffer is counted. */
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
	t->sock_class = cls;
	t->flags = flags;
	t->ts = ts;
	t->sk = sk;
	t->run_id = run_id;
	t->prog_slot = prog_slot;
	t->cpu = bpf_get_smp_processor_id();
	bpf_ringbuf_submit(t, 0);
}

#endif /* SKPROF_SHARED_BPF_H */
