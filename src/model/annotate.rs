//! `skprof annotate`: one program's source lines, as its BTF line info
//! carries them, with the runtime figures of every call site on each line:
//! the runtime picture of the verifier's reference tracking, `perf
//! annotate` style. Pure: built from the program's code, a snapshot's
//! difference and the sites resolved.

use std::collections::BTreeMap;

use serde::Serialize;

use super::hist::{LogHist, Percentiles};
use super::ids::{Helper, Outcome};
use super::ledger::LedgerScan;
use super::sites::{ProgCode, Site};
use super::snapshot::{pct, ByOutcome, Cell, ProgramRef, Snapshot};
use super::words;

/// A lookup site on a line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupSite {
    pub helper: &'static str,
    pub insn: Option<u32>,
    pub calls: u64,
    pub hits: u64,
    pub hit_pct: f64,
    pub outcomes: ByOutcome,
    /// Over the timed calls.
    pub timed: u64,
    pub latency_ns: Percentiles,
    pub acquired: u64,
    /// Where the sockets it found were released: (site, releases), most
    /// first.
    pub released_at: Vec<Pairing>,
    /// References it took that are outstanding now (the ledger).
    pub outstanding: u64,
}

/// Releases at (or of sockets from) another site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pairing {
    /// `file.c:LINE` (or `func+0xOFF`).
    pub site: String,
    pub insn: Option<u32>,
    pub releases: u64,
}

/// A `bpf_sk_release` site on a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseSite {
    pub insn: Option<u32>,
    pub calls: u64,
    pub dropped: u64,
    pub noop: u64,
    pub null: u64,
    pub unmatched: u64,
}

/// One source line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub file: String,
    pub line: u32,
    pub text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<LookupSite>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<ReleaseSite>,
}

/// A program's annotated source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Annotation {
    pub program: ProgramRef,
    pub interval_s: f64,
    pub lines: Vec<Line>,
    /// Calls of this program whose site resolved to no line (a program
    /// without line info shows its sites as `func+0xOFF` here).
    pub sites_without_line: Vec<String>,
}

impl Annotation {
    /// The annotation of `code` from what `delta` counted; `sites` are the
    /// resolved call sites, `ledger` the references outstanding now.
    pub fn build(
        code: &ProgCode,
        delta: &Snapshot,
        sites: &BTreeMap<u64, Site>,
        ledger: Option<&LedgerScan>,
        interval_s: f64,
    ) -> Annotation {
        let ours = |addr: &u64| sites.get(addr).filter(|s| s.prog_id == code.id);
        let mut lines: Vec<Line> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        // Line 0: code the compiler placed on no line.
        for l in code.source().into_iter().filter(|l| l.line != 0) {
            if seen.insert((l.file.clone(), l.line)) {
                lines.push(Line {
                    file: l.file.clone(),
                    line: l.line,
                    text: l.text.clone(),
                    lookups: Vec::new(),
                    releases: Vec::new(),
                });
            }
        }
        lines.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        let mut without = Vec::new();
        let place = |site: &Site, lines: &mut Vec<Line>| -> Option<usize> {
            let l = site.line.as_ref()?;
            lines
                .iter()
                .position(|x| x.file == l.file && x.line == l.line)
        };

        // Lookups: cells by (site, helper), merged over outcomes and slots.
        let mut by_site: BTreeMap<(u64, Helper), [Cell; Outcome::COUNT]> = BTreeMap::new();
        for (k, c) in &delta.cells {
            if ours(&k.site).is_some() {
                by_site.entry((k.site, k.helper)).or_default()[k.outcome.index()].merge(c);
            }
        }
        for ((addr, helper), cells) in by_site {
            let site = &sites[&addr];
            let mut all = Cell::default();
            for c in &cells {
                all.merge(c);
            }
            let mut released_at: Vec<Pairing> = delta
                .site_pairs
                .iter()
                .filter(|(&(a, _), &k)| a == addr && k > 0)
                .map(|(&(_, r), &k)| Pairing {
                    site: sites
                        .get(&r)
                        .map_or_else(|| format!("{r:#x}"), words::site_place),
                    insn: sites.get(&r).and_then(|s| s.insn),
                    releases: k,
                })
                .collect();
            released_at.sort_by(|a, b| b.releases.cmp(&a.releases).then(a.site.cmp(&b.site)));
            let outstanding = ledger.map_or(0, |l| {
                l.refs
                    .iter()
                    .filter(|r| r.site == addr)
                    .map(|r| u64::from(r.count))
                    .sum()
            });
            let hist: &LogHist = &all.hist;
            let ls = LookupSite {
                helper: helper.function(),
                insn: site.insn,
                calls: all.calls,
                hits: cells[Outcome::Hit.index()].calls,
                hit_pct: pct(cells[Outcome::Hit.index()].calls, all.calls),
                outcomes: ByOutcome::of(&cells),
                timed: hist.count,
                latency_ns: hist.percentiles(),
                acquired: all.acquired.iter().sum(),
                released_at,
                outstanding,
            };
            match place(site, &mut lines) {
                Some(i) => lines[i].lookups.push(ls),
                None => without.push(words::site_place(site)),
            }
        }
        for (addr, r) in &delta.release_sites {
            let Some(site) = ours(addr) else {
                continue;
            };
            if r.calls() == 0 {
                continue;
            }
            let rs = ReleaseSite {
                insn: site.insn,
                calls: r.calls(),
                dropped: r.released.iter().sum(),
                noop: r.noop.iter().sum(),
                null: r.null,
                unmatched: r.unmatched,
            };
            match place(site, &mut lines) {
                Some(i) => lines[i].releases.push(rs),
                None => without.push(words::site_place(site)),
            }
        }
        Annotation {
            program: words::program_ref(0, code.id, &code.name),
            interval_s,
            lines,
            sites_without_line: without,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ids::SockClass;
    use crate::model::sites::{JitFunc, SourceLine};
    use crate::model::snapshot::{CellKey, ReleaseSite as Rel};

    fn line(insn: u32, n: u32, text: &str) -> SourceLine {
        SourceLine {
            insn,
            file: "/src/p.bpf.c".into(),
            line: n,
            col: 1,
            text: text.into(),
        }
    }

    fn site(addr: u64, l: SourceLine, insn: u32) -> Site {
        Site {
            addr,
            prog_id: 5,
            prog_name: "p".into(),
            func: "p".into(),
            offset: 0,
            insn: Some(insn),
            line: Some(l),
        }
    }

    #[test]
    fn sites_land_on_their_lines_with_pairings_and_outstanding() {
        let code = ProgCode {
            id: 5,
            name: "p".into(),
            funcs: vec![JitFunc {
                start: 0x100,
                len: 0x100,
                name: "p".into(),
                insn: 0,
            }],
            jited: Vec::new(),
            lines: vec![
                (0x100, line(0, 10, "int x;")),
                (0x110, line(3, 11, "sk = lookup();")),
                (0x120, line(7, 12, "release(sk);")),
                (0x130, line(9, 11, "sk = lookup();")),
            ],
            calls: Vec::new(),
        };
        let sites = BTreeMap::from([
            (0x115, site(0x115, line(3, 11, "sk = lookup();"), 4)),
            (0x125, site(0x125, line(7, 12, "release(sk);"), 8)),
        ]);
        let mut d = Snapshot::default();
        let key = |o| CellKey {
            prog: 1,
            helper: Helper::SkLookupTcp,
            outcome: o,
            netns: 0,
            ifindex: 0,
            site: 0x115,
        };
        let mut hit = Cell {
            calls: 6,
            ..Cell::default()
        };
        hit.acquired[SockClass::Established.index()] = 6;
        d.cells.insert(key(Outcome::Hit), hit);
        d.cells.insert(
            key(Outcome::NoSocket),
            Cell {
                calls: 2,
                ..Cell::default()
            },
        );
        let mut r = Rel::default();
        r.released[SockClass::Established.index()] = 5;
        d.release_sites.insert(0x125, r);
        d.site_pairs.insert((0x115, 0x125), 5);
        let ledger = LedgerScan {
            now_ns: 1,
            refs: Vec::new(),
        };
        let a = Annotation::build(&code, &d, &sites, Some(&ledger), 1.0);
        assert_eq!(a.lines.len(), 3, "line 11 once");
        let l11 = &a.lines[1];
        assert_eq!(l11.line, 11);
        let s = &l11.lookups[0];
        assert_eq!(
            (s.calls, s.hits, s.acquired, s.outcomes.no_socket),
            (8, 6, 6, 2)
        );
        assert_eq!(s.released_at[0].site, "p.bpf.c:12");
        assert_eq!(s.released_at[0].releases, 5);
        assert_eq!(a.lines[2].releases[0].dropped, 5);
    }
}
