/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire types and constants shared by the probes (skprof.bpf.c) and user space.
 * User space reads these through the skeleton's generated `types`, never
 * through a hand-written twin: change a layout here and both sides follow.
 */
#ifndef SKPROF_H
#define SKPROF_H

/*
 * The traced kernel functions. The order is the map index and is mirrored by
 * `model::Helper` (checked by a unit test against the skeleton's enum).
 * Four families (generic, tc, xdp, sock_addr) x three protocols.
 */
enum skprof_helper {
	SKPROF_H_SK_LOOKUP_TCP = 0,
	SKPROF_H_SK_LOOKUP_UDP,
	SKPROF_H_SKC_LOOKUP_TCP,
	SKPROF_H_TC_SK_LOOKUP_TCP,
	SKPROF_H_TC_SK_LOOKUP_UDP,
	SKPROF_H_TC_SKC_LOOKUP_TCP,
	SKPROF_H_XDP_SK_LOOKUP_TCP,
	SKPROF_H_XDP_SK_LOOKUP_UDP,
	SKPROF_H_XDP_SKC_LOOKUP_TCP,
	SKPROF_H_SOCK_ADDR_SK_LOOKUP_TCP,
	SKPROF_H_SOCK_ADDR_SK_LOOKUP_UDP,
	SKPROF_H_SOCK_ADDR_SKC_LOOKUP_TCP,
	SKPROF_NR_HELPERS,
};

/* How a lookup ended. Misses are classified from the arguments exactly as
 * __bpf_skc_lookup() in net/core/filter.c rejects them. */
enum skprof_outcome {
	SKPROF_O_HIT = 0,
	SKPROF_O_NO_SOCKET,	/* valid arguments, nothing found (or netns id unknown) */
	SKPROF_O_BAD_LEN,	/* len is neither sizeof(ipv4) = 12 nor sizeof(ipv6) = 36 */
	SKPROF_O_BAD_NETNS,	/* netns_id neither negative (s32) nor <= S32_MAX */
	SKPROF_O_BAD_FLAGS,	/* flags != 0 */
	SKPROF_NR_OUTCOMES,
};

/* What kind of socket a lookup returned or a release was given. */
enum skprof_sock_class {
	SKPROF_C_LISTENER = 0,	/* TCP_LISTEN full socket (SOCK_RCU_FREE: no ref) */
	SKPROF_C_ESTABLISHED,	/* any other full TCP socket (refcounted) */
	SKPROF_C_TIME_WAIT,	/* inet_timewait_sock (refcounted) */
	SKPROF_C_REQUEST,	/* request_sock, TCP_NEW_SYN_RECV (refcounted) */
	SKPROF_C_UDP,		/* full UDP socket (SOCK_RCU_FREE: no ref) */
	SKPROF_C_OTHER,		/* any other full socket */
	SKPROF_NR_CLASSES,
};

/*
 * Log-linear latency histogram: values below 2^SUB_BITS ns are exact, every
 * power of two above is split into 2^SUB_BITS equal slots, so a slot is at
 * most 1/32 = 3.1% wide and its midpoint within 1.6% of any value in it.
 * Slot of v (v >= 32, e = floor(log2 v)): (e - 5) * 32 + (v >> (e - 5)).
 * Values of 2^MAX_EXP ns (34 s) and more land in the last slot and are
 * counted in `overflow`.
 */
#define SKPROF_HIST_SUB_BITS 5
#define SKPROF_HIST_SUB (1 << SKPROF_HIST_SUB_BITS)
#define SKPROF_HIST_MAX_EXP 35
#define SKPROF_HIST_SLOTS ((SKPROF_HIST_MAX_EXP - SKPROF_HIST_SUB_BITS + 1) * SKPROF_HIST_SUB)

/*
 * One (program, helper, outcome) aggregate; per-CPU map value. Every call is
 * counted (`calls`, and for hits `hits` and `acquired`); the latency fields
 * hold the calls that were timed, a random sample of them when calls come
 * faster than the sampling budget (see `sample_every` in skprof.bpf.c).
 * `holds` uses the same layout for hold times (calls = count: timed only).
 */
struct skprof_hist {
	__u64 calls;		/* every call */
	__u64 count;		/* calls timed: the sum of `slots` */
	__u64 sum_ns;
	__u64 max_ns;
	__u64 overflow;
	/* hits only: by class of the socket found, and those that took a
	 * reference the program must release */
	__u64 hits[SKPROF_NR_CLASSES];
	__u64 acquired[SKPROF_NR_CLASSES];
	__u64 slots[SKPROF_HIST_SLOTS];
};

/*
 * Every call of one (program, helper) on one CPU: the per-call part of the
 * aggregation when calls are not grouped by place, kept in a directly
 * indexed array instead of the `hists` hash (whose lookup, a hash of the
 * key and a bucket walk, was the largest part of the exit probe).
 */
struct skprof_calls {
	__u64 outcomes[SKPROF_NR_OUTCOMES];
	__u64 hits[SKPROF_NR_CLASSES];
	__u64 acquired[SKPROF_NR_CLASSES];
};

/* Key of the `hists` map: one histogram per (program, helper, outcome,
 * network namespace, interface). */
struct skprof_hist_key {
	__u32 prog_slot;	/* 0: caller not attributed (or attribution off) */
	__u16 helper;		/* enum skprof_helper */
	__u16 outcome;		/* enum skprof_outcome */
	__u32 netns;		/* inode number of the netns the lookup searched
				 * (the caller's, for misses); 0 if unknown */
	__u32 ifindex;		/* the packet's device (tc, XDP, skb); 0 for
				 * sock_addr programs */
	__u64 site;		/* --sites: the call site, the address in the
				 * caller's JIT image the helper returns to;
				 * 0: sites off, or not read (site_unknown) */
};

/* Reference and health counters, per CPU (in struct skprof_runs). */
struct skprof_counters {
	/* bpf_sk_release() calls that dropped a reference, by class */
	__u64 released[SKPROF_NR_CLASSES];
	/* bpf_sk_release() calls on a socket that holds no reference (no-op) */
	__u64 release_noop[SKPROF_NR_CLASSES];
	/* bpf_sk_release(NULL) */
	__u64 release_null;
	/* kprobe mode: a return probe found no entry record (its entry was
	 * missed or evicted); the call is not counted */
	__u64 unmatched_exit[SKPROF_NR_HELPERS];
	/* an entry record overwritten because all in-flight slots were busy
	 * (an exit that never came, e.g. a recursion-missed fexit) */
	__u64 evicted_entry[SKPROF_NR_HELPERS];
	/* refcounted releases of a socket the ledger does not hold (acquired
	 * before skprof started, or through SOCKMAP/SOCKHASH, bpf_skc_to_*) */
	__u64 release_unmatched[SKPROF_NR_CLASSES];
	/* acquires the ledger could not record: it was full */
	__u64 ledger_full;
	/* events lost because the ring buffer was full */
	__u64 events_dropped;
	/* traced program runs not recorded: SKPROF_RUN_SLOTS in flight */
	__u64 run_table_full;
	/* (program, helper, outcome) histograms not recorded: map full */
	__u64 hists_full;
	/* references a traced run acquired while its CPU's stack of held
	 * sockets (SKPROF_HELD) was full: kept in the global ledger, not
	 * checked at the run's end */
	__u64 run_refs_full;
	/* --sites: calls and releases whose call site could not be read (the
	 * trampoline's frame did not hold the traced function's return
	 * address where expected, nor anywhere in the words searched) */
	__u64 site_unknown;
	/* --sites, fentry mode: searches of the trampoline's frame for the
	 * return address (the first call of each kind, and again whenever
	 * the frame's layout changed, e.g. another tracer attached) */
	__u64 site_searches;
};

/* Nested lookups one CPU can have in flight (process-context sock_addr call,
 * softirq lookup on top, and NMI-free margin). */
#define SKPROF_INFLIGHT 8

enum skprof_event_type {
	/* A traced program run ended holding a reference it acquired. */
	SKPROF_EV_RUN_LEAK = 1,
	/* Ledger trace (--trace; struct skprof_trace): every step the ledger
	 * takes, for user space to replay through its model of the ledger
	 * (src/model/ledger_model.rs) and compare. */
	SKPROF_EV_ACQUIRE,	/* a lookup hit (refcounted or not) */
	SKPROF_EV_RELEASE,	/* bpf_sk_release() */
	SKPROF_EV_RUN_START,	/* a traced program run began */
	SKPROF_EV_RUN_END,	/* ... and ended (after its leak check) */
};

/* skprof_trace.flags (an enum so that the skeleton's types carry it) */
enum skprof_trace_flag {
	SKPROF_TF_REFCOUNTED = 1,	/* the socket takes a reference */
	SKPROF_TF_RECORDED = 2,		/* acquire: held in its run's table, or
					 * (refcounted) in the global ledger */
	SKPROF_TF_MATCHED = 4,		/* release: took an entry of a run's
					 * table, or closed a ledger holder */
	SKPROF_TF_TIMED = 8,		/* acquire: the lookup was timed, so its
					 * entry's acquired_ns is this record's
					 * ts (untimed: 0, the run's end if it
					 * leaks) */
};

/* skprof_held.flags (an enum so that the skeleton's types carry it) */
enum skprof_ref_flag {
	SKPROF_RF_REFCOUNTED = 1,	/* the lookup took a reference */
};

/*
 * The layout constants, as a read-only global of the probe object: user space
 * checks them against its own tables at load, and they bring the enums into
 * the skeleton's generated types.
 */
struct skprof_layout {
	enum skprof_helper nr_helpers;
	enum skprof_outcome nr_outcomes;
	enum skprof_sock_class nr_classes;
	__u32 hist_sub_bits;
	__u32 hist_max_exp;
	__u32 hist_slots;
	enum skprof_event_type ev_run_leak;
	enum skprof_event_type ev_run_end;
	enum skprof_trace_flag tf_matched;
	enum skprof_ref_flag rf_refcounted;
};


/*
 * Attribution. Every traced BPF program (one that calls a lookup helper)
 * gets fentry/fexit probes of its own (bpf/attrib.bpf.c) that record each
 * run in this CPU's run table, keyed by the run's ctx pointer. A helper is
 * called with that same ctx (skb, xdp_buff, bpf_sock_addr_kern), so the
 * helper probes find the calling program by ctx: robust to nesting (a
 * softirq run on top of a sock_addr run) and to preemption.
 */
#define SKPROF_MAX_PROGS 256	/* program slots; slot 0 = not attributed */
#define SKPROF_RUN_SLOTS 8	/* traced program runs in flight per CPU */
#define SKPROF_HELD 16		/* sockets one CPU's traced runs hold at once */

struct skprof_run {
	__u64 ctx;		/* the run's ctx pointer; 0 = free slot */
	__u64 run_id;		/* (cpu << 48) | per-CPU sequence */
	__u32 prog_slot;
	__u32 prog_id;
};

/*
 * A socket a traced run's lookup returned and no bpf_sk_release() has given
 * back yet: the run-local ledger, a stack per CPU (runs nest on a CPU, and
 * a nested run ends before the one it interrupted goes on). The verifier
 * makes every program release what it looked up before it exits, so on a
 * correct kernel a run holds nothing at its end; a refcounted entry left is
 * a run leak, and moves to the global ledger. Keeping these here is what
 * makes the ledger cheap: no hash map insert and delete per reference, and
 * a release finds the socket's class here instead of reading the socket.
 */
struct skprof_held {
	__u64 sk;
	__u64 run_id;		/* the run that looked it up */
	__u64 acquired_ns;	/* return time of the lookup when it was timed, else 0 */
	union {
		struct {
			__u16 helper;		/* enum skprof_helper */
			__u8 sock_class;	/* enum skprof_sock_class */
			__u8 flags;		/* SKPROF_RF_* */
			__s32 stack_id;		/* --stacks: kernel stack of the lookup, else -1 */
		};
		__u64 meta;	/* the four above, written as one (held_put) */
	};
	__u32 prog_slot;	/* the run's program */
	__u32 pad;
	__u64 site;		/* --sites: the lookup's call site, else 0 */
};

/*
 * Per-CPU value of the `runs` map (one entry): all the per-CPU state that
 * more than one probe touches on the common path, in one value, because
 * before 6.10 every lookup of a per-CPU map is a helper call (the verifier
 * inlines them since): each probe makes one.
 */
struct skprof_runs {
	struct skprof_run r[SKPROF_RUN_SLOTS];
	__u64 seq;		/* last run id: CPU << 48 | runs claimed */
	__u32 nr_held;		/* entries of `held` in use, oldest first */
	__u32 last;		/* the run claimed last: searched first */
	__u32 inflight;		/* helper probes: entry records in use on this
				 * CPU (timed calls; in kprobe mode every call);
				 * 0 lets an exit skip the search for its own */
	__u32 cpu1;		/* this CPU's number + 1; 0 until first used (a
				 * helper call per lookup on 6.1, which does not
				 * inline bpf_get_smp_processor_id) */
	struct skprof_held held[SKPROF_HELD];
	struct skprof_counters counters;
};

/*
 * Stack attribution, the fallback where a program cannot be traced (kprobe
 * mode, a program without BTF, a refused attach): user space lists the JIT
 * images (main function and subprograms, from jited_ksyms/jited_func_lens)
 * of the untraced programs that call the helpers, sorted by address; the
 * helper probe takes a short kernel stack and charges the call to the
 * program whose image holds the first matching frame. Double-buffered:
 * user space fills the table not in use, then switches `jit_active`.
 */
#define SKPROF_JIT_RANGES 512	/* JIT images (functions) tracked at once */
#define SKPROF_JIT_FRAMES 8	/* stack frames searched per call */

struct skprof_jit_range {
	__u64 start;		/* first byte of the JIT image */
	__u64 end;		/* one past its last byte */
	__u32 prog_slot;
	__u32 prog_id;
};

struct skprof_jit_table {
	__u32 n;		/* ranges in use, sorted by start, disjoint */
	__u32 pad;
	struct skprof_jit_range r[SKPROF_JIT_RANGES];
};

/* --- Reference ledger --- */
#define SKPROF_TUPLE_MAX 36	/* sizeof(struct bpf_sock_tuple) */

/* One (program, helper) holding references on a ledger socket. */
struct skprof_holder {
	__u64 acquired_ns;	/* bpf_ktime_get_ns() at the latest acquire */
	__u64 run_id;		/* run of the latest acquire (0: not traced) */
	__u32 count;		/* references outstanding; 0 = free holder */
	__u32 prog_id;		/* acquiring program (0: not traced) */
	__u32 prog_slot;	/* its slot (0: not traced) */
	__s32 stack_id;		/* kernel stack at the first acquire, or -errno */
	__u32 refcnt;		/* skc_refcnt just after the acquire (racy) */
	__u16 helper;		/* enum skprof_helper */
	__u16 cpu;
	__u64 site;		/* --sites: call site of the first acquire, else 0 */
};

/* Acquirers one ledger socket tells apart; more share the last holder. */
#define SKPROF_REF_HOLDERS 4

/* Ledger value, keyed by socket pointer: references traced lookups took on
 * this socket and no bpf_sk_release has dropped yet, by acquirer. A release
 * drops the most recent acquirer's reference (runs nest, so LIFO). */
struct skprof_ref {
	struct skprof_holder h[SKPROF_REF_HOLDERS];
	__u32 netns;		/* netns inode of the socket */
	__u8 sock_class;	/* enum skprof_sock_class */
	__u8 state;		/* skc_state */
	__u8 tuple_len;		/* 12 (IPv4) or 36 (IPv6), of the first acquire */
	__u8 pad;
	__u8 tuple[SKPROF_TUPLE_MAX];	/* struct bpf_sock_tuple, as passed */
};

/* Ring-buffer record; every one starts with its type. */
struct skprof_event {
	__u32 type;		/* enum skprof_event_type */
	__u32 holder;		/* index of the leaking holder in ref.h */
	__u64 sk;
	__u64 ts;
	struct skprof_ref ref;
};

/* Ring-buffer record of the ledger trace; starts with its type like every
 * record. `prog_slot` is the acquirer (acquire, run start/end) or the
 * holder a release closed (release, when matched). */
struct skprof_trace {
	__u32 type;		/* SKPROF_EV_ACQUIRE .. SKPROF_EV_RUN_END */
	__u16 helper;		/* acquire: enum skprof_helper */
	__u8 sock_class;	/* acquire, release: enum skprof_sock_class */
	__u8 flags;		/* SKPROF_TF_* */
	__u64 ts;		/* bpf_ktime_get_ns() */
	__u64 sk;		/* socket (acquire, release; 0: NULL release) */
	__u64 run_id;		/* acquiring run / the run (0: not traced) */
	__u32 prog_slot;
	__u32 cpu;
};

/*
 * Call sites (--sites). A release site's counts: key is the address in the
 * caller's JIT image bpf_sk_release() returns to (0: not read).
 */
struct skprof_release_site {
	__u64 released[SKPROF_NR_CLASSES];	/* dropped a reference */
	__u64 noop[SKPROF_NR_CLASSES];		/* a socket holding none */
	__u64 null;				/* bpf_sk_release(NULL) */
	__u64 unmatched;	/* refcounted, of a reference no traced lookup took */
};

/* Key of the `site_pairs` map: where the references one lookup site took
 * were released. */
struct skprof_site_pair {
	__u64 acquire;		/* the lookup's call site */
	__u64 release;		/* bpf_sk_release()'s call site */
};

/* Index of bpf_sk_release in `site_fn` (after the lookup helpers). */
#define SKPROF_SITE_FN_RELEASE SKPROF_NR_HELPERS

#endif /* SKPROF_H */
