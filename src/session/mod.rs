//! The session layer: everything between the seam (`crate::bpf`) and the
//! faces (stat, top, record, leaks, export).
//!
//! A [`Session`] loads and attaches the probes and the program tracers; a
//! [`LiveSource`] owns one and the built-in workload and takes one
//! [`Reading`] per interval (counters, histograms, ledger scan, run leaks,
//! drops, program labels resolved once); a [`ReplaySource`] plays a
//! recording as the same readings. Faces only consume readings: none opens
//! probes or polls maps. The options are a plain struct ([`SessionOptions`]);
//! command-line parsing stays in `cli`.

pub mod calibrate;
mod live;
mod replay;
mod signals;
mod source;
mod workload;

pub use crate::model::reading::{AttributionInfo, Reading, SourceInfo};
pub use live::LiveSource;
pub use replay::ReplaySource;
pub use signals::Signals;
pub use source::{process_cpu_ns, Collector, CpuMeter, Msg, Source};
pub use workload::{workload_line, WorkloadOptions, WorkloadRunner};

use std::collections::BTreeMap;

use anyhow::Result;

use crate::attrib::code::SiteTable;
use crate::attrib::xlated::HelperAddrs;
use crate::attrib::{Attributor, Method};
use crate::bpf::probes::{LatencySample, ProbeKind, ProbeMode, ProbeOptions, Probes};
use crate::error::SkprofError;
use crate::kernel::{self, KernelFunctions, Privileges};
use crate::model::snapshot::ProgramRef;
use crate::model::words;

/// How calls are charged to programs (`--attribute-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttributeBy {
    /// Trace each program, else match kernel stacks.
    #[default]
    Auto,
    /// fentry/fexit on each calling program: exact, with the per-run check.
    Trace,
    /// Match the helper's kernel stack against the programs' JIT images.
    Stack,
}

/// What a session loads and how (the tracing commands' shared flags,
/// parsed by `cli`).
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub probe_mode: ProbeMode,
    /// Keep the reference ledger (acquire/release matching, hold times).
    pub ledger: bool,
    /// Trace the programs that call the helpers (per-program figures).
    pub attribution: bool,
    pub attribute_by: AttributeBy,
    /// Measure at start what the probes cost per lookup.
    pub calibrate: bool,
    pub latency_sample: LatencySample,
    pub max_programs: u64,
    /// Record the kernel stack of every acquired reference.
    pub stacks: bool,
    pub ledger_size: u32,
    pub max_series: u32,
    /// Read each call's netns and interface (rows by place).
    pub places: bool,
    /// Every ledger step through the ring buffer (`leaks --trace`).
    pub ledger_trace: bool,
    /// Record each call's call site (rows by site, source lines).
    pub sites: bool,
    /// The built-in workload, run in the background.
    pub workload: Option<WorkloadOptions>,
}

/// What a rescan of the loaded programs changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescan {
    /// Program slots freed: their aggregates were deleted in the kernel.
    pub freed_slots: Vec<u32>,
    /// (id, name) of the programs attributed from now on, and let go.
    pub attached: Vec<(u32, String)>,
    pub detached: Vec<(u32, String)>,
    /// Attribution failed and was switched off: why.
    pub failed: Option<String>,
    /// The rescan was asked for (SIGHUP).
    pub asked: bool,
}

/// A tracing session: what the kernel offers and the attached probes.
pub struct Session {
    pub funcs: KernelFunctions,
    pub probes: Probes,
    pub kernel: String,
    /// Traces the programs that call the helpers; `None` when attribution
    /// is off or impossible.
    pub attrib: Option<Attributor>,
    /// Why attribution is off, when it is.
    pub attrib_off: Option<String>,
    /// How attribution was asked for.
    attribute_by: AttributeBy,
    /// Names of every program traced so far, by id (they outlive the
    /// program, for reports about references it took).
    pub names: BTreeMap<u32, String>,
    /// What the probes cost per lookup, with `calibrate`.
    pub overhead: Option<calibrate::Overhead>,
    /// Resolves call sites, with `sites`.
    pub sites: Option<SiteTable>,
}

impl Session {
    pub fn start(opts: &SessionOptions) -> Result<Session> {
        let privs = Privileges::current();
        if !privs.sufficient() {
            return Err(SkprofError::Privileges(
                "tracing needs root, or CAP_BPF and CAP_PERFMON: run with sudo".into(),
            )
            .into());
        }
        let funcs = KernelFunctions::discover();
        // One read of /proc/kallsyms serves the kernel check, site capture
        // and attribution.
        let helper_addrs = match &funcs.kallsyms_error {
            Some(e) => Err(anyhow::anyhow!("{e}")),
            None => HelperAddrs::from_symbols(&funcs.addrs),
        };
        let site_addrs = if opts.sites {
            Some(
                helper_addrs
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("--sites: {e:#}"))?
                    .clone(),
            )
        } else {
            None
        };
        let probe_opts = ProbeOptions {
            sites: site_addrs.as_ref().map(HelperAddrs::site_fns),
            ledger: opts.ledger,
            ledger_size: opts.ledger_size,
            max_series: opts.max_series,
            ledger_stacks: opts.stacks,
            ledger_trace: opts.ledger_trace,
            places: opts.places,
            sampling: opts.latency_sample,
        };
        // Calibration times the workload before and after the probes
        // attach; a failure costs only the figure.
        let calibration = if opts.calibrate {
            match calibrate::Calibration::untraced() {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("skprof: no overhead figure: {}", crate::error::one_line(&e));
                    None
                }
            }
        } else {
            None
        };
        let probes = Probes::load(opts.probe_mode, &funcs, &probe_opts)?;
        let overhead = calibration.and_then(|c| match c.traced() {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("skprof: no overhead figure: {}", crate::error::one_line(&e));
                None
            }
        });
        let kprobes = probes.kind() != ProbeKind::Fentry;
        let (attrib, attrib_off) = match opts.attribute_by {
            _ if !opts.attribution => (None, Some("--no-attribution".to_string())),
            AttributeBy::Trace if kprobes => {
                return Err(SkprofError::Usage(
                    "--attribute-by trace needs fentry/fexit (tracing BPF programs); \
                     this session uses kprobes: use --attribute-by stack or auto"
                        .into(),
                )
                .into())
            }
            // Tracing a BPF program needs fentry/fexit: stacks in kprobe mode.
            by => {
                let mut a = Attributor::new(
                    opts.max_programs as usize,
                    kprobes || by == AttributeBy::Stack,
                );
                a.set_trace(opts.ledger_trace);
                // On failure the first rescan reads kallsyms again and
                // reports why in its own words.
                if let Ok(addrs) = &helper_addrs {
                    a.set_helper_addrs(addrs.clone());
                }
                (Some(a), None)
            }
        };
        let mut session = Session {
            funcs,
            probes,
            kernel: kernel::release(),
            attrib,
            attrib_off,
            attribute_by: opts.attribute_by,
            names: BTreeMap::new(),
            overhead,
            sites: site_addrs.map(SiteTable::new),
        };
        session.rescan()?;
        Ok(session)
    }

    /// How a program slot is shown.
    pub fn program(&self, slot: u32) -> ProgramRef {
        match self.attrib.as_ref().and_then(|a| a.by_slot(slot)) {
            Some(p) if slot != crate::model::snapshot::UNATTRIBUTED => {
                words::program_ref(slot, p.id, &p.name)
            }
            _ => words::program_ref_unknown(slot),
        }
    }

    /// Traces programs loaded since the last call and lets go of those that
    /// went away. If attribution fails it is switched off with the reason
    /// kept, and tracing goes on unattributed.
    pub fn rescan(&mut self) -> Result<Rescan> {
        if let Some(t) = self.sites.as_mut() {
            t.refresh();
        }
        let Some(attrib) = self.attrib.as_mut() else {
            return Ok(Rescan::default());
        };
        match attrib.rescan(self.probes.shared_maps()) {
            Ok(report) => {
                for p in &report.attached {
                    self.names.insert(p.id, p.name.clone());
                }
                if !report.attached.is_empty() || !report.detached.is_empty() {
                    self.probes
                        .set_runs_in_use(attrib.programs().any(|p| p.method == Method::Trace))?;
                    let over = self.probes.set_jit_ranges(&attrib.jit_ranges())?;
                    if over > 0 {
                        eprintln!(
                            "skprof: {over} JIT images of stack-attributed programs do not fit \
                             the table; their calls count as not traced"
                        );
                    }
                }
                self.probes.forget_slots(&report.freed_slots)?;
                Ok(Rescan {
                    freed_slots: report.freed_slots,
                    attached: report
                        .attached
                        .iter()
                        .map(|p| (p.id, p.name.clone()))
                        .collect(),
                    detached: report
                        .detached
                        .iter()
                        .map(|p| (p.id, p.name.clone()))
                        .collect(),
                    failed: None,
                    asked: false,
                })
            }
            Err(e) => {
                let why = crate::error::one_line(&e);
                self.attrib = None;
                self.attrib_off = Some(why.clone());
                Ok(Rescan {
                    failed: Some(format!("attribution off: {why}")),
                    ..Rescan::default()
                })
            }
        }
    }

    /// How a program id is shown.
    pub fn program_name(&self, id: u32) -> String {
        words::program_by_id(id, self.names.get(&id).map(String::as_str))
    }

    /// The programs attributed now, how, and how attribution runs.
    pub fn attribution(&self) -> AttributionInfo {
        let Some(a) = self.attrib.as_ref() else {
            return AttributionInfo {
                mode: "off".into(),
                off_reason: self.attrib_off.clone(),
                ..AttributionInfo::default()
            };
        };
        let by_stack = a.programs().filter(|p| p.method == Method::Stack).count();
        let mode =
            if self.probes.kind() == ProbeKind::Kprobe || self.attribute_by == AttributeBy::Stack {
                "stack"
            } else {
                "trace"
            };
        AttributionInfo {
            mode: mode.into(),
            off_reason: None,
            programs: a.programs().map(|p| (p.id, p.name.clone())).collect(),
            by_stack: by_stack as u64,
            untraceable: a.untraceable().len() as u64,
            stack_fallback: a
                .programs()
                .find_map(|p| p.fallback.as_ref().map(|w| (p.name.clone(), w.clone()))),
        }
    }

    /// What does not change while the session runs.
    pub fn info(&self, interval_s: f64) -> SourceInfo {
        SourceInfo {
            kernel: self.kernel.clone(),
            probe_mode: self.probes.kind().to_string(),
            origin: "live".into(),
            helpers: self.probes.helpers().to_vec(),
            interval_s,
            probe_ns_per_lookup: self.overhead.map(|o| o.ns_per_lookup),
            probes_attached: self.probes.attached() as u64,
            fallback_reason: self.probes.fallback_reason.clone(),
            untraced_ns: self.overhead.map(|o| o.untraced_ns),
        }
    }
}

impl crate::model::snapshot::Labels for Session {
    fn program(&self, slot: u32) -> ProgramRef {
        Session::program(self, slot)
    }

    /// Interface names are per namespace: only those of skprof's own
    /// namespace can be named from here.
    fn interface(&self, netns: u32, ifindex: u32) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
        if u64::from(netns) != own {
            return None;
        }
        interface_name(ifindex)
    }
}

/// The name of interface `ifindex` in this network namespace (sysfs shows
/// the namespace it was mounted from, which is ours).
fn interface_name(ifindex: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .is_ok_and(|s| s.trim().parse() == Ok(ifindex))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// What a text command prints once its probes are attached.
pub fn banner(info: &SourceInfo, a: &AttributionInfo) -> String {
    let kind = match info.probe_mode.as_str() {
        "fentry" => "fentry/fexit",
        _ => "kprobe/kretprobe",
    };
    let mut s = format!(
        "Tracing {} helper functions and bpf_sk_release with {kind} on {} ({} probes). \
         Ctrl-C to end.",
        info.helpers.len(),
        info.kernel,
        info.probes_attached
    );
    if a.mode == "off" {
        if let Some(why) = &a.off_reason {
            s += &format!("\nNo per-program attribution: {why}");
        }
    } else {
        s += &format!(
            "\nAttributing calls to {} BPF programs that call the helpers",
            a.programs.len()
        );
        if a.by_stack > 0 {
            s += &format!(" ({} by kernel stack: no per-run leak check", a.by_stack);
            if let Some((name, why)) = &a.stack_fallback {
                s += &format!("; {name} not traced: {why}");
            }
            s += ")";
        }
        if a.untraceable > 0 {
            s += &format!(" ({} cannot be attributed)", a.untraceable);
        }
    }
    if let Some(why) = &info.fallback_reason {
        s += &format!("\nfentry unavailable, using kprobes: {why}");
    }
    if let (Some(ns), Some(untraced)) = (info.probe_ns_per_lookup, info.untraced_ns) {
        s += &format!(
            "\nskprof's probes add about {ns:.0} ns per lookup here (--calibrate: {untraced:.0} \
             ns per untraced tc run)"
        );
    }
    s
}

/// The first line of a `--json` command, once its probes are attached: a
/// script starts its traffic when it sees it.
pub fn start_line(info: &SourceInfo, a: &AttributionInfo) -> String {
    serde_json::json!({
        "type": "start",
        "probe_mode": info.probe_mode,
        "kernel": info.kernel,
        "helpers": info.helpers.iter().map(|h| h.function()).collect::<Vec<_>>(),
        "probes": info.probes_attached,
        "programs": a.programs.len(),
        "attribution": a,
        "overhead_ns_per_lookup": info.probe_ns_per_lookup,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::Helper;

    fn info() -> SourceInfo {
        SourceInfo {
            kernel: "6.12.57+deb13-cloud-amd64".into(),
            probe_mode: "fentry".into(),
            helpers: vec![Helper::SkLookupTcp, Helper::TcSkLookupTcp],
            probes_attached: 25,
            ..SourceInfo::default()
        }
    }

    #[test]
    fn the_banner_counts_probes_as_probes_and_programs_as_programs() {
        let a = AttributionInfo {
            mode: "trace".into(),
            programs: vec![(7, "tc_in".into()), (8, "xdp_in".into())],
            by_stack: 1,
            stack_fallback: Some(("xdp_in".into(), "fentry refused".into())),
            ..AttributionInfo::default()
        };
        let b = banner(&info(), &a);
        assert_eq!(
            b.lines().collect::<Vec<_>>(),
            [
                "Tracing 2 helper functions and bpf_sk_release with fentry/fexit on \
                 6.12.57+deb13-cloud-amd64 (25 probes). Ctrl-C to end.",
                "Attributing calls to 2 BPF programs that call the helpers (1 by kernel stack: \
                 no per-run leak check; xdp_in not traced: fentry refused)"
            ]
        );
        let off = AttributionInfo {
            mode: "off".into(),
            off_reason: Some("--no-attribution".into()),
            ..AttributionInfo::default()
        };
        assert!(banner(&info(), &off).ends_with("\nNo per-program attribution: --no-attribution"));
    }

    #[test]
    fn the_json_start_line_says_what_is_attached() {
        let a = AttributionInfo {
            mode: "trace".into(),
            programs: vec![(7, "tc_in".into())],
            ..AttributionInfo::default()
        };
        let v: serde_json::Value = serde_json::from_str(&start_line(&info(), &a)).unwrap();
        assert_eq!(v["type"], "start");
        assert_eq!(v["probe_mode"], "fentry");
        assert_eq!(v["probes"], 25);
        assert_eq!(v["programs"], 1);
        assert_eq!(v["helpers"][1], "bpf_tc_sk_lookup_tcp");
        assert_eq!(v["attribution"]["mode"], "trace");
    }
}
