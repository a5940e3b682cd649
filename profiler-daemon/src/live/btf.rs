//! Struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Hand-written, on purpose and small: aya-obj parses BTF but keeps its type lookups
//! crate-private, and `btf-rs` is LGPL (this project is MIT/Apache). We need only "offset of
//! member M of struct S", so this reads the type section, skips every other kind by its
//! documented size (Documentation/bpf/btf.rst) and resolves struct members.
use std::path::Path;

use anyhow::{bail, Context, Result};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset (bitfield size stripped).
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// `size_or_type`: a size for structs/ints, a type id for typedefs/pointers/qualifiers.
    size_or_type: u32,
    members: Vec<Member>,
    /// For arrays: (element type, number of elements).
    array: Option<(u32, u32)>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("BTF is truncated")?;
    Ok(u32::from_le_bytes(s.try_into().unwrap()))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| format!("cannot read the kernel's BTF at {}", path.display()))?;
        Btf::parse(&data).with_context(|| format!("cannot parse BTF {}", path.display()))
    }

    pub fn parse(b: &[u8]) -> Result<Btf> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let types_bytes = b.get(hdr_len + type_off..hdr_len + type_off + type_len).context("BTF type section out of bounds")?;
        let strings = b.get(hdr_len + str_off..hdr_len + str_off + str_len).context("BTF string section out of bounds")?.to_vec();
        // Type id 0 is `void`.
        let mut types = vec![Type { name: 0, kind: 0, size_or_type: 0, members: Vec::new(), array: None }];
        let t = types_bytes;
        let mut off = 0;
        while off < t.len() {
            let name = u32_at(t, off)?;
            let info = u32_at(t, off + 4)?;
            let size_or_type = u32_at(t, off + 8)?;
            off += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 != 0;
            let mut ty = Type { name, kind, size_or_type, members: Vec::new(), array: None };
            off += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => {
                    ty.array = Some((u32_at(t, off)?, u32_at(t, off + 8)?));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + 12 * i;
                        let raw = u32_at(t, m + 8)?;
                        let bit_offset = if kflag { raw & 0x00ff_ffff } else { raw };
                        ty.members.push(Member { name: u32_at(t, m)?, ty: u32_at(t, m + 4)?, bit_offset });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                k if k <= KIND_TYPE_TAG => 0,
                k => bail!("unknown BTF kind {k}"),
            };
            types.push(ty);
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|c| *c == 0).unwrap_or(s.len())]
    }

    fn struct_id(&self, name: &str) -> Result<u32> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == name.as_bytes() && !t.members.is_empty())
            .map(|i| i as u32)
            .with_context(|| format!("the kernel's BTF has no struct {name}"))
    }

    /// The id of function `name` (a kfunc, say), if the kernel's BTF has it.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.types.iter().position(|t| t.kind == KIND_FUNC && self.name(t.name) == name.as_bytes()).map(|i| i as u32)
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize).context("BTF type id out of range")?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Ok(t),
            }
        }
        bail!("BTF typedef chain too long")
    }

    /// Byte offset of `member` in struct `name`, and the member's type id.
    pub fn member(&self, name: &str, member: &str) -> Result<(u32, u32)> {
        let t = &self.types[self.struct_id(name)? as usize];
        let m = t
            .members
            .iter()
            .find(|m| self.name(m.name) == member.as_bytes())
            .with_context(|| format!("struct {name} has no member {member} in the kernel's BTF"))?;
        if m.bit_offset % 8 != 0 {
            bail!("{name}.{member} is a bitfield");
        }
        Ok((m.bit_offset / 8, m.ty))
    }

    /// Size of a type (arrays: element size × count).
    pub fn size_of(&self, id: u32) -> Result<u64> {
        let t = self.resolve(id)?;
        match t.array {
            Some((elem, n)) => Ok(self.size_of(elem)? * n as u64),
            None if t.kind == 2 => Ok(8), // pointer
            None => Ok(t.size_or_type as u64),
        }
    }

    /// For an array type: (element size, element count).
    pub fn array_of(&self, id: u32) -> Result<(u64, u32)> {
        let t = self.resolve(id)?;
        let (elem, n) = t.array.context("not an array")?;
        Ok((self.size_of(elem)?, n))
    }
}

/// The `profiler_common::VCPU_GLOBALS` offsets in this kernel: `(global name, byte offset in
/// struct kvm_vcpu)`. Each field is checked to be 8 bytes wide (an array of 8-byte elements
/// long enough for the index, for `regs`), so a kernel whose layout changed fails here with a
/// clear message instead of the programs reading the wrong bytes.
pub fn vcpu_offsets(btf: &Btf) -> Result<Vec<(&'static str, u32)>> {
    let (arch, arch_ty) = btf.member("kvm_vcpu", "arch")?;
    let arch_name = btf.resolve(arch_ty)?;
    if arch_name.kind != KIND_STRUCT || btf.name(arch_name.name) != b"kvm_vcpu_arch" {
        bail!("kvm_vcpu.arch is not a struct kvm_vcpu_arch in the kernel's BTF");
    }
    let mut out = Vec::new();
    let (run, run_ty) = btf.member("kvm_vcpu", "run")?;
    if btf.size_of(run_ty)? != 8 {
        bail!("kvm_vcpu.run is not a pointer in the kernel's BTF");
    }
    out.push((profiler_common::VCPU_RUN, run));
    // Optional (kernels before 6.10 lack it): a bool the programs read as one byte.
    let wants_to_run = match btf.member("kvm_vcpu", "wants_to_run") {
        Ok((off, ty)) if btf.size_of(ty)? == 1 => off,
        _ => profiler_common::NO_OFFSET,
    };
    out.push((profiler_common::VCPU_WANTS_TO_RUN, wants_to_run));
    for (global, member, index) in profiler_common::VCPU_GLOBALS {
        let (off, ty) = btf.member("kvm_vcpu_arch", member)?;
        let width = if *index > 0 || btf.resolve(ty)?.array.is_some() {
            let (elem, n) = btf.array_of(ty)?;
            if *index >= n {
                bail!("kvm_vcpu_arch.{member} has {n} elements, need index {index}");
            }
            elem
        } else {
            btf.size_of(ty)?
        };
        // regs_avail is a u32; everything else must be a u64.
        let want = if *member == "regs_avail" { 4 } else { 8 };
        if width != want {
            bail!("kvm_vcpu_arch.{member} is {width} bytes in this kernel, expected {want}");
        }
        out.push((*global, arch + off + 8 * index));
    }
    Ok(out)
}

impl Btf {
    /// Byte offset of a nested member (`["fetch", "ptr"]`) in struct `name`, and its type id.
    pub fn member_path(&self, name: &str, path: &[&str]) -> Result<(u32, u32)> {
        let mut off = 0;
        let mut strukt = name.to_string();
        let mut ty = 0;
        for (i, m) in path.iter().enumerate() {
            let (o, t) = self.member(&strukt, m)?;
            off += o;
            ty = t;
            if i + 1 < path.len() {
                let inner = self.resolve(t)?;
                if inner.kind != KIND_STRUCT {
                    bail!("{strukt}.{m} is not a struct in the kernel's BTF");
                }
                strukt = String::from_utf8_lossy(self.name(inner.name)).into_owned();
            }
        }
        Ok((off, ty))
    }
}

/// The `profiler_common::EMULATOR_GLOBALS` offsets in `struct x86_emulate_ctxt`, each checked
/// for its expected width, plus `profiler_common::VCPU_CS_BASE` (PVM's CS segment cache, or
/// `NO_CS_BASE` when this kernel has no `struct vcpu_pvm`).
pub fn emulator_offsets(btf: &Btf) -> Result<Vec<(&'static str, u32)>> {
    let mut out = Vec::new();
    for (global, path, want) in profiler_common::EMULATOR_GLOBALS {
        let (off, ty) = btf.member_path("x86_emulate_ctxt", path)?;
        let width = btf.size_of(ty)?;
        if width != *want {
            bail!("x86_emulate_ctxt.{} is {width} bytes in this kernel, expected {want}", path.join("."));
        }
        out.push((*global, off));
    }
    out.push((profiler_common::VCPU_CS_BASE, pvm_cs_base(btf).unwrap_or(profiler_common::NO_CS_BASE)));
    Ok(out)
}

/// `offsetof(struct vcpu_pvm, seg[VCPU_SREG_CS].base)`, valid as an offset from the
/// `struct kvm_vcpu *` only because `vcpu` is vcpu_pvm's first member (checked).
fn pvm_cs_base(btf: &Btf) -> Result<u32> {
    const VCPU_SREG_CS: u32 = 1;
    let (vcpu, _) = btf.member("vcpu_pvm", "vcpu")?;
    if vcpu != 0 {
        bail!("vcpu_pvm.vcpu is not at offset 0");
    }
    let (seg, seg_ty) = btf.member("vcpu_pvm", "seg")?;
    let (elem, n) = btf.array_of(seg_ty)?;
    let (base, base_ty) = btf.member("kvm_segment", "base")?;
    if n <= VCPU_SREG_CS || btf.size_of(base_ty)? != 8 {
        bail!("vcpu_pvm.seg is not the expected kvm_segment array");
    }
    Ok(seg + VCPU_SREG_CS * elem as u32 + base)
}
