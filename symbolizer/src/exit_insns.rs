//! Every instruction of a guest kernel that can cause a VM exit, by link address: the
//! evidence [`crate::kaslr`] matches recorded exit RIPs against.
//!
//! Built by decoding the vmlinux's executable sections with `iced-x86` in one linear sweep
//! (kernel text is code from end to end; padding between functions is `int3`/`nop`, so the
//! decoder stays in step). `.altinstr_replacement` is skipped: its bytes are copied over
//! other code at boot and never run where they are linked.
//!
//! The index is cached next to the vmlinux (`<vmlinux>.exit-insns`), keyed by the ELF's
//! build id, because decoding a distribution kernel takes a second or two.

use std::fs;
use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use object::{Object, ObjectSection, SectionKind};

use crate::error::SymbolizeError;

/// What kind of exit an instruction causes: an exit of one kind can only have been raised
/// by an instruction of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ExitInsnKind {
    /// `in`, `out`, `ins*`, `outs*`.
    PortIo = 1,
    Hlt = 2,
    /// `rdmsr`, `wrmsr`.
    Msr = 3,
    Cpuid = 4,
    /// `vmcall`, `vmmcall`.
    Hypercall = 5,
    Xsetbv = 6,
    Wbinvd = 7,
    /// `mwait`, `monitor` (and their AMD `x` forms).
    Mwait = 8,
    Rdpmc = 9,
    /// `mov` to or from a control or debug register.
    CrDr = 10,
    Invlpg = 11,
    Pause = 12,
}

impl ExitInsnKind {
    fn from_u8(v: u8) -> Option<Self> {
        use ExitInsnKind::*;
        Some(match v {
            1 => PortIo,
            2 => Hlt,
            3 => Msr,
            4 => Cpuid,
            5 => Hypercall,
            6 => Xsetbv,
            7 => Wbinvd,
            8 => Mwait,
            9 => Rdpmc,
            10 => CrDr,
            11 => Invlpg,
            12 => Pause,
            _ => return None,
        })
    }

    /// The kind of a decoded instruction, if it is one that can exit.
    pub fn of(insn: &Instruction) -> Option<Self> {
        use ExitInsnKind::*;
        Some(match insn.mnemonic() {
            Mnemonic::In | Mnemonic::Out | Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => PortIo,
            Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => PortIo,
            Mnemonic::Hlt => Hlt,
            Mnemonic::Rdmsr | Mnemonic::Wrmsr => Msr,
            Mnemonic::Cpuid => Cpuid,
            Mnemonic::Vmcall | Mnemonic::Vmmcall => Hypercall,
            Mnemonic::Xsetbv => Xsetbv,
            Mnemonic::Wbinvd => Wbinvd,
            Mnemonic::Mwait | Mnemonic::Monitor | Mnemonic::Mwaitx | Mnemonic::Monitorx => Mwait,
            Mnemonic::Rdpmc => Rdpmc,
            Mnemonic::Invlpg => Invlpg,
            Mnemonic::Pause => Pause,
            Mnemonic::Mov => {
                use iced_x86::Register as R;
                let cr_dr = |r: R| {
                    (R::CR0 as u32..=R::CR15 as u32).contains(&(r as u32)) || (R::DR0 as u32..=R::DR15 as u32).contains(&(r as u32))
                };
                if cr_dr(insn.op0_register()) || cr_dr(insn.op1_register()) {
                    CrDr
                } else {
                    return None;
                }
            }
            _ => return None,
        })
    }
}

/// The exit-capable instructions of one ELF, sorted by link address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInsnIndex {
    pub build_id: Vec<u8>,
    /// `(link address, kind)`, sorted by address.
    pub entries: Vec<(u64, ExitInsnKind)>,
    /// Lowest and highest address of the executable sections decoded.
    pub text: (u64, u64),
}

const MAGIC: &[u8; 8] = b"KVMPXIN1";

impl ExitInsnIndex {
    /// The kind of the instruction that starts at `addr`, if it is exit-capable.
    pub fn kind_at(&self, addr: u64) -> Option<ExitInsnKind> {
        self.entries.binary_search_by_key(&addr, |e| e.0).ok().map(|i| self.entries[i].1)
    }

    /// Decodes `data`, an ELF image (read from `path`, for error messages).
    pub fn build(path: &Path, data: &[u8]) -> Result<Self, SymbolizeError> {
        let file = object::File::parse(data).map_err(|_| SymbolizeError::NotElf { path: path.into() })?;
        let bad = |reason: String| SymbolizeError::BadElf { path: path.into(), reason };
        let build_id = file.build_id().map_err(|e| bad(e.to_string()))?.unwrap_or_default().to_vec();
        let mut entries = Vec::new();
        let mut text = (u64::MAX, 0);
        for section in file.sections() {
            let exec = section.kind() == SectionKind::Text;
            let name = section.name().unwrap_or("");
            if !exec || section.size() == 0 || name == ".altinstr_replacement" {
                continue;
            }
            let Ok(bytes) = section.data() else { continue }; // NOBITS
            let addr = section.address();
            text = (text.0.min(addr), text.1.max(addr + bytes.len() as u64));
            let mut decoder = Decoder::with_ip(64, bytes, addr, DecoderOptions::NONE);
            let mut insn = Instruction::default();
            while decoder.can_decode() {
                decoder.decode_out(&mut insn);
                if let Some(kind) = ExitInsnKind::of(&insn) {
                    entries.push((insn.ip(), kind));
                }
            }
        }
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        if text.0 > text.1 {
            text = (0, 0);
        }
        Ok(ExitInsnIndex { build_id, entries, text })
    }

    /// The index of the vmlinux at `path`: from its cache file when that holds this build
    /// id, else decoded (and the cache written, if the directory allows; a read-only
    /// directory only costs the decoding next time).
    pub fn for_vmlinux(path: &Path) -> Result<Self, SymbolizeError> {
        let data = crate::elf::map(path)?;
        let cache = Self::cache_path(path);
        let build_id = object::File::parse(&*data)
            .ok()
            .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec));
        if let (Some(id), Ok(bytes)) = (&build_id, fs::read(&cache)) {
            if let Some(index) = Self::decode(&bytes).filter(|i| &i.build_id == id && !id.is_empty()) {
                return Ok(index);
            }
        }
        let index = Self::build(path, &data)?;
        if !index.build_id.is_empty() {
            let tmp = cache.with_extension("exit-insns.tmp");
            if fs::write(&tmp, index.encode()).is_ok() {
                let _ = fs::rename(&tmp, &cache);
            }
        }
        Ok(index)
    }

    /// Where [`for_vmlinux`](Self::for_vmlinux) caches the index of `vmlinux`.
    pub fn cache_path(vmlinux: &Path) -> PathBuf {
        let mut name = vmlinux.file_name().unwrap_or_default().to_os_string();
        name.push(".exit-insns");
        vmlinux.with_file_name(name)
    }

    /// The cache file: magic, build id (length-prefixed), text range, entry count, then
    /// `(u64 address, u8 kind)` per entry, little-endian.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.build_id.len() + self.entries.len() * 9);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.build_id.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.build_id);
        out.extend_from_slice(&self.text.0.to_le_bytes());
        out.extend_from_slice(&self.text.1.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (addr, kind) in &self.entries {
            out.extend_from_slice(&addr.to_le_bytes());
            out.push(*kind as u8);
        }
        out
    }

    /// The inverse of `encode`; `None` for anything damaged (then the index is rebuilt).
    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return None;
        }
        let id_len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let build_id = r.take(id_len)?.to_vec();
        let text = (r.u64()?, r.u64()?);
        let n = usize::try_from(r.u64()?).ok()?;
        if r.0.len() != n.checked_mul(9)? {
            return None;
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = r.u64()?;
            entries.push((addr, ExitInsnKind::from_u8(r.take(1)?[0])?));
        }
        entries.windows(2).all(|w| w[0].0 < w[1].0).then_some(ExitInsnIndex { build_id, entries, text })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(code: &[u8]) -> Vec<Option<ExitInsnKind>> {
        let mut d = Decoder::with_ip(64, code, 0x1000, DecoderOptions::NONE);
        d.iter().map(|i| ExitInsnKind::of(&i)).collect()
    }

    #[test]
    fn classifies_exit_instructions() {
        use ExitInsnKind::*;
        // out dx,al; in al,0x71; hlt; rdmsr; cpuid; vmcall; mov cr3,rax; mov rax,dr7; mov rax,rbx; pause
        let code = [
            0xee, 0xe4, 0x71, 0xf4, 0x0f, 0x32, 0x0f, 0xa2, 0x0f, 0x01, 0xc1, 0x0f, 0x22, 0xd8, 0x0f, 0x21, 0xf8, 0x48,
            0x89, 0xd8, 0xf3, 0x90,
        ];
        assert_eq!(
            kinds(&code),
            vec![Some(PortIo), Some(PortIo), Some(Hlt), Some(Msr), Some(Cpuid), Some(Hypercall), Some(CrDr), Some(CrDr), None, Some(Pause)]
        );
    }

    #[test]
    fn cache_round_trips_and_rejects_damage() {
        let index = ExitInsnIndex {
            build_id: vec![1, 2, 3],
            entries: vec![(0x10, ExitInsnKind::PortIo), (0x20, ExitInsnKind::Hlt)],
            text: (0x10, 0x30),
        };
        let bytes = index.encode();
        assert_eq!(ExitInsnIndex::decode(&bytes), Some(index));
        for cut in 0..bytes.len() {
            assert_eq!(ExitInsnIndex::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad_kind = bytes.clone();
        *bad_kind.last_mut().unwrap() = 99;
        assert_eq!(ExitInsnIndex::decode(&bad_kind), None);
    }
}
