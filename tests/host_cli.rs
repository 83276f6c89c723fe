//! skprof on the host kernel, whatever it allows. On a kernel that refuses
//! both fentry and kprobes (like the CI machines' 6.18), `check` and `stat`
//! must say so in one line with exit code 3, never a panic or backtrace.
//! Also what needs no tracing: usage errors, and the systemd units in
//! packaging/.

use std::process::Command;

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

mod common;
use common::{skprof, stderr_of};

fn assert_one_clean_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("skprof: error: "), "{stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr:?}"
    );
}

#[test]
fn check_and_stat_agree_on_what_the_host_allows() {
    let check = skprof(&["check", "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&check.stdout).expect("check --json prints JSON");
    let code = check.status.code();
    match report["mode"].as_str() {
        Some(mode) => {
            // A kernel that can trace (not this project's CI machines).
            assert_eq!(code, Some(0));
            assert!(mode == "fentry" || mode == "kprobe");
        }
        None => {
            assert_eq!(code, Some(3), "cannot-trace exit code");
            let err = stderr_of(&check);
            assert_one_clean_line(&err);
            assert_eq!(report["fentry"]["ok"], false);
            assert_eq!(report["kprobe"]["ok"], false);
            let fentry_err = report["fentry"]["error"].as_str().unwrap();
            assert!(fentry_err.starts_with("load fentry probes"), "{fentry_err}");
            // The reason names both probe kinds.
            assert!(err.contains("fentry/fexit refused") && err.contains("kprobes unavailable"));
            if !report["kprobe_pmu"].as_bool().unwrap() {
                assert!(err.contains("no kprobe PMU"), "{err}");
            }

            // stat fails the same way, with the same reason.
            let stat = skprof(&["stat", "1", "1"]);
            assert_eq!(stat.status.code(), Some(3));
            let stat_err = stderr_of(&stat);
            assert_one_clean_line(&stat_err);
            assert!(stat_err.contains(fentry_err), "{stat_err} vs {fentry_err}");
            assert!(stat.stdout.is_empty());
        }
    }
}

#[test]
fn text_check_names_the_refusals() {
    let check = skprof(&["check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("fentry/fexit"), "{out}");
    assert!(out.contains("bpf_sk_release"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("verdict: ")), "{out}");
}

#[test]
fn usage_errors_exit_2_without_panicking() {
    for args in [
        &["stat", "0"][..],
        &["stat", "abc"],
        &["stat", "--units", "ms"],
        &["stat", "--probe-mode", "uprobe"],
        &["nonsense"],
    ] {
        let o = skprof(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!stderr_of(&o).contains("panicked"), "{args:?}");
    }
}

/// On the host (no tracing needed): a non-loopback bind without
/// --allow-remote is a usage error, before anything is loaded.
#[test]
fn remote_bind_needs_allow_remote() {
    let out = Command::new(SKPROF)
        .args(["export", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-remote") && err.lines().count() == 1,
        "{err}"
    );
}

/// The units in packaging/ pass `systemd-analyze verify` (with ExecStart
/// pointed at the binary just built: verify checks it exists).
#[test]
fn systemd_units_verify() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        // scripts/deps.sh installs it (Debian's `systemd`).
        eprintln!("SKIPPED: systemd-analyze not installed (scripts/deps.sh installs systemd)");
        return;
    };
    assert!(v.status.success());
    let dir = std::env::temp_dir().join(format!("skprof-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let packaging = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");
    let mut units = Vec::new();
    for e in std::fs::read_dir(packaging).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "service") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.contains("ExecStart=/usr/local/bin/skprof "), "{p:?}");
            // Both take SIGHUP for a rescan and are not restarted on usage,
            // kernel and privilege errors.
            assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{p:?}");
            assert!(text.contains("RestartPreventExitStatus=2 3 4"), "{p:?}");
            let to = dir.join(p.file_name().unwrap());
            std::fs::write(&to, text.replace("/usr/local/bin/skprof", SKPROF)).unwrap();
            units.push(to);
        }
    }
    assert!(units.len() >= 2, "{units:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
