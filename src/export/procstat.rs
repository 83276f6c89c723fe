//! skprof's own cost, read from `/proc`: resident memory, CPU time, and the
//! run time of its own BPF programs (the kernel's BPF statistics, in the
//! fdinfo of the program fds the process holds). Parsing is pure and
//! tested on recorded text; reading is best effort (a field that cannot be
//! read reads 0, and the exporter goes on).

use std::fs;

use super::metrics::SelfStats;

/// `/proc/PID/stat` reports CPU times in USER_HZ ticks, which Linux fixes
/// at 100 for user space whatever the kernel's HZ.
const USER_HZ: f64 = 100.0;

/// BPF program types that are skprof's own in its process: its probes
/// (kprobe) and its fentry/fexit probes and program tracers (tracing). The
/// built-in workload's programs (tc, XDP, cgroup) are other types.
const OWN_PROG_TYPES: [u32; 2] = [
    2,  /* BPF_PROG_TYPE_KPROBE */
    26, /* BPF_PROG_TYPE_TRACING */
];

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of a `/proc/PID/stat` text, in seconds.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 overall are 12 and 13 after the name (state is 3).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// (prog_id, prog_type, run_time_ns, run_cnt) of a BPF program fd's
/// fdinfo text.
pub fn parse_prog_fdinfo(text: &str) -> Option<(u32, u32, u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        u32::try_from(field("prog_id")?).ok()?,
        u32::try_from(field("prog_type")?).ok()?,
        field("run_time_ns").unwrap_or(0),
        field("run_cnt").unwrap_or(0),
    ))
}

/// Reads this process's figures (`collect_seconds` is left to the caller).
pub fn read_self() -> SelfStats {
    let rss_bytes = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_rss(&s))
        .unwrap_or(0);
    let cpu_seconds = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_cpu_seconds(&s))
        .unwrap_or(0.0);
    let (probe_run_ns, probe_runs) = own_bpf_runtime();
    let bpf_stats_enabled =
        fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1");
    SelfStats {
        rss_bytes,
        cpu_seconds,
        probe_run_ns,
        probe_runs,
        bpf_stats_enabled,
        collect_seconds: 0.0,
    }
}

/// Sum of run time and runs over the BPF programs of skprof's own types
/// whose fds this process holds, each program once.
fn own_bpf_runtime() -> (u64, u64) {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return (0, 0);
    };
    let mut seen = std::collections::BTreeSet::new();
    let (mut ns, mut runs) = (0, 0);
    for e in dir.flatten() {
        let is_prog = fs::read_link(e.path())
            .is_ok_and(|t| t.as_os_str() == std::ffi::OsStr::new("anon_inode:bpf-prog"));
        if !is_prog {
            continue;
        }
        let info = format!("/proc/self/fdinfo/{}", e.file_name().to_string_lossy());
        let Some((id, ty, t, n)) = fs::read_to_string(info)
            .ok()
            .and_then(|s| parse_prog_fdinfo(&s))
        else {
            continue;
        };
        if OWN_PROG_TYPES.contains(&ty) && seen.insert(id) {
            ns += t;
            runs += n;
        }
    }
    (ns, runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_proc_texts() {
        let status = "Name:\tskprof\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(parse_rss(status), Some(12345 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
        // A command name with spaces and a parenthesis.
        let stat =
            "4242 (sk prof) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 5 0 100 0 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.25));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        // 6.1's fdinfo of a tracing program.
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\n\
                      prog_jited:\t1\nprog_tag:\t4fc29c01a4aee229\nmemlock:\t4096\nprog_id:\t77\n\
                      run_time_ns:\t123456\nrun_cnt:\t40\nrecursion_misses:\t0\nverified_insns:\t300\n";
        assert_eq!(parse_prog_fdinfo(fdinfo), Some((77, 26, 123_456, 40)));
        assert_eq!(parse_prog_fdinfo("pos:\t0\n"), None);
    }

    #[test]
    fn reads_this_process() {
        // Any Linux process has a resident set.
        assert!(read_self().rss_bytes > 0);
    }
}
