//! Attribution: finding the BPF programs that call the socket-lookup
//! helpers and tracing each of them, so every helper call can be charged
//! to the program that made it.
//!
//! Discovery: every loaded program's xlated instructions are scanned for
//! helper calls resolved through /proc/kallsyms ([`xlated`]); those calling
//! one of the 12 lookup functions or `bpf_sk_release` are selected.
//!
//! Tracing: each selected program gets its own copy of `bpf/attrib.bpf.c`,
//! fentry/fexit attached to the program itself (as `bpftool prog profile`
//! does; fentry on BPF programs needs 5.5+ and the target's BTF). Entry
//! records the run under its ctx pointer and the program's slot in the run
//! table the helper probes share, so they can tell which program called.
//!
//! Lifetime: a tracing link holds a reference on its target program
//! (`link->tgt_prog`, kernel/bpf/syscall.c), so a traced program does not
//! disappear when its loader lets go of it: we keep it alive. A rescan
//! therefore detaches from a program once *nobody but us* holds it, judged
//! from its kernel reference count read by a `bpf_prog` iterator (5.9+)
//! in the same object. Without the iterator a traced program is only
//! detached when the `Attributor` is dropped (see [`Attributor::liveness`]).
//!
//! ```no_run
//! # fn f(probes: &skprof::bpf::probes::Probes) -> anyhow::Result<()> {
//! let mut attributor = skprof::attrib::Attributor::new(64, false);
//! let report = attributor.rescan(probes.shared_maps())?; // every second
//! for p in attributor.programs() {
//!     println!("slot {} prog {} {} ({}): {}", p.slot, p.id, p.name, p.prog_type, p.attach);
//! }
//! // Delete per-slot data of report.freed_slots here.
//! # Ok(()) }
//! ```

pub mod attach;
pub mod code;
mod seam;
pub mod slots;
pub mod xlated;

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use libbpf_rs::btf::types::Func;
use libbpf_rs::btf::TypeId;
use libbpf_rs::query::{LinkInfoIter, ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::{Btf, ProgramType};
use serde::Serialize;

use crate::bpf::probes::{JitRange, SharedMaps};
use crate::model::ids::Helper;
pub use attach::Attachment;
use attach::Resolver;
pub use seam::{InFlightRun, RunTable};
use seam::{Shared, Target, TargetLinks};
use slots::SlotAllocator;
use xlated::{HelperAddrs, HelperCalls};

/// Highest program slot: `SKPROF_MAX_PROGS - 1` (bpf/skprof.h); slot 0
/// means "not attributed".
pub const MAX_SLOT: u32 = 255;

/// A program that calls the traced functions, as discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgSummary {
    pub id: u32,
    /// The main function's name from the program's BTF when it has one;
    /// else the kernel's name, truncated to 15 characters.
    pub name: String,
    /// libbpf's name for the program type: "sched_cls", "xdp",
    /// "cgroup_sock_addr", "cgroup_skb", ...
    #[serde(rename = "type")]
    pub prog_type: String,
    /// The program tag (`bpftool prog` shows the same), in hex.
    pub tag: String,
    /// The lookup functions its code calls (sorted).
    pub helpers: Vec<Helper>,
    pub calls_sk_release: bool,
}

/// How calls are charged to a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// fentry/fexit on the program itself: exact, and gives the per-run
    /// leak check.
    Trace,
    /// The helper probe's kernel stack, matched against the program's JIT
    /// images: for programs that cannot be traced (kprobe mode, no BTF, a
    /// refused attach). No per-run leak check (no probe at the program's
    /// exit), and a stack walk per call.
    Stack,
}

/// A program we attribute calls to (traced, or by stack).
#[derive(Debug, Serialize)]
pub struct TracedProgram {
    /// Stamped on its runs (`skprof_run.prog_slot`), 1..=MAX_SLOT.
    pub slot: u32,
    pub id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub prog_type: String,
    pub tag: String,
    /// Where it runs, in one line ([`attach::NOT_BY_LINK`] if no link).
    pub attach: String,
    /// The BPF links running it, refreshed at every rescan.
    pub attachments: Vec<Attachment>,
    pub helpers: Vec<Helper>,
    pub calls_sk_release: bool,
    pub method: Method,
    /// Why it is attributed by stack rather than traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Its JIT images: (start, length) of the main function and each
    /// subprogram.
    #[serde(skip)]
    pub jit: Vec<(u64, u32)>,
    /// None when attributed by stack.
    #[serde(skip)]
    _links: Option<TargetLinks>,
}

impl TracedProgram {
    pub fn summary(&self) -> ProgSummary {
        ProgSummary {
            id: self.id,
            name: self.name.clone(),
            prog_type: self.prog_type.clone(),
            tag: self.tag.clone(),
            helpers: self.helpers.clone(),
            calls_sk_release: self.calls_sk_release,
        }
    }
}

/// A program's slot and identity, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotProgram {
    pub slot: u32,
    pub id: u32,
    pub name: String,
}

/// What one rescan changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RescanReport {
    /// Newly traced.
    pub attached: Vec<SlotProgram>,
    /// No longer traced: nobody but us held them any more.
    pub detached: Vec<SlotProgram>,
    /// The slots of `detached`: delete their per-slot data. They are not
    /// reused before the next rescan.
    pub freed_slots: Vec<u32>,
    /// Found this rescan and not traceable (also in
    /// [`Attributor::untraceable`] while they exist).
    pub untraceable: Vec<(ProgSummary, String)>,
    /// Programs that call the helpers but got no slot: `max_progs` reached.
    pub over_capacity: usize,
    /// Non-fatal trouble (e.g. the iterator could not be read this time).
    pub warnings: Vec<String>,
}

/// Finds and traces the programs calling the lookup helpers. Tied to the
/// `Probes` whose maps the first [`rescan`](Attributor::rescan) gets.
#[derive(Debug)]
pub struct Attributor {
    /// Only [`Method::Stack`]: program tracing is impossible (kprobe mode)
    /// or not wanted.
    stack_only: bool,
    /// Trace runs into the ring buffer (`leaks --trace`).
    trace: bool,
    slots: SlotAllocator,
    /// By program id.
    traced: BTreeMap<u32, TracedProgram>,
    untraceable: Vec<(ProgSummary, String)>,
    over_capacity: usize,
    addrs: Option<HelperAddrs>,
    shared: Option<Shared>,
    resolver: Resolver,
}

/// One program that calls the traced functions, before tracing.
struct Candidate {
    id: u32,
    short_name: String,
    prog_type: ProgramType,
    tag: String,
    calls: HelperCalls,
    /// BTF type id of the main function (func_info at insn 0), if any.
    main_func: Option<u32>,
    /// (start, length) of each JIT image; empty if not JITed or hidden.
    jit: Vec<(u64, u32)>,
}

impl Attributor {
    /// Attributes calls to at most `max_progs` programs at once (at most
    /// [`MAX_SLOT`]), tracing them, or with `stack_only` by kernel stack.
    pub fn new(max_progs: usize, stack_only: bool) -> Attributor {
        Attributor {
            stack_only,
            trace: false,
            slots: SlotAllocator::new(max_progs, MAX_SLOT),
            traced: BTreeMap::new(),
            untraceable: Vec::new(),
            over_capacity: 0,
            addrs: None,
            shared: None,
            resolver: Resolver::new(),
        }
    }

    /// The helpers' addresses, when the caller has read them already
    /// (the session, from its start-up read of /proc/kallsyms); otherwise
    /// the first rescan reads them.
    pub fn set_helper_addrs(&mut self, addrs: HelperAddrs) {
        self.addrs = Some(addrs);
    }

    /// Traces each run's start and end into the ring buffer (for programs
    /// traced from now on): the ledger trace of `leaks --trace`.
    pub fn set_trace(&mut self, on: bool) {
        self.trace = on;
    }

    /// How many programs can be traced at once.
    pub fn capacity(&self) -> u32 {
        self.slots.capacity()
    }

    /// Traced programs, by id.
    pub fn programs(&self) -> impl Iterator<Item = &TracedProgram> {
        self.traced.values()
    }

    pub fn by_slot(&self, slot: u32) -> Option<&TracedProgram> {
        self.traced.values().find(|p| p.slot == slot)
    }

    pub fn by_id(&self, id: u32) -> Option<&TracedProgram> {
        self.traced.get(&id)
    }

    /// Programs that call the helpers but cannot be traced, and why. Not
    /// retried while they exist.
    pub fn untraceable(&self) -> &[(ProgSummary, String)] {
        &self.untraceable
    }

    /// Programs left untraced by the last rescan for lack of a slot.
    pub fn over_capacity(&self) -> usize {
        self.over_capacity
    }

    /// Why traced programs cannot be detached when their owner lets go
    /// (no `bpf_prog` iterator), if so; `None` before the first rescan too.
    pub fn liveness(&self) -> Option<&str> {
        self.shared.as_ref().and_then(|s| s.iter_error.as_deref())
    }

    /// The JIT images of the programs attributed by stack, for the probes'
    /// table ([`crate::bpf::probes::Probes::set_jit_ranges`]).
    pub fn jit_ranges(&self) -> Vec<JitRange> {
        self.traced
            .values()
            .filter(|p| p.method == Method::Stack)
            .flat_map(|p| {
                p.jit.iter().map(|&(start, len)| JitRange {
                    start,
                    len,
                    slot: p.slot,
                    prog_id: p.id,
                })
            })
            .collect()
    }

    /// The shared run table now (after the first rescan).
    pub fn run_table(&self) -> Result<RunTable> {
        self.shared
            .as_ref()
            .context("the run table is readable after the first rescan")?
            .run_table()
    }

    /// Attaches to programs that appeared, detaches from those nobody but
    /// us holds any more, refreshes where each one is attached.
    pub fn rescan(&mut self, maps: SharedMaps<'_>) -> Result<RescanReport> {
        self.slots.begin_rescan();
        let mut report = RescanReport::default();
        if self.addrs.is_none() {
            let text = std::fs::read_to_string("/proc/kallsyms").context("read /proc/kallsyms")?;
            self.addrs = Some(HelperAddrs::from_kallsyms(&text)?);
        }
        if self.shared.is_none() && !self.stack_only {
            self.shared = Some(Shared::load(maps).context("load the attribution helpers")?);
        }

        // Reference counts first, while this process holds no fd of a
        // target (enumerating below opens one per program).
        let refs = match self.shared.as_ref().and_then(Shared::prog_refs) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                report.warnings.push(format!("{e:#}"));
                None
            }
            None => None,
        };
        let addrs = self.addrs.as_ref().expect("set above");
        let (candidates, present) = enumerate(addrs);

        let mut detached_now = HashSet::new();
        let ids: Vec<u32> = self.traced.keys().copied().collect();
        for id in ids {
            let traced = self.traced[&id].method == Method::Trace;
            let gone = match &refs {
                // Ours, plus the iterator's own while it showed it.
                Some(r) if traced => r
                    .get(&id)
                    .is_none_or(|&n| n <= TargetLinks::TARGET_REFS + 1),
                // By stack we hold nothing: gone when unloaded.
                _ => !present.contains(&id),
            };
            if !gone {
                continue;
            }
            let p = self.traced.remove(&id).expect("listed above");
            report.detached.push(SlotProgram {
                slot: p.slot,
                id,
                name: p.name.clone(),
            });
            report.freed_slots.push(p.slot);
            self.slots.release(p.slot);
            detached_now.insert(id);
            // Dropping `p` drops its links (fentry first).
        }

        let mut over = 0;
        for c in candidates {
            if self.traced.contains_key(&c.id)
                || detached_now.contains(&c.id)
                || self.untraceable.iter().any(|(s, _)| s.id == c.id)
            {
                continue;
            }
            let (name, func) = match c.main_func {
                Some(type_id) => match btf_func_name(c.id, type_id) {
                    Ok(n) => (n.clone(), Ok(n)),
                    Err(e) => (
                        c.short_name.clone(),
                        Err(format!("read the BTF of prog {}: {e:#}", c.id)),
                    ),
                },
                None => (
                    c.short_name.clone(),
                    Err(
                        "no BTF (loaded without func_info): fentry/fexit need the target's BTF \
                         to attach"
                            .to_string(),
                    ),
                ),
            };
            let s = summary(&c, name);
            let Some(slot) = self.slots.alloc() else {
                over += 1;
                continue;
            };
            let attached = if self.stack_only {
                Err("program tracing not in use".to_string())
            } else {
                func.and_then(|func| {
                    let target = Target {
                        id: c.id,
                        name: &s.name,
                        func: &func,
                        slot,
                        trace: self.trace,
                    };
                    seam::attach(&target, maps).map_err(|e| format!("{e:#}"))
                })
            };
            let (method, links, fallback) = match attached {
                Ok(links) => (Method::Trace, Some(links), None),
                Err(why) if !c.jit.is_empty() => (Method::Stack, None, Some(why)),
                Err(why) => {
                    self.slots.unalloc(slot);
                    let why = format!("{why}; and no JIT image to match stacks against");
                    self.untraceable.push((s.clone(), why.clone()));
                    report.untraceable.push((s, why));
                    continue;
                }
            };
            report.attached.push(SlotProgram {
                slot,
                id: c.id,
                name: s.name.clone(),
            });
            self.traced.insert(
                c.id,
                TracedProgram {
                    slot,
                    id: s.id,
                    name: s.name,
                    prog_type: s.prog_type,
                    tag: s.tag,
                    attach: attach::NOT_BY_LINK.to_string(),
                    attachments: Vec::new(),
                    helpers: s.helpers,
                    calls_sk_release: s.calls_sk_release,
                    method,
                    fallback,
                    jit: c.jit,
                    _links: links,
                },
            );
        }
        self.over_capacity = over;
        report.over_capacity = over;
        self.untraceable.retain(|(s, _)| present.contains(&s.id));

        let mut by_prog: HashMap<u32, Vec<Attachment>> = HashMap::new();
        for link in LinkInfoIter::default() {
            if let Some((prog_id, a)) = self.resolver.attachment(&link) {
                if self.traced.contains_key(&prog_id) {
                    by_prog.entry(prog_id).or_default().push(a);
                }
            }
        }
        for p in self.traced.values_mut() {
            p.attachments = by_prog.remove(&p.id).unwrap_or_default();
            p.attach = attach::describe(&p.attachments);
        }
        Ok(report)
    }
}

fn summary(c: &Candidate, name: String) -> ProgSummary {
    ProgSummary {
        id: c.id,
        name,
        prog_type: attach::prog_type_name(c.prog_type),
        tag: c.tag.clone(),
        helpers: c.calls.helpers.clone(),
        calls_sk_release: c.calls.sk_release,
    }
}

/// Every loaded program calling a traced function, and the ids of all
/// loaded programs. Tracing programs (skprof's own probes among them) are
/// left out: they cannot call the lookup helpers, and the kernel refuses
/// fentry on fentry/fexit programs anyway.
fn enumerate(addrs: &HelperAddrs) -> (Vec<Candidate>, HashSet<u32>) {
    let opts = ProgInfoQueryOptions::default()
        .include_xlated_prog_insns(true)
        .include_func_info(true)
        .include_jited_ksyms(true)
        .include_jited_func_lens(true);
    let mut present = HashSet::new();
    let mut out = Vec::new();
    for info in ProgInfoIter::with_query_opts(opts) {
        present.insert(info.id);
        if info.ty == ProgramType::Tracing {
            continue;
        }
        let calls = xlated::scan(&info.xlated_prog_insns, addrs);
        if calls.is_empty() {
            continue;
        }
        let main_func = (info.btf_id != 0)
            .then(|| info.func_info.iter().find(|f| f.insn_off == 0))
            .flatten()
            .map(|f| f.type_id);
        out.push(Candidate {
            id: info.id,
            short_name: info.name.to_string_lossy().into_owned(),
            prog_type: info.ty,
            tag: info.tag.0.iter().map(|b| format!("{b:02x}")).collect(),
            calls,
            main_func,
            jit: jit_images(&info.jited_ksyms, &info.jited_func_lens),
        });
    }
    out.sort_by_key(|c| c.id);
    (out, present)
}

/// (start, length) of each JIT image, from `jited_ksyms` and
/// `jited_func_lens` (one per function: main, then subprograms). Zero
/// addresses mean the kernel hid them (kptr_restrict): none then.
fn jit_images(ksyms: &[*const std::ffi::c_void], lens: &[u32]) -> Vec<(u64, u32)> {
    ksyms
        .iter()
        .zip(lens)
        .map(|(&a, &l)| (a as u64, l))
        .filter(|&(a, l)| a != 0 && l != 0)
        .collect()
}

/// The name of function `type_id` in program `id`'s BTF: the full name of
/// its main function (the kernel's `name` is cut at 15 characters).
fn btf_func_name(id: u32, type_id: u32) -> Result<String> {
    let btf = Btf::from_prog_id(id)?;
    let f: Func<'_> = btf
        .type_by_id(TypeId::from(type_id))
        .with_context(|| format!("BTF type {type_id} is not a function"))?;
    let name = f
        .name()
        .with_context(|| format!("BTF function {type_id} has no name"))?;
    Ok(name.to_string_lossy().into_owned())
}
