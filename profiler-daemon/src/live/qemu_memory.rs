//! QEMU's guest memory map, found without a hand-written `--guest-memory-map`.
//!
//! QEMU keeps guest RAM (`pc.ram`) in one host mapping, guest-physical 0 at its start, but
//! says nowhere where that is (QEMU 7.2's `info ramblock` has no host address). So the map is
//! a candidate that must be *verified* before the kernel reads guest memory with it:
//!
//! 1. Candidates: every writable mapping in `/proc/PID/maps` (anonymous or memfd) large
//!    enough to hold the guest image.
//! 2. The guest-physical layout: from QMP when QEMU was started with `-qmp unix:PATH,...`
//!    (`info mtree -f`: which guest-physical ranges are `pc.ram`, at which offset in it;
//!    `info ramblock`: its size, which picks the mapping), else the `pc` machine's: one
//!    range from 0, below the 32-bit PCI hole.
//! 3. The check: the `-kernel` image's executable segment must be in that mapping, byte for
//!    byte, at its guest-physical load address (QEMU's loader put it there; guest code is not
//!    rewritten). Guest page tables are not visible from user space, so this is the one
//!    fact about the guest that can be checked from outside.
//!
//! No candidate passes: the map is not used, callers are `[unknown]`, and the reason is one
//! line in the recording and the report. A wrong map is never used.
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use profiler_common::guest::{GuestMemMap, MemRegion, MAX_REGIONS};

/// Guest-physical addresses at or above this are never RAM in one piece with address 0 on
/// QEMU's x86 machines (the PCI hole starts at 0xb0000000 on q35, 0xc0000000/0xe0000000 on pc).
const LOW_RAM_LIMIT: u64 = 0xb000_0000;

/// A verified map and how it was found (one line, for the recording and the report).
pub struct Found {
    pub map: GuestMemMap,
    pub how: String,
}

/// True if `exe` names a QEMU system emulator (`qemu-system-x86_64`, `qemu-kvm`).
pub fn is_qemu(exe: &Path) -> bool {
    exe.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("qemu-system") || n == "qemu-kvm")
}

/// True if process `pid` runs QEMU.
pub fn pid_is_qemu(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| is_qemu(&p))
}

/// One executable segment of the guest image: where it goes and its bytes.
#[derive(Debug)]
struct Segment {
    paddr: u64,
    bytes: Vec<u8>,
}

fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at + n)?;
    Some(s.iter().rev().fold(0u64, |v, x| v << 8 | u64::from(*x)))
}

/// The first executable `PT_LOAD` segment with file bytes, of an ELF32 or ELF64 image.
fn code_segment(elf: &[u8]) -> Result<Segment, String> {
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("it is not an ELF file (a bzImage or raw image cannot be checked)".into());
    }
    let is64 = elf[4] == 2;
    let (phoff, phentsize, phnum) = if is64 { (le(elf, 32, 8), le(elf, 54, 2), le(elf, 56, 2)) } else { (le(elf, 28, 4), le(elf, 42, 2), le(elf, 44, 2)) };
    let (phoff, phentsize, phnum) = (phoff.ok_or("truncated ELF header")?, phentsize.ok_or("truncated ELF header")?, phnum.ok_or("truncated ELF header")?);
    for i in 0..phnum {
        let h = (phoff + i * phentsize) as usize;
        let field = |o64: usize, o32: usize| if is64 { le(elf, h + o64, 8) } else { le(elf, h + o32, 4) };
        let (ptype, flags) = (le(elf, h, 4), if is64 { le(elf, h + 4, 4) } else { le(elf, h + 24, 4) });
        let (offset, paddr, filesz) = (field(8, 4), field(24, 12), field(32, 16));
        let (Some(ptype), Some(flags), Some(offset), Some(paddr), Some(filesz)) = (ptype, flags, offset, paddr, filesz) else {
            return Err("truncated program header".into());
        };
        if ptype == 1 && flags & 1 != 0 && filesz > 0 {
            let bytes = elf.get(offset as usize..(offset + filesz) as usize).ok_or("a segment lies past the end of the file")?;
            return Ok(Segment { paddr, bytes: bytes.to_vec() });
        }
    }
    Err("it has no executable PT_LOAD segment".into())
}

/// QEMU's command line, its working directory, and the values of some options.
struct QemuArgs {
    args: Vec<String>,
    cwd: PathBuf,
}

impl QemuArgs {
    fn read(pid: u32) -> Result<QemuArgs, String> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("cannot read /proc/{pid}/cmdline: {e}"))?;
        let args = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"));
        Ok(QemuArgs { args, cwd })
    }
    /// The value of `-opt V` or `-opt=V` (also `--opt`).
    fn value(&self, opt: &str) -> Option<&str> {
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            let name = a.trim_start_matches('-');
            if a.starts_with('-') && name == opt {
                return it.next().map(String::as_str);
            }
            if let Some(v) = name.strip_prefix(opt).and_then(|r| r.strip_prefix('=')) {
                return a.starts_with('-').then_some(v);
            }
        }
        None
    }
    fn path(&self, p: &str) -> PathBuf {
        self.cwd.join(p)
    }
}

/// A writable mapping of the process.
struct Mapping {
    start: u64,
    end: u64,
}

fn writable_mappings(pid: u32) -> Result<Vec<Mapping>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| format!("cannot read /proc/{pid}/maps: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        let path = f.nth(3).unwrap_or("");
        // Guest RAM is anonymous memory, or a memfd/shm backend; never a file's text or the
        // stack.
        let ram_like = path.is_empty() || path.starts_with("/memfd:") || path.starts_with("/dev/shm/") || path.starts_with("/dev/hugepages");
        if !perms.starts_with("rw") || !ram_like {
            continue;
        }
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                out.push(Mapping { start, end });
            }
        }
    }
    Ok(out)
}

/// `pc.ram`'s guest-physical ranges (start, size, offset in the block) and the block's size,
/// from QMP's `info mtree -f` and `info ramblock`.
struct QmpLayout {
    ranges: Vec<(u64, u64, u64)>,
    block_size: u64,
}

fn qmp_unix_path(args: &QemuArgs) -> Option<PathBuf> {
    let v = args.value("qmp")?;
    let rest = v.strip_prefix("unix:")?;
    Some(args.path(rest.split(',').next()?))
}

fn qmp_hmp(path: &Path, commands: &[&str]) -> Result<Vec<String>, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("cannot connect to QMP socket {}: {e}", path.display()))?;
    // QEMU answers from its main loop: allow for a loaded host, but not forever (a QMP
    // socket takes one client at a time; a busy one is a fallback to /proc, not a hang).
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut next = |r: &mut BufReader<UnixStream>| -> Result<serde_json::Value, String> {
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| format!("QMP socket {} did not answer (another client connected?): {e}", path.display()))? == 0 {
                return Err("QMP socket closed".into());
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("QMP sent non-JSON: {e}"))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    };
    next(&mut r)?; // greeting
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).map_err(|e| e.to_string())?;
    next(&mut r)?;
    let mut out = Vec::new();
    for c in commands {
        let cmd = serde_json::json!({"execute": "human-monitor-command", "arguments": {"command-line": c}});
        writeln!(w, "{cmd}").map_err(|e| e.to_string())?;
        let v = next(&mut r)?;
        out.push(v.get("return").and_then(|x| x.as_str()).ok_or_else(|| format!("QMP `{c}` failed: {v}"))?.to_string());
    }
    Ok(out)
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// Parses the flat view of the system address space (`AS "memory"`) in `info mtree -f` and
/// `info ramblock`. Once firmware has programmed the PAM registers, the views are listed in
/// another order and pc.ram comes in more pieces: contiguous pieces are merged, and at most
/// [`MAX_REGIONS`] of the largest are kept.
fn parse_qmp_layout(mtree: &str, ramblock: &str) -> Option<QmpLayout> {
    let mut ranges: Vec<(u64, u64, u64)> = Vec::new();
    let mut system = false;
    for line in mtree.lines() {
        if line.starts_with("FlatView") {
            system = false;
            continue;
        }
        if line.contains("AS \"memory\"") {
            system = true;
            continue;
        }
        if !system {
            continue;
        }
        // "  00000000000c0000-0000000003ffffff (prio 0, ram): pc.ram @00000000000c0000 KVM"
        let l = line.trim();
        let Some((range, rest)) = l.split_once(' ') else { continue };
        let Some((kind, what)) = rest.split_once("): ") else { continue };
        if !kind.ends_with(", ram") {
            continue;
        }
        let mut w = what.split_whitespace();
        if w.next() != Some("pc.ram") {
            continue;
        }
        let offset = w.next().and_then(|o| o.strip_prefix('@')).and_then(hex).unwrap_or(0);
        let (a, b) = range.split_once('-')?;
        let (a, b) = (hex(a)?, hex(b)?);
        match ranges.last_mut() {
            Some((pa, ps, po)) if *pa + *ps == a && *po + *ps == offset => *ps += b - a + 1,
            _ => ranges.push((a, b - a + 1, offset)),
        }
    }
    if ranges.len() > MAX_REGIONS {
        ranges.sort_by_key(|r| std::cmp::Reverse(r.1));
        ranges.truncate(MAX_REGIONS);
        ranges.sort();
    }
    let block_size = ramblock.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&"pc.ram")).then(|| f.last().and_then(|t| hex(t))).flatten()
    })?;
    (!ranges.is_empty()).then_some(QmpLayout { ranges, block_size })
}

/// Reads `len` bytes at `hva` of the process.
fn read_at(mem: &File, hva: u64, len: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; len];
    mem.read_exact_at(&mut b, hva).ok()?;
    Some(b)
}

/// Finds and verifies QEMU's guest memory map (see the module docs). The error is the one
/// line a report prints for why callers are unknown.
pub fn discover(pid: u32) -> Result<Found, String> {
    let args = QemuArgs::read(pid)?;
    let kernel = args.value("kernel").map(|k| args.path(k)).ok_or_else(|| {
        format!("QEMU PID {pid} was not started with -kernel, so nothing known of its guest can check a guest memory map: give --guest-memory-map FILE")
    })?;
    let image = std::fs::read(&kernel).map_err(|e| format!("cannot read QEMU's -kernel image {} to check its guest memory: {e}", kernel.display()))?;
    let seg = code_segment(&image).map_err(|why| format!("QEMU's -kernel image {} cannot check its guest memory: {why}", kernel.display()))?;
    let qmp = qmp_unix_path(&args).map(|p| {
        qmp_hmp(&p, &["info mtree -f", "info ramblock"]).and_then(|o| parse_qmp_layout(&o[0], &o[1]).ok_or_else(|| "QMP's `info mtree -f` shows no pc.ram".to_string()))
    });
    let layout = match &qmp {
        Some(Ok(l)) => Some(l),
        _ => None,
    };
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(|e| format!("cannot open /proc/{pid}/mem: {e}"))?;
    let seg_end = seg.paddr + seg.bytes.len() as u64;
    let mut candidates = 0;
    for m in writable_mappings(pid)? {
        let size = m.end - m.start;
        if layout.is_some_and(|l| l.block_size != size) || size < seg_end {
            continue;
        }
        candidates += 1;
        let host_of = |gpa: u64| -> Option<u64> {
            match layout {
                Some(l) => l.ranges.iter().find(|(a, s, _)| (*a..a + s).contains(&gpa)).map(|(a, _, off)| m.start + off + (gpa - a)),
                None => Some(m.start + gpa),
            }
        };
        let Some(hva) = host_of(seg.paddr) else { continue };
        if read_at(&mem, hva, seg.bytes.len()).as_deref() != Some(&seg.bytes[..]) {
            continue;
        }
        let mut map = GuestMemMap::default();
        let regions: Vec<MemRegion> = match layout {
            Some(l) => l.ranges.iter().map(|(a, s, off)| MemRegion { guest_phys: *a, size: *s, host_virt: m.start + off }).collect(),
            None => vec![MemRegion { guest_phys: 0, size: size.min(LOW_RAM_LIMIT), host_virt: m.start }],
        };
        for (i, r) in regions.iter().enumerate() {
            map.regions[i] = *r;
        }
        map.count = regions.len() as u32;
        let from = match (&qmp, layout) {
            (_, Some(_)) => "QMP's pc.ram layout".to_string(),
            (Some(Err(e)), None) => format!("/proc/{pid}/maps; QMP not used: {e}"),
            _ => format!("/proc/{pid}/maps"),
        };
        return Ok(Found {
            map,
            how: format!(
                "QEMU PID {pid}: guest RAM at host {:#x} ({} MiB, {} region(s), from {from}), verified: guest-physical {:#x}..{seg_end:#x} holds {}'s code",
                m.start,
                size >> 20,
                map.count,
                seg.paddr,
                kernel.display()
            ),
        });
    }
    let qmp_note = match qmp {
        Some(Err(e)) => format!(" (QMP not used: {e})"),
        _ => String::new(),
    };
    Err(format!(
        "QEMU PID {pid}: none of its {candidates} candidate guest-RAM mappings holds the code of its -kernel image {} at guest-physical {:#x} (the file changed since QEMU loaded it, or the guest is not loaded yet){qmp_note}",
        kernel.display(),
        seg.paddr
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_layout_is_read_from_mtree_and_ramblock() {
        let mtree = "FlatView #0\n AS \"I/O\", root: io\n  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\n\nFlatView #1\n AS \"memory\", root: system\n Root memory region: system\n  0000000000000000-000000000007ffff (prio 0, ram): pc.ram KVM\n  0000000000080000-000000000009ffff (prio 0, ram): pc.ram @0000000000080000 KVM\n  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\n  00000000000c0000-0000000003ffffff (prio 0, ram): pc.ram @00000000000c0000 KVM\n  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram KVM\n\nFlatView #2\n  0000000000000000-0000000003ffffff (prio 0, ram): pc.ram KVM\n";
        let ramblock = "              Block Name    PSize              Offset               Used              Total\n                  pc.ram    4 KiB  0x0000000000000000 0x0000000004000000 0x0000000004000000\n";
        let l = parse_qmp_layout(mtree, ramblock).unwrap();
        assert_eq!(l.ranges, vec![(0, 0xa0000, 0), (0xc0000, 0x3f40000, 0xc0000)]);
        assert_eq!(l.block_size, 0x400_0000);
    }

    #[test]
    fn the_code_segment_of_elf32_and_elf64() {
        assert!(code_segment(b"MZ..").unwrap_err().contains("not an ELF"));
        // ELF64 with one PT_LOAD R+X of 4 bytes at file offset 0x78, paddr 0x100000.
        let mut e = vec![0u8; 0x7c];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[32] = 64; // phoff
        e[54] = 56; // phentsize
        e[56] = 1; // phnum
        let h = 64;
        e[h] = 1;
        e[h + 4] = 5;
        e[h + 8] = 0x78;
        e[h + 24..h + 32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        e[h + 32] = 4;
        e[0x78..].copy_from_slice(&[0xf4, 0xeb, 0xfd, 0x90]);
        let s = code_segment(&e).unwrap();
        assert_eq!((s.paddr, s.bytes), (0x10_0000, vec![0xf4, 0xeb, 0xfd, 0x90]));
    }
}
