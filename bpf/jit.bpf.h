/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Finding the untraced BPF program that called a helper: the first frame of
 * the kernel stack that lies in a JIT image user space listed (struct
 * skprof_jit_table).
 */
#ifndef SKPROF_JIT_BPF_H
#define SKPROF_JIT_BPF_H

#include <bpf/bpf_helpers.h>
#include "bits.bpf.h"
#include "skprof.h"

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
 * whether the JIT table lists any program (so a stack is worth taking). A
 * plain load, where the map lookups it guards are helper calls: without
 * attribution the hot path makes none (as with runs_in_use).
 */
volatile __u32 jit_in_use;

/* The index of the range of `t` holding `ip`, or -1: a binary search. A
 * global function, checked once (see jit_search). */
__noinline int jit_find(struct skprof_jit_table *t, __u64 ip)
{
	__u32 lo = 0, hi, mid;
	int i;

	if (!t)
		return -1;
	hi = t->n;
	if (hi > SKPROF_JIT_RANGES)
		return -1;
	/* log2(SKPROF_JIT_RANGES) + 1 halvings find any range. */
	for (i = 0; i < 10 && lo < hi; i++) {
		mid = (lo + hi) / 2;
		barrier_var(mid);
		if (mid >= SKPROF_JIT_RANGES)
			return -1;
		if (ip < t->r[mid].start)
			hi = mid;
		else if (ip >= t->r[mid].end)
			lo = mid + 1;
		else
			return mid;
	}
	return -1;
}

/* What bpf_get_stack wrote, as one sized object a global function can take. */
struct jit_frames {
	__u64 ip[SKPROF_JIT_FRAMES];
};

/*
 * The index of the range of `t` holding the first of the `n` frames that
 * lies in one, or -1. A global function, like jit_find, so the verifier
 * checks their loops (8 frames, 10 halvings each) once, on their own, and
 * the search of each frame once: inlined into the kprobe entry probe they
 * were followed through the rest of that probe's paths, and each of the
 * twelve entry probes took about 4 s to load in a 6.12 TCG guest.
 */
__noinline int jit_search(struct skprof_jit_table *t, struct jit_frames *fr, int n)
{
	int i, k;

	if (!t || !fr || t->n == 0)
		return -1;
	for (i = 0; i < SKPROF_JIT_FRAMES; i++) {
		if (i >= n)
			break;
		/* Cheap rejection of kernel text before the search. */
		if (fr->ip[i] < t->r[0].start)
			continue;
		k = jit_find(t, fr->ip[i]);
		if (k >= 0)
			return k;
	}
	return -1;
}

/*
 * The untraced program that called the helper, from the kernel stack: the
 * first frame inside a listed JIT image. In kprobe mode the frame after the
 * helper's own is the caller; under fentry the exit probe's (its slow
 * path, exit_slow, and the probe) and the trampoline's frames come first:
 * four of the SKPROF_JIT_FRAMES searched. The ORC unwinder walks JIT code by frame pointer (the BPF JIT and
 * trampolines keep one). Costs a stack walk, so only done when the table
 * lists some program and the call was not attributed by program tracing.
 */
static __always_inline struct skprof_jit_range *stack_caller(void *tctx)
{
	struct jit_frames fr;
	struct skprof_jit_table *t;
	__u32 zero = 0, *active;
	long n;
	int k;

	if (!jit_in_use)
		return NULL;
	active = bpf_map_lookup_elem(&jit_active, &zero);
	if (!active)
		return NULL;
	t = bpf_map_lookup_elem(&jit_ranges, active);
	if (!t || t->n == 0)
		return NULL;
	n = bpf_get_stack(tctx, fr.ip, sizeof(fr.ip), 0);
	if (n <= 0)
		return NULL;
	k = jit_search(t, &fr, n / sizeof(__u64));
	if (k < 0 || k >= SKPROF_JIT_RANGES)
		return NULL;
	return &t->r[bounded(k, SKPROF_JIT_RANGES)];
}

#endif /* SKPROF_JIT_BPF_H */
