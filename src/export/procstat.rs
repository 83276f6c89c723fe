//! skprof's own cost, read from `/proc`: resident memory, CPU time, and the
//! run time of its own BPF programs (the kernel's BPF statistics, in the
//! fdinfo of the program fds the process holds). Memory and CPU time come
//! through the procfs crate; the fdinfo fields of BPF programs, which it
//! does not parse, are parsed here, pure and tested on recorded text.
//! Reading is best effort (a field that cannot be read reads 0, and the
//! exporter goes on).

use std::fs;

use procfs::process::Process;

use super::metrics::SelfStats;

/// BPF program types that are skprof's own in its process: its probes
/// (kprobe) and its fentry/fexit probes and program tracers (tracing). The
/// built-in workload's programs (tc, XDP, cgroup) are other types.
const OWN_PROG_TYPES: [u32; 2] = [
    2,  /* BPF_PROG_TYPE_KPROBE */
    26, /* BPF_PROG_TYPE_TRACING */
];

/// `VmRSS` of a `/proc/PID/status` text, in bytes: for callers that hold
/// the text already (`leaks --watch` reads it for its summary).
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    let me = Process::myself().ok();
    let rss_bytes = me
        .as_ref()
        .and_then(|p| p.status().ok()?.vmrss)
        .map_or(0, |kb| kb * 1024);
    // In clock ticks (USER_HZ), whose length sysconf gives.
    let cpu_seconds = me.as_ref().and_then(|p| p.stat().ok()).map_or(0.0, |s| {
        (s.utime + s.stime) as f64 / procfs::ticks_per_second() as f64
    });
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
        // 6.1's fdinfo of a tracing program.
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\n\
                      prog_jited:\t1\nprog_tag:\t4fc29c01a4aee229\nmemlock:\t4096\nprog_id:\t77\n\
                      run_time_ns:\t123456\nrun_cnt:\t40\nrecursion_misses:\t0\nverified_insns:\t300\n";
        assert_eq!(parse_prog_fdinfo(fdinfo), Some((77, 26, 123_456, 40)));
        assert_eq!(parse_prog_fdinfo("pos:\t0\n"), None);
    }

    #[test]
    fn reads_this_process() {
        // Any Linux process has a resident set; this one has run.
        let me = read_self();
        assert!(me.rss_bytes > 0);
        // CPU time counts in ticks: spin until one is charged to us.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read_self().cpu_seconds == 0.0 && std::time::Instant::now() < deadline {
            std::hint::black_box(0);
        }
        assert!(read_self().cpu_seconds > 0.0);
    }
}
