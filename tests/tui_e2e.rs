//! `skprof top` used as a person would: in a real terminal (tmux), keys
//! typed with `send-keys`, the screen read with `capture-pane`.
//!
//! - replay: `skprof top --replay` of a recording written here with known
//!   figures: the table, sorting and the drill-down must show them.
//! - live (`--features vm-tests`): `skprof top --workload` in Debian 6.1
//!   and 6.12 guests, on their serial console (`skprof-vm run --console`
//!   from inside a tmux pane, so the serial port is the guest job's
//!   controlling terminal).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use skprof::model::hist::{LogHist, Percentiles};
use skprof::model::ids::{Helper, Outcome, SockClass};
use skprof::model::ledger::{OutstandingRef, RunLeak, Tuple};
use skprof::model::snapshot::{Cell, CellKey, ProgramRef, Snapshot};
use skprof::record::{Frame, Interval, Leaks, LedgerScan, Meta, Writer};
use skprof::tui::view::{fmt_count, fmt_ns, fmt_rate};

#[cfg(feature = "vm-tests")]
mod common;

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");

/// A detached tmux server of our own (its own socket), with one pane
/// running a command; killed on drop.
struct Tmux {
    socket: String,
    /// Where the program under test writes its stderr (quoted on failure).
    log: PathBuf,
    /// Where the pane's shell writes the command's exit status (tmux's own
    /// `pane_dead_status` is sometimes never filled in).
    status: PathBuf,
}

impl Tmux {
    /// `cmd` is given the stderr log's path.
    fn start(name: &str, cols: u16, rows: u16, cmd: &dyn Fn(&Path) -> String) -> Tmux {
        let socket = format!("skprof-e2e-{name}-{}", std::process::id());
        let t = Tmux {
            log: std::env::temp_dir().join(format!("{socket}.stderr")),
            status: std::env::temp_dir().join(format!("{socket}.status")),
            socket,
        };
        let _ = std::fs::remove_file(&t.status);
        // remain-on-exit: the pane (and what the command printed last)
        // stays after the command ends.
        t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            "-s",
            "e2e",
            &format!("{}; echo $? >{}", cmd(&t.log), t.status.display()),
            ";",
            "set-option",
            "-t",
            "e2e",
            "remain-on-exit",
            "on",
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux (scripts/deps.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "e2e"])
    }

    /// The pane's command's exit status, once it ended.
    fn exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(&self.status)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The process the pane's shell runs (the command under test).
    fn command_pid(&self) -> u32 {
        let sh = self.run(&["display-message", "-p", "-t", "e2e", "#{pane_pid}"]);
        let sh = sh.trim();
        let children =
            std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no child of the pane's shell {sh}"))
    }

    /// Waits for the pane's command to end; its exit status.
    fn wait_exit(&self, timeout: Duration) -> i32 {
        let s = self.wait_for("the exit", timeout, |_| self.exit_status().is_some());
        self.exit_status()
            .unwrap_or_else(|| panic!("no exit status; screen:\n{s}"))
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "e2e"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Polls the screen until `done` accepts it.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            if Instant::now() >= end {
                let ps = Command::new("ps")
                    .args(["-eo", "pid,stat,etime,args"])
                    .output();
                let ps = ps.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                let ours: Vec<String> = ps
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("skprof"))
                    .map(String::from)
                    .collect();
                panic!(
                    "timed out waiting for {what}; screen:\n{s}\nstderr:\n{}\nprocesses:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                    ours.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.status);
    }
}

/// The table rows of a screen: (helper or place, the row's cells).
fn table_rows(screen: &str) -> Vec<Vec<String>> {
    let mut lines = screen.lines();
    // The column titles (the header's sort line names the column too).
    for l in lines.by_ref() {
        if l.contains("CALLS/s") && l.starts_with(|c: char| c.is_ascii_uppercase()) {
            break;
        }
    }
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// The live half boots qemu guests: only with `--features vm-tests`.
#[cfg(feature = "vm-tests")]
mod live {
    use super::*;

    /// A rate cell (950.0, 1.5k, 2.00M) as a number.
    fn rate(cell: &str) -> f64 {
        let (num, mult) = match cell.chars().last() {
            Some('k') => (&cell[..cell.len() - 1], 1e3),
            Some('M') => (&cell[..cell.len() - 1], 1e6),
            _ => (cell, 1.0),
        };
        num.parse::<f64>()
            .unwrap_or_else(|_| panic!("not a rate: {cell}"))
            * mult
    }

    /// Seconds since reset, from the header's third line.
    fn window_secs(screen: &str) -> f64 {
        let l = screen
            .lines()
            .find(|l| l.contains("since reset"))
            .unwrap_or_else(|| panic!("no window in:\n{screen}"));
        let t = l.split("since reset ").nth(1).unwrap();
        t.split(|c: char| c.is_whitespace() || c == 's')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `skprof top --workload --by helper` in a guest: every helper family
    /// shows calls, the counts move between two looks, the drill-down opens,
    /// and `q` ends it with the terminal given back.
    #[test]
    fn live_top_on_the_vm_serial_console_6_12() {
        live_top("6.12");
    }

    #[test]
    fn live_top_on_the_vm_serial_console_6_1() {
        live_top("6.1");
    }

    fn live_top(kernel: &str) {
        let cwd: PathBuf = std::env::current_dir().unwrap();
        let vm = common::skprof_vm().display();
        let t = Tmux::start(&format!("live{kernel}"), 120, 30, &|log| {
            format!(
                "cd {} && {vm} run --kernel {kernel} --console --timeout 300 -- \
             sh -c '{SKPROF} top --workload --workload-duration 120 --by helper 2>{}'",
                cwd.display(),
                log.display()
            )
        });
        // A whole frame (the serial line may be caught mid-draw): every traced
        // helper's row (all 12 on 6.1 and 6.12, each once: a torn frame shows
        // rows of the previous one beside the new) and the footer.
        let whole = |s: &str| {
            let rows = table_rows(s);
            let names: std::collections::BTreeSet<&str> =
                rows.iter().map(|r| r[0].as_str()).collect();
            s.contains("workload running")
                && rows.len() == 12
                && names.len() == 12
                && s.lines().any(|l| l.starts_with("q quit"))
        };
        let first = t.wait_for("the live dashboard", Duration::from_secs(240), |s| {
            // Two readings: rates are known from the second one on.
            whole(s) && window_secs(s) >= 2.0
        });
        let w1 = window_secs(&first);
        let second = t.wait_for("a later reading", Duration::from_secs(60), |s| {
            whole(s) && window_secs(s) >= w1 + 3.0
        });
        assert!(
            first.contains("fentry") && first.contains("live"),
            "header: {first}"
        );
        // One row per traced helper.
        let rows_a = table_rows(&first);
        let rows_b = table_rows(&second);
        for (family, prefix) in [
            ("generic", "sk"),
            ("tc", "tc_"),
            ("xdp", "xdp_"),
            ("sock_addr", "sock_addr_"),
        ] {
            for rows in [&rows_a, &rows_b] {
                let calling: Vec<&Vec<String>> = rows
                    .iter()
                    .filter(|r| r[0].starts_with(prefix) && rate(&r[1]) > 0.0)
                    .collect();
                assert!(
                    !calling.is_empty(),
                    "{family}: no helper with calls/s > 0:\n{first}\n{second}"
                );
            }
        }
        // Live: the acquired totals (since reset) moved.
        let acq = |rows: &[Vec<String>]| -> u64 {
            rows.iter().map(|r| r[7].parse::<u64>().unwrap_or(0)).sum()
        };
        assert!(
            acq(&rows_b) > acq(&rows_a),
            "ACQ did not grow:\n{first}\n{second}"
        );

        // Drill into the first row, then back, then quit.
        t.keys(&["Enter"]);
        let detail = t.wait_for("the drill-down", Duration::from_secs(60), |s| {
            s.contains("call latency") && s.contains("outcomes")
        });
        assert!(
            detail.contains("p50 ") && detail.contains("p99 "),
            "{detail}"
        );
        t.keys(&["Escape"]);
        t.wait_for("the table again", Duration::from_secs(60), |s| {
            s.lines().any(|l| l.starts_with("HELPER "))
        });
        // As a person types: ESC and q at once would read as Alt-q.
        std::thread::sleep(Duration::from_millis(300));
        t.keys(&["q"]);
        let status = t.wait_exit(Duration::from_secs(120));
        let end = t.screen();
        assert_eq!(status, 0, "{end}");
        // The alternate screen is gone: the dashboard is not left on the terminal.
        assert!(!end.contains("CALLS/s"), "terminal not restored:\n{end}");
    }
}

/// One aggregate of the recording: a program's calls of a helper with one
/// outcome, per second, and their latency.
struct Series {
    slot: u32,
    helper: Helper,
    outcome: Outcome,
    per_s: u64,
    base_ns: u64,
    class: Option<SockClass>,
}

const SERIES: [Series; 6] = [
    Series {
        slot: 1,
        helper: Helper::TcSkLookupTcp,
        outcome: Outcome::Hit,
        per_s: 900,
        base_ns: 2000,
        class: Some(SockClass::Established),
    },
    Series {
        slot: 1,
        helper: Helper::TcSkLookupTcp,
        outcome: Outcome::NoSocket,
        per_s: 100,
        base_ns: 1500,
        class: None,
    },
    Series {
        slot: 2,
        helper: Helper::XdpSkLookupUdp,
        outcome: Outcome::Hit,
        per_s: 2000,
        base_ns: 900,
        class: Some(SockClass::Udp),
    },
    Series {
        slot: 0,
        helper: Helper::SkLookupUdp,
        outcome: Outcome::Hit,
        per_s: 95,
        base_ns: 3000,
        class: Some(SockClass::Udp),
    },
    Series {
        slot: 0,
        helper: Helper::SkLookupUdp,
        outcome: Outcome::NoSocket,
        per_s: 5,
        base_ns: 2500,
        class: None,
    },
    // A second xdp helper the program never calls in the window: no row.
    Series {
        slot: 2,
        helper: Helper::XdpSkLookupTcp,
        outcome: Outcome::Hit,
        per_s: 0,
        base_ns: 1000,
        class: Some(SockClass::Listener),
    },
];

/// Seconds of recording (readings at 0..=SECS).
const SECS: u64 = 3;

/// The i-th call's latency: spread over +100%, every 100th ten times slower.
fn latency(base: u64, i: u64) -> u64 {
    let v = base + (i * 7919 % 1000) * base / 1000;
    if i % 100 == 99 {
        v * 10
    } else {
        v
    }
}

fn values(s: &Series, n: u64) -> Vec<u64> {
    (0..n).map(|i| latency(s.base_ns, i)).collect()
}

fn label(slot: u32) -> ProgramRef {
    let (id, name) = match slot {
        0 => (0, "(not traced)"),
        1 => (41, "tc_steer"),
        _ => (42, "xdp_fwd"),
    };
    ProgramRef {
        slot,
        id,
        name: name.into(),
    }
}

/// CLOCK_MONOTONIC of the ledger scan.
const SCAN_NS: u64 = 10_000_000_000;

fn reference(age_ns: u64) -> OutstandingRef {
    OutstandingRef {
        sk: age_ns,
        acquired_ns: SCAN_NS - age_ns,
        count: 1,
        prog_id: 41,
        helper: Helper::TcSkLookupTcp,
        class: SockClass::Established,
        state: 1,
        tuple: Tuple::V4 {
            saddr: Ipv4Addr::new(192, 168, 7, 9),
            daddr: Ipv4Addr::new(10, 1, 0, 3),
            sport: 51000,
            dport: 443,
        },
        netns: 4026531840,
        cpu: 0,
        refcnt: 2,
        stack_id: -1,
        site: 0,
    }
}

/// Hold times of the tc program's released references.
fn holds(n: u64) -> Vec<u64> {
    (0..n).map(|i| latency(4000, i)).collect()
}

/// Writes the recording: readings at 0..=SECS seconds, then the ledger
/// scan (two references of tc_steer outstanding, one 3 s old) and a run
/// that ended holding one.
fn write_recording(path: &Path) {
    let meta = Meta {
        skprof_version: "0.1.0".into(),
        kernel: "6.12.38+deb13-amd64".into(),
        probe_mode: "fentry".into(),
        hostname: "e2e".into(),
        start_unix_ms: 1_764_000_000_000,
        interval_ms: 1000,
        helpers: Helper::ALL.to_vec(),
        attribution_off: None,
        command: vec!["skprof".into(), "record".into()],
    };
    let mut w = Writer::create(path, &meta).unwrap();
    for t in 0..=SECS {
        let mut snapshot = Snapshot {
            mono_ns: (t + 1) * 1_000_000_000,
            ..Default::default()
        };
        for s in &SERIES {
            let n = s.per_s * t;
            let mut cell = Cell {
                calls: LogHist::from_values(&values(s, n)).count,
                hist: LogHist::from_values(&values(s, n)),
                ..Default::default()
            };
            if let Some(c) = s.class {
                cell.hits[c.index()] = n;
                if c.refcounted() {
                    cell.acquired[c.index()] = n;
                }
            }
            if n > 0 {
                let key = CellKey {
                    prog: s.slot,
                    helper: s.helper,
                    outcome: s.outcome,
                    netns: 4026531840,
                    ifindex: 2,
                    site: 0,
                };
                snapshot.cells.insert(key, cell);
            }
        }
        snapshot
            .holds
            .insert(1, LogHist::from_values(&holds((900 * t).saturating_sub(2))));
        w.append(&Frame::Interval(Box::new(Interval {
            unix_ms: meta.start_unix_ms + t * 1000,
            snapshot,
            labels: (0..3).map(label).collect(),
            forgotten: Vec::new(),
        })))
        .unwrap();
    }
    w.append(&Frame::Leaks(Leaks {
        unix_ms: meta.start_unix_ms + SECS * 1000,
        run_leaks: vec![RunLeak {
            ts_ns: SCAN_NS - 500_000,
            prog_id: 41,
            prog_name: "tc_steer[41]".into(),
            reference: reference(500_000),
            site: None,
        }],
        ledger: Some(LedgerScan {
            now_ns: SCAN_NS,
            refs: vec![reference(3_000_000_000), reference(10_000)],
        }),
    }))
    .unwrap();
    w.finish().unwrap();
}

/// What a row must show: the merged latency of its series over the
/// whole recording (the window since the first reading).
fn expected(slot: u32, helper: Helper) -> (u64, u64, Percentiles) {
    let mut all = Vec::new();
    let mut hits = 0;
    for s in SERIES
        .iter()
        .filter(|s| s.slot == slot && s.helper == helper)
    {
        let v = values(s, s.per_s * SECS);
        if s.outcome == Outcome::Hit {
            hits += v.len() as u64;
        }
        all.extend(v);
    }
    (
        all.len() as u64,
        hits,
        LogHist::from_values(&all).percentiles(),
    )
}

/// Rows as cells, with the untraced label made one word.
fn cells(screen: &str) -> Vec<Vec<String>> {
    table_rows(&screen.replace("(not traced)", "(not_traced)"))
}

#[test]
fn replay_table_sorting_and_drill_down_show_the_recorded_figures() {
    let path = std::env::temp_dir().join(format!("skprof-e2e-{}.skrec", std::process::id()));
    write_recording(&path);
    let t = Tmux::start("replay", 130, 30, &|log| {
        format!(
            "{SKPROF} top --replay {} --speed 4 2>{}",
            path.display(),
            log.display()
        )
    });
    let screen = t.wait_for("the end of the replay", Duration::from_secs(30), |s| {
        s.contains("end of the recording") && cells(s).len() == 3
    });
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        screen.contains(&format!("replay {file}")) && screen.contains("frame 4"),
        "{screen}"
    );
    assert!(
        screen.contains("6.12.38+deb13-amd64") && screen.contains("fentry"),
        "{screen}"
    );

    // By program, the busiest first: every column, as recorded.
    let rows = cells(&screen);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        ["xdp_fwd[42]", "tc_steer[41]", "(not_traced)"],
        "{screen}"
    );
    for (row, slot, helper) in [
        (&rows[0], 2, Helper::XdpSkLookupUdp),
        (&rows[1], 1, Helper::TcSkLookupTcp),
        (&rows[2], 0, Helper::SkLookupUdp),
    ] {
        let (calls, hits, p) = expected(slot, helper);
        let per_s = calls / SECS;
        let want = [
            helper.function().trim_start_matches("bpf_").to_string(),
            fmt_rate(per_s as f64),
            format!("{:.1}", 100.0 * hits as f64 / calls as f64),
            fmt_ns(p.p50),
            fmt_ns(p.p99),
            fmt_ns(p.max),
        ];
        assert_eq!(row[1..7], want, "{screen}");
    }
    // tc_steer: references acquired 2700, two outstanding (REL needs a scan
    // at the window's start: a recording has it only at its end), its hold
    // p99, and two leaks: the 3 s old reference and the run that ended
    // holding one.
    let hold = LogHist::from_values(&holds(900 * SECS - 2)).percentiles();
    assert_eq!(
        rows[1][7..],
        ["2700", "-", "2", &fmt_ns(hold.p99), "2"],
        "{screen}"
    );
    assert_eq!(rows[0][7..], ["0", "-", "0", "-", "0"], "{screen}");

    // s: by hit ratio, highest first; S: reversed.
    t.keys(&["s"]);
    let by_hit = t.wait_for("the sort by HIT%", Duration::from_secs(10), |s| {
        s.contains("sort HIT% ▼") && cells(s).len() == 3
    });
    let names: Vec<String> = cells(&by_hit).iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        names,
        ["xdp_fwd[42]", "(not_traced)", "tc_steer[41]"],
        "{by_hit}"
    );
    t.keys(&["S"]);
    let up = t.wait_for("the reversed sort", Duration::from_secs(10), |s| {
        s.contains("sort HIT% ▲") && cells(s).len() == 3
    });
    let names: Vec<String> = cells(&up).iter().map(|r| r[0].clone()).collect();
    assert_eq!(
        names,
        ["tc_steer[41]", "(not_traced)", "xdp_fwd[42]"],
        "{up}"
    );

    // Drill into tc_steer (now first): its histogram's percentiles, the
    // outcome split, and the outstanding references, oldest first.
    t.keys(&["Home"]);
    t.keys(&["Enter"]);
    let d = t.wait_for("the drill-down", Duration::from_secs(10), |s| {
        s.contains("call latency") && s.contains("outstanding references")
    });
    let (calls, hits, p) = expected(1, Helper::TcSkLookupTcp);
    assert!(
        d.contains(&format!(
            "▶ tc_steer[41] · bpf_tc_sk_lookup_tcp · {} calls since reset",
            fmt_count(calls)
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!(
            "p50 {}  p99 {}  p999 {}",
            fmt_ns(p.p50),
            fmt_ns(p.p99),
            fmt_ns(p.p999)
        )),
        "{d}"
    );
    assert!(d.contains(&format!("max {}", fmt_ns(p.max))), "{d}");
    // The outcome lines sit in the right column: from the word on.
    let line = |what: &str| -> Vec<String> {
        let l = d
            .lines()
            .find_map(|l| l.find(what).map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("no {what} in:\n{d}"));
        l.split_whitespace().map(String::from).collect()
    };
    assert_eq!(
        line(" hit ")[..3],
        ["hit", &hits.to_string(), "90.0%"],
        "{d}"
    );
    assert_eq!(
        line("no_socket")[..3],
        ["no_socket", &(calls - hits).to_string(), "10.0%"],
        "{d}"
    );
    assert!(d.contains("outstanding references 2"), "{d}");
    let refs: Vec<&str> = d
        .lines()
        .filter(|l| l.contains("192.168.7.9:51000→10.1.0.3:443"))
        .collect();
    assert_eq!(refs.len(), 2, "{d}");
    assert!(
        refs[0].contains("3.00s est") && refs[1].contains("10.0µs est"),
        "{d}"
    );
    assert!(d.contains(&format!("p99 {}", fmt_ns(hold.p99))), "{d}");

    t.keys(&["q"]);
    let status = t.wait_exit(Duration::from_secs(10));
    let end = t.screen();
    assert_eq!(status, 0, "{end}");
    assert!(!end.contains("CALLS/s"), "terminal not restored:\n{end}");
    let _ = std::fs::remove_file(&path);
}

/// A panic gives the terminal back: cooked mode with echo, the normal
/// screen, the cursor shown, and the message on stderr. The panic is
/// injected after the first reading is drawn (SKPROF_TEST_PANIC_IN_TOP).
#[test]
fn a_panic_restores_the_terminal() {
    let path = std::env::temp_dir().join(format!("skprof-e2e-panic-{}.skrec", std::process::id()));
    write_recording(&path);
    let stty = std::env::temp_dir().join(format!("skprof-e2e-panic-{}.stty", std::process::id()));
    let code = std::env::temp_dir().join(format!("skprof-e2e-panic-{}.code", std::process::id()));
    // The shell stays after skprof (sleep): tmux reports a dead pane's
    // cursor as hidden, whatever the program left.
    let t = Tmux::start("panic", 120, 30, &|log| {
        format!(
            "SKPROF_TEST_PANIC_IN_TOP=1 {SKPROF} top --replay {} 2>{}; code=$?; \
             stty -a >{}; echo $code >{}; sleep 60",
            path.display(),
            log.display(),
            stty.display(),
            code.display()
        )
    });
    let read_code = || {
        std::fs::read_to_string(&code)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    let end = t.wait_for("skprof's exit", Duration::from_secs(30), |_| {
        read_code().is_some()
    });
    let status = read_code().unwrap();
    assert_eq!(status, 101, "a panic exits with 101:\n{end}");
    let log = std::fs::read_to_string(&t.log).unwrap_or_default();
    assert!(log.contains("injected panic"), "stderr: {log}");
    // The dashboard was on screen before the panic; it is gone now.
    assert!(!end.contains("CALLS/s"), "terminal not restored:\n{end}");
    let flags = t.run(&[
        "display-message",
        "-p",
        "-t",
        "e2e",
        "#{alternate_on} #{cursor_flag}",
    ]);
    assert_eq!(flags.trim(), "0 1", "alternate screen off, cursor on");
    let modes = std::fs::read_to_string(&stty).unwrap();
    let words: Vec<&str> = modes.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(words.contains(&mode), "{mode} not restored: {modes}");
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&stty);
    let _ = std::fs::remove_file(&code);
}

/// The terminal follows a resize (the table drops columns at 80x24) and is
/// given back on SIGTERM.
#[test]
fn replay_follows_a_resize_and_restores_the_terminal_on_sigterm() {
    let path = std::env::temp_dir().join(format!("skprof-e2e-term-{}.skrec", std::process::id()));
    write_recording(&path);
    let t = Tmux::start("term", 140, 30, &|log| {
        format!(
            "{SKPROF} top --replay {} --speed 8 2>{}",
            path.display(),
            log.display()
        )
    });
    let titles = |s: &str| -> Vec<String> {
        s.lines()
            .find(|l| l.starts_with("PROGRAM"))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .unwrap_or_default()
    };
    let wide = t.wait_for("the wide table", Duration::from_secs(30), |s| {
        s.contains("end of the recording") && titles(s).len() == 12
    });
    assert_eq!(
        titles(&wide),
        [
            "PROGRAM",
            "HELPER",
            "CALLS/s▼",
            "HIT%",
            "P50",
            "P99",
            "MAX",
            "ACQ",
            "REL",
            "OUT",
            "HOLD99",
            "LEAKS"
        ],
        "{wide}"
    );
    t.run(&["resize-window", "-t", "e2e", "-x", "80", "-y", "24"]);
    let narrow = t.wait_for("the 80-column table", Duration::from_secs(10), |s| {
        !titles(s).is_empty() && !titles(s).contains(&"MAX".to_string())
    });
    // The essentials stay; MAX and HOLD99 go first.
    let shown = titles(&narrow);
    for col in [
        "PROGRAM",
        "HELPER",
        "CALLS/s▼",
        "HIT%",
        "P50",
        "P99",
        "OUT",
        "LEAKS",
    ] {
        assert!(shown.contains(&col.to_string()), "{col}: {narrow}");
    }
    assert!(!shown.contains(&"HOLD99".to_string()), "{narrow}");
    assert!(narrow.lines().all(|l| l.chars().count() <= 80), "{narrow}");
    let killed = Command::new("kill")
        .args(["-TERM", &t.command_pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = t.wait_exit(Duration::from_secs(10));
    let end = t.screen();
    assert_eq!(status, 0, "{end}");
    assert!(!end.contains("CALLS/s"), "terminal not restored:\n{end}");
    let _ = std::fs::remove_file(&path);
}
