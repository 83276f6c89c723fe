//! Kernel symbols from `/proc/kallsyms`, to name the frames of the kernel
//! stacks the ledger records with `--stacks`. BPF programs' JIT images are
//! there too (`bpf_prog_<tag>_<name>`), so a leak's stack names the program
//! frame as well as the kernel functions around it.

use anyhow::{Context, Result};

/// A sorted symbol table.
#[derive(Debug, Clone, Default)]
pub struct Ksyms {
    /// (address, name, module) sorted by address.
    syms: Vec<(u64, String, Option<String>)>,
}

impl Ksyms {
    /// Reads `/proc/kallsyms`. Addresses read as zero without the right to
    /// see them (kptr_restrict); the table is then empty and frames are
    /// shown as addresses.
    pub fn load() -> Result<Ksyms> {
        let text = std::fs::read_to_string("/proc/kallsyms").context("read /proc/kallsyms")?;
        Ok(Ksyms::parse(&text))
    }

    /// Parses kallsyms text: `ADDR TYPE NAME [\[MODULE\]]` per line; text
    /// symbols only (t/T), zero addresses and malformed lines skipped.
    pub fn parse(text: &str) -> Ksyms {
        let mut syms: Vec<(u64, String, Option<String>)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                let module = f
                    .next()
                    .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string(), module))
            })
            .collect();
        syms.sort_by_key(|s| s.0);
        Ksyms { syms }
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `name+0xoff [module]` of the symbol at or before `addr`, or the bare
    /// address if none.
    pub fn resolve(&self, addr: u64) -> String {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        match i.checked_sub(1).map(|i| &self.syms[i]) {
            Some((start, name, module)) => {
                let off = addr - start;
                match module {
                    Some(m) => format!("{name}+{off:#x} [{m}]"),
                    None => format!("{name}+{off:#x}"),
                }
            }
            None => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81a3c2d0 T bpf_sk_lookup_tcp
ffffffff81a3c400 t bpf_tc_sk_lookup_tcp
ffffffff82000000 D some_data
0000000000000000 T hidden
ffffffffc0a01000 t bpf_prog_6deef7357e7b4530_wl_tc_lookup\t[bpf]
garbage
";

    #[test]
    fn resolves_text_symbols_with_offsets_and_modules() {
        let k = Ksyms::parse(TEXT);
        assert_eq!(k.resolve(0xffffffff81a3c2d0), "bpf_sk_lookup_tcp+0x0");
        assert_eq!(k.resolve(0xffffffff81a3c41a), "bpf_tc_sk_lookup_tcp+0x1a");
        assert_eq!(
            k.resolve(0xffffffffc0a01044),
            "bpf_prog_6deef7357e7b4530_wl_tc_lookup+0x44 [bpf]"
        );
        // Data symbols are not frames: the text symbol before them is used.
        assert_eq!(
            k.resolve(0xffffffff82000010),
            "bpf_tc_sk_lookup_tcp+0x5c3c10"
        );
        assert_eq!(k.resolve(0x1000), "0x1000");
    }

    #[test]
    fn hidden_addresses_give_an_empty_table() {
        let k = Ksyms::parse("0000000000000000 T a\n0000000000000000 t b\n");
        assert!(k.is_empty());
        assert_eq!(k.resolve(0xffffffff81000000), "0xffffffff81000000");
    }
}
