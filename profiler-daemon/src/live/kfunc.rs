//! How the eBPF programs read kernel memory on this kernel, and the rewrite of their kfunc
//! placeholders to match (see profiler-ebpf's `kernel_read` and profiler_common::kfunc).
//!
//! Direct reads need the kfunc `bpf_rdonly_cast` to accept type id 0 (`void`), which makes its
//! result read-only untrusted memory that plain loads may read at any offset. Whether this
//! kernel's verifier does is probed with a six-instruction program before the real load, so an
//! older kernel gets the helper reads instead of a verifier error.
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection, SectionKind};
use profiler_common::kfunc::{RDONLY_CAST, RDONLY_CAST_PLACEHOLDER};

use super::btf::Btf;

/// Set to 1 to use `bpf_probe_read_kernel` even where direct reads work (to compare the two,
/// and for the tests of the fallback).
pub const FORCE_HELPER_READS_ENV: &str = "KVMPROF_HELPER_READS";

/// How the programs read kernel memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelReads {
    /// Plain loads through `bpf_rdonly_cast`, whose BTF id in this kernel is `cast_id`.
    Direct { cast_id: u32 },
    /// `bpf_probe_read_kernel`: the kernel cannot cast to `void` (or it was asked for).
    Helper,
}

impl KernelReads {
    /// Direct reads when this kernel supports them and the environment does not ask otherwise.
    pub fn detect(btf: &Btf) -> KernelReads {
        if std::env::var_os(FORCE_HELPER_READS_ENV).is_some_and(|v| v == "1") {
            return KernelReads::Helper;
        }
        match btf.func_id(RDONLY_CAST) {
            Some(cast_id) if void_cast_loads(cast_id) => KernelReads::Direct { cast_id },
            _ => KernelReads::Helper,
        }
    }

    /// The value of profiler_common::globals::DIRECT_READS.
    pub fn global(self) -> u8 {
        matches!(self, KernelReads::Direct { .. }) as u8
    }

    /// What `kvmprof check` and the logs say.
    pub fn describe(self) -> &'static str {
        match self {
            KernelReads::Direct { .. } => "direct loads (bpf_rdonly_cast)",
            KernelReads::Helper => "bpf_probe_read_kernel",
        }
    }

    /// The instruction each placeholder becomes: the kfunc call, or else `r0 = r1` (the
    /// verifier prunes those branches then, but no unknown helper number stays in the code).
    fn replacement(self) -> [u8; 8] {
        match self {
            // BPF_JMP|BPF_CALL, src_reg BPF_PSEUDO_KFUNC_CALL (2), imm = the kfunc's BTF id
            // (off 0: in vmlinux's BTF).
            KernelReads::Direct { cast_id } => {
                let id = cast_id.to_le_bytes();
                [0x85, 0x20, 0, 0, id[0], id[1], id[2], id[3]]
            }
            // BPF_ALU64|BPF_MOV|BPF_X, dst r0, src r1.
            KernelReads::Helper => [0xbf, 0x10, 0, 0, 0, 0, 0, 0],
        }
    }
}

/// An eBPF object in memory aligned for the ELF parser.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes (see `rewrite`), and u8 has
        // no alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `object` with every placeholder call in its code rewritten for `reads`. Fails when
/// the object has none: it is not the one this kvmprof was built with.
pub fn rewrite(object: &[u8], reads: KernelReads) -> Result<AlignedObject> {
    let mut out = AlignedObject { words: vec![0; object.len().div_ceil(8)], len: object.len() };
    out.bytes_mut().copy_from_slice(object);
    let placeholder = placeholder_call();
    let replacement = reads.replacement();
    let code: Vec<(usize, usize)> = {
        let elf = object::File::parse(object).context("the eBPF object is not an ELF file")?;
        elf.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .filter_map(|s| s.file_range())
            .map(|(start, size)| (start as usize, size as usize))
            .collect()
    };
    let mut rewritten = 0;
    let bytes = out.bytes_mut();
    for (start, size) in code {
        let Some(section) = bytes.get_mut(start..start + size) else { bail!("an eBPF code section lies outside the object") };
        for insn in section.chunks_exact_mut(8) {
            if *insn == placeholder {
                insn.copy_from_slice(&replacement);
                rewritten += 1;
            }
        }
    }
    if rewritten == 0 {
        bail!("the eBPF object has no {RDONLY_CAST} placeholder: it does not match this kvmprof (rebuild)");
    }
    Ok(out)
}

/// The placeholder as the compiler emits it: `call RDONLY_CAST_PLACEHOLDER` (a helper call).
fn placeholder_call() -> [u8; 8] {
    let imm = RDONLY_CAST_PLACEHOLDER.to_le_bytes();
    [0x85, 0, 0, 0, imm[0], imm[1], imm[2], imm[3]]
}

/// True when the verifier accepts a raw tracepoint program that casts an address to `void`
/// with `bpf_rdonly_cast` (kfunc `cast_id`) and loads from it at an offset.
fn void_cast_loads(cast_id: u32) -> bool {
    let insns = [
        Insn(0x79, 0x11, 0, 0),              // r1 = *(u64 *)(r1 + 0): the first argument
        Insn(0xb7, 0x02, 0, 0),              // r2 = 0: type id void
        Insn(0x85, 0x20, 0, cast_id as i32), // r0 = bpf_rdonly_cast(r1, r2)
        Insn(0x79, 0x00, 8, 0),              // r0 = *(u64 *)(r0 + 8)
        Insn(0xb7, 0x00, 0, 0),              // r0 = 0
        Insn(0x95, 0x00, 0, 0),              // exit
    ];
    load_raw_tracepoint_program(&insns).is_ok()
}

/// One eBPF instruction as the kernel reads it: opcode, dst | src << 4, offset, immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn(pub u8, pub u8, pub i16, pub i32);

/// Loads `insns` as a GPL raw tracepoint program by the bare `BPF_PROG_LOAD` (no object, no
/// log): for probes of what this kernel's verifier accepts (here) and what a program costs
/// (`examples/bpf_floor.rs`). The error is the syscall's.
pub fn load_raw_tracepoint_program(insns: &[Insn]) -> std::io::Result<OwnedFd> {
    // The start of `union bpf_attr` for BPF_PROG_LOAD; the kernel zero-fills the rest.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    let license = c"GPL";
    let attr = ProgLoad { prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT, insn_cnt: insns.len() as u32, insns: insns.as_ptr() as u64, license: license.as_ptr() as u64 };
    // SAFETY: BPF_PROG_LOAD reads `size_of::<ProgLoad>()` bytes of `attr`, which points at
    // the instructions and the license string, all alive until the call returns.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a file descriptor the kernel just returned to this process, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_rewrite_puts_the_kfunc_call_and_the_fallback_a_move() {
        assert_eq!(KernelReads::Direct { cast_id: 0x01_0203 }.replacement(), [0x85, 0x20, 0, 0, 3, 2, 1, 0]);
        assert_eq!(KernelReads::Helper.replacement(), [0xbf, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(KernelReads::Helper.global(), 0);
        assert_eq!(KernelReads::Direct { cast_id: 1 }.global(), 1);
    }

    #[test]
    fn an_object_without_placeholders_is_refused() {
        let err = rewrite(b"not an elf file", KernelReads::Helper).err().expect("refused");
        assert!(err.to_string().contains("not an ELF"), "{err}");
    }
}
