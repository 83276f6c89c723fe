/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Arithmetic on plain numbers for the probes: a log2, and the verifier's
 * bound on an index. */
#ifndef SKPROF_BITS_BPF_H
#define SKPROF_BITS_BPF_H

#include <bpf/bpf_helpers.h>

/* floor(log2(v)), 0 for 0: five compares and shifts, no loop. */
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

/*
 * An index already tested to be below `size` (a power of two), bounded
 * again for the verifier: clang drops a mask it can prove redundant, and
 * may index with a copy reloaded from the stack, or fold the test into a
 * compare, whose range the verifier (6.1's especially) does not know. The
 * barrier hides the range from clang, so the mask stays.
 */
static __always_inline __u32 bounded(int k, __u32 size)
{
	__u32 i = k;

	barrier_var(i);
	return i & (size - 1);
}

#endif /* SKPROF_BITS_BPF_H */
