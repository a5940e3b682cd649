//! The KASLR slide of a guest kernel from its recorded exits and its vmlinux alone.
//!
//! An exit's RIP is the address of the instruction that caused it, and only a few kinds of
//! instruction cause exits (see [`ExitInsnKind`]). x86-64 KASLR moves the kernel image by a
//! multiple of 2 MiB within the 1 GiB kernel-image area, so there are at most 512 candidate
//! slides. For each, count the distinct recorded RIPs that then land on an exit-capable
//! instruction of the exit's own kind; the right slide puts nearly all of them there, a
//! wrong one almost none (an `out` starts at about one byte in ten thousand of kernel text).
//!
//! RIPs that at the best slide fall outside the vmlinux's text (module code, user space)
//! are not evidence either way. The answer is refused, with the numbers, when the evidence
//! is thin: too few RIPs matched, too many RIPs inside the text not matched (another
//! kernel's RIPs), or a second slide nearly as good.

use crate::exit_insns::{ExitInsnIndex, ExitInsnKind};

/// KASLR alignment on x86-64 (`CONFIG_PHYSICAL_ALIGN` of distribution kernels: 2 MiB).
pub const SLIDE_ALIGN: u64 = 2 << 20;
/// The kernel image area (`KERNEL_IMAGE_SIZE`): the image moves within its first 1 GiB.
pub const IMAGE_AREA: u64 = 1 << 30;
/// `__START_KERNEL_map`: where that area starts.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Fewest distinct RIPs that must match before a slide is believed.
pub const MIN_MATCHED: usize = 5;
/// Share of the RIPs inside the text at the best slide that must match.
pub const MIN_MATCHED_SHARE: f64 = 0.8;

/// One recorded exit: where, and what kind of instruction must be there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlideEvidence {
    pub rip: u64,
    pub kind: ExitInsnKind,
}

/// A slide found, and how sure it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SlideEstimate {
    /// Runtime − link address.
    pub slide: i64,
    /// Distinct RIPs given.
    pub rips: usize,
    /// Of those, inside the vmlinux's text at this slide.
    pub in_text: usize,
    /// Of those, on an exit-capable instruction of their exit's kind.
    pub matched: usize,
    /// The best other slide and how many RIPs it matched (None: no other slide matched any).
    pub runner_up: Option<(i64, usize)>,
}

impl SlideEstimate {
    /// Matched share of the RIPs inside the text.
    pub fn share(&self) -> f64 {
        if self.in_text == 0 {
            0.0
        } else {
            self.matched as f64 / self.in_text as f64
        }
    }
}

/// Why no slide is given.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SlideRefused {
    #[error("only {rips} distinct exit RIPs of instruction-caused exits were recorded; the KASLR slide needs at least {MIN_MATCHED}: record longer, or give the slide")]
    TooFewRips { rips: usize },
    #[error("no 2 MiB-aligned slide puts more than {} of {} exit RIPs on exit instructions of this vmlinux (need {MIN_MATCHED}); is it the guest's kernel?", .best.matched, .best.rips)]
    TooFewMatched { best: SlideEstimate },
    #[error("at the best slide 0x{:x} only {} of the {} exit RIPs inside the kernel text are on exit instructions (need {:.0}%); the vmlinux does not seem to be the guest's kernel", .best.slide, .best.matched, .best.in_text, MIN_MATCHED_SHARE * 100.0)]
    NotThisKernel { best: SlideEstimate },
    #[error("two slides fit nearly as well (0x{:x}: {} RIPs, 0x{:x}: {} RIPs); give the slide explicitly", .best.slide, .best.matched, .runner_up.0, .runner_up.1)]
    Ambiguous { best: SlideEstimate, runner_up: (i64, usize) },
}

/// Every slide KASLR can choose for a kernel whose text is `text` (link addresses): the
/// image must stay inside the kernel-image area. An image linked outside that area (a guest
/// that is not a Linux kernel, like tinyvmm's) is not moved by KASLR: its only slide is 0.
pub fn candidate_slides(text: (u64, u64)) -> impl Iterator<Item = u64> {
    let room = if text.0 >= START_KERNEL_MAP { (START_KERNEL_MAP + IMAGE_AREA).saturating_sub(text.1) } else { 0 };
    (0..=room / SLIDE_ALIGN).map(|k| k * SLIDE_ALIGN)
}

/// The slide that best explains `evidence` (duplicates are counted once), or why none does.
pub fn infer_slide(index: &ExitInsnIndex, evidence: &[SlideEvidence]) -> Result<SlideEstimate, SlideRefused> {
    let mut rips: Vec<SlideEvidence> = evidence.to_vec();
    rips.sort_unstable();
    rips.dedup();
    if rips.len() < MIN_MATCHED {
        return Err(SlideRefused::TooFewRips { rips: rips.len() });
    }
    let score = |slide: u64| {
        let (mut in_text, mut matched) = (0, 0);
        for e in &rips {
            let link = e.rip.wrapping_sub(slide);
            if link < index.text.0 || link >= index.text.1 {
                continue;
            }
            in_text += 1;
            matched += usize::from(index.kind_at(link) == Some(e.kind));
        }
        (matched, in_text)
    };
    let mut scored: Vec<(usize, usize, u64)> = candidate_slides(index.text)
        .map(|s| {
            let (matched, in_text) = score(s);
            (matched, in_text, s)
        })
        .collect();
    // Most matched first; among equals the smaller slide (so the order is total).
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    let Some(&(matched, in_text, slide)) = scored.first() else {
        return Err(SlideRefused::TooFewRips { rips: 0 });
    };
    let runner_up = scored.get(1).filter(|r| r.0 > 0).map(|r| (r.2 as i64, r.0));
    let best = SlideEstimate { slide: slide as i64, rips: rips.len(), in_text, matched, runner_up };
    if matched < MIN_MATCHED {
        return Err(SlideRefused::TooFewMatched { best });
    }
    if best.share() < MIN_MATCHED_SHARE {
        return Err(SlideRefused::NotThisKernel { best });
    }
    if let Some(r) = runner_up {
        // The right slide leaves chance matches to the others: a close second means the
        // evidence cannot tell them apart.
        if r.1 * 2 >= matched {
            return Err(SlideRefused::Ambiguous { best, runner_up: r });
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExitInsnKind::*;

    #[test]
    fn an_image_outside_the_kernel_map_has_only_slide_zero() {
        assert_eq!(candidate_slides((0x10_0000, 0x12_0000)).collect::<Vec<_>>(), vec![0]);
        assert_eq!(candidate_slides((START_KERNEL_MAP + 0x100_0000, START_KERNEL_MAP + 0x300_0000)).count(), 489);
    }

    fn index() -> ExitInsnIndex {
        let base = 0xffff_ffff_8100_0000;
        let entries = (0..200u64).map(|i| (base + i * 4099, if i % 3 == 0 { Hlt } else { PortIo })).collect();
        ExitInsnIndex { build_id: vec![], entries, text: (base, base + 0x20_0000) }
    }

    #[test]
    fn finds_the_slide_and_refuses_thin_or_foreign_evidence() {
        let idx = index();
        let slide = 0x1e40_0000u64;
        let ev: Vec<SlideEvidence> = idx.entries[..40].iter().map(|&(a, k)| SlideEvidence { rip: a + slide, kind: k }).collect();
        let est = infer_slide(&idx, &ev).unwrap();
        assert_eq!((est.slide, est.matched, est.in_text, est.rips), (slide as i64, 40, 40, 40));

        assert_eq!(infer_slide(&idx, &ev[..4]), Err(SlideRefused::TooFewRips { rips: 4 }));
        // A wrong kind at the right address is no match.
        let wrong_kind: Vec<SlideEvidence> = ev.iter().map(|e| SlideEvidence { kind: Msr, ..*e }).collect();
        assert!(matches!(infer_slide(&idx, &wrong_kind), Err(SlideRefused::TooFewMatched { .. })));
        // Half the RIPs in the text but on no exit instruction: another kernel.
        let mut foreign = ev.clone();
        foreign.extend((0..40).map(|i| SlideEvidence { rip: idx.text.0 + slide + 1 + i * 4099, kind: PortIo }));
        assert!(matches!(infer_slide(&idx, &foreign), Err(SlideRefused::NotThisKernel { .. })), "{:?}", infer_slide(&idx, &foreign));
    }

    #[test]
    fn candidates_keep_the_image_inside_the_area() {
        let text = (0xffff_ffff_8100_0000, 0xffff_ffff_8300_0000);
        let c: Vec<u64> = candidate_slides(text).collect();
        assert_eq!(c[0], 0);
        assert_eq!(*c.last().unwrap() + text.1, START_KERNEL_MAP + IMAGE_AREA);
        assert_eq!(c.len(), 489);
    }
}
