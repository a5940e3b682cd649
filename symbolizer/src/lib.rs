//! Guest RIP → function, offset, file:line and inlined frames, from a guest `vmlinux`
//! (ELF + DWARF) or a kallsyms text file.
//!
//! Answers follow binutils `addr2line -f -i -C`:
//! - frames are innermost first; the last frame is the real (non-inlined) function;
//! - function names come from DWARF when it covers the address (so a GCC clone such as
//!   `foo.constprop.0` is reported as `foo`, as addr2line does), else from the symbol table;
//! - an ELF symbol reaches up to the next symbol of its section (padding after a function
//!   belongs to it), and among symbols at one address the larger `st_size`, then the first
//!   in the symbol table, wins — both as binutils does;
//! - without DWARF for an address, a local symbol's file is the `STT_FILE` name before it
//!   in the symbol table (binutils again), with no line;
//! - file is the full path DWARF gives; an unknown file or line is `None`.
//!
//! Documented differences from binutils 2.40 (checked by `tests/exact_vs_binutils.rs` and
//! `scripts/compare-answers.py`, which accept nothing else):
//! - no `(discriminator N)` suffix: a discriminator is not part of file:line;
//! - paths are joined without doubling a `/` (binutils prints `dir//file` when the DWARF
//!   directory ends in `/`);
//! - where binutils pairs a line with the CU's primary file (`trace.c:367` where the line
//!   table says `include/trace/events/xen.h:367`) we follow the line table, as
//!   llvm-symbolizer does;
//! - in inter-function padding not covered by any CU range, binutils reports the last line
//!   row before it; we report the function with no line (llvm-symbolizer reports nothing);
//! - C++ names `cpp_demangle` cannot demangle (some `std::` templates with `sr`
//!   expressions) stay mangled.
//!
//! `offset`: the real function's frame has `addr - symbol start`; inlined frames carry the
//! same offset, since an inlined body has no symbol of its own (binutils prints no offsets;
//! kernel backtraces print none for inlined frames).
//!
//! kallsyms: sizes come from the next symbol of the same owner (core kernel or module);
//! aliases are resolved like `perf` does (see `index.rs`).
//!
//! Split DWARF (`.dwo`) is not followed and missing DWARF is not an error: those answers
//! come from the symbol table, and [`Symbolizer::warnings`] says so.
//!
//! [`GuestSymbols`] takes a vmlinux, a kallsyms file and a KASLR slide ([`KaslrSlide`])
//! together, checks that they make sense together, and loads the [`Symbolizer`].
//!
//! Lookups go through a sorted symbol index and a per-address result cache.

mod cfi;
mod dwarf;
mod elf;
mod error;
pub mod exit_insns;
mod guest;
mod index;
pub mod kaslr;
mod kallsyms;
pub mod unwind;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use error::SymbolizeError;
pub use guest::{GuestSymbols, KaslrSlide};
use index::{AliasRule, Entry, SymbolIndex};

/// One frame of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Demangled; `??` only when DWARF has a line but no function and no symbol covers it.
    pub function: String,
    pub offset: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// True for every frame but the last (the real function).
    pub inlined: bool,
}

/// Past this many cached addresses the cache starts over, so a pathological stream of
/// distinct addresses cannot grow memory without bound.
const CACHE_CAP: usize = 4 << 20;

type Answer = Result<Arc<[Frame]>, ()>;

pub struct Symbolizer {
    index: SymbolIndex,
    /// `addr2line::Context` is not `Sync` (lazy cells); the mutex makes `Symbolizer` shareable.
    dwarf: Option<Mutex<dwarf::Dwarf>>,
    slide: i64,
    cache: Mutex<HashMap<u64, Answer, BuildU64Hasher>>,
    warnings: Vec<String>,
    path: PathBuf,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("path", &self.path)
            .field("symbols", &self.index.len())
            .field("dwarf", &self.dwarf.is_some())
            .field("slide", &self.slide)
            .finish()
    }
}

impl Symbolizer {
    pub fn from_elf(path: &Path) -> Result<Symbolizer, SymbolizeError> {
        Ok(Symbolizer::from_elf_input(elf::load(path)?, path))
    }

    fn from_elf_input(input: elf::ElfInput, path: &Path) -> Symbolizer {
        Symbolizer::new(SymbolIndex::build(input.symbols, AliasRule::Binutils), input.dwarf, input.warnings, path)
    }

    pub fn from_kallsyms(path: &Path) -> Result<Symbolizer, SymbolizeError> {
        let text = read(path)?;
        Symbolizer::from_kallsyms_bytes(&text, path)
    }

    /// Parses kallsyms text already in memory; `path` only names it in messages.
    pub fn from_kallsyms_bytes(text: &[u8], path: &Path) -> Result<Symbolizer, SymbolizeError> {
        let syms = kallsyms::parse(text, path)?;
        Ok(Symbolizer::new(SymbolIndex::build(syms, AliasRule::Perf), None, Vec::new(), path))
    }

    fn new(
        index: SymbolIndex,
        dwarf: Option<dwarf::Dwarf>,
        warnings: Vec<String>,
        path: &Path,
    ) -> Symbolizer {
        Symbolizer {
            index,
            dwarf: dwarf.map(Mutex::new),
            slide: 0,
            cache: Mutex::new(HashMap::default()),
            warnings,
            path: path.to_path_buf(),
        }
    }

    /// Runtime address = link address + slide; lookups subtract it.
    pub fn set_kaslr_offset(&mut self, slide: i64) {
        self.slide = slide;
        self.cache.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn kaslr_offset(&self) -> i64 {
        self.slide
    }

    /// Frames innermost first. An address outside every symbol (and outside DWARF) is
    /// `Err(SymbolizeError::NotFound { addr })`, with `addr` as given (runtime).
    pub fn symbolize(&self, addr: u64) -> Result<Arc<[Frame]>, SymbolizeError> {
        if let Some(hit) = self.lock_cache().get(&addr) {
            return hit.clone().map_err(|()| SymbolizeError::NotFound { addr });
        }
        let answer = self.resolve(addr.wrapping_sub(self.slide as u64));
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(addr, answer.clone());
        answer.map_err(|()| SymbolizeError::NotFound { addr })
    }

    /// Outermost (non-inlined) function name, for tables.
    pub fn function_name(&self, addr: u64) -> Option<String> {
        self.symbolize(addr).ok().and_then(|f| f.last().map(|f| f.function.clone()))
    }

    /// Human notes such as "no DWARF in X: answers come from the symbol table only".
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn has_dwarf(&self) -> bool {
        self.dwarf.is_some()
    }

    /// Number of distinct symbols (after alias resolution) in the index.
    pub fn symbol_count(&self) -> usize {
        self.index.len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Answer, BuildU64Hasher>> {
        // A panic elsewhere while holding the lock leaves a valid map; keep using it.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `link` is the link-time (ELF) address.
    fn resolve(&self, link: u64) -> Answer {
        let sym: Option<&Entry> = self.index.lookup(link);
        let mut frames = self.dwarf_frames(link);
        if frames.is_empty() {
            let sym = sym.ok_or(())?;
            return Ok(Arc::from([Frame {
                function: sym.name.to_string(),
                offset: link - sym.start,
                file: sym.file.as_deref().map(str::to_string),
                line: None,
                inlined: false,
            }]));
        }
        // DWARF knows the address; the offset is still counted from the symbol (the
        // covering one, else the nearest below) because that is what `func+0xOFF` means.
        let base = sym.or_else(|| self.index.floor(link));
        let offset = base.map_or(0, |s| link - s.start);
        let n = frames.len();
        for (i, f) in frames.iter_mut().enumerate() {
            f.offset = offset;
            f.inlined = i + 1 < n;
        }
        if let Some(outer) = frames.last_mut() {
            if outer.function.is_empty() {
                outer.function = sym.map_or_else(|| "??".to_string(), |s| s.name.to_string());
            }
        }
        for f in frames.iter_mut() {
            if f.function.is_empty() {
                f.function = "??".to_string();
            }
        }
        Ok(frames.into())
    }

    /// Empty when DWARF is absent or does not cover `link`.
    fn dwarf_frames(&self, link: u64) -> Vec<Frame> {
        let Some(dwarf) = &self.dwarf else { return Vec::new() };
        let dwarf = dwarf.lock().unwrap_or_else(|e| e.into_inner());
        dwarf
            .frames(link)
            .into_iter()
            .map(|f| Frame {
                function: f.function.unwrap_or_default(),
                offset: 0,
                file: f.file,
                line: f.line,
                inlined: false,
            })
            .collect()
    }
}

/// Slide = kallsyms `_text` (or `_stext`) runtime address − the ELF's `_text` link address.
///
/// [`GuestSymbols::load`] does this (reading the ELF once) when given both files.
pub fn kaslr_offset_from_kallsyms(elf_path: &Path, kallsyms_path: &Path) -> Result<i64, SymbolizeError> {
    let runtime = kallsyms_text_address(kallsyms_path)?;
    let link = elf_text_address(elf_path, &elf::load(elf_path)?.symbols)?;
    Ok(runtime.wrapping_sub(link) as i64)
}

/// The runtime address of `_text` (or `_stext`) in a kallsyms file.
fn kallsyms_text_address(kallsyms_path: &Path) -> Result<u64, SymbolizeError> {
    let text = read(kallsyms_path)?;
    kallsyms::text_address(&kallsyms::parse(&text, kallsyms_path)?)
        .ok_or_else(|| SymbolizeError::NoTextSymbol { path: kallsyms_path.to_path_buf() })
}

/// The link address of `_text` (or `_stext`) among the symbols read from `elf_path`.
fn elf_text_address(elf_path: &Path, elf_symbols: &[index::RawSymbol]) -> Result<u64, SymbolizeError> {
    ["_text", "_stext"]
        .iter()
        .find_map(|want| elf_symbols.iter().find(|s| s.name == *want).map(|s| s.addr))
        .ok_or_else(|| SymbolizeError::NoTextSymbol { path: elf_path.to_path_buf() })
}

fn read(path: &Path) -> Result<Vec<u8>, SymbolizeError> {
    std::fs::read(path).map_err(|source| SymbolizeError::Io { path: path.to_path_buf(), source })
}

/// Addresses are already well spread; SipHash would cost more than the rest of a warm lookup.
#[derive(Default, Clone, Copy)]
struct BuildU64Hasher;
#[derive(Default)]
struct U64Hasher(u64);
impl std::hash::BuildHasher for BuildU64Hasher {
    type Hasher = U64Hasher;
    fn build_hasher(&self) -> U64Hasher {
        U64Hasher(0)
    }
}
impl std::hash::Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        // Fibonacci multiply spreads low-entropy (aligned) addresses over the high bits.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests;
