/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The log-linear histograms of the helper probes (struct skprof_hist; slots:
 * SKPROF_HIST_* in skprof.h), for lookup latencies and reference hold times:
 * finding or creating a key's histogram in a map, and adding a value.
 */
#ifndef SKPROF_HIST_BPF_H
#define SKPROF_HIST_BPF_H

#include "bits.bpf.h"
#include "shared.bpf.h"

/* key: 0; value: all zero, the initial value of new histogram entries */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct skprof_hist);
} zero_hist SEC(".maps");

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

/*
 * Adds one value to a histogram. A global function, which the verifier
 * checks once, on its own: inlined, the slot's computation (a chain of
 * compares) was followed through every path of the exit and release probes
 * that reaches it, a third of what the verifier went through to load each
 * exit probe. Only timed calls and releases of timed references record.
 */
__noinline int hist_add(struct skprof_hist *h, __u64 delta)
{
	__u32 slot = hist_slot(delta);

	if (!h)
		return 0;
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
	return 0;
}

#endif /* SKPROF_HIST_BPF_H */
