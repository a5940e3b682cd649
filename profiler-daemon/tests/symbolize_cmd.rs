//! `kvmprof symbolize`, the real binary: its text and JSON formats, its exit status and one-line
//! errors on bad input, and the KASLR options (`--vmlinux`, `--kallsyms`, `--kaslr-offset`),
//! against small ELFs built here with gcc. (Ported from the symbolizer crate's old
//! `tests/symbolize_cmd.rs`, which compiled the daemon's command module into its own tests.)
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use symbolizer::Symbolizer;

/// A guest-like C program: `ide_select` (and its `outb`s) inlined into the noinline
/// `ide_do_rw_disk`, as in a guest kernel's IDE driver.
const GUEST_C: &str = r#"
#include <stdint.h>

static inline uint8_t inb(uint16_t port) { return (uint8_t)(port * 3u + 1u); }
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("" : : "r"(port), "r"(v) : "memory"); }

static inline int ide_wait(uint16_t base)
{
	int spins = 0;
	while (inb(base + 7) & 0x80 && spins < 1000)
		spins++;
	return spins;
}

static inline void ide_select(uint16_t base, uint32_t lba)
{
	outb(base + 6, 0xe0 | ((lba >> 24) & 0x0f));
	outb(base + 2, 1);
	outb(base + 3, lba & 0xff);
	outb(base + 4, (lba >> 8) & 0xff);
	outb(base + 5, (lba >> 16) & 0xff);
}

__attribute__((noinline)) int ide_do_rw_disk(uint16_t base, uint32_t lba, int write)
{
	int r = ide_wait(base);
	ide_select(base, lba);
	outb(base + 7, write ? 0x30 : 0x20);
	for (int i = 0; i < 256; i++)
		r += ide_wait(base) + (i & 3);
	return r;
}

int main(int argc, char **argv)
{
	(void)argv;
	return ide_do_rw_disk(0x1f0, (uint32_t)argc, argc > 1) & 0x7f;
}
"#;

/// Link address of the kernel-like ELF of [`build_kernel_elf`], as a vmlinux is linked.
const KERNEL_LINK_BASE: u64 = 0xffff_ffff_8100_0000;

fn gcc(args: &[&str], src: &Path, out: &Path) {
    let o = Command::new("gcc").args(args).arg(src).arg("-o").arg(out).output().expect("gcc must be installed (scripts/setup.sh)");
    assert!(o.status.success(), "gcc {args:?} failed:\n{}", stderr(&o));
}

/// [`GUEST_C`] built with `gcc -O2`, with DWARF (`-g`) or without.
fn build_test_elf(dir: &Path, dwarf: bool) -> PathBuf {
    let src = dir.join("symtest.c");
    std::fs::write(&src, GUEST_C).unwrap();
    let exe = dir.join(if dwarf { "symtest" } else { "symtest-nodwarf" });
    gcc(if dwarf { &["-g", "-O2"] } else { &["-O2"] }, &src, &exe);
    exe
}

/// A kernel-like ELF: `_text` (the entry) and `kfunc`, gcc -O2 -g, linked at
/// [`KERNEL_LINK_BASE`].
fn build_kernel_elf(dir: &Path) -> PathBuf {
    let src = dir.join("k.c");
    std::fs::write(&src, "void _text(void) {}\nint kfunc(int x) { return x * 3; }\n").unwrap();
    let kernel = dir.join("kernel");
    let ttext = format!("-Wl,-Ttext=0x{KERNEL_LINK_BASE:x}");
    gcc(&["-O2", "-g", "-nostdlib", "-static", "-no-pie", "-Wl,-e,_text", &ttext], &src, &kernel);
    kernel
}

/// The address `nm` gives for `name` in `elf`.
fn symbol_address(elf: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(elf).output().expect("nm (binutils)");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in {}", elf.display()))
}

/// An address of `ide_do_rw_disk` whose innermost frame is the inlined `ide_select` (two
/// frames: ide_select, then the function it was inlined into).
fn inlined_address(elf: &Path) -> u64 {
    let sym = Symbolizer::from_elf(elf).unwrap();
    let start = symbol_address(elf, "ide_do_rw_disk");
    (start..start + 0x1000)
        .find(|&a| sym.symbolize(a).is_ok_and(|f| f.len() == 2 && f[0].function == "ide_select"))
        .expect("an address with ide_select inlined into ide_do_rw_disk")
}

fn symbolize(args: &[&str]) -> std::process::Output {
    let mut a = vec!["symbolize"];
    a.extend_from_slice(args);
    run(KVMPROF, &a)
}

#[test]
fn text_and_json_formats() {
    let dir = tmpdir();
    let elf = build_test_elf(dir.path(), true);
    let e = path_str(&elf);
    let inlined = inlined_address(&elf);
    let frames = Symbolizer::from_elf(&elf).unwrap().symbolize(inlined).unwrap();
    let addr = format!("0x{inlined:x}");

    // An address inside the inlined ide_select, and one outside every symbol.
    let o = symbolize(&["--vmlinux", e, &addr, "0x10"]);
    // The answers are printed; the unknown address makes the command fail, with one line.
    assert_one_line_error(&o, "0x10 is outside every known symbol");
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let loc = |i: usize| format!("{}:{}", frames[i].file.as_deref().unwrap(), frames[i].line.unwrap());
    assert_eq!(lines[0], format!("{addr} ide_select+0x{:x} {}", frames[0].offset, loc(0)), "{text}");
    assert!(loc(0).contains("symtest.c:"), "{text}");
    // The function it was inlined into, on an indented line under the address.
    assert_eq!(lines[1], format!("{} ide_do_rw_disk+0x{:x} {}", " ".repeat(addr.len()), frames[1].offset, loc(1)), "{text}");
    assert_eq!(frames[1].offset, inlined - symbol_address(&elf, "ide_do_rw_disk"));
    assert_eq!(lines[2], "0x10 [unknown]");

    // Every address known: success, nothing on stderr; hex without 0x reads the same.
    let o = symbolize(&["--vmlinux", e, &format!("{inlined:x}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(stdout(&o), lines[..2].join("\n") + "\n");

    let o = symbolize(&["--vmlinux", e, "--format", "json", &addr, "0x10"]);
    assert_one_line_error(&o, "0x10 is outside every known symbol");
    let json = common::json(&stdout(&o));
    assert_eq!(json.as_array().unwrap().len(), 2, "{json:#}");
    assert_eq!(json[0]["addr"], addr);
    let f0 = &json[0]["frames"];
    assert_eq!(f0.as_array().unwrap().len(), 2, "{json:#}");
    assert_eq!((f0[0]["function"].as_str(), f0[0]["offset"].as_u64(), f0[0]["inlined"].as_bool()), (Some("ide_select"), Some(frames[0].offset), Some(frames[0].inlined)));
    assert_eq!((f0[1]["function"].as_str(), f0[1]["offset"].as_u64(), f0[1]["inlined"].as_bool()), (Some("ide_do_rw_disk"), Some(frames[1].offset), Some(false)));
    assert_eq!(f0[0]["line"].as_u64(), frames[0].line.map(u64::from));
    assert_eq!(f0[0]["file"].as_str(), frames[0].file.as_deref());
    assert!(f0[0]["line"].is_u64() && f0[0]["file"].is_string());
    // An unknown address: one frame, every field null.
    assert_eq!(json[1]["addr"], "0x10");
    assert_eq!(json[1]["frames"], serde_json::json!([{"function": null, "offset": null, "file": null, "line": null, "inlined": false}]));
}

#[test]
fn an_elf_without_dwarf_names_functions_and_warns() {
    let dir = tmpdir();
    let elf = build_test_elf(dir.path(), false);
    let start = symbol_address(&elf, "ide_do_rw_disk");
    let o = symbolize(&["--vmlinux", path_str(&elf), &format!("0x{:x}", start + 1)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // No file:line, no inlined frames: the symbol table's function and offset.
    assert_eq!(stdout(&o), format!("0x{:x} ide_do_rw_disk+0x1 ??:?\n", start + 1));
    let err = stderr(&o);
    assert!(err.starts_with("warning: no DWARF in ") && err.lines().count() == 1, "{err}");
}

#[test]
fn exits_non_zero_on_unknown_and_bad_input() {
    let dir = tmpdir();
    let elf = build_test_elf(dir.path(), true);
    let e = path_str(&elf);

    let o = symbolize(&["--vmlinux", e, "0x10", "0x20", &format!("0x{:x}", symbol_address(&elf, "ide_do_rw_disk"))]);
    assert_one_line_error(&o, "2 of 3 addresses are outside every known symbol (0x10, 0x20)");
    assert_eq!(stdout(&o).lines().filter(|l| l.ends_with("[unknown]")).count(), 2, "{}", stdout(&o));

    let o = symbolize(&["--vmlinux", e, "nothex"]);
    assert_one_line_error(&o, "\"nothex\" is not a hex address");
    assert!(stdout(&o).is_empty());

    let not_elf = dir.path().join("x.txt");
    std::fs::write(&not_elf, "hi").unwrap();
    assert_one_line_error(&symbolize(&["--vmlinux", path_str(&not_elf), "1"]), "is not an ELF file");
    assert_one_line_error(&symbolize(&["--vmlinux", "/no/such/vmlinux", "1"]), "cannot read /no/such/vmlinux");

    // One of --vmlinux / --kallsyms is required, and at least one address.
    assert_one_line_error(&symbolize(&["0x1"]), "give --vmlinux ELF or --kallsyms FILE");
    let o = symbolize(&["--vmlinux", e]);
    assert!(!o.status.success() && stderr(&o).contains("required"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn kaslr_options() {
    let dir = tmpdir();
    let ks = dir.path().join("kallsyms");
    std::fs::write(&ks, "ffffffff81000000 T _text\nffffffff81000100 T f\n").unwrap();
    let k = path_str(&ks);

    // kallsyms alone: runtime addresses; an explicit slide is still subtracted.
    let o = symbolize(&["--kallsyms", k, "0xffffffff81000100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("0xffffffff81000100 f+0x0 "), "{}", stdout(&o));
    let o = symbolize(&["--kallsyms", k, "--kaslr-offset", "0x100", "0xffffffff81000200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("0xffffffff81000200 f+0x0 "), "{}", stdout(&o));

    assert_one_line_error(&symbolize(&["--kallsyms", k, "--kaslr-offset", "auto", "0x1"]), "--kaslr-offset auto needs --vmlinux too");
    let o = symbolize(&["--kallsyms", k, "--kaslr-offset", "0xzz", "0x1"]);
    assert!(!o.status.success() && stderr(&o).contains("is not hex"), "{}", stderr(&o));
    assert_one_line_error(&symbolize(&["--kaslr-offset", "0x100", "0x1"]), "--kaslr-offset needs --vmlinux or --kallsyms");

    // A vmlinux alone: `auto` has nothing to detect from; a negative slide works.
    let elf = build_test_elf(dir.path(), true);
    let e = path_str(&elf);
    assert_one_line_error(&symbolize(&["--vmlinux", e, "--kaslr-offset", "auto", "0x1"]), "--kallsyms");
    let inlined = inlined_address(&elf);
    let plain = stdout(&symbolize(&["--vmlinux", e, &format!("0x{inlined:x}")]));
    // Slide -0x10: the guest runs 16 bytes below the link address.
    let o = symbolize(&["--vmlinux", e, "--kaslr-offset", "-0x10", &format!("0x{:x}", inlined - 0x10)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let strip_addr = |s: &str| s.lines().map(|l| l.trim_start_matches(|c: char| c != ' ').trim_start().to_string()).collect::<Vec<_>>();
    assert_eq!(strip_addr(&stdout(&o)), strip_addr(&plain), "the same frames as the unslid address");
    assert!(stdout(&o).starts_with(&format!("0x{:x} ide_select+0x", inlined - 0x10)), "{}", stdout(&o));

    // A kernel-like vmlinux and the guest's kallsyms: the slide is detected from `_text`
    // (by default and with `auto`), or given.
    let kernel = build_kernel_elf(dir.path());
    let kfunc = symbol_address(&kernel, "kfunc");
    let slide = 0x1e00_0000u64;
    let guest_ks = dir.path().join("guest-kallsyms");
    std::fs::write(&guest_ks, format!("{:016x} T _text\n{:016x} T kfunc\n", KERNEL_LINK_BASE + slide, kfunc + slide)).unwrap();
    let runtime = format!("0x{:x}", kfunc + slide);
    for extra in [&[][..], &["--kaslr-offset", "auto"][..], &["--kaslr-offset", "0x1e000000"][..]] {
        let mut args = vec!["--vmlinux", path_str(&kernel), "--kallsyms", path_str(&guest_ks)];
        args.extend_from_slice(extra);
        args.push(&runtime);
        let o = symbolize(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.starts_with(&format!("{runtime} kfunc+0x0 ")) && out.contains("k.c:"), "{extra:?}: {out}");
    }
    // Without the slide the runtime address is nowhere in the vmlinux.
    let o = symbolize(&["--vmlinux", path_str(&kernel), &runtime]);
    assert_one_line_error(&o, &format!("{runtime} is outside every known symbol"));
}
