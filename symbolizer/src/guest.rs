//! Where a guest's symbols come from, as one value: [`GuestSymbols`].

use std::path::PathBuf;

use crate::error::SymbolizeError;
use crate::exit_insns::ExitInsnIndex;
use crate::kaslr::{infer_slide, SlideEstimate, SlideEvidence};
use crate::{elf, Symbolizer};

/// The guest kernel's KASLR slide: runtime address − link (vmlinux) address.
///
/// Only a vmlinux has link addresses; kallsyms already lists runtime addresses. See
/// [`GuestSymbols`] for how each value combines with the files given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KaslrSlide {
    /// Not given: none for a vmlinux alone or kallsyms alone; detected from the two
    /// files when both are given.
    #[default]
    None,
    /// This slide, as [`Symbolizer::set_kaslr_offset`] takes it. With both files, it wins
    /// over detection (the kallsyms file is then not read).
    Offset(i64),
    /// Detect it: kallsyms `_text` (or `_stext`) − vmlinux `_text` (or `_stext`). Needs both
    /// files.
    Auto,
}

/// The guest's symbol sources — a vmlinux, a copy of its `/proc/kallsyms`, a KASLR slide —
/// checked together and loaded into one [`Symbolizer`] by [`GuestSymbols::load`].
///
/// | vmlinux | kallsyms | slide                | result                                                      |
/// |---------|----------|----------------------|-------------------------------------------------------------|
/// | yes     | no       | `None` / `Offset(s)` | vmlinux (link addresses), slide 0 / `s`                     |
/// | yes     | no       | `Auto`               | [`SymbolizeError::AutoSlideNeedsKallsyms`]                  |
/// | yes     | yes      | `None` / `Auto`      | vmlinux, slide detected from the two files                  |
/// | yes     | yes      | `Offset(s)`          | vmlinux, slide `s` (kallsyms not read)                      |
/// | no      | yes      | `None` / `Offset(s)` | kallsyms (runtime addresses), slide 0 / `s` still subtracted |
/// | no      | yes      | `Auto`               | [`SymbolizeError::AutoSlideNeedsVmlinux`]                   |
/// | no      | no       | `None`               | `Ok(None)`                                                  |
/// | no      | no       | `Offset` / `Auto`    | [`SymbolizeError::SlideWithoutSymbols`]                     |
///
/// The combination is checked before any file is read. Errors from reading the files are
/// returned as the readers give them, not wrapped: [`SymbolizeError::Io`] names the path
/// and keeps the `std::io::Error` as its [`source`](std::error::Error::source); parse
/// errors name the file (and line). Notes such as "no DWARF" are not errors: they are in
/// [`Symbolizer::warnings`], for the caller to show.
///
/// The usual case, a vmlinux plus a copy of the guest's kallsyms:
///
/// ```no_run
/// use symbolizer::{GuestSymbols, KaslrSlide};
///
/// let guest = GuestSymbols {
///     vmlinux: Some("/usr/lib/debug/boot/vmlinux-6.1.0-18-amd64".into()),
///     kallsyms: Some("guest-kallsyms.txt".into()),
///     kaslr: KaslrSlide::None, // detected from the two files
/// };
/// let sym = guest.load()?.expect("files were given");
/// for w in sym.warnings() {
///     eprintln!("warning: {w}");
/// }
/// println!("slide 0x{:x}", sym.kaslr_offset());
/// for f in sym.symbolize(0xffffffff9fa06274)?.iter() {
///     println!("{}+0x{:x} {:?}:{:?}", f.function, f.offset, f.file, f.line);
/// }
/// # Ok::<(), symbolizer::SymbolizeError>(())
/// ```
///
/// Combinations that cannot work are refused before any file is read:
///
/// ```
/// use symbolizer::{GuestSymbols, KaslrSlide, SymbolizeError};
///
/// // Nothing given: no symbolizer, and no error.
/// let none = GuestSymbols::default();
/// assert!(none.is_empty());
/// assert!(none.load()?.is_none());
///
/// // A slide needs something to apply to.
/// let slide_only = GuestSymbols { kaslr: KaslrSlide::Offset(0x1e00_0000), ..GuestSymbols::default() };
/// assert!(matches!(slide_only.load(), Err(SymbolizeError::SlideWithoutSymbols)));
///
/// // kallsyms addresses are runtime addresses already: there is no slide to detect.
/// let ks_auto = GuestSymbols {
///     kallsyms: Some("guest-kallsyms.txt".into()),
///     kaslr: KaslrSlide::Auto,
///     ..GuestSymbols::default()
/// };
/// assert!(matches!(ks_auto.load(), Err(SymbolizeError::AutoSlideNeedsVmlinux { .. })));
/// # Ok::<(), SymbolizeError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestSymbols {
    /// Guest kernel ELF with symbols (and DWARF for file:line and inlined frames).
    pub vmlinux: Option<PathBuf>,
    /// A copy of the guest's `/proc/kallsyms` (read as root). Alone: the symbols come from
    /// it. With `vmlinux`: only read to detect the slide.
    pub kallsyms: Option<PathBuf>,
    pub kaslr: KaslrSlide,
}

impl GuestSymbols {
    /// True when neither file is given: [`load`](Self::load) then returns `Ok(None)`, or
    /// [`SymbolizeError::SlideWithoutSymbols`] if a slide was given.
    pub fn is_empty(&self) -> bool {
        self.vmlinux.is_none() && self.kallsyms.is_none()
    }

    /// As [`load`](Self::load), except that a vmlinux with [`KaslrSlide::Auto`] and no
    /// kallsyms takes its slide from `exits`, the recorded exits of instructions
    /// ([`crate::kaslr::infer_slide`]); the estimate is returned beside the symbolizer.
    pub fn load_with_exits(&self, exits: &[SlideEvidence]) -> Result<Option<(Symbolizer, Option<SlideEstimate>)>, SymbolizeError> {
        let (Some(elf), None, KaslrSlide::Auto) = (self.vmlinux.as_deref(), self.kallsyms.as_deref(), self.kaslr) else {
            return Ok(self.load()?.map(|s| (s, None)));
        };
        let index = ExitInsnIndex::for_vmlinux(elf)?;
        let estimate = infer_slide(&index, exits)
            .map_err(|reason| SymbolizeError::SlideNotFound { vmlinux: elf.to_path_buf(), reason })?;
        let fixed = GuestSymbols { kaslr: KaslrSlide::Offset(estimate.slide), ..self.clone() };
        Ok(fixed.load()?.map(|s| (s, Some(estimate))))
    }

    /// The symbolizer for these sources (see the table on [`GuestSymbols`]); `Ok(None)`
    /// when nothing is given.
    pub fn load(&self) -> Result<Option<Symbolizer>, SymbolizeError> {
        let vmlinux = self.vmlinux.as_deref();
        let kallsyms = self.kallsyms.as_deref();
        match (vmlinux, kallsyms, self.kaslr) {
            (None, None, KaslrSlide::None) => Ok(None),
            (None, None, _) => Err(SymbolizeError::SlideWithoutSymbols),
            (Some(elf), None, KaslrSlide::Auto) => {
                Err(SymbolizeError::AutoSlideNeedsKallsyms { vmlinux: elf.to_path_buf() })
            }
            (None, Some(ks), KaslrSlide::Auto) => {
                Err(SymbolizeError::AutoSlideNeedsVmlinux { kallsyms: ks.to_path_buf() })
            }
            (Some(elf), ks, slide) => {
                let input = elf::load(elf)?;
                let slide = match (slide, ks) {
                    (KaslrSlide::Offset(s), _) => s,
                    // Same order of checks as `kaslr_offset_from_kallsyms`, without
                    // reading the vmlinux a second time.
                    (_, Some(ks)) => {
                        let runtime = crate::kallsyms_text_address(ks)?;
                        runtime.wrapping_sub(crate::elf_text_address(elf, &input.symbols)?) as i64
                    }
                    (_, None) => 0,
                };
                let mut sym = Symbolizer::from_elf_input(input, elf);
                sym.set_kaslr_offset(slide);
                Ok(Some(sym))
            }
            (None, Some(ks), slide) => {
                let mut sym = Symbolizer::from_kallsyms(ks)?;
                if let KaslrSlide::Offset(s) = slide {
                    sym.set_kaslr_offset(s);
                }
                Ok(Some(sym))
            }
        }
    }
}
