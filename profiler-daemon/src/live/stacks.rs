//! Guest stacks (`record --stack-depth N`): the unwind table loaded into the `UNWIND` map
//! before any program attaches, the walker switched on by the `STACK_DEPTH` global, and the
//! walked stacks read back from `STACKS` into the profile's exits. The walk itself is in the
//! eBPF programs (profiler-ebpf/src/stack.rs).
use std::collections::HashMap as StdHashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, MapData};
use aya::{Ebpf, EbpfLoader};
use profiler_common::unwind::{cfa_base, GuestStack as KernelStack, UnwindEntry, BP_SAVED, MAX_STACK_DEPTH};
use profiler_common::{globals, maps};
use symbolizer::exit_insns::ExitInsnIndex;
use symbolizer::kaslr::infer_slide;
use symbolizer::unwind::{CfaBase, FrameKind, UnwindSource, UnwindTable};
use symbolizer::SymbolizeError;

use super::error::LiveError;
use super::session::take_map;
use crate::model::{GuestStack, Profile, StackInfo, StackMethod};

/// What the programs walk stacks with.
#[derive(Debug, Clone)]
pub struct StackSetup {
    /// Return addresses per exit, 2 to [`MAX_STACK_DEPTH`].
    pub depth: u32,
    /// The unwind table at runtime addresses, sorted; empty: frame pointers only.
    pub entries: Vec<UnwindEntry>,
    pub info: StackInfo,
    /// The slide is still to be found from the first exits (`--kaslr-offset auto` without
    /// kallsyms): `entries` are at link addresses until then, and not used.
    pub auto_slide: Option<Arc<AutoSlide>>,
}

/// What finding the slide from the first exits needs: the table at link addresses, and the
/// guest kernel's exit-instruction index (symbolizer::kaslr).
#[derive(Debug)]
pub struct AutoSlide {
    table: UnwindTable,
    index: ExitInsnIndex,
}

/// `--stack-depth` out of range, or a guest ELF whose table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StackSetupError {
    #[error("--stack-depth {0} is out of range: give 1 (the caller only) to {MAX_STACK_DEPTH}")]
    Depth(u32),
    #[error("the guest's unwind table has {0} entries, more than the {max} the in-kernel search covers", max = maps::UNWIND_MAX_ENTRIES)]
    TooBig(usize),
    #[error(transparent)]
    Elf(#[from] SymbolizeError),
}

impl StackSetup {
    /// Stacks of `depth` return addresses, walked with the unwind table of `elf` (its ORC
    /// tables, else its DWARF CFI; none: frame pointers only) moved by the KASLR `slide`.
    /// None for depth 1: the caller only, as without stacks.
    pub fn new(depth: u32, elf: Option<&Path>, slide: i64) -> Result<Option<StackSetup>, StackSetupError> {
        Ok(StackSetup::with_table(depth, elf, slide)?.map(|(setup, _table)| setup))
    }

    /// [`StackSetup::new`], and the table it was built from (None: frame pointers only), for
    /// [`StackSetup::with_slide_from_exits`], which keeps it at link addresses: one read.
    fn with_table(depth: u32, elf: Option<&Path>, slide: i64) -> Result<Option<(StackSetup, Option<UnwindTable>)>, StackSetupError> {
        if depth == 0 || depth as usize > MAX_STACK_DEPTH {
            return Err(StackSetupError::Depth(depth));
        }
        if depth == 1 {
            return Ok(None);
        }
        // A table without rules (an .eh_frame with no FDEs) is no table: frame pointers only.
        let table = match elf {
            Some(p) => UnwindTable::from_elf(p)?.filter(|t| !t.entries.is_empty()),
            None => None,
        };
        let entries = table.as_ref().map(|t| entries_of(t, slide)).unwrap_or_default();
        if entries.len() > maps::UNWIND_MAX_ENTRIES as usize {
            return Err(StackSetupError::TooBig(entries.len()));
        }
        let info = StackInfo {
            depth,
            table: table.as_ref().map(|t| match t.source {
                UnwindSource::Orc => "orc".to_string(),
                UnwindSource::Cfi => "cfi".to_string(),
            }),
            table_entries: entries.len() as u64,
            slide,
            lost: 0,
            slide_from_exits: None,
            stacks_from_exit: None,
        };
        Ok(Some((StackSetup { depth, entries, info, auto_slide: None }, table)))
    }

    /// As [`StackSetup::new`] with the unwind table of `elf`, whose KASLR slide is found from
    /// the recording's first exits (symbolizer::kaslr::infer_slide, as `report --kaslr-offset
    /// auto` does): until then exits get their caller only. None for depth 1.
    pub fn with_slide_from_exits(depth: u32, elf: &Path) -> Result<Option<StackSetup>, StackSetupError> {
        let Some((mut setup, table)) = StackSetup::with_table(depth, Some(elf), 0)? else { return Ok(None) };
        let Some(table) = table else {
            // No table: frame pointers need no slide.
            return Ok(Some(setup));
        };
        let index = ExitInsnIndex::for_vmlinux(elf)?;
        setup.auto_slide = Some(Arc::new(AutoSlide { table, index }));
        Ok(Some(setup))
    }
}

impl StackSetup {
    /// The deepest walk over a large table of empty rules: what `kvmprof check` loads, so the
    /// verifier checks the walker as deep as a distribution kernel's table (~370 000 rules)
    /// makes the binary search.
    pub fn for_verifier() -> StackSetup {
        let entries = vec![UnwindEntry::default(); 1 << 20];
        let info = StackInfo { depth: MAX_STACK_DEPTH as u32, table: Some("verifier".into()), table_entries: entries.len() as u64, ..StackInfo::default() };
        StackSetup { depth: MAX_STACK_DEPTH as u32, entries, info, auto_slide: None }
    }
}

/// The table in the eBPF programs' form, at runtime addresses (`start + slide`). A rule the
/// walker cannot follow stops it, except CFI's gaps (code without CFI), where it falls back to
/// the frame pointer; ORC's end-of-stack and `pt_regs` frames stop it.
pub fn entries_of(table: &UnwindTable, slide: i64) -> Vec<UnwindEntry> {
    table
        .entries
        .iter()
        .map(|(start, r)| {
            let base = match (r.kind, r.cfa_base, table.source) {
                (FrameKind::End, _, UnwindSource::Cfi) => cfa_base::NONE,
                (FrameKind::End | FrameKind::Regs, _, _) => cfa_base::STOP,
                (FrameKind::Call, CfaBase::Sp, _) => cfa_base::SP,
                (FrameKind::Call, CfaBase::Bp, _) => cfa_base::BP,
                (FrameKind::Call, CfaBase::Other(_), _) => cfa_base::STOP,
            };
            UnwindEntry {
                start: start.wrapping_add(slide as u64),
                cfa_offset: r.cfa_offset,
                bp_offset: r.bp_saved_at.unwrap_or(0),
                cfa_base: base,
                flags: if r.bp_saved_at.is_some() { BP_SAVED } else { 0 },
                _pad: [0; 2],
            }
        })
        .collect()
}

/// The values of the `STACK_DEPTH` and `UNWIND_LEN` globals (the loader borrows them).
pub(super) fn globals_of(stacks: Option<&StackSetup>) -> [u32; 2] {
    [stacks.map_or(1, |s| s.depth), stacks.map_or(0, |s| s.entries.len() as u32)]
}

/// Sets the globals (`values` from [`globals_of`]) and the `UNWIND` map's size before the
/// object is loaded.
pub(super) fn configure<'a>(loader: &mut EbpfLoader<'a>, values: &'a [u32; 2]) {
    loader.override_global(globals::STACK_DEPTH, &values[0], true).override_global(globals::UNWIND_LEN, &values[1], true);
    loader.map_max_entries(maps::UNWIND, values[1].max(1));
}

/// The walked stacks of a session and how they were walked.
pub struct StackMap {
    stacks: HashMap<MapData, u32, KernelStack>,
    /// Kept open: the programs are loaded after the table is written, and a map whose fd is
    /// closed before then cannot be referenced by them. Written again when the slide is found.
    unwind: Array<MapData, UnwindEntry>,
    info: StackInfo,
    /// The slide still to be found, and when it was last tried.
    auto_slide: Option<(Arc<AutoSlide>, Option<Instant>)>,
}

/// How often the daemon tries to find the slide from the exits recorded so far.
pub const AUTO_SLIDE_EVERY: Duration = Duration::from_millis(100);

/// Writes the unwind table into the loaded object's `UNWIND` map (before anything attaches)
/// and opens `STACKS`.
pub(super) fn open(ebpf: &mut Ebpf, stacks: Option<&StackSetup>) -> Result<Option<StackMap>, LiveError> {
    let Some(setup) = stacks else { return Ok(None) };
    let map_type = |map: &'static str| move |source| LiveError::MapType { map, source };
    let mut unwind: Array<MapData, UnwindEntry> = Array::try_from(take_map(ebpf, maps::UNWIND)?).map_err(map_type(maps::UNWIND))?;
    if setup.auto_slide.is_none() {
        write_table(&mut unwind, &setup.entries)?;
    }
    let stacks = HashMap::try_from(take_map(ebpf, maps::STACKS)?).map_err(map_type(maps::STACKS))?;
    let auto_slide = setup.auto_slide.clone().map(|a| (a, None));
    Ok(Some(StackMap { stacks, unwind, info: setup.info.clone(), auto_slide }))
}

fn write_table(unwind: &mut Array<MapData, UnwindEntry>, entries: &[UnwindEntry]) -> Result<(), LiveError> {
    for (i, e) in entries.iter().enumerate() {
        unwind.set(i as u32, e, 0).map_err(|source| LiveError::WriteMap { map: maps::UNWIND, source })?;
    }
    Ok(())
}

impl StackMap {
    /// Whether the programs may walk stacks now (maps::control::STACKS_READY): the table is
    /// at its runtime addresses.
    pub(super) fn ready(&self) -> bool {
        self.auto_slide.is_none()
    }

    /// Whether a try to find the slide is due ([`AUTO_SLIDE_EVERY`]).
    pub(super) fn slide_due(&self) -> bool {
        matches!(&self.auto_slide, Some((_, last)) if last.is_none_or(|t| t.elapsed() >= AUTO_SLIDE_EVERY))
    }

    /// Tries to find the KASLR slide from `so_far`, the recording until now: on success the
    /// table is written at its runtime addresses and true returned (the caller then sets
    /// STACKS_READY); on a refusal the reason is kept for the report, and it is tried again
    /// later with more exits.
    pub(super) fn try_slide(&mut self, so_far: &Profile) -> Result<bool, LiveError> {
        let Some((auto, last)) = &mut self.auto_slide else { return Ok(false) };
        *last = Some(Instant::now());
        let evidence = crate::analysis::slide::evidence([so_far]);
        match infer_slide(&auto.index, &evidence) {
            Ok(est) => {
                write_table(&mut self.unwind, &entries_of(&auto.table, est.slide))?;
                let runner_up = match est.runner_up {
                    Some((s, n)) => format!("; the next best slide, {s:#x}, matched {n}"),
                    None => "; no other slide matched any".into(),
                };
                self.info.slide = est.slide;
                self.info.slide_from_exits = Some(format!(
                    "slide {:#x} found from the first {} exits: {} of {} distinct exit RIPs on exit instructions of their kind{runner_up}",
                    est.slide,
                    so_far.total_exits(),
                    est.matched,
                    est.rips
                ));
                self.info.stacks_from_exit = Some(so_far.total_exits());
                self.auto_slide = None;
                Ok(true)
            }
            Err(reason) => {
                self.info.slide_from_exits = Some(format!("slide not found from the exits, no stacks walked: {reason}"));
                Ok(false)
            }
        }
    }

    /// Fills in the frames and method of every exit's stack, and the profile's stack info
    /// (`lost`: stacks the map had no room for).
    pub(super) fn resolve(&self, profile: &mut Profile, lost: u64) -> Result<(), LiveError> {
        let mut by_id = StdHashMap::new();
        for item in self.stacks.iter() {
            let (id, s) = item.map_err(|source| LiveError::ReadMap { map: maps::STACKS, source })?;
            by_id.insert(id, s);
        }
        for e in &mut profile.exits {
            if let Some(st) = &mut e.stack {
                if let Some(k) = by_id.get(&st.id) {
                    *st = stack_of(st.id, k);
                }
            }
        }
        profile.meta.stacks = Some(StackInfo { lost, ..self.info.clone() });
        Ok(())
    }
}

fn stack_of(id: u32, k: &KernelStack) -> GuestStack {
    let n = (k.depth as usize).min(MAX_STACK_DEPTH);
    GuestStack { id, method: StackMethod::from_bits(k.methods), frames: k.frames[..n].to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use symbolizer::unwind::UnwindRule;

    fn rule(cfa_base: CfaBase, kind: FrameKind, bp: Option<i16>) -> UnwindRule {
        UnwindRule { cfa_base, cfa_offset: 16, bp_saved_at: bp, kind }
    }

    #[test]
    fn rules_become_entries_at_runtime_addresses() {
        let entries = vec![
            (0x1000, rule(CfaBase::Sp, FrameKind::Call, None)),
            (0x1010, rule(CfaBase::Bp, FrameKind::Call, Some(-16))),
            (0x1020, rule(CfaBase::Other(7), FrameKind::Call, None)),
            (0x1030, rule(CfaBase::Sp, FrameKind::Regs, None)),
            (0x1040, rule(CfaBase::Other(0), FrameKind::End, None)),
        ];
        let orc = entries_of(&UnwindTable { source: UnwindSource::Orc, entries: entries.clone() }, 0x20_0000);
        let bases: Vec<u8> = orc.iter().map(|e| e.cfa_base).collect();
        assert_eq!(bases, [cfa_base::SP, cfa_base::BP, cfa_base::STOP, cfa_base::STOP, cfa_base::STOP]);
        assert_eq!(orc[0].start, 0x20_1000);
        assert_eq!((orc[1].flags, orc[1].bp_offset, orc[1].cfa_offset), (BP_SAVED, -16, 16));
        // CFI's End marks code without CFI: frame pointers there, not a stop.
        let cfi = entries_of(&UnwindTable { source: UnwindSource::Cfi, entries }, -0x1000);
        assert_eq!((cfi[4].cfa_base, cfi[4].start), (cfa_base::NONE, 0x40));
    }

    #[test]
    fn depth_is_checked_and_one_means_no_walk() {
        assert!(matches!(StackSetup::new(0, None, 0), Err(StackSetupError::Depth(0))));
        assert!(matches!(StackSetup::new(MAX_STACK_DEPTH as u32 + 1, None, 0), Err(StackSetupError::Depth(_))));
        assert!(StackSetup::new(1, None, 0).unwrap().is_none());
        let fp_only = StackSetup::new(4, None, 0).unwrap().unwrap();
        assert_eq!((fp_only.entries.len(), fp_only.info.table.clone()), (0, None));
    }
}
