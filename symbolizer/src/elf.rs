//! ELF input: symbol table (with sizes, local symbols included) via `object`, DWARF
//! line tables and inlined frames via `addr2line`'s `Loader` (which also follows split
//! DWARF `.dwo`/`.dwp` files when they are present).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind, SymbolSection};

use crate::dwarf::Dwarf;
use crate::error::SymbolizeError;
use crate::index::{Binding, RawSymbol};

pub struct ElfInput {
    pub symbols: Vec<RawSymbol>,
    /// `None` when the file has no usable DWARF: answers come from the symbol table.
    pub dwarf: Option<Dwarf>,
    pub warnings: Vec<String>,
}

fn io_err(path: &Path, source: std::io::Error) -> SymbolizeError {
    SymbolizeError::Io { path: path.to_path_buf(), source }
}

/// The whole file, mapped read-only (a distribution vmlinux with DWARF is ~600 MB; the
/// readers touch only the sections they need).
pub fn map(path: &Path) -> Result<memmap2::Mmap, SymbolizeError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: read-only map. Truncating the file while it is mapped would fault (as it
    // does for binutils and addr2line's own Loader); that is outside our contract.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))
}

pub fn load(path: &Path) -> Result<ElfInput, SymbolizeError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: read-only map. Truncating the file while it is mapped would fault (as it
    // does for binutils and addr2line's own Loader); that is outside our contract.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?);
    let data: &[u8] = &map;
    if !data.starts_with(b"\x7fELF") {
        return Err(SymbolizeError::NotElf { path: path.to_path_buf() });
    }
    let bad = |reason: String| SymbolizeError::BadElf { path: path.to_path_buf(), reason };
    let obj = object::File::parse(data).map_err(|e| bad(e.to_string()))?;
    check_sections_in_bounds(&obj, data.len() as u64).map_err(bad)?;

    let symbols = read_symbols(&obj);
    let mut warnings = Vec::new();
    let has_dwarf = obj
        .section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0 && s.kind() != SectionKind::UninitializedData);
    if symbols.is_empty() && !has_dwarf {
        return Err(SymbolizeError::NoSymbols { path: path.to_path_buf() });
    }
    if symbols.is_empty() {
        warnings.push(format!(
            "no symbol table in {}: function names and offsets come from DWARF only",
            path.display()
        ));
    }
    // A relocatable object (.o, .ko) needs its DWARF relocated and has overlapping
    // section-relative addresses; a linked file (vmlinux) needs neither.
    let relocatable = obj.kind() == object::ObjectKind::Relocatable;
    if relocatable {
        warnings.push(format!(
            "{} is a relocatable object (.o/.ko): addresses are section offsets and DWARF is not used; \
             pass the linked vmlinux for file:line and inlined frames",
            path.display()
        ));
    }
    let dwarf = if has_dwarf && !relocatable {
        if let Some(w) = split_dwarf_warning(&obj, path) {
            warnings.push(w);
        }
        match Dwarf::load(&obj, map.clone()) {
            Ok(l) => Some(l),
            Err(e) => {
                warnings.push(format!(
                    "unreadable DWARF in {} ({e}): answers come from the symbol table only",
                    path.display()
                ));
                None
            }
        }
    } else if relocatable {
        None
    } else {
        let hint = debuglink(&obj)
            .map(|f| format!("; its debug info is in a separate file `{f}` (.gnu_debuglink): pass that file instead"))
            .unwrap_or_default();
        warnings.push(format!(
            "no DWARF in {}: answers come from the symbol table only (no file:line, no inlined frames){hint}",
            path.display()
        ));
        None
    };
    Ok(ElfInput { symbols, dwarf, warnings })
}

/// `object` parses headers lazily; a truncated file can still parse. Reject section data
/// that lies past the end of the file here, with a clear error, instead of later.
fn check_sections_in_bounds(obj: &object::File<'_>, len: u64) -> Result<(), String> {
    for s in obj.sections() {
        if let Some((off, size)) = s.file_range() {
            if off.checked_add(size).is_none_or(|end| end > len) {
                let name = s.name().unwrap_or("?");
                return Err(format!("section {name} ends past the end of the file"));
            }
        }
    }
    Ok(())
}

fn read_symbols(obj: &object::File<'_>) -> Vec<RawSymbol> {
    let mut syms = Vec::new();
    collect_symbols(obj, obj.symbols(), &mut syms);
    if syms.is_empty() {
        collect_symbols(obj, obj.dynamic_symbols(), &mut syms);
    }
    syms
}

fn collect_symbols<'d, 'f>(
    obj: &'f object::File<'d>,
    iter: impl Iterator<Item = object::Symbol<'d, 'f>>,
    syms: &mut Vec<RawSymbol>,
) {
    // binutils names the source file of a symtab-only answer after the STT_FILE symbol
    // that precedes a local symbol; globals get none.
    let mut current_file: Option<Box<str>> = None;
    for s in iter {
        if s.kind() == SymbolKind::File {
            current_file = s.name().ok().filter(|n| !n.is_empty()).map(Into::into);
            continue;
        }
        let SymbolSection::Section(idx) = s.section() else { continue };
        let Ok(section) = obj.section_by_index(idx) else { continue };
        let code = section.kind() == SectionKind::Text;
        let is_function = match s.kind() {
            SymbolKind::Text => true,
            // Assembly entry points (kernel SYM_CODE_START) are untyped labels in code.
            // Objects in code are not (binutils skips them too).
            SymbolKind::Unknown if code => false,
            _ => continue,
        };
        let Ok(name) = s.name() else { continue };
        // Mapping symbols ($x, $d) and assembler locals are not functions.
        if name.is_empty() || name.starts_with('$') || name.starts_with(".L") {
            continue;
        }
        let binding = if s.is_weak() {
            Binding::Weak
        } else if s.is_global() {
            Binding::Global
        } else {
            Binding::Local
        };
        syms.push(RawSymbol {
            addr: s.address(),
            size: s.size(),
            name: addr2line::demangle_auto(name.into(), None).into_owned(),
            is_function,
            binding,
            group: idx.0 as u32,
            group_end: section.address().checked_add(section.size()),
            file: if binding == Binding::Local { current_file.clone() } else { None },
        });
    }
}

fn debuglink(obj: &object::File<'_>) -> Option<String> {
    obj.gnu_debuglink()
        .ok()
        .flatten()
        .map(|(name, _crc)| String::from_utf8_lossy(name).into_owned())
}

/// Split DWARF: skeleton units point at `.dwo` files, which are not followed; say so.
/// A build is split as a whole, so the first units tell (checking all ~3000 units of a
/// vmlinux would cost a noticeable part of the load time).
fn split_dwarf_warning(obj: &object::File<'_>, path: &Path) -> Option<String> {
    let endian = if obj.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
        Ok(obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    let owned = gimli::DwarfSections::load(load).ok()?;
    let dwarf = owned.borrow(|s| gimli::EndianSlice::new(s, endian));
    let mut units = dwarf.units();
    let mut skeletons = 0usize;
    for _ in 0..16 {
        let Ok(Some(header)) = units.next() else { break };
        if let Ok(unit) = dwarf.unit(header) {
            skeletons += unit.dwo_id.is_some() as usize;
        }
    }
    (skeletons > 0).then(|| {
        format!(
            "split DWARF in {} (.dwo files): inlined frames and DWARF function names are not read from .dwo; \
             those answers come from the symbol table and line table only",
            path.display()
        )
    })
}
