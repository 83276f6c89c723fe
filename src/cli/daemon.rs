//! What the daemons (`skprof export`, `skprof leaks --watch`) share: a log
//! line when the attributed programs change, or always after SIGHUP.

use crate::export::log::Logger;
use crate::model::reading::Reading;

/// Logs what the rescan before `r` changed in the attributed programs, and
/// always after SIGHUP.
pub fn log_rescan(r: &Reading, log: &Logger) {
    if r.attached.is_empty() && r.detached.is_empty() && !r.rescan_asked {
        return;
    }
    let fmt = |s: &[(u32, String)]| {
        s.iter()
            .map(|(id, n)| format!("{n}[{id}]"))
            .collect::<Vec<_>>()
            .join(",")
    };
    log.info(
        if r.rescan_asked {
            "SIGHUP: programs rescanned"
        } else {
            "attributed programs changed"
        },
        &[
            ("attached", fmt(&r.attached)),
            ("detached", fmt(&r.detached)),
            ("programs", fmt(&r.attribution.programs)),
        ],
    );
}
