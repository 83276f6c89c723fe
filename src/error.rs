//! Errors users see, and the process exit codes they map to.
//!
//! Exit codes (also in `skprof --help` and the README):
//!   0  success
//!   1  runtime error (a step failed; the message names it)
//!   2  usage error (bad flags or arguments)
//!   3  this kernel cannot be traced: neither fentry/fexit nor kprobes work,
//!      or it lacks BTF / the helper functions
//!   4  insufficient privileges (needs root, or CAP_BPF + CAP_PERFMON)
//!   5  `skprof leaks` found leaked socket references
//!   6  `skprof report --compare --max-regression`: a p99 regressed

use thiserror::Error;

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CANNOT_TRACE: i32 = 3;
pub const EXIT_PRIVILEGES: i32 = 4;
pub const EXIT_LEAKS: i32 = 5;
pub const EXIT_REGRESSION: i32 = 6;

/// Help text listing the exit codes, shown by `skprof --help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  runtime error (the message names the failed step)
  2  usage error
  3  this kernel cannot be traced (no fentry/fexit and no kprobes, or no
     BTF / helper functions); `skprof check` shows why
  4  insufficient privileges (run as root, or with CAP_BPF + CAP_PERFMON)
  5  skprof leaks: socket references leaked (outstanding past --older-than,
     or a traced program run ended holding one)
  6  skprof report --compare: a p99 latency grew by more than
     --max-regression";

/// Errors with their own exit code. Anything else exits with 1.
#[derive(Debug, Error)]
pub enum SkprofError {
    #[error("cannot trace the socket-lookup helpers on this kernel: {0}")]
    CannotTrace(String),
    #[error("insufficient privileges: {0}")]
    Privileges(String),
    #[error("{0}")]
    Usage(String),
    #[error("leaks found: {0}")]
    Leaks(String),
    #[error("p99 regression: {0}")]
    Regression(String),
}

impl SkprofError {
    pub fn exit_code(&self) -> i32 {
        match self {
            SkprofError::CannotTrace(_) => EXIT_CANNOT_TRACE,
            SkprofError::Privileges(_) => EXIT_PRIVILEGES,
            SkprofError::Usage(_) => EXIT_USAGE,
            SkprofError::Leaks(_) => EXIT_LEAKS,
            SkprofError::Regression(_) => EXIT_REGRESSION,
        }
    }
}

/// The exit code for an error chain: the first `SkprofError` in it decides.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<SkprofError>())
        .map(SkprofError::exit_code)
        .unwrap_or(EXIT_ERROR)
}

/// The one-line message for users: the context chain joined with ": ",
/// with newlines from lower layers folded.
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_comes_from_the_chain() {
        let e: anyhow::Error = SkprofError::CannotTrace("x".into()).into();
        let e = Err::<(), _>(e).context("load probes").unwrap_err();
        assert_eq!(exit_code(&e), EXIT_CANNOT_TRACE);
        assert_eq!(
            one_line(&e),
            "load probes: cannot trace the socket-lookup helpers on this kernel: x"
        );
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), EXIT_ERROR);
    }
}
