//! Exactness against binutils `addr2line -f -i -C -e`: every byte address of `.text` of a
//! gcc/g++ `-g -O2` test program (C with static inlines and clones, C++ templates), so
//! instruction starts, mid-instruction bytes, CRT code without DWARF and inter-function
//! padding are all covered; and every byte of the Rust functions of a `rustc -g -O` program
//! (Rust demangling, inlining through generics and closures). Function names, inlined
//! chains and file:line must be identical.
//! The differences allowed are the ones documented in the crate docs, each checked here
//! to be exactly that and nothing else:
//! - no ` (discriminator N)` suffix (stripped from binutils' output);
//! - a C++ name `cpp_demangle` cannot demangle stays mangled: accepted only if `c++filt`
//!   of our name gives binutils' name;
//! - binutils 2.40 sometimes prints the CU's primary file with the line of another file
//!   (e.g. `guest_cxx.cpp:439` where the line table says `vector.tcc:439`, a 30-line
//!   file): accepted only if the line matches and that line does not exist in binutils'
//!   file, i.e. binutils' answer is impossible.

mod common;

use object::{Object, ObjectSection};
use symbolizer::Symbolizer;

#[test]
fn every_text_byte_matches_binutils() {
    let dir = common::temp_dir("exact");
    let elf = common::build_test_elf(&dir);
    let data = std::fs::read(&elf).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let text = obj.section_by_name(".text").expect(".text");
    let addrs: Vec<u64> = (text.address()..text.address() + text.size()).collect();
    assert!(addrs.len() > 1000, "test program too small: {}", addrs.len());

    let expected = compare(&elf, &addrs);
    // The comparison is only meaningful if the program really has inlined chains and C++.
    assert!(expected.iter().flatten().any(|l| l.contains("kvm::drain<long>(kvm::Ring<long>&, int)")), "no demangled C++ names");
    assert!(expected.iter().flatten().any(|l| l == "ide_select"), "no inlined C frame");
}

/// Every byte of the program's own Rust functions (not std's): Rust demangling and
/// inlined chains through generics and closures.
#[test]
fn rust_functions_match_binutils() {
    let dir = common::temp_dir("exact-rust");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/guest_rust.rs");
    let elf = dir.join("exits");
    common::run(std::process::Command::new("rustc").args(["-g", "-C", "opt-level=2"]).arg(&src).arg("-o").arg(&elf));
    let nm = std::process::Command::new("nm").args(["-S", "-C", "--defined-only"]).arg(&elf).output().unwrap();
    let mut addrs = Vec::new();
    for line in String::from_utf8(nm.stdout).unwrap().lines() {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        if f.len() == 4 && "tT".contains(f[2]) && f[3].contains("guest_rust::") {
            let (a, z) = (u64::from_str_radix(f[0], 16).unwrap(), u64::from_str_radix(f[1], 16).unwrap());
            addrs.extend(a..a + z);
        }
    }
    assert!(addrs.len() > 200, "too few Rust addresses: {}", addrs.len());
    let expected = compare(&elf, &addrs);
    assert!(expected.iter().flatten().any(|l| l == "<guest_rust::Uart as guest_rust::Device>::io"), "no demangled Rust trait impl");
}

/// Compares every address; returns binutils' answers for the caller's sanity checks.
fn compare(elf: &std::path::Path, addrs: &[u64]) -> Vec<Vec<String>> {
    let sym = Symbolizer::from_elf(elf).unwrap();
    assert!(sym.warnings().is_empty(), "{:?}", sym.warnings());
    let expected = common::binutils_addr2line(elf, addrs);

    let mut mismatches = Vec::new();
    let (mut inlined, mut mangled, mut wrong_file) = (0, 0, 0);
    for (addr, want) in addrs.iter().zip(&expected) {
        let answer = sym.symbolize(*addr);
        if answer.as_ref().is_ok_and(|f| f.len() > 1) {
            inlined += 1;
        }
        let got = common::ours_as_binutils(&answer);
        if &got != want && got.len() == want.len() {
            let mut all_allowed = true;
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                if g == w {
                    continue;
                }
                if i % 2 == 0 && g.starts_with("_Z") && common::cxxfilt(g) == *w {
                    mangled += 1;
                } else if i % 2 == 1 && impossible_binutils_location(w, g) {
                    wrong_file += 1;
                } else {
                    all_allowed = false;
                }
            }
            if all_allowed {
                continue;
            }
        }
        if &got != want {
            mismatches.push(format!("0x{addr:x}:\n  binutils: {want:?}\n  ours:     {got:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} addresses differ from binutils; first ones:\n{}",
        mismatches.len(),
        addrs.len(),
        mismatches.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "{} addresses: identical except {mangled} names cpp_demangle leaves mangled, \
         {wrong_file} impossible binutils file:line",
        addrs.len()
    );
    // Exceptions must stay exceptions.
    assert!(mangled + wrong_file < addrs.len() / 10, "too many allowed differences");
    // The comparison is only meaningful if the program really has inlined chains.
    assert!(inlined > 50, "only {inlined} addresses with inlined frames");
    expected
}

/// binutils said `file:N` and we said `other:N`, and `file` has fewer than N lines.
fn impossible_binutils_location(binutils: &str, ours: &str) -> bool {
    let (Some((bfile, bline)), Some((ofile, oline))) = (binutils.rsplit_once(':'), ours.rsplit_once(':')) else {
        return false;
    };
    let Ok(n) = bline.parse::<usize>() else { return false };
    if bline != oline || bfile == ofile {
        return false;
    }
    let lines = std::fs::read_to_string(bfile).map(|t| t.lines().count()).unwrap_or(usize::MAX);
    lines < n
}
