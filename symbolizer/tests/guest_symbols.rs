//! `GuestSymbols::load`: every combination of vmlinux, kallsyms and KASLR slide, on a
//! kernel-like ELF linked at 0xffffffff81000000 and a kallsyms file that places the same
//! kernel `SLIDE` higher, as a KASLR guest's /proc/kallsyms does.

mod common;

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use symbolizer::{GuestSymbols, KaslrSlide, SymbolizeError, Symbolizer};

const SLIDE: i64 = 0x1e00_0000;

struct Kernel {
    dir: PathBuf,
    elf: PathBuf,
    /// Link address of `kfunc` in `elf`.
    kfunc: u64,
    /// `_text` and `kfunc` at their runtime addresses: link + SLIDE.
    kallsyms: PathBuf,
}

/// Built once per test binary.
fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = common::temp_dir("guest-symbols");
        let elf = common::build_kernel_elf(&dir);
        let text = common::symbol_address(&elf, "_text");
        assert_eq!(text, common::KERNEL_LINK_BASE);
        let kfunc = common::symbol_address(&elf, "kfunc");
        let kallsyms = dir.join("kallsyms");
        let runtime = |a: u64| a.wrapping_add(SLIDE as u64);
        std::fs::write(&kallsyms, format!("{:016x} T _text\n{:016x} T kfunc\n", runtime(text), runtime(kfunc))).unwrap();
        Kernel { dir, elf, kfunc, kallsyms }
    })
}

fn load(vmlinux: Option<&Path>, kallsyms: Option<&Path>, kaslr: KaslrSlide) -> Result<Option<Symbolizer>, SymbolizeError> {
    GuestSymbols { vmlinux: vmlinux.map(Path::to_path_buf), kallsyms: kallsyms.map(Path::to_path_buf), kaslr }.load()
}

fn loaded(vmlinux: Option<&Path>, kallsyms: Option<&Path>, kaslr: KaslrSlide) -> Symbolizer {
    load(vmlinux, kallsyms, kaslr).unwrap().expect("a symbolizer when a file is given")
}

/// One line, naming no command-line option (the library knows none).
fn message(e: &SymbolizeError) -> String {
    let s = e.to_string();
    assert!(!s.is_empty() && !s.contains('\n') && !s.contains("--"), "{s:?}");
    s
}

/// (function, offset, file name, line) of the single frame at `addr`.
fn answer(sym: &Symbolizer, addr: u64) -> (String, u64, Option<String>, Option<u32>) {
    let frames = sym.symbolize(addr).unwrap_or_else(|e| panic!("0x{addr:x}: {e}"));
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    let file = f.file.as_deref().map(|p| Path::new(p).file_name().unwrap().to_string_lossy().into_owned());
    (f.function.clone(), f.offset, file, f.line)
}

fn kfunc_at(offset: u64, dwarf: bool) -> (String, u64, Option<String>, Option<u32>) {
    // k.c line 2 is `int kfunc(int x) { return x * 3; }`.
    let (file, line) = if dwarf { (Some("k.c".to_string()), Some(2)) } else { (None, None) };
    ("kfunc".to_string(), offset, file, line)
}

#[test]
fn vmlinux_alone_answers_link_addresses() {
    let k = kernel();
    let sym = loaded(Some(&k.elf), None, KaslrSlide::None);
    assert_eq!(sym.kaslr_offset(), 0);
    assert!(sym.has_dwarf());
    assert_eq!(answer(&sym, k.kfunc + 1), kfunc_at(1, true));
    assert!(matches!(sym.symbolize(k.kfunc + SLIDE as u64), Err(SymbolizeError::NotFound { .. })));
}

#[test]
fn vmlinux_with_explicit_slide() {
    let k = kernel();
    let sym = loaded(Some(&k.elf), None, KaslrSlide::Offset(SLIDE));
    assert_eq!(sym.kaslr_offset(), SLIDE);
    assert_eq!(answer(&sym, k.kfunc + SLIDE as u64 + 1), kfunc_at(1, true));
    assert!(matches!(sym.symbolize(k.kfunc + 1), Err(SymbolizeError::NotFound { .. })));

    let sym = loaded(Some(&k.elf), None, KaslrSlide::Offset(-0x10));
    assert_eq!(sym.kaslr_offset(), -0x10);
    assert_eq!(answer(&sym, k.kfunc - 0x10 + 1), kfunc_at(1, true));
}

#[test]
fn vmlinux_and_kallsyms_detect_the_slide() {
    let k = kernel();
    for slide in [KaslrSlide::None, KaslrSlide::Auto] {
        let sym = loaded(Some(&k.elf), Some(&k.kallsyms), slide);
        assert_eq!(sym.kaslr_offset(), SLIDE, "{slide:?}");
        // Answers come from the vmlinux (DWARF file:line), at runtime addresses.
        assert_eq!(answer(&sym, k.kfunc + SLIDE as u64 + 1), kfunc_at(1, true), "{slide:?}");
    }
    // A kallsyms `_text` below the link address: negative slide.
    let below = k.dir.join("kallsyms-below");
    std::fs::write(&below, "ffffffff80000000 T _text\n").unwrap();
    let sym = loaded(Some(&k.elf), Some(&below), KaslrSlide::Auto);
    assert_eq!(sym.kaslr_offset(), -0x100_0000);
    assert_eq!(answer(&sym, k.kfunc - 0x100_0000 + 1), kfunc_at(1, true));
}

#[test]
fn vmlinux_and_kallsyms_explicit_slide_wins() {
    let k = kernel();
    let sym = loaded(Some(&k.elf), Some(&k.kallsyms), KaslrSlide::Offset(0x2000));
    assert_eq!(sym.kaslr_offset(), 0x2000);
    assert_eq!(answer(&sym, k.kfunc + 0x2000 + 1), kfunc_at(1, true));
}

#[test]
fn kallsyms_alone_answers_runtime_addresses() {
    let k = kernel();
    let runtime_kfunc = k.kfunc + SLIDE as u64;
    let sym = loaded(None, Some(&k.kallsyms), KaslrSlide::None);
    assert_eq!(sym.kaslr_offset(), 0);
    assert!(!sym.has_dwarf());
    assert_eq!(answer(&sym, runtime_kfunc + 1), kfunc_at(1, false));
    // An explicit slide is still subtracted.
    let sym = loaded(None, Some(&k.kallsyms), KaslrSlide::Offset(0x100));
    assert_eq!(sym.kaslr_offset(), 0x100);
    assert_eq!(answer(&sym, runtime_kfunc + 0x100 + 1), kfunc_at(1, false));
}

#[test]
fn kallsyms_alone_refuses_auto_slide() {
    let k = kernel();
    let e = load(None, Some(&k.kallsyms), KaslrSlide::Auto).unwrap_err();
    assert!(matches!(&e, SymbolizeError::AutoSlideNeedsVmlinux { kallsyms } if *kallsyms == k.kallsyms), "{e:?}");
    assert!(message(&e).contains(&k.kallsyms.display().to_string()), "{e}");
    // Refused before reading: a missing file gives the same answer.
    let missing = k.dir.join("no-such-kallsyms");
    assert!(matches!(load(None, Some(&missing), KaslrSlide::Auto), Err(SymbolizeError::AutoSlideNeedsVmlinux { .. })));
}

#[test]
fn vmlinux_alone_refuses_auto_slide() {
    let k = kernel();
    let e = load(Some(&k.elf), None, KaslrSlide::Auto).unwrap_err();
    assert!(matches!(&e, SymbolizeError::AutoSlideNeedsKallsyms { vmlinux } if *vmlinux == k.elf), "{e:?}");
    assert!(message(&e).contains(&k.elf.display().to_string()), "{e}");
    let missing = k.dir.join("no-such-vmlinux");
    assert!(matches!(load(Some(&missing), None, KaslrSlide::Auto), Err(SymbolizeError::AutoSlideNeedsKallsyms { .. })));
}

#[test]
fn no_files() {
    let none = GuestSymbols::default();
    assert_eq!(none.kaslr, KaslrSlide::None);
    assert!(none.is_empty());
    assert!(none.load().unwrap().is_none());
    for slide in [KaslrSlide::Offset(SLIDE), KaslrSlide::Offset(0), KaslrSlide::Auto] {
        let g = GuestSymbols { kaslr: slide, ..GuestSymbols::default() };
        assert!(g.is_empty());
        let e = g.load().unwrap_err();
        assert!(matches!(e, SymbolizeError::SlideWithoutSymbols), "{slide:?}: {e:?}");
        message(&e);
    }
    let k = kernel();
    assert!(!GuestSymbols { vmlinux: Some(k.elf.clone()), ..GuestSymbols::default() }.is_empty());
    assert!(!GuestSymbols { kallsyms: Some(k.kallsyms.clone()), ..GuestSymbols::default() }.is_empty());
}

/// `Io` naming the missing path, with the `io::Error` as its source.
fn assert_missing(e: &SymbolizeError, missing: &Path) {
    assert!(matches!(e, SymbolizeError::Io { path, .. } if path == missing), "{e:?}");
    assert!(message(e).contains(&missing.display().to_string()), "{e}");
    let source = e.source().and_then(|s| s.downcast_ref::<std::io::Error>()).expect("io::Error source");
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn missing_files_are_typed_io_errors() {
    let k = kernel();
    let missing = k.dir.join("missing");
    assert_missing(&load(Some(&missing), None, KaslrSlide::None).unwrap_err(), &missing);
    assert_missing(&load(Some(&missing), Some(&k.kallsyms), KaslrSlide::None).unwrap_err(), &missing);
    assert_missing(&load(None, Some(&missing), KaslrSlide::None).unwrap_err(), &missing);
    assert_missing(&load(None, Some(&missing), KaslrSlide::Offset(SLIDE)).unwrap_err(), &missing);
    // The kallsyms file is read to detect the slide.
    assert_missing(&load(Some(&k.elf), Some(&missing), KaslrSlide::None).unwrap_err(), &missing);
    assert_missing(&load(Some(&k.elf), Some(&missing), KaslrSlide::Auto).unwrap_err(), &missing);
}

#[test]
fn bad_files_and_failed_detection_are_typed() {
    let k = kernel();
    // A kallsyms copy given as the vmlinux.
    let e = load(Some(&k.kallsyms), None, KaslrSlide::None).unwrap_err();
    assert!(matches!(&e, SymbolizeError::NotElf { path } if *path == k.kallsyms), "{e:?}");
    message(&e);
    // Garbage as kallsyms, alone and for detection.
    let garbled = k.dir.join("garbled");
    std::fs::write(&garbled, "hello world\n").unwrap();
    for vmlinux in [None, Some(k.elf.as_path())] {
        let e = load(vmlinux, Some(&garbled), KaslrSlide::None).unwrap_err();
        assert!(matches!(&e, SymbolizeError::BadKallsyms { path, line: 1, .. } if *path == garbled), "{e:?}");
        message(&e);
    }
    // kallsyms without `_text`/`_stext`: nothing to detect the slide from.
    let no_text = k.dir.join("kallsyms-no-text");
    std::fs::write(&no_text, "ffffffff9f000010 T kfunc\n").unwrap();
    let e = load(Some(&k.elf), Some(&no_text), KaslrSlide::Auto).unwrap_err();
    assert!(matches!(&e, SymbolizeError::NoTextSymbol { path } if *path == no_text), "{e:?}");
    message(&e);
    // ...but alone it is fine: kallsyms needs no slide.
    assert_eq!(answer(&loaded(None, Some(&no_text), KaslrSlide::None), 0xffffffff9f000011), kfunc_at(1, false));
    // A vmlinux without `_text`/`_stext`.
    let src = k.dir.join("plain.c");
    std::fs::write(&src, "int kfunc(int x) { return x * 3; }\n").unwrap();
    let plain = k.dir.join("plain");
    common::run(Command::new("gcc").args(["-O2", "-nostdlib", "-static", "-no-pie", "-Wl,-e,kfunc"]).arg(&src).arg("-o").arg(&plain));
    let e = load(Some(&plain), Some(&k.kallsyms), KaslrSlide::None).unwrap_err();
    assert!(matches!(&e, SymbolizeError::NoTextSymbol { path } if *path == plain), "{e:?}");
    message(&e);
}

#[test]
fn warnings_stay_with_the_symbolizer() {
    let k = kernel();
    let nodebug = k.dir.join("kernel-nodebug");
    common::run(Command::new("strip").arg("--strip-debug").arg(&k.elf).arg("-o").arg(&nodebug));
    let sym = loaded(Some(&nodebug), Some(&k.kallsyms), KaslrSlide::None);
    assert_eq!(sym.kaslr_offset(), SLIDE);
    assert!(!sym.has_dwarf());
    let w = sym.warnings().join(" | ");
    assert!(w.contains("no DWARF") && w.contains("kernel-nodebug"), "{w}");
    assert_eq!(answer(&sym, k.kfunc + SLIDE as u64 + 1), kfunc_at(1, false));
}
