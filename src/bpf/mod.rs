//! The BPF seam: the only place that touches libbpf objects and raw map
//! bytes. Everything above it works with `crate::model` types.

/// A module holding libbpf-cargo's generated skeleton of one `bpf/*.bpf.c`
/// (`$file`, in OUT_DIR). The generated code is unsafe inside (object
/// pointers, the mmapped data sections), so it is exempt from the crate's
/// deny; the other lints are not ours to meet either.
macro_rules! skeleton {
    ($vis:vis mod $name:ident = $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            non_camel_case_types,
            dead_code,
            unused_imports,
            unsafe_code
        )]
        $vis mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}
pub(crate) use skeleton;

mod calls;
mod events;
pub mod floor;
mod load;
mod pod;
pub mod probes;
mod read;

// The generated skeleton of `bpf/skprof.bpf.c`.
skeleton!(pub(crate) mod skel = "skprof.skel.rs");

use std::sync::Mutex;

use libbpf_rs::PrintLevel;

/// libbpf's recent warnings, kept so an error can say which program the
/// kernel refused and why (libbpf only logs that).
static LIBBPF_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn capture_libbpf(level: PrintLevel, msg: String) {
    if std::env::var_os("SKPROF_DEBUG").is_some() {
        eprint!("{msg}");
    }
    if level == PrintLevel::Warn {
        if let Ok(mut log) = LIBBPF_LOG.lock() {
            if log.len() >= 64 {
                log.remove(0);
            }
            log.push(msg.trim_end().to_string());
        }
    }
}

/// Routes libbpf's messages into our buffer (and to stderr with
/// `SKPROF_DEBUG=1`), instead of libbpf's default stderr printing.
pub fn init_logging() {
    let level = if std::env::var_os("SKPROF_DEBUG").is_some() {
        PrintLevel::Debug
    } else {
        PrintLevel::Warn
    };
    libbpf_rs::set_print(Some((level, capture_libbpf)));
}

/// Takes the libbpf warnings logged since the last call.
pub(crate) fn take_libbpf_log() -> Vec<String> {
    LIBBPF_LOG
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

/// The most telling libbpf line about a failure: the one naming a program.
pub(crate) fn libbpf_reason(log: &[String]) -> Option<String> {
    log.iter()
        .rev()
        .find(|l| l.contains("prog '") && (l.contains("failed") || l.contains("error")))
        .or_else(|| log.last())
        .map(|l| l.trim_start_matches("libbpf: ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_prefers_the_line_naming_a_program() {
        let log = vec![
            "libbpf: loading object 'skprof_bpf' from buffer".to_string(),
            "libbpf: prog 'fentry_bpf_sk_release': BPF program load failed: Operation not permitted".to_string(),
            "libbpf: failed to load object 'skprof_bpf'".to_string(),
        ];
        assert_eq!(
            libbpf_reason(&log).unwrap(),
            "prog 'fentry_bpf_sk_release': BPF program load failed: Operation not permitted"
        );
        assert_eq!(libbpf_reason(&[]), None);
    }
}
