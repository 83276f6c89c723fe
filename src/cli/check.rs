//! `skprof check`: what this kernel allows, tried for real.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::bpf::probes::{ProbeKind, ProbeOptions, Probes};
use crate::error::SkprofError;
use crate::kernel::{self, KernelFunctions, Privileges, RELEASE_FN};
use crate::model::ids::Helper;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print the findings as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Attempt {
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FunctionRow {
    pub name: &'static str,
    pub btf: bool,
    pub kallsyms: bool,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub kernel: String,
    pub privileges: Privileges,
    pub btf: Attempt,
    pub kprobe_pmu: bool,
    pub fentry: Attempt,
    pub kprobe: Attempt,
    pub functions: Vec<FunctionRow>,
    pub has_tc_variants: bool,
    /// The probe kind `--probe-mode auto` would use, if any.
    pub mode: Option<ProbeKind>,
    pub verdict: String,
}

impl CheckReport {
    fn exit_error(&self) -> Option<SkprofError> {
        if self.mode.is_some() {
            None
        } else if !self.privileges.sufficient() {
            Some(SkprofError::Privileges(self.verdict.clone()))
        } else {
            Some(SkprofError::CannotTrace(self.verdict.clone()))
        }
    }
}

fn attempt(kind: ProbeKind, funcs: &KernelFunctions) -> Attempt {
    // Loading and attaching the real probes is the only reliable test:
    // lockdown, LSMs and kernel configs refuse in ways no file shows.
    match Probes::load_kind(kind, funcs, &ProbeOptions::default()) {
        Ok(_probes) => Attempt {
            ok: true,
            error: None,
        },
        Err(e) => Attempt {
            ok: false,
            error: Some(crate::error::one_line(&e)),
        },
    }
}

pub fn gather() -> CheckReport {
    let privileges = Privileges::current();
    let funcs = KernelFunctions::discover();
    let btf = Attempt {
        ok: funcs.btf_error.is_none(),
        error: funcs.btf_error.clone(),
    };
    let fentry = attempt(ProbeKind::Fentry, &funcs);
    let kprobe = attempt(ProbeKind::Kprobe, &funcs);
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let functions = Helper::ALL
        .iter()
        .map(|h| h.function())
        .chain([RELEASE_FN])
        .map(|name| FunctionRow {
            name,
            btf: funcs.btf.contains(name),
            kallsyms: funcs.kallsyms.contains(name),
        })
        .collect();
    let mode = if fentry.ok {
        Some(ProbeKind::Fentry)
    } else if kprobe.ok {
        Some(ProbeKind::Kprobe)
    } else {
        None
    };
    let verdict = match mode {
        Some(ProbeKind::Fentry) => "skprof can trace here with fentry/fexit".to_string(),
        Some(ProbeKind::Kprobe) => {
            "skprof can trace here with kprobes (fentry refused)".to_string()
        }
        None if !privileges.sufficient() => {
            "tracing needs root, or CAP_BPF and CAP_PERFMON: run with sudo".to_string()
        }
        None => crate::bpf::probes::refusal(
            fentry.error.as_deref().unwrap_or("?"),
            kprobe.error.as_deref().unwrap_or("?"),
        ),
    };
    CheckReport {
        kernel: kernel::release(),
        privileges,
        btf,
        kprobe_pmu,
        fentry,
        kprobe,
        functions,
        has_tc_variants: funcs.has_tc_variants(),
        mode,
        verdict,
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn status(a: &Attempt) -> String {
    match &a.error {
        None => "ok".into(),
        Some(e) => format!("refused: {e}"),
    }
}

/// The human-readable report (pure).
pub fn format_report(r: &CheckReport) -> String {
    let p = &r.privileges;
    let mut caps = vec![];
    for (on, name) in [
        (p.cap_sys_admin, "CAP_SYS_ADMIN"),
        (p.cap_bpf, "CAP_BPF"),
        (p.cap_perfmon, "CAP_PERFMON"),
    ] {
        if on {
            caps.push(name);
        }
    }
    let mut s = format!(
        "{:<16}{}\n{:<16}{}{}\n{:<16}{}\n{:<16}{}\n{:<16}{}{}\n",
        "kernel",
        r.kernel,
        "privileges",
        if p.euid_root { "root" } else { "not root" },
        if caps.is_empty() {
            ", no BPF capabilities".to_string()
        } else {
            format!(" ({})", caps.join(", "))
        },
        "BTF",
        status(&r.btf),
        "fentry/fexit",
        status(&r.fentry),
        "kprobes",
        status(&r.kprobe),
        if r.kprobe_pmu { "" } else { " (no kprobe PMU)" },
    );
    s += &format!("\n{:<32} {:>4} {:>9}\n", "FUNCTION", "BTF", "KALLSYMS");
    for f in &r.functions {
        s += &format!("{:<32} {:>4} {:>9}\n", f.name, yes(f.btf), yes(f.kallsyms));
    }
    s += &format!(
        "\ntc programs land in: {}\n",
        if r.has_tc_variants {
            "bpf_tc_* (6.5+ layout)"
        } else {
            "the generic bpf_sk_* functions"
        }
    );
    s += &format!("verdict: {}\n", r.verdict);
    s
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let report = gather();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_report(&report));
    }
    match report.exit_error() {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(fentry_ok: bool, kprobe_ok: bool, root: bool) -> CheckReport {
        let privileges = Privileges {
            euid_root: root,
            cap_sys_admin: root,
            cap_bpf: root,
            cap_perfmon: root,
        };
        let mode = if fentry_ok {
            Some(ProbeKind::Fentry)
        } else if kprobe_ok {
            Some(ProbeKind::Kprobe)
        } else {
            None
        };
        let att = |ok: bool, e: &str| Attempt {
            ok,
            error: (!ok).then(|| e.to_string()),
        };
        CheckReport {
            kernel: "6.18.0".into(),
            privileges,
            btf: att(true, ""),
            kprobe_pmu: kprobe_ok,
            fentry: att(
                fentry_ok,
                "load fentry probes: Operation not permitted (os error 1)",
            ),
            kprobe: att(
                kprobe_ok,
                "attach kprobe bpf_sk_lookup_tcp: No such file or directory",
            ),
            functions: vec![FunctionRow {
                name: "bpf_sk_release",
                btf: true,
                kallsyms: false,
            }],
            has_tc_variants: true,
            mode,
            verdict: "v".into(),
        }
    }

    #[test]
    fn exit_codes_follow_the_verdict() {
        assert!(report(true, false, true).exit_error().is_none());
        assert!(report(false, true, true).exit_error().is_none());
        assert_eq!(
            report(false, false, true).exit_error().unwrap().exit_code(),
            crate::error::EXIT_CANNOT_TRACE
        );
        assert_eq!(
            report(false, false, false)
                .exit_error()
                .unwrap()
                .exit_code(),
            crate::error::EXIT_PRIVILEGES
        );
    }

    #[test]
    fn text_report_names_each_refusal() {
        let t = format_report(&report(false, false, true));
        assert!(t.contains("fentry/fexit    refused: load fentry probes: Operation not permitted"));
        assert!(
            t.contains("kprobes         refused: attach kprobe") && t.contains("(no kprobe PMU)")
        );
        assert!(t.contains("bpf_sk_release                    yes        no"));
        assert!(t.contains("privileges      root (CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON)"));
    }

    #[test]
    fn json_report_has_the_documented_keys() {
        let v = serde_json::to_value(report(false, true, true)).unwrap();
        for k in [
            "kernel",
            "privileges",
            "btf",
            "fentry",
            "kprobe",
            "functions",
            "mode",
            "verdict",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["mode"], "kprobe");
        assert_eq!(v["fentry"]["ok"], false);
    }
}
