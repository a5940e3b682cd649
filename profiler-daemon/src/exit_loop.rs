//! A calibration guest with exactly known exits: N `out` at one RIP, M `in` at another, then
//! `hlt`. It is the exact-count test guest of the test suite and the bare `KVM_RUN` loop of the
//! overhead benchmark (`kvm-exit-loop` binary).
//!
//! Real-mode code at guest-physical [`LOAD_ADDR`], CS base 0, so linear address = RIP.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub const LOAD_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;

/// The assembled guest and the addresses of its two exiting instructions.
pub struct ExitLoopGuest {
    pub code: Vec<u8>,
    pub out_rip: u64,
    pub in_rip: u64,
    pub hlt_rip: u64,
}

impl ExitLoopGuest {
    pub fn new(outs: u32, ins: u32, out_port: u16, in_port: u16) -> ExitLoopGuest {
        let mut c = Vec::new();
        let out_rip = emit_port_loop(&mut c, outs, out_port, 0xEE); // out dx, al
        let in_rip = emit_port_loop(&mut c, ins, in_port, 0xEC); // in al, dx
        let hlt_rip = LOAD_ADDR + c.len() as u64;
        c.push(0xF4); // hlt
        ExitLoopGuest { code: c, out_rip, in_rip, hlt_rip }
    }
}

/// `mov dx, port; mov ecx, n; test ecx, ecx; jz done; l: <op>; dec ecx; jnz l; done:`.
/// Returns the linear address of `<op>`.
fn emit_port_loop(c: &mut Vec<u8>, n: u32, port: u16, op: u8) -> u64 {
    c.push(0xBA); // mov dx, imm16
    c.extend_from_slice(&port.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xB9]); // mov ecx, imm32
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[0x66, 0x85, 0xC9]); // test ecx, ecx
    c.extend_from_slice(&[0x74, 0x05]); // jz +5: over the 5-byte loop body
    let op_at = LOAD_ADDR + c.len() as u64;
    c.push(op);
    c.extend_from_slice(&[0x66, 0x49]); // dec ecx
    c.extend_from_slice(&[0x75, 0xFB]); // jnz -5: back to op
    op_at
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ExitLoopStats {
    pub outs: u64,
    pub ins: u64,
    pub exits: u64,
    pub elapsed_ns: u64,
    pub ns_per_exit: f64,
}

/// Runs the guest to its `hlt` and counts the exits the VMM saw.
pub fn run(guest: &ExitLoopGuest) -> Result<ExitLoopStats> {
    let kvm = Kvm::new().context("cannot open /dev/kvm (is KVM available, and are you root?)")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).context("guest memory")?;
    mem.write_slice(&guest.code, GuestAddress(LOAD_ADDR)).context("loading guest code")?;
    let host = mem.get_host_address(GuestAddress(0)).context("guest memory address")?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is backed by `mem`, which outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = LOAD_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;

    let mut st = ExitLoopStats::default();
    let t0 = Instant::now();
    loop {
        let exit = vcpu.run().context("KVM_RUN")?;
        st.exits += 1;
        match exit {
            VcpuExit::IoOut(..) => st.outs += 1,
            VcpuExit::IoIn(_, data) => {
                data.fill(0xff);
                st.ins += 1
            }
            VcpuExit::Hlt => break,
            other => bail!("unexpected exit from the calibration guest: {other:?}"),
        }
    }
    st.elapsed_ns = t0.elapsed().as_nanos() as u64;
    st.ns_per_exit = st.elapsed_ns as f64 / st.exits.max(1) as f64;
    Ok(st)
}
