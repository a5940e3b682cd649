//! Shared by the integration tests: build test ELFs, run binutils `addr2line`, and
//! render our answers the way `addr2line -a -f -i -C` prints them.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use symbolizer::{Frame, SymbolizeError};

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("symbolizer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// gcc/g++ -g -O2 build of tests/data/guest_c.c + guest_cxx.cpp.
pub fn build_test_elf(dir: &Path) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let (c, x, exe) = (dir.join("c.o"), dir.join("x.o"), dir.join("guest"));
    run(Command::new("gcc").args(["-g", "-O2", "-c"]).arg(data.join("guest_c.c")).arg("-o").arg(&c));
    run(Command::new("g++").args(["-g", "-O2", "-c"]).arg(data.join("guest_cxx.cpp")).arg("-o").arg(&x));
    run(Command::new("g++").arg(&c).arg(&x).arg("-o").arg(&exe));
    exe
}

/// Link address of the kernel-like ELF of [`build_kernel_elf`].
pub const KERNEL_LINK_BASE: u64 = 0xffff_ffff_8100_0000;

/// A kernel-like ELF: `_text` (the entry) and `kfunc`, gcc -O2 -g, linked at
/// [`KERNEL_LINK_BASE`] as a vmlinux is.
pub fn build_kernel_elf(dir: &Path) -> PathBuf {
    let src = dir.join("k.c");
    std::fs::write(&src, "void _text(void) {}\nint kfunc(int x) { return x * 3; }\n").unwrap();
    let kernel = dir.join("kernel");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-nostdlib", "-static", "-no-pie", "-Wl,-e,_text"])
        .arg(format!("-Wl,-Ttext=0x{KERNEL_LINK_BASE:x}"))
        .arg(&src)
        .arg("-o")
        .arg(&kernel));
    kernel
}

/// The address `nm` gives for `name` in `elf`.
pub fn symbol_address(elf: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(elf).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in {}", elf.display()))
}

/// One answer block per address, as `addr2line -a -f -i -C -e ELF` prints it, minus the
/// address line and minus ` (discriminator N)` (documented difference: not part of file:line).
pub fn binutils_addr2line(elf: &Path, addrs: &[u64]) -> Vec<Vec<String>> {
    let mut child = Command::new("addr2line")
        .args(["-a", "-f", "-i", "-C", "-e"])
        .arg(elf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("binutils addr2line must be installed (/usr/bin/addr2line)");
    let mut stdin = child.stdin.take().unwrap();
    let input: String = addrs.iter().map(|a| format!("0x{a:x}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut blocks: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("0x") {
            blocks.push(Vec::new());
        } else {
            let line = match line.find(" (discriminator ") {
                Some(i) => &line[..i],
                None => line,
            };
            blocks.last_mut().expect("addr2line output starts with an address").push(line.to_string());
        }
    }
    assert_eq!(blocks.len(), addrs.len(), "addr2line answered a different number of addresses");
    blocks
}

/// Our answer in binutils' shape: `function` then `file:line` per frame. binutils prints
/// `??`/`?` for an unknown file/line of a found address, and `??` + `??:0` when not found.
pub fn ours_as_binutils(answer: &Result<std::sync::Arc<[Frame]>, SymbolizeError>) -> Vec<String> {
    match answer {
        Err(_) => vec!["??".into(), "??:0".into()],
        Ok(frames) => frames
            .iter()
            .flat_map(|f| {
                let file = f.file.as_deref().unwrap_or("??");
                let loc = match f.line {
                    Some(line) => format!("{file}:{line}"),
                    None => format!("{file}:?"),
                };
                [f.function.clone(), loc]
            })
            .collect(),
    }
}

/// binutils' own demangler, for names `cpp_demangle` leaves mangled.
pub fn cxxfilt(name: &str) -> String {
    let out = Command::new("c++filt").arg(name).output().expect("c++filt (binutils)");
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}
