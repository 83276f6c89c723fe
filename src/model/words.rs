//! How a fact is worded, once for every face: text, JSON, the dashboard,
//! reports and metrics all take their words from here, so the same fact
//! reads the same everywhere.

use serde::Serialize;

use super::sites::Site;
use super::snapshot::{ProgramRef, UNATTRIBUTED};

/// Calls from programs skprof does not trace.
pub const NOT_TRACED: &str = "(not traced)";

/// A known program's slot label.
pub fn program_ref(slot: u32, id: u32, name: &str) -> ProgramRef {
    ProgramRef {
        slot,
        id,
        name: name.to_string(),
    }
}

/// A slot no attributed program holds: the untraced calls' slot, or one
/// whose program went away.
pub fn program_ref_unknown(slot: u32) -> ProgramRef {
    ProgramRef {
        slot,
        id: 0,
        name: if slot == UNATTRIBUTED {
            NOT_TRACED.into()
        } else {
            format!("slot {slot} (gone)")
        },
    }
}

/// `name[id]`, or the slot's own words when no program is known.
pub fn program_label(p: &ProgramRef) -> String {
    if p.id == 0 {
        p.name.clone()
    } else {
        format!("{}[{}]", p.name, p.id)
    }
}

/// Where a call site is, in a few characters: `file.c:LINE` from the
/// program's line info, else `func+0xOFF` in its JIT image, else the bare
/// address (a site in no known program). Line 0 is code the compiler made
/// of several source lines (identical calls merged, say): no one line is
/// the call's, so it reads `func+0xOFF (file.c, merged code)`.
pub fn site_place(s: &Site) -> String {
    match (&s.line, s.prog_id) {
        (Some(l), _) => {
            let file = l.file.rsplit('/').next().unwrap_or(&l.file);
            if l.line == 0 {
                format!("{}+{:#x} ({file}, merged code)", s.func, s.offset)
            } else {
                format!("{file}:{}", l.line)
            }
        }
        (None, 0) => format!("{:#x}", s.addr),
        (None, _) => format!("{}+{:#x}", s.func, s.offset),
    }
}

/// Where a leak was looked up, as the leak faces say it: `file.c:LINE:
/// text` (the line's source, trimmed), or the place alone.
pub fn site_source(s: &Site) -> String {
    match &s.line {
        Some(l) if !l.text.trim().is_empty() => format!("{}: {}", site_place(s), l.text.trim()),
        _ => site_place(s),
    }
}

/// A call site with its program: `name[id] file.c:LINE`.
pub fn site_label(s: &Site) -> String {
    if s.prog_id == 0 {
        format!("{} {}", NOT_TRACED, site_place(s))
    } else {
        format!("{}[{}] {}", s.prog_name, s.prog_id, site_place(s))
    }
}

/// A program by kernel id: `name[id]` when its name is known.
pub fn program_by_id(id: u32, name: Option<&str>) -> String {
    match name {
        _ if id == 0 => NOT_TRACED.into(),
        Some(name) => format!("{name}[{id}]"),
        None => format!("prog {id}"),
    }
}

/// `s` cut to `width` characters, with an ellipsis when cut.
pub fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() > width {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

/// `HH:MM:SS` UTC of a wall-clock time in ms since the Unix epoch.
pub fn clock_utc(unix_ms: u64) -> String {
    let s = unix_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Whether the references traced lookups took were released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every reference a traced lookup took was released.
    Balanced,
    /// Fewer released than acquired: references still held at the
    /// window's end (`skprof leaks` says whether they are leaks).
    Held,
    /// More released than acquired: references taken before the window's
    /// start (the maps are read one after the other, so a window's edges
    /// are not one instant).
    ReleasedEarlier,
}

/// The release balance of a window: acquired references against the
/// releases that dropped one a traced lookup took. Releases of references
/// no traced lookup took (SOCKMAP/SOCKHASH sockets, `bpf_skc_to_*`,
/// references older than skprof) are counted apart: not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub verdict: Verdict,
    /// References traced lookups acquired.
    pub acquired: u64,
    /// Releases of references traced lookups took.
    pub released: u64,
    /// Reference-dropping releases of references no traced lookup took.
    pub unmatched_releases: u64,
    /// The verdict in words, as every face prints it.
    pub text: String,
}

impl Balance {
    /// From the window's acquired references, its reference-dropping
    /// releases (`dropped`, unmatched ones included) and the unmatched.
    pub fn of(acquired: u64, dropped: u64, unmatched: u64) -> Balance {
        let released = dropped.saturating_sub(unmatched);
        let (verdict, mut text) = match released.cmp(&acquired) {
            std::cmp::Ordering::Equal => (Verdict::Balanced, "balanced".to_string()),
            std::cmp::Ordering::Less => (
                Verdict::Held,
                format!(
                    "{} still held (in flight at the window's edges)",
                    acquired - released
                ),
            ),
            std::cmp::Ordering::Greater => (
                Verdict::ReleasedEarlier,
                format!(
                    "{} more released (in flight at the window's edges)",
                    released - acquired
                ),
            ),
        };
        if unmatched > 0 {
            text += &format!("; {unmatched} releases of references no traced lookup took");
        }
        Balance {
            verdict,
            acquired,
            released,
            unmatched_releases: unmatched,
            text,
        }
    }
}

/// What the hold-time figures cover: every released reference, or the
/// ones whose lookup was timed (fentry mode times a sample of calls).
pub fn hold_coverage(timed: u64, released: u64) -> String {
    if timed >= released {
        format!("hold time of all {released} released references")
    } else {
        format!("hold time of {timed} of {released} released references (the timed lookups)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_on_line_0_is_merged_code_not_a_line() {
        use crate::model::sites::SourceLine;
        let mut s = Site {
            addr: 0xffff_ffff_c000_07c0,
            prog_id: 5,
            prog_name: "bpf_sk_assign_t".into(),
            func: "bpf_sk_assign_test".into(),
            offset: 0x143,
            insn: None,
            line: Some(SourceLine {
                insn: 61,
                file: "/src/test_sk_assign.c".into(),
                line: 0,
                col: 0,
                text: String::new(),
            }),
        };
        assert_eq!(
            site_source(&s),
            "bpf_sk_assign_test+0x143 (test_sk_assign.c, merged code)"
        );
        s.line.as_mut().unwrap().line = 127;
        s.line.as_mut().unwrap().text = "\tbpf_sk_release(sk);".into();
        assert_eq!(site_source(&s), "test_sk_assign.c:127: bpf_sk_release(sk);");
    }

    #[test]
    fn sockhash_releases_are_balanced_and_named() {
        let b = Balance::of(403, 540, 137);
        assert_eq!(b.verdict, Verdict::Balanced);
        assert_eq!(
            b.text,
            "balanced; 137 releases of references no traced lookup took"
        );
        assert_eq!(
            (b.acquired, b.released, b.unmatched_releases),
            (403, 403, 137)
        );
    }

    #[test]
    fn held_and_earlier_releases_say_how_many() {
        assert_eq!(
            Balance::of(10, 7, 0).text,
            "3 still held (in flight at the window's edges)"
        );
        assert_eq!(Balance::of(10, 7, 0).verdict, Verdict::Held);
        assert_eq!(
            Balance::of(5, 8, 1).text,
            "2 more released (in flight at the window's edges); 1 releases of references no \
             traced lookup took"
        );
        assert_eq!(Balance::of(0, 0, 0).text, "balanced");
    }

    #[test]
    fn programs_read_the_same_everywhere() {
        assert_eq!(program_label(&program_ref(3, 42, "tc_in")), "tc_in[42]");
        assert_eq!(
            program_label(&program_ref_unknown(UNATTRIBUTED)),
            NOT_TRACED
        );
        assert_eq!(program_label(&program_ref_unknown(7)), "slot 7 (gone)");
        assert_eq!(program_by_id(42, Some("tc_in")), "tc_in[42]");
        assert_eq!(program_by_id(42, None), "prog 42");
        assert_eq!(program_by_id(0, Some("x")), NOT_TRACED);
        assert_eq!(
            truncate("cilium_tproxy_ingress_handler[42]", 24),
            "cilium_tproxy_ingress_h…"
        );
    }

    #[test]
    fn clock_formats_utc() {
        assert_eq!(
            clock_utc((86_400 * 3 + 3600 * 13 + 61) * 1000 + 999),
            "13:01:01"
        );
    }

    #[test]
    fn hold_coverage_says_what_is_timed() {
        assert_eq!(
            hold_coverage(5, 5),
            "hold time of all 5 released references"
        );
        assert!(hold_coverage(2, 5).contains("2 of 5"));
    }
}
