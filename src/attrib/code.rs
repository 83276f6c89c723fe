//! Reading BPF programs' code for call sites: JIT images, BTF line info and
//! the xlated calls to the traced functions, as `bpftool prog dump jited
//! linum` reads them; and the table that resolves the sites the probes
//! record, once each.
#![allow(unsafe_code)] // libbpf's BTF string table, which libbpf-rs does not expose

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CStr;
use std::time::{Duration, Instant};

use libbpf_rs::btf::types::Func;
use libbpf_rs::btf::TypeId;
use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions, ProgramInfo};
use libbpf_rs::{AsRawLibbpf, Btf, ProgramType};

use super::xlated::{self, CallTarget, HelperAddrs};
use crate::model::sites::{Callee, JitFunc, NotASite, ProgCode, Site, SourceLine};

/// The string at `off` of a BTF object's string table.
fn btf_str(btf: &Btf<'_>, off: u32) -> Option<String> {
    // SAFETY: `btf` is a live libbpf BTF object for the duration of the
    // call; btf__name_by_offset only reads it and returns NULL for an
    // offset outside the table, else a pointer into the table, a
    // NUL-terminated string that lives as long as `btf`, copied here
    // before `btf` can be dropped.
    let p =
        unsafe { libbpf_rs::libbpf_sys::btf__name_by_offset(btf.as_libbpf_object().as_ptr(), off) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL, so a NUL-terminated string inside the table (see
    // above).
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn func_name(btf: Option<&Btf<'_>>, type_id: u32) -> Option<String> {
    let f: Func<'_> = btf?.type_by_id(TypeId::from(type_id))?;
    Some(f.name()?.to_string_lossy().into_owned())
}

/// One program's code, from the kernel's answer to BPF_OBJ_GET_INFO_BY_FD.
fn prog_code(info: &ProgramInfo, addrs: &HelperAddrs) -> ProgCode {
    let btf = (info.btf_id != 0)
        .then(|| Btf::from_prog_id(info.id).ok())
        .flatten();
    let funcs: Vec<JitFunc> = info
        .jited_ksyms
        .iter()
        .zip(&info.jited_func_lens)
        .enumerate()
        .map(|(i, (&start, &len))| {
            let fi = info.func_info.get(i);
            JitFunc {
                start: start as u64,
                len,
                name: fi
                    .and_then(|f| func_name(btf.as_ref(), f.type_id))
                    .unwrap_or_else(|| {
                        if i == 0 {
                            info.name.to_string_lossy().into_owned()
                        } else {
                            format!("sub{i}")
                        }
                    }),
                insn: fi.map_or(0, |f| f.insn_off),
            }
        })
        .collect();
    let lines = match &btf {
        Some(btf) if info.jited_line_info.len() == info.line_info.len() => info
            .line_info
            .iter()
            .zip(&info.jited_line_info)
            .map(|(l, &a)| {
                (
                    a as u64,
                    SourceLine {
                        insn: l.insn_off,
                        file: btf_str(btf, l.file_name_off).unwrap_or_default(),
                        line: l.line_num,
                        col: l.line_col,
                        text: btf_str(btf, l.line_off).unwrap_or_default(),
                    },
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let insns = xlated::decode(&info.xlated_prog_insns);
    // Indices count 8-byte slots, as line info's insn_off does; the second
    // slot of a 64-bit immediate load is data, never a call.
    let mut calls = Vec::new();
    let mut idx = 0;
    while idx < insns.len() {
        let i = insns[idx];
        if i.is_helper_call() {
            match addrs.resolve(i.imm) {
                Some(CallTarget::Lookup(h)) => calls.push((idx as u32, Callee::Lookup(h))),
                Some(CallTarget::Release) => calls.push((idx as u32, Callee::Release)),
                None => {}
            }
        }
        idx += if i.code == xlated::LD_IMM64 { 2 } else { 1 };
    }
    ProgCode {
        id: info.id,
        name: funcs_first_name(&funcs, info),
        funcs,
        jited: info.jited_prog_insns.clone(),
        lines,
        calls,
    }
}

fn funcs_first_name(funcs: &[JitFunc], info: &ProgramInfo) -> String {
    funcs
        .first()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| info.name.to_string_lossy().into_owned())
}

/// The code of every loaded program that `keep` selects (asked of every
/// program but skprof's own tracing ones), among those that call a traced
/// function.
fn load_code(addrs: &HelperAddrs, mut keep: impl FnMut(&ProgramInfo) -> bool) -> Vec<ProgCode> {
    let opts = ProgInfoQueryOptions::default()
        .include_xlated_prog_insns(true)
        .include_jited_prog_insns(true)
        .include_func_info(true)
        .include_line_info(true)
        .include_jited_line_info(true)
        .include_jited_ksyms(true)
        .include_jited_func_lens(true);
    ProgInfoIter::with_query_opts(opts)
        .filter(|info| info.ty != ProgramType::Tracing)
        .filter(|info| keep(info))
        .filter(|info| !xlated::scan(&info.xlated_prog_insns, addrs).is_empty())
        .map(|info| prog_code(&info, addrs))
        .collect()
}

/// What a site address turned out to be.
#[derive(Debug, Clone)]
enum Entry {
    Site(Site),
    /// In no program calling the traced functions (yet: a program loaded
    /// after the last scan is found by the next).
    Unknown,
    /// Inside a program's JIT image but not after a call: never shown.
    Wrong,
}

/// Resolves the call sites the probes record, each once: a site's program,
/// function, instruction and source line stay known after the program is
/// gone.
pub struct SiteTable {
    addrs: HelperAddrs,
    sites: HashMap<u64, Entry>,
    /// Code of the programs seen, by id.
    code: BTreeMap<u32, ProgCode>,
    /// Sites found inside a JIT image but not after a call.
    pub wrong: u64,
    scanned: Option<Instant>,
    /// Programs seen that call none of the traced functions.
    skip: HashSet<u32>,
}

/// Least time between two scans of the loaded programs for sites in none
/// of those known.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

impl SiteTable {
    pub fn new(addrs: HelperAddrs) -> SiteTable {
        SiteTable {
            addrs,
            sites: HashMap::new(),
            code: BTreeMap::new(),
            wrong: 0,
            scanned: None,
            skip: HashSet::new(),
        }
    }

    /// Resolves every address of `wanted` not known yet (0 is "no site"):
    /// one scan of the loaded programs when some are new. `callee` says
    /// which function each was a call to, for the instruction.
    pub fn learn(&mut self, wanted: impl IntoIterator<Item = (u64, Callee)>) {
        let new: Vec<(u64, Callee)> = wanted
            .into_iter()
            .filter(|(a, _)| {
                *a != 0 && !matches!(self.sites.get(a), Some(Entry::Site(_) | Entry::Wrong))
            })
            .collect();
        if new.is_empty() {
            return;
        }
        let unknown_code = new
            .iter()
            .any(|(a, _)| !self.code.values().any(|c| c.contains(*a)));
        // An address in no known program: scan the programs again, at most
        // once a second (a program loaded since shows up then).
        if unknown_code && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_EVERY) {
            self.scanned = Some(Instant::now());
            let known: Vec<u32> = self.code.keys().copied().collect();
            for c in load_code(&self.addrs, |i| !known.contains(&i.id)) {
                self.code.insert(c.id, c);
            }
        }
        for (a, callee) in new {
            let entry = match self.code.values().find(|c| c.contains(a)) {
                None => Entry::Unknown,
                Some(c) => match c.resolve(a, Some(callee)) {
                    Ok(s) => Entry::Site(s),
                    Err(NotASite::Outside) => Entry::Unknown,
                    Err(NotASite::NotAfterCall) => {
                        self.wrong += 1;
                        Entry::Wrong
                    }
                },
            };
            self.sites.insert(a, entry);
        }
    }

    /// Reads the code of programs loaded since the last call that call a
    /// traced function, so their sites resolve even after they are gone
    /// (a program nobody traces is not kept alive). A cheap listing of ids
    /// first; the code only when some are new.
    pub fn refresh(&mut self) {
        let new = ProgInfoIter::default().any(|i| {
            i.ty != ProgramType::Tracing
                && !self.code.contains_key(&i.id)
                && !self.skip.contains(&i.id)
        });
        if !new {
            return;
        }
        // The code of the new ones that call a traced function; the others
        // are not looked at again.
        let (code, skip) = (&self.code, &self.skip);
        let mut seen = Vec::new();
        let found = load_code(&self.addrs, |i| {
            let new = !code.contains_key(&i.id) && !skip.contains(&i.id);
            if new {
                seen.push(i.id);
            }
            new
        });
        for c in found {
            self.code.insert(c.id, c);
        }
        for id in seen {
            if !self.code.contains_key(&id) {
                self.skip.insert(id);
            }
        }
    }

    /// The site at `addr`, if resolved.
    pub fn get(&self, addr: u64) -> Option<&Site> {
        match self.sites.get(&addr) {
            Some(Entry::Site(s)) => Some(s),
            _ => None,
        }
    }

    /// Every resolved site.
    pub fn resolved(&self) -> BTreeMap<u64, Site> {
        self.sites
            .iter()
            .filter_map(|(a, e)| match e {
                Entry::Site(s) => Some((*a, s.clone())),
                _ => None,
            })
            .collect()
    }

    /// The code of program `id` (loaded now if it was not).
    pub fn code(&mut self, id: u32) -> Option<&ProgCode> {
        if !self.code.contains_key(&id) {
            for c in load_code(&self.addrs, |i| i.id == id) {
                self.code.insert(c.id, c);
            }
        }
        self.code.get(&id)
    }

    /// Programs calling the traced functions whose name is `name` (the
    /// main function's BTF name, else the kernel's).
    pub fn find_by_name(&mut self, name: &str) -> Vec<u32> {
        let known: Vec<u32> = self.code.keys().copied().collect();
        for c in load_code(&self.addrs, |i| !known.contains(&i.id)) {
            self.code.insert(c.id, c);
        }
        self.code
            .values()
            .filter(|c| c.name == name)
            .map(|c| c.id)
            .collect()
    }
}
