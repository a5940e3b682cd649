//! The daemon's `kvmprof symbolize` wiring (profiler-daemon/src/symbolize_cmd.rs), compiled
//! here so its formats and KASLR handling are tested with the crate it wraps.

#[path = "../../profiler-daemon/src/symbolize_cmd.rs"]
mod symbolize_cmd;
mod common;

use clap::Parser;
use symbolize_cmd::{load_symbolizer, render_json, render_text, SymbolizeArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SymbolizeArgs,
}

fn parse(argv: &[&str]) -> Result<SymbolizeArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("symbolize").chain(argv.iter().copied())).map(|c| c.args)
}

#[test]
fn text_and_json_formats() {
    let dir = common::temp_dir("cmd");
    let elf = common::build_test_elf(&dir);
    let sym = load_symbolizer(Some(&elf), None, None).unwrap().unwrap();
    // An address inside an inlined ide_select, and one nowhere.
    let inlined = (0..0x2000u64)
        .find(|&a| sym.symbolize(a).is_ok_and(|f| f.len() == 2 && f[0].function == "ide_select"))
        .expect("an address with ide_select inlined");
    let answers = vec![(inlined, sym.symbolize(inlined).ok()), (0x10, sym.symbolize(0x10).ok())];

    let text = render_text(&answers);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let f = sym.symbolize(inlined).unwrap();
    let head = format!("0x{inlined:x} ide_select+0x{:x} ", f[0].offset);
    assert!(lines[0].starts_with(&head) && lines[0].contains("guest_c.c:"), "{text}");
    assert!(lines[1].starts_with("    ") && lines[1].trim_start().starts_with("ide_do_rw_disk+0x"), "{text}");
    assert_eq!(lines[2], "0x10 [unknown]");

    let json: serde_json::Value = serde_json::from_str(&render_json(&answers).unwrap()).unwrap();
    assert_eq!(json[0]["addr"], format!("0x{inlined:x}"));
    assert_eq!(json[0]["frames"][0]["function"], "ide_select");
    assert_eq!(json[0]["frames"][1]["function"], "ide_do_rw_disk");
    assert!(json[0]["frames"][0]["line"].is_u64() && json[0]["frames"][0]["file"].is_string());
    assert_eq!(json[1]["addr"], "0x10");
    assert!(json[1]["frames"][0]["function"].is_null());
}

#[test]
fn run_exits_non_zero_on_unknown_and_bad_input() {
    let dir = common::temp_dir("cmd-run");
    let elf = common::build_test_elf(&dir);
    let e = elf.to_str().unwrap();
    let err = symbolize_cmd::run(&parse(&["--vmlinux", e, "0x10"]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("0x10 is outside every known symbol"), "{err}");
    assert!(symbolize_cmd::run(&parse(&["--vmlinux", e, "nothex"]).unwrap()).is_err());
    let not_elf = dir.join("x.txt");
    std::fs::write(&not_elf, "hi").unwrap();
    let err = symbolize_cmd::run(&parse(&["--vmlinux", not_elf.to_str().unwrap(), "1"]).unwrap()).unwrap_err();
    assert!(format!("{err:#}").contains("not an ELF"), "{err:#}");
    // One of --vmlinux / --kallsyms is required, and at least one address.
    assert!(parse(&["0x1"]).is_err());
    assert!(parse(&["--vmlinux", e]).is_err());
}

#[test]
fn kaslr_options() {
    let dir = common::temp_dir("cmd-kaslr");
    let ks = dir.join("kallsyms");
    std::fs::write(&ks, "ffffffff81000000 T _text\nffffffff81000100 T f\n").unwrap();
    let sym = load_symbolizer(None, Some(&ks), Some("0x100")).unwrap().unwrap();
    assert_eq!(sym.function_name(0xffffffff81000200).as_deref(), Some("f"));
    assert!(load_symbolizer(None, Some(&ks), Some("auto")).is_err());
    assert!(load_symbolizer(None, Some(&ks), Some("0xzz")).is_err());
    assert!(load_symbolizer(None, None, None).unwrap().is_none());
    let elf = common::build_test_elf(&dir);
    let err = load_symbolizer(Some(&elf), None, Some("auto")).unwrap_err();
    assert!(err.to_string().contains("--kallsyms"), "{err}");
    assert_eq!(load_symbolizer(Some(&elf), None, Some("-0x10")).unwrap().unwrap().kaslr_offset(), -16);
}
