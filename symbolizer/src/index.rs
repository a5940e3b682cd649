//! Sorted address index over symbols, shared by the ELF and kallsyms inputs.
//!
//! Alias rules (several symbols at one address), chosen per input so names agree with the
//! tool people compare against:
//! - ELF ([`AliasRule::Binutils`]): the larger `st_size` wins, then the first in symbol
//!   table order — what binutils `addr2line` does (e.g. the local `__do_sys_munlockall`
//!   over the global `__x64_sys_munlockall` at the same address).
//! - kallsyms ([`AliasRule::Perf`]): the preference `perf` uses. The winner is
//!   (1) a function rather than data, (2) global, then weak, then local, (3) has fewer
//!   leading underscores, (4) has the longer name, (5) comes first in the file.

/// Binding rank: lower wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Binding {
    Global = 0,
    Weak = 1,
    Local = 2,
}

/// A symbol as read from the input, before aliases are resolved.
#[derive(Clone, Debug)]
pub struct RawSymbol {
    pub addr: u64,
    /// 0 = unknown; inferred from the next symbol.
    pub size: u64,
    pub name: String,
    pub is_function: bool,
    pub binding: Binding,
    /// Symbols of different groups (kallsyms module, ELF section) never bound each other.
    pub group: u32,
    /// Where a group ends, when known (ELF section end).
    pub group_end: Option<u64>,
    /// ELF only: the `STT_FILE` name before a local symbol (binutils reports it when
    /// DWARF does not cover the address).
    pub file: Option<Box<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliasRule {
    Binutils,
    Perf,
}

/// Total order implementing the alias rule; the least element wins.
fn alias_key(rule: AliasRule, s: &RawSymbol, input_order: usize) -> (bool, u64, Binding, usize, usize, usize) {
    match rule {
        AliasRule::Binutils => (false, u64::MAX - s.size, Binding::Global, 0, 0, input_order),
        AliasRule::Perf => {
            let underscores = s.name.bytes().take_while(|&b| b == b'_').count();
            (!s.is_function, 0, s.binding, underscores, usize::MAX - s.name.len(), input_order)
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    pub name: Box<str>,
    pub file: Option<Box<str>>,
}

/// Unsized symbol that ends a group (last of its module): how far it may reach.
/// A page keeps a stray RIP just past a module's last function from being claimed
/// by it across the whole vmalloc gap to the next module.
const LAST_IN_GROUP_REACH: u64 = 4096;

pub struct SymbolIndex {
    entries: Vec<Entry>,
}

impl SymbolIndex {
    pub fn build(raw: Vec<RawSymbol>, rule: AliasRule) -> SymbolIndex {
        let mut raw: Vec<(usize, RawSymbol)> = raw.into_iter().enumerate().collect();
        raw.sort_by(|(ia, a), (ib, b)| {
            (a.group, a.addr)
                .cmp(&(b.group, b.addr))
                .then_with(|| alias_key(rule, a, *ia).cmp(&alias_key(rule, b, *ib)))
        });
        raw.dedup_by(|later, first| later.1.group == first.1.group && later.1.addr == first.1.addr);

        let mut entries = Vec::with_capacity(raw.len());
        for (i, (_, s)) in raw.iter().enumerate() {
            let next = raw
                .get(i + 1)
                .filter(|(_, n)| n.group == s.group)
                .map(|(_, n)| n.addr);
            // A symbol reaches the next symbol of its group, whatever its size says: that
            // is what binutils addr2line answers (padding after a function belongs to it).
            let end = match (next, s.group_end) {
                (Some(n), _) => n,
                (None, Some(g)) => g.max(s.addr.saturating_add(s.size)),
                (None, None) if s.size > 0 => s.addr.saturating_add(s.size),
                (None, None) => (s.addr | (LAST_IN_GROUP_REACH - 1)).saturating_add(1),
            };
            let end = end.max(s.addr.saturating_add(1));
            entries.push(Entry {
                start: s.addr,
                end,
                name: s.name.clone().into_boxed_str(),
                file: s.file.clone(),
            });
        }
        // Groups interleave in address space only by accident (module symbols lie apart
        // from the core kernel); a global sort makes lookups one binary search.
        entries.sort_by_key(|e| e.start);
        SymbolIndex { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The symbol whose [start, end) holds `addr`. When sized symbols nest or overlap,
    /// the one starting closest below `addr` that still covers it wins.
    pub fn lookup(&self, addr: u64) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.start <= addr);
        // Overlaps are rare; a short walk back finds an enclosing symbol if the nearest doesn't cover.
        self.entries[..idx].iter().rev().take(8).find(|e| addr < e.end)
    }

    /// The symbol starting at or below `addr`, covering it or not.
    pub fn floor(&self, addr: u64) -> Option<&Entry> {
        let idx = self.entries.partition_point(|e| e.start <= addr);
        idx.checked_sub(1).map(|i| &self.entries[i])
    }
}
