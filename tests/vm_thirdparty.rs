//! Per-site figures on a BPF program nobody here wrote, in Debian 6.1 and
//! 6.12 guests: the Linux kernel's selftest `test_sk_assign.c` (Cloudflare,
//! Isovalent), built from the linux-source-6.1 package by
//! `scripts/third-party-progs`. It is a tc program with one
//! `bpf_skc_lookup_tcp` and one `bpf_sk_lookup_udp` call site (in two
//! inlined functions) and four `bpf_sk_release` call sites.
//!
//! The guest loads it with bpftool and runs it with `bpftool prog run`
//! (BPF_PROG_TEST_RUN) on five hand-made packets, `R` times each, while
//! `skprof stat --by site` runs, in fentry and in kprobe mode. Which path
//! each packet takes through the program is fixed by the sockets the guest
//! holds (a TCP listener and one established connection on 1234, a UDP
//! socket on 1235), so each site's calls, hits, acquired references and
//! releases are known exactly:
//!
//! | packet | lookup | then |
//! |---|---|---|
//! | TCP 5555 → 4321 | tcp: miss | sockmap empty: dropped |
//! | TCP 5555 → 1234 | tcp: listener (no reference) | released at `tcp_listener` |
//! | TCP P → 1234 (established) | tcp: established, +1 reference | assigned, released at `assign` |
//! | UDP 5555 → 1235 | udp: bound socket (no reference) | assigned, released at `assign` |
//! | UDP 5555 → 80 | udp: miss | passed |

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

mod common;
use common::{json_lines, u};

const SKPROF: &str = env!("CARGO_BIN_EXE_skprof");
/// Runs of each packet.
const R: u64 = 23;
const MODES: [&str; 2] = ["fentry", "kprobe"];

/// The program, built afresh into `dir`, and its source.
fn build(dir: &Path) -> String {
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/third-party-progs"
    ))
    .arg(dir)
    .output()
    .expect("run scripts/third-party-progs");
    assert!(
        out.status.success(),
        "scripts/third-party-progs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.join("test_sk_assign.c")).expect("the source it was built from")
}

/// The source line of each call site, by name: the lookups by their call,
/// the releases in the order they appear (the UDP path's comes first). The
/// two `assign:` releases are one site, `assign`: clang merges the two
/// identical tails into one call, on line 0 (merged code), but the test
/// does not depend on it.
fn sites(src: &str) -> BTreeMap<u64, &'static str> {
    let mut out = BTreeMap::from([(0, "assign")]);
    let mut releases = ["assign", "tcp_listener", "tcp_shot", "assign"].into_iter();
    for (i, l) in src.lines().enumerate() {
        let n = i as u64 + 1;
        if l.contains("sk = bpf_skc_lookup_tcp(skb, tuple,") {
            out.insert(n, "tcp");
        } else if l.contains("sk = bpf_sk_lookup_udp(skb, tuple,") {
            out.insert(n, "udp");
        } else if l.contains("bpf_sk_release(sk);") {
            let name = releases
                .next()
                .expect("four bpf_sk_release calls in test_sk_assign.c");
            out.insert(n, name);
        }
    }
    assert_eq!(
        out.len(),
        7,
        "test_sk_assign.c changed: two lookup and four release sites expected, found {out:?}"
    );
    out
}

/// Python that writes the packets into `$D` once the sockets exist, and
/// then holds the sockets open.
const SOCKETS_AND_PACKETS: &str = r#"
import os, socket, struct, sys, time
d = sys.argv[1]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 1234)); ls.listen(8)
c = socket.create_connection(("127.0.0.1", 1234)); a, _ = ls.accept()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 1235))
lo = socket.inet_aton("127.0.0.1")
def pkt(proto, sport, dport):
    l4 = (struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
          if proto == 6 else struct.pack("!HHHH", sport, dport, 8, 0))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, lo, lo)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4
for name, p in [("tcp_4321", pkt(6, 5555, 4321)), ("tcp_listener", pkt(6, 5555, 1234)),
                ("tcp_established", pkt(6, c.getsockname()[1], 1234)),
                ("udp_bound", pkt(17, 5555, 1235)), ("udp_none", pkt(17, 5555, 80))]:
    open(os.path.join(d, name + ".bin"), "wb").write(p)
open(os.path.join(d, "ready"), "w").write("ready\n")
time.sleep(3600)
"#;

fn script(dir: &Path) -> String {
    let d = dir.display();
    let mut s = format!(
        r#"set -u
D={d}
S={SKPROF}
{}
python3 -c '{}' "$D" >"$D/sockets.err" 2>&1 &
PY=$!
waitfor sockets $PY test -f "$D/ready"
bpftool prog load "$D/test_sk_assign.o" /sys/fs/bpf/skprof_ska >"$D/load.err" 2>&1
echo "status load $?"
"#,
        common::SH_WAITFOR,
        SOCKETS_AND_PACKETS.replace('\'', r#"'"'"'"#)
    );
    for m in MODES {
        s += &format!(
            r#"
$S stat --by site --json --cumulative --probe-mode {m} 1 >"$D/stat_{m}.json" 2>"$D/stat_{m}.err" &
ST=$!
waitfor stat $ST atleast "$D/stat_{m}.json" '"type":"interval"' 1
for p in tcp_4321 tcp_listener tcp_established udp_bound udp_none; do
  bpftool prog run pinned /sys/fs/bpf/skprof_ska data_in "$D/$p.bin" repeat {R} >>"$D/run.out" 2>&1 ||
    echo "prog run $p failed"
done
n=$(lines "$D/stat_{m}.json" '"type":"interval"')
waitfor stat-after $ST atleast "$D/stat_{m}.json" '"type":"interval"' $((n + 2))
kill -INT $ST; wait $ST; echo "status stat_{m} $?"
"#
        );
    }
    s += "kill $PY\n";
    s
}

/// (calls, hits, acquired) per lookup site and ([releases, dropped a
/// reference], lookup site → releases) per release site, from the last
/// interval of `stat --by site --json`, for the sites in `names`.
type Lookups = BTreeMap<String, [u64; 3]>;
type Releases = BTreeMap<String, ([u64; 2], BTreeMap<String, u64>)>;

fn per_site(last: &Value, names: &BTreeMap<u64, &'static str>) -> (Lookups, Releases) {
    let name_of = |site: &Value| -> Option<String> {
        let line = &site["line"];
        if !line["file"].as_str()?.ends_with("test_sk_assign.c") {
            return None;
        }
        names.get(&line["line"].as_u64()?).map(|s| s.to_string())
    };
    let mut lookups = Lookups::new();
    for row in last["helpers"].as_array().expect("rows") {
        let Some(name) = name_of(&row["site"]) else {
            continue;
        };
        // The kernel keeps 15 characters of a program's name.
        assert!(
            row["program"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("bpf_sk_assign_t")),
            "{row}"
        );
        let e = lookups.entry(name).or_default();
        e[0] += u(&row["calls"]);
        e[1] += u(&row["hits"]);
        e[2] += u(&row["acquired"]);
    }
    let mut releases = Releases::new();
    for r in last["release_sites"].as_array().expect("release_sites") {
        let Some(name) = name_of(&r["site"]) else {
            continue;
        };
        let e = releases.entry(name).or_default();
        e.0[0] += u(&r["calls"]);
        e.0[1] += u(&r["dropped"]);
        for p in r["from"].as_array().expect("from") {
            let from = name_of(&p["site"]).unwrap_or_else(|| format!("{}", p["site"]));
            *e.1.entry(from).or_default() += u(&p["releases"]);
        }
    }
    (lookups, releases)
}

fn check_mode(out: &common::Outputs, mode: &str, names: &BTreeMap<u64, &'static str>) {
    let k = &out.kernel;
    out.ok(&format!("stat_{mode}"), &format!("stat_{mode}.err"));
    let stat = json_lines(&out.read(&format!("stat_{mode}.json")));
    let last = stat
        .iter()
        .rev()
        .find(|l| l["type"] == "interval")
        .expect("an interval");
    let (lookups, releases) = per_site(last, names);
    // The whole stream since each `stat` started: the fentry pass saw
    // its own runs; the kprobe pass its own too (cumulative from its start).
    assert_eq!(
        lookups,
        BTreeMap::from([
            ("tcp".to_string(), [3 * R, 2 * R, R]),
            ("udp".to_string(), [2 * R, R, 0]),
        ]),
        "{k}/{mode}: (calls, hits, acquired) by lookup site"
    );
    // `assign` releases the established connection's references (R) and
    // the UDP socket (R, holds none); `tcp_listener` the listener.
    let got: BTreeMap<String, [u64; 2]> = releases.iter().map(|(n, r)| (n.clone(), r.0)).collect();
    assert_eq!(
        got,
        BTreeMap::from([
            ("assign".to_string(), [2 * R, R]),
            ("tcp_listener".to_string(), [R, 0]),
        ]),
        "{k}/{mode}: [releases, dropped] by release site: {releases:?}"
    );
    // Pairings: the established connection's references in both modes;
    // sockets that hold none (the listener, the UDP socket) where the
    // program's runs are traced (fentry).
    let tcp = BTreeMap::from([("tcp".to_string(), R)]);
    if mode == "fentry" {
        let both = BTreeMap::from([("tcp".to_string(), R), ("udp".to_string(), R)]);
        assert_eq!(releases["assign"].1, both, "{k}/{mode}");
        assert_eq!(releases["tcp_listener"].1, tcp, "{k}/{mode}");
    } else {
        assert_eq!(releases["assign"].1, tcp, "{k}/{mode}");
    }
    assert_eq!(u(&last["drops"]["site_unknown"]), 0, "{k}/{mode}");
}

fn third_party(kernel: &str) {
    let dir = std::env::temp_dir().join(format!(
        "skprof-vm-thirdparty-{}-{}",
        kernel.replace('.', "_"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let src = build(&dir);
    let names = sites(&src);
    let out = common::Outputs::run(kernel, 600, dir.clone(), &script(&dir));
    out.ok("load", "load.err");
    assert!(!out.log.contains("prog run"), "{kernel}: {}", out.log);
    for m in MODES {
        check_mode(&out, m, &names);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn third_party_sites_6_1() {
    third_party("6.1");
}

#[test]
fn third_party_sites_6_12() {
    third_party("6.12");
}
