//! DWARF line tables and inlined frames, through `addr2line::Context`.
//!
//! Why not `addr2line::Loader`: it applies every `.rela.debug_*` section. A distro vmlinux
//! is linked with `--emit-relocs`, so it carries ~10 M such relocations whose values are
//! already in the section data; building their map doubled load time and memory. A
//! linked file (not `ET_REL`) needs none, so the sections are borrowed straight from
//! the mapping here. Split DWARF (`.dwo`) is not followed: those units answer from the
//! symbol table, and `elf.rs` warns about it.

use std::borrow::Cow;
use std::sync::Arc;

use gimli::{EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

type Reader = EndianSlice<'static, RunTimeEndian>;

/// Owns the bytes the context borrows. Field order matters: `ctx` drops first.
pub struct Dwarf {
    ctx: addr2line::Context<Reader>,
    _decompressed: Vec<Vec<u8>>,
    _map: Arc<memmap2::Mmap>,
}

/// A frame before the symbol table fills in what DWARF lacks.
pub struct RawFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl Dwarf {
    /// `obj` must have been parsed from `map`.
    pub fn load(obj: &object::File<'_>, map: Arc<memmap2::Mmap>) -> Result<Dwarf, String> {
        let endian = if obj.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
        let mut decompressed: Vec<Vec<u8>> = Vec::new();
        let mut slices: Vec<(gimli::SectionId, &'static [u8])> = Vec::new();
        for id in ALL_SECTIONS {
            let Some(section) = obj.section_by_name(id.name()) else { continue };
            let data: &[u8] = match section.uncompressed_data().map_err(|e| format!("{}: {e}", id.name()))? {
                Cow::Borrowed(b) => b,
                Cow::Owned(v) => {
                    decompressed.push(v);
                    decompressed.last().map(|v| v.as_slice()).unwrap_or(&[])
                }
            };
            // SAFETY: `data` points into `map` or into a Vec in `decompressed`; both are
            // stored in the returned `Dwarf` next to `ctx`, never mutated, and outlive it
            // (field order). Moving a Vec does not move its heap buffer.
            let data: &'static [u8] = unsafe { std::mem::transmute::<&[u8], &'static [u8]>(data) };
            slices.push((id, data));
        }
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
            let data = slices.iter().find(|(s, _)| *s == id).map_or(&[][..], |(_, d)| *d);
            Ok(EndianSlice::new(data, endian))
        })
        .map_err(|e| e.to_string())?;
        let ctx = addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string())?;
        Ok(Dwarf { ctx, _decompressed: decompressed, _map: map })
    }

    /// Innermost first. Empty when DWARF does not cover `addr`; a malformed unit also
    /// gives empty (the caller degrades to the symbol table rather than failing).
    pub fn frames(&self, addr: u64) -> Vec<RawFrame> {
        let mut out = Vec::new();
        let Ok(mut iter) = self.ctx.find_frames(addr).skip_all_loads() else { return out };
        while let Ok(Some(frame)) = iter.next() {
            let function = frame.function.as_ref().and_then(|f| f.demangle().ok()).map(Cow::into_owned);
            let (file, line) = match &frame.location {
                Some(loc) => (loc.file.map(str::to_string), loc.line.filter(|&l| l != 0)),
                None => (None, None),
            };
            out.push(RawFrame { function, file, line });
        }
        out
    }
}

const ALL_SECTIONS: [gimli::SectionId; 15] = [
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugAranges,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugLoc,
    gimli::SectionId::DebugLocLists,
    gimli::SectionId::DebugRanges,
    gimli::SectionId::DebugRngLists,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
    gimli::SectionId::DebugTypes,
    gimli::SectionId::DebugMacinfo,
    gimli::SectionId::DebugMacro,
];
