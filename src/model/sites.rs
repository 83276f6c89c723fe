//! Call sites: where in a BPF program a helper was called, and on which
//! source line.
//!
//! The probes record a call's site as the address in the caller's JIT
//! image the helper returns to. [`ProgCode`] is what the kernel tells of
//! one program's code (its JIT images, line info and the calls its xlated
//! instructions make to the traced functions); [`ProgCode::resolve`] turns
//! an address into a [`Site`]: the function, the call instruction, the
//! source line. Pure: the seam fills `ProgCode` (`attrib::code`).

use serde::Serialize;

use super::ids::Helper;

/// A traced function a program calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Callee {
    Lookup(Helper),
    Release,
}

/// One BTF line-info record: the source line that instructions from
/// `insn` on come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceLine {
    /// The first xlated instruction of the line.
    pub insn: u32,
    /// The file as the compiler named it (often a full path).
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// The line's text, as BTF carries it (may be empty).
    pub text: String,
}

/// One function (main or subprogram) of a program, as JITed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitFunc {
    pub start: u64,
    pub len: u32,
    /// From the program's BTF, else `main`/`sub<N>`.
    pub name: String,
    /// Its first xlated instruction.
    pub insn: u32,
}

/// What the kernel tells of one program's code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProgCode {
    pub id: u32,
    pub name: String,
    /// Main function first, as the kernel lists them.
    pub funcs: Vec<JitFunc>,
    /// Every function's JIT image, in the order of `funcs`, concatenated
    /// (empty when the kernel did not give it).
    pub jited: Vec<u8>,
    /// (JIT address of its first instruction, line), in the kernel's order
    /// (by instruction); empty without BTF line info.
    pub lines: Vec<(u64, SourceLine)>,
    /// (xlated instruction index, callee) of every call to a traced
    /// function, ascending.
    pub calls: Vec<(u32, Callee)>,
}

/// A resolved call site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    /// The return address the probes recorded.
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub prog_id: u32,
    pub prog_name: String,
    /// The function (main or subprogram) holding the call.
    pub func: String,
    /// Offset of the call instruction in that function's JIT image.
    pub offset: u32,
    /// The xlated instruction of the call, when line info places it.
    pub insn: Option<u32>,
    /// Its source line, when the program has BTF line info.
    pub line: Option<SourceLine>,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// Why an address is not a call site of a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotASite {
    /// In none of the program's JIT images.
    Outside,
    /// Inside one, but not just after a call instruction: a wrong address,
    /// never shown as a site.
    NotAfterCall,
}

/// x86-64 `call rel32`, as the BPF JIT emits helper calls.
const CALL_REL32: u8 = 0xe8;
const CALL_LEN: u64 = 5;

impl ProgCode {
    /// Whether `addr` lies in one of the program's JIT images.
    pub fn contains(&self, addr: u64) -> bool {
        self.func_of(addr).is_some()
    }

    fn func_of(&self, addr: u64) -> Option<usize> {
        self.funcs
            .iter()
            .position(|f| addr > f.start && addr <= f.start + u64::from(f.len))
    }

    /// The site `addr` (a return address) names, checked: it must follow a
    /// `call` instruction in the JIT image when the image is known.
    pub fn resolve(&self, addr: u64, callee: Option<Callee>) -> Result<Site, NotASite> {
        let fi = self.func_of(addr).ok_or(NotASite::Outside)?;
        let f = &self.funcs[fi];
        let call = addr.checked_sub(CALL_LEN).ok_or(NotASite::NotAfterCall)?;
        if call < f.start {
            return Err(NotASite::NotAfterCall);
        }
        let offset = (call - f.start) as u32;
        if !self.jited.is_empty() {
            let base: u64 = self.funcs[..fi].iter().map(|g| u64::from(g.len)).sum();
            let at = (base + u64::from(offset)) as usize;
            if self.jited.get(at) != Some(&CALL_REL32) {
                return Err(NotASite::NotAfterCall);
            }
        }
        // The last line starting at or before the call, in this function.
        let end = f.start + u64::from(f.len);
        let li = self
            .lines
            .iter()
            .rposition(|(a, _)| *a <= call && *a >= f.start && *a < end);
        let line = li.map(|i| self.lines[i].1.clone());
        let insn = li.and_then(|i| {
            let from = self.lines[i].1.insn;
            let to = self
                .lines
                .get(i + 1)
                .map(|(_, l)| l.insn)
                .unwrap_or(u32::MAX);
            self.calls
                .iter()
                .find(|(n, c)| *n >= from && *n < to && callee.is_none_or(|k| k == *c))
                .map(|(n, _)| *n)
        });
        Ok(Site {
            addr,
            prog_id: self.id,
            prog_name: self.name.clone(),
            func: f.name.clone(),
            offset,
            insn,
            line,
        })
    }

    /// The program's source lines, once each, in instruction order (what
    /// `annotate` prints).
    pub fn source(&self) -> Vec<&SourceLine> {
        let mut v: Vec<&SourceLine> = self.lines.iter().map(|(_, l)| l).collect();
        v.sort_by_key(|l| l.insn);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(insn: u32, n: u32) -> SourceLine {
        SourceLine {
            insn,
            file: "/src/p.bpf.c".into(),
            line: n,
            col: 2,
            text: format!("line {n}"),
        }
    }

    /// Two functions at 0x1000 (0x40 bytes) and 0x2000 (0x20), a call at
    /// 0x1010 (returns to 0x1015) and one at 0x2008 (returns to 0x200d).
    fn code() -> ProgCode {
        let mut jited = vec![0x90u8; 0x60];
        jited[0x10] = CALL_REL32;
        jited[0x40 + 0x08] = CALL_REL32;
        ProgCode {
            id: 7,
            name: "prog".into(),
            funcs: vec![
                JitFunc {
                    start: 0x1000,
                    len: 0x40,
                    name: "prog".into(),
                    insn: 0,
                },
                JitFunc {
                    start: 0x2000,
                    len: 0x20,
                    name: "sub".into(),
                    insn: 20,
                },
            ],
            jited,
            lines: vec![
                (0x1000, line(0, 10)),
                (0x100c, line(4, 11)),
                (0x1020, line(9, 12)),
                (0x2000, line(20, 30)),
                (0x2004, line(22, 31)),
            ],
            calls: vec![
                (6, Callee::Lookup(Helper::SkLookupTcp)),
                (24, Callee::Release),
            ],
        }
    }

    #[test]
    fn a_return_address_resolves_to_its_line_and_call() {
        let s = code().resolve(0x1015, None).unwrap();
        assert_eq!((s.func.as_str(), s.offset, s.insn), ("prog", 0x10, Some(6)));
        assert_eq!(s.line.unwrap().line, 11);
        let s = code().resolve(0x200d, Some(Callee::Release)).unwrap();
        assert_eq!((s.func.as_str(), s.offset, s.insn), ("sub", 8, Some(24)));
        assert_eq!(s.line.unwrap().line, 31);
    }

    #[test]
    fn addresses_not_after_a_call_or_outside_are_refused() {
        assert_eq!(code().resolve(0x1016, None), Err(NotASite::NotAfterCall));
        assert_eq!(code().resolve(0x3000, None), Err(NotASite::Outside));
        assert_eq!(code().resolve(0x1000, None), Err(NotASite::Outside));
    }

    #[test]
    fn without_line_info_a_site_is_a_function_offset() {
        let mut c = code();
        c.lines.clear();
        let s = c.resolve(0x1015, None).unwrap();
        assert_eq!((s.offset, s.insn, s.line), (0x10, None, None));
    }
}
