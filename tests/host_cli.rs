//! skprof on the host kernel, whatever it allows. On a kernel that refuses
//! both fentry and kprobes (like the CI machines' 6.18), `check` and `stat`
//! must say so in one line with exit code 3, never a panic or backtrace.

use std::process::{Command, Output};

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

fn skprof(args: &[&str]) -> Output {
    Command::new(SKPROF)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run skprof")
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

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
