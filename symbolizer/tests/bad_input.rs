//! Bad input gets a typed error whose message is one line; never a panic.

mod common;

use std::process::Command;

use common::symbol_address;
use symbolizer::{SymbolizeError, Symbolizer};

fn one_line(e: &SymbolizeError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.is_empty(), "message is not one line: {s:?}");
    s
}

#[test]
fn not_an_elf() {
    let dir = common::temp_dir("bad-notelf");
    let p = dir.join("notes.txt");
    std::fs::write(&p, "this is not an ELF file\n").unwrap();
    let e = Symbolizer::from_elf(&p).unwrap_err();
    assert!(matches!(e, SymbolizeError::NotElf { .. }), "{e:?}");
    assert!(one_line(&e).contains("is not an ELF file"));
    let e = Symbolizer::from_elf(&dir.join("missing")).unwrap_err();
    assert!(matches!(e, SymbolizeError::Io { .. }), "{e:?}");
    one_line(&e);
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(Symbolizer::from_elf(&empty).unwrap_err(), SymbolizeError::NotElf { .. }));
}

#[test]
fn truncated_elf() {
    let dir = common::temp_dir("bad-trunc");
    let elf = common::build_test_elf(&dir);
    let data = std::fs::read(&elf).unwrap();
    let cut = dir.join("cut");
    for len in [4, 16, 63, 64, 200, 1000, 4096, data.len() / 2, data.len() - 1] {
        std::fs::write(&cut, &data[..len]).unwrap();
        let e = Symbolizer::from_elf(&cut).unwrap_err();
        assert!(matches!(e, SymbolizeError::BadElf { .. }), "len {len}: {e:?}");
        assert!(one_line(&e).contains("truncated"));
    }
}

#[test]
fn stripped_elf_says_no_symbols() {
    let dir = common::temp_dir("bad-strip");
    let elf = common::build_test_elf(&dir);
    let stripped = dir.join("stripped");
    common::run(Command::new("strip").arg("--strip-all").arg(&elf).arg("-o").arg(&stripped));
    let e = Symbolizer::from_elf(&stripped).unwrap_err();
    assert!(matches!(e, SymbolizeError::NoSymbols { .. }), "{e:?}");
    assert!(one_line(&e).contains("no symbols"));
}

#[test]
fn missing_dwarf_degrades_and_says_so() {
    let dir = common::temp_dir("bad-nodwarf");
    let elf = common::build_test_elf(&dir);
    let nodebug = dir.join("nodebug");
    common::run(Command::new("objcopy").arg("--only-keep-debug").arg(&elf).arg(dir.join("guest.debug")));
    common::run(Command::new("strip").arg("--strip-debug").arg(&elf).arg("-o").arg(&nodebug));
    common::run(Command::new("objcopy").arg("--add-gnu-debuglink=guest.debug").arg(&nodebug).current_dir(&dir));
    let sym = Symbolizer::from_elf(&nodebug).unwrap();
    assert!(!sym.has_dwarf());
    let w = sym.warnings().join(" | ");
    assert!(w.contains("no DWARF") && w.contains("guest.debug"), "{w}");
    // Answers come from the symbol table: names and offsets, no line, no inlined frames.
    let full = Symbolizer::from_elf(&elf).unwrap();
    let addr = symbol_address(&elf, "ide_do_rw_disk") + 5;
    let f = sym.symbolize(addr).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].function.as_str(), f[0].offset, f[0].line), ("ide_do_rw_disk", 5, None));
    assert_eq!(full.function_name(addr).as_deref(), Some("ide_do_rw_disk"));
    assert!(full.symbolize(addr).unwrap()[0].line.is_some());
}

#[test]
fn address_outside_every_range() {
    let dir = common::temp_dir("bad-range");
    let elf = common::build_test_elf(&dir);
    let sym = Symbolizer::from_elf(&elf).unwrap();
    for addr in [0, 0x10, 0xffff_ffff_ffff_fff0] {
        let e = sym.symbolize(addr).unwrap_err();
        assert!(matches!(e, SymbolizeError::NotFound { addr: a } if a == addr), "{e:?}");
        one_line(&e);
        assert_eq!(sym.function_name(addr), None);
    }
    // Cached NotFound answers stay NotFound.
    assert!(sym.symbolize(0x10).is_err());
}

#[test]
fn kallsyms_files() {
    let dir = common::temp_dir("bad-kallsyms");
    let cases: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("garbled", b"\x7fELF\x02\x01\x01\0\0\0garbage\n"),
        ("words", b"hello world\n"),
        ("zero", b"0000000000000000 T _text\n0000000000000000 t foo\n"),
    ];
    for (name, body) in cases {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        let e = Symbolizer::from_kallsyms(&p).unwrap_err();
        one_line(&e);
        match name {
            "empty" => assert!(matches!(e, SymbolizeError::EmptyKallsyms { .. }), "{e:?}"),
            "zero" => assert!(one_line(&e).contains("root"), "{e:?}"),
            _ => assert!(matches!(e, SymbolizeError::BadKallsyms { .. }), "{e:?}"),
        }
    }
    let e = Symbolizer::from_kallsyms(&dir.join("missing")).unwrap_err();
    assert!(matches!(e, SymbolizeError::Io { .. }));
}

#[test]
fn kaslr_offset_from_kallsyms_file() {
    let dir = common::temp_dir("kaslr");
    let elf = common::build_test_elf(&dir);
    // The test program has no `_text`: say so, with a way out.
    let ks = dir.join("kallsyms");
    std::fs::write(&ks, "ffffffff9e000000 T _text\nffffffff9e000000 T _stext\n").unwrap();
    let e = symbolizer::kaslr_offset_from_kallsyms(&elf, &ks).unwrap_err();
    assert!(matches!(e, SymbolizeError::NoTextSymbol { .. }) && one_line(&e).contains("give the slide explicitly"));
    // A kernel-like ELF linked at 0xffffffff81000000 with `_text`: slide = runtime - link,
    // and lookups through the slide land on the same functions.
    let kernel = common::build_kernel_elf(&dir);
    let kfunc = symbol_address(&kernel, "kfunc");
    std::fs::write(&ks, "ffffffff9f000000 T _text\nffffffff9f000000 T _stext\n").unwrap();
    let slide = symbolizer::kaslr_offset_from_kallsyms(&kernel, &ks).unwrap();
    assert_eq!(slide, 0x1e00_0000);
    let mut sym = Symbolizer::from_elf(&kernel).unwrap();
    sym.set_kaslr_offset(slide);
    let f = sym.symbolize(kfunc + 0x1e00_0000 + 1).unwrap();
    assert_eq!((f[0].function.as_str(), f[0].offset), ("kfunc", 1));
    assert!(f[0].file.as_deref().is_some_and(|p| p.ends_with("k.c")));
    // Negative slide (kallsyms below the link address) round-trips too.
    std::fs::write(&ks, "ffffffff80000000 T _text\n").unwrap();
    assert_eq!(symbolizer::kaslr_offset_from_kallsyms(&kernel, &ks).unwrap(), -0x100_0000);
}

#[test]
fn relocatable_object_answers_from_symbols_and_says_so() {
    let dir = common::temp_dir("reloc");
    let src = dir.join("m.c");
    std::fs::write(&src, "int modfunc(int x) { return x * 7; }\n").unwrap();
    let obj = dir.join("m.o");
    common::run(Command::new("gcc").args(["-O2", "-g", "-c"]).arg(&src).arg("-o").arg(&obj));
    let sym = Symbolizer::from_elf(&obj).unwrap();
    assert!(!sym.has_dwarf());
    assert!(sym.warnings().iter().any(|w| w.contains("relocatable")), "{:?}", sym.warnings());
    assert_eq!(sym.function_name(1).as_deref(), Some("modfunc"));
}
