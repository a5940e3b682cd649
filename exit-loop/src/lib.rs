//! Calibration guests with exactly known exits, for kvmprof's tests and benchmarks.
//!
//! - [`ExitLoopGuest::new`]: N `out` at one RIP, M `in` at another, then `hlt`. The exact-count
//!   test guest, and the bare `KVM_RUN` loop of the overhead benchmark.
//! - [`ExitLoopGuest::paused`]: N `out`, then a pause (an `in` from [`PAUSE_PORT`] that the VMM
//!   answers only when told to go on), then M more `out` **at the same RIP**, then `hlt`: a
//!   snapshot taken during the pause must show exactly N exits there, the end N+M.
//! - [`ExitLoopGuest::interleaved`]: rounds of two `out`s in one place ("function A"), guest
//!   work, two `out`s in another ("function B"), guest work: runs of successive exits that
//!   must not merge across the work (`kvmprof advise`).
//! - [`Options::in_delay`]: the VMM takes that long to answer each `in`, so exit times are a
//!   known mix (fast `out`, slow `in`) for checking latency percentiles.
//! - [`Options::outs_per_second`]: the VMM paces the `out`s to a known rate (it resumes the
//!   guest after the i-th `out` no earlier than i/R seconds after the start), for checking
//!   live rates (`kvmprof top`).
//!
//! Real-mode code at guest-physical [`LOAD_ADDR`], CS base 0, so linear address = RIP.
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub const LOAD_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;
/// The port whose `in` pauses a [`ExitLoopGuest::paused`] guest. Its value is the number of
/// further `out`s the guest makes (the VMM answers M once, then 0).
pub const PAUSE_PORT: u16 = 0x99;

/// The assembled guest and the addresses of its exiting instructions.
#[derive(Debug, Clone)]
pub struct ExitLoopGuest {
    pub code: Vec<u8>,
    pub out_rip: u64,
    pub in_rip: u64,
    /// The pausing `in eax, dx` (paused guests only, else 0).
    pub pause_rip: u64,
    pub hlt_rip: u64,
    /// `out`s after the pause (paused guests only).
    pub outs_after_pause: u32,
    /// Interleaved guests only (else 0): the first `out` of "function B" (that of "function
    /// A" is `out_rip`). Each `out` is followed by `inc dx` (1 byte), so the second of a pair
    /// is 2 bytes after the first.
    pub second_rip: u64,
}

impl ExitLoopGuest {
    pub fn new(outs: u32, ins: u32, out_port: u16, in_port: u16) -> ExitLoopGuest {
        let mut c = Vec::new();
        let out_rip = emit_port_loop(&mut c, outs, out_port, 0xEE); // out dx, al
        let in_rip = emit_port_loop(&mut c, ins, in_port, 0xEC); // in al, dx
        let hlt_rip = LOAD_ADDR + c.len() as u64;
        c.push(0xF4); // hlt
        ExitLoopGuest { code: c, out_rip, in_rip, pause_rip: 0, hlt_rip, outs_after_pause: 0, second_rip: 0 }
    }

    /// `rounds` times: "function A" writes ports P and P+1 back to back, the guest works for
    /// `work` iterations of `dec ebx; jnz` (2 emulated instructions each), "function B" writes
    /// P+2 and P+3, the guest works again; then `hlt`. 4 × `rounds` exits.
    /// `mov ecx, rounds; top: mov dx, P; out; inc dx; out; <work>; mov dx, P+2; out; inc dx;
    /// out; <work>; dec ecx; jnz top; hlt`, `<work>` = `mov ebx, work; inc ebx; w: dec ebx; jnz w`.
    pub fn interleaved(rounds: u32, work: u32, port: u16) -> ExitLoopGuest {
        let mut c = vec![0x66, 0xB9]; // mov ecx, imm32
        c.extend_from_slice(&rounds.to_le_bytes());
        let top = c.len();
        let pair = |c: &mut Vec<u8>, p: u16| -> u64 {
            c.push(0xBA); // mov dx, imm16
            c.extend_from_slice(&p.to_le_bytes());
            let at = LOAD_ADDR + c.len() as u64;
            c.extend_from_slice(&[0xEE, 0x42, 0xEE]); // out dx, al; inc dx; out dx, al
            c.extend_from_slice(&[0x66, 0xBB]); // mov ebx, imm32
            c.extend_from_slice(&work.to_le_bytes());
            c.extend_from_slice(&[0x66, 0x43]); // inc ebx
            c.extend_from_slice(&[0x66, 0x4B, 0x75, 0xFC]); // w: dec ebx; jnz w
            at
        };
        let out_rip = pair(&mut c, port);
        let second_rip = pair(&mut c, port.wrapping_add(2));
        c.extend_from_slice(&[0x66, 0x49]); // dec ecx
        let back = top as i64 - (c.len() as i64 + 2);
        c.extend_from_slice(&[0x75, i8::try_from(back).expect("short jump") as u8]); // jnz top
        let hlt_rip = LOAD_ADDR + c.len() as u64;
        c.push(0xF4);
        ExitLoopGuest { code: c, out_rip, in_rip: 0, pause_rip: 0, hlt_rip, outs_after_pause: 0, second_rip }
    }

    /// N `out`s to N successive ports from `first_port` (wrapping), one at a time, then `hlt`:
    /// N distinct exit keys, for measuring what reading the in-kernel maps costs per key.
    /// `mov ecx, N; mov dx, first; l: out dx, al; inc dx; dec ecx; jnz l; hlt`.
    pub fn sweep(ports: u32, first_port: u16) -> ExitLoopGuest {
        let mut c = vec![0x66, 0xB9]; // mov ecx, imm32
        c.extend_from_slice(&ports.to_le_bytes());
        c.push(0xBA); // mov dx, imm16
        c.extend_from_slice(&first_port.to_le_bytes());
        let out_rip = LOAD_ADDR + c.len() as u64;
        c.push(0xEE); // out dx, al
        c.push(0x42); // inc dx
        c.extend_from_slice(&[0x66, 0x49]); // dec ecx
        c.extend_from_slice(&[0x75, 0xFA]); // jnz -6: back to out
        let hlt_rip = LOAD_ADDR + c.len() as u64;
        c.push(0xF4);
        ExitLoopGuest { code: c, out_rip, in_rip: 0, pause_rip: 0, hlt_rip, outs_after_pause: 0, second_rip: 0 }
    }

    /// `mov ecx, N; again: mov dx, port; test ecx, ecx; jz pause; l: out dx, al; dec ecx; jnz l;
    /// pause: mov dx, PAUSE_PORT; in eax, dx; mov ecx, eax; test ecx, ecx; jnz again; hlt`.
    pub fn paused(before: u32, after: u32, out_port: u16) -> ExitLoopGuest {
        let mut c = vec![0x66, 0xB9]; // mov ecx, imm32
        c.extend_from_slice(&before.to_le_bytes());
        let again = c.len();
        let out_rip = emit_loop_body(&mut c, out_port, 0xEE);
        c.push(0xBA); // mov dx, imm16
        c.extend_from_slice(&PAUSE_PORT.to_le_bytes());
        let pause_rip = LOAD_ADDR + c.len() as u64;
        c.extend_from_slice(&[0x66, 0xED]); // in eax, dx
        c.extend_from_slice(&[0x66, 0x89, 0xC1]); // mov ecx, eax
        c.extend_from_slice(&[0x66, 0x85, 0xC9]); // test ecx, ecx
        let back = again as i64 - (c.len() as i64 + 2);
        c.extend_from_slice(&[0x75, i8::try_from(back).expect("short jump") as u8]); // jnz again
        let hlt_rip = LOAD_ADDR + c.len() as u64;
        c.push(0xF4);
        ExitLoopGuest { code: c, out_rip, in_rip: 0, pause_rip, hlt_rip, outs_after_pause: after, second_rip: 0 }
    }
}

/// `mov dx, port; mov ecx, n; <body>`. Returns the linear address of `<op>`.
fn emit_port_loop(c: &mut Vec<u8>, n: u32, port: u16, op: u8) -> u64 {
    c.extend_from_slice(&[0x66, 0xB9]); // mov ecx, imm32
    c.extend_from_slice(&n.to_le_bytes());
    emit_loop_body(c, port, op)
}

/// `mov dx, port; test ecx, ecx; jz done; l: <op>; dec ecx; jnz l; done:`.
fn emit_loop_body(c: &mut Vec<u8>, port: u16, op: u8) -> u64 {
    c.push(0xBA); // mov dx, imm16
    c.extend_from_slice(&port.to_le_bytes());
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
    pub pauses: u64,
    pub exits: u64,
    pub elapsed_ns: u64,
    pub ns_per_exit: f64,
}

/// How the VMM treats the guest.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Answer each `in` (not the pause) only after this long, busy-waiting: a known slow exit.
    pub in_delay: Duration,
    /// Before the first `KVM_RUN`, print `ready` on stdout and wait for a line on stdin (so a
    /// tracer can attach to the created VM before the guest's first instruction).
    pub wait_before_start: bool,
    /// Pace the `out`s to this many per second: after the i-th `out` the VMM sleeps until
    /// `start + i / R` before resuming the guest. Absolute deadlines, so sleep overshoot does
    /// not accumulate and the long-run rate is exactly R (while the guest can keep up).
    pub outs_per_second: Option<f64>,
}

/// Waits for one line on stdin after saying `what` on stdout: the pause protocol.
fn handshake(what: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what}").and_then(|_| out.flush()).context("writing to stdout")?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).context("reading stdin")? == 0 {
        bail!("stdin closed while {what}");
    }
    Ok(())
}

/// Sleeps until `t0 + n / rate` (not at all if that is past).
fn pace(t0: Instant, n: u64, rate: f64) {
    let due = t0 + Duration::from_secs_f64(n as f64 / rate);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Runs the guest to its `hlt` and counts the exits the VMM saw.
pub fn run(guest: &ExitLoopGuest, opts: Options) -> Result<ExitLoopStats> {
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
    if opts.wait_before_start {
        handshake("ready")?;
    }

    let mut st = ExitLoopStats::default();
    let mut resumed = false;
    let t0 = Instant::now();
    loop {
        let exit = vcpu.run().context("KVM_RUN")?;
        st.exits += 1;
        match exit {
            VcpuExit::IoOut(..) => {
                st.outs += 1;
                if let Some(rate) = opts.outs_per_second {
                    pace(t0, st.outs, rate);
                }
            }
            VcpuExit::IoIn(port, data) if port == PAUSE_PORT && guest.pause_rip != 0 => {
                st.pauses += 1;
                let more = if resumed { 0 } else { guest.outs_after_pause };
                if !resumed {
                    handshake("paused")?;
                    resumed = true;
                }
                let bytes = more.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&bytes[..n]);
            }
            VcpuExit::IoIn(_, data) => {
                let until = Instant::now() + opts.in_delay;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
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
