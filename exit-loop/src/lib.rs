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
//! Code at guest-physical [`LOAD_ADDR`], in real mode with CS base 0 or (with [`Mode::Long`])
//! in 64-bit mode with identity paging: in both, linear address = RIP. In 64-bit mode the
//! tracer needs no CS base (0 there by definition), as with every 64-bit guest.
mod asm;
mod long_mode;

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use asm::Asm;
pub use asm::Mode;

pub const LOAD_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;
/// The port whose `in` pauses a [`ExitLoopGuest::paused`] guest. Its value is the number of
/// further `out`s the guest makes (the VMM answers M once, then 0).
pub const PAUSE_PORT: u16 = 0x99;

/// The assembled guest and the addresses of its exiting instructions.
#[derive(Debug, Clone)]
pub struct ExitLoopGuest {
    pub mode: Mode,
    pub code: Vec<u8>,
    pub out_rip: u64,
    pub in_rip: u64,
    /// The pausing `in eax, dx` (paused guests only, else 0).
    pub pause_rip: u64,
    pub hlt_rip: u64,
    /// `out`s after the pause (paused guests only).
    pub outs_after_pause: u32,
    /// Interleaved guests only (else 0): the first `out` of "function B" (that of "function
    /// A" is `out_rip`). Each `out` is followed by `inc dx` (1 byte in real mode, 3 in long
    /// mode), so the second of a pair is 2 (real) or 4 (long) bytes after the first.
    pub second_rip: u64,
}

impl ExitLoopGuest {
    /// [`ExitLoopGuest::new_in`] in real mode.
    pub fn new(outs: u32, ins: u32, out_port: u16, in_port: u16) -> ExitLoopGuest {
        ExitLoopGuest::new_in(Mode::Real, outs, ins, out_port, in_port)
    }

    /// [`ExitLoopGuest::interleaved_in`] in real mode.
    pub fn interleaved(rounds: u32, work: u32, port: u16) -> ExitLoopGuest {
        ExitLoopGuest::interleaved_in(Mode::Real, rounds, work, port)
    }

    /// [`ExitLoopGuest::sweep_in`] in real mode.
    pub fn sweep(ports: u32, first_port: u16) -> ExitLoopGuest {
        ExitLoopGuest::sweep_in(Mode::Real, ports, first_port)
    }

    /// [`ExitLoopGuest::paused_in`] in real mode.
    pub fn paused(before: u32, after: u32, out_port: u16) -> ExitLoopGuest {
        ExitLoopGuest::paused_in(Mode::Real, before, after, out_port)
    }

    /// Ends the code with `hlt`: a guest with only `out_rip` and `hlt_rip` set.
    fn finish(mut a: Asm, out_rip: u64) -> ExitLoopGuest {
        let hlt_rip = a.here();
        a.hlt();
        ExitLoopGuest { mode: a.mode(), code: a.code, out_rip, in_rip: 0, pause_rip: 0, hlt_rip, outs_after_pause: 0, second_rip: 0 }
    }

    /// N `out`s at one RIP, M `in`s at another, `hlt`.
    pub fn new_in(mode: Mode, outs: u32, ins: u32, out_port: u16, in_port: u16) -> ExitLoopGuest {
        let mut a = Asm::new(mode);
        let out_rip = emit_port_loop(&mut a, outs, out_port, 0xEE); // out dx, al
        let in_rip = emit_port_loop(&mut a, ins, in_port, 0xEC); // in al, dx
        ExitLoopGuest { in_rip, ..ExitLoopGuest::finish(a, out_rip) }
    }

    /// `rounds` times: "function A" writes ports P and P+1 back to back, the guest works for
    /// `work` iterations of `dec ebx; jnz` (2 emulated instructions each), "function B" writes
    /// P+2 and P+3, the guest works again; then `hlt`. 4 × `rounds` exits.
    /// `mov ecx, rounds; top: mov dx, P; out; inc dx; out; <work>; mov dx, P+2; out; inc dx;
    /// out; <work>; dec ecx; jnz top; hlt`, `<work>` = `mov ebx, work; inc ebx; w: dec ebx; jnz w`.
    pub fn interleaved_in(mode: Mode, rounds: u32, work: u32, port: u16) -> ExitLoopGuest {
        let mut a = Asm::new(mode);
        a.mov_ecx_imm(rounds);
        let top = a.code.len();
        let pair = |a: &mut Asm, p: u16| -> u64 {
            a.mov_dx_imm(p);
            let at = a.here();
            a.port_op(0xEE);
            a.inc_dx();
            a.port_op(0xEE);
            a.mov_ebx_imm(work);
            a.inc_ebx();
            let w = a.code.len();
            a.dec_ebx();
            a.jnz_to(w);
            at
        };
        let out_rip = pair(&mut a, port);
        let second_rip = pair(&mut a, port.wrapping_add(2));
        a.dec_ecx();
        a.jnz_to(top);
        ExitLoopGuest { second_rip, ..ExitLoopGuest::finish(a, out_rip) }
    }

    /// N `out`s to N successive ports from `first_port` (wrapping), one at a time, then `hlt`:
    /// N distinct exit keys, for measuring what reading the in-kernel maps costs per key.
    /// `mov ecx, N; mov dx, first; l: out dx, al; inc dx; dec ecx; jnz l; hlt`.
    pub fn sweep_in(mode: Mode, ports: u32, first_port: u16) -> ExitLoopGuest {
        let mut a = Asm::new(mode);
        a.mov_ecx_imm(ports);
        a.mov_dx_imm(first_port);
        let l = a.code.len();
        let out_rip = a.here();
        a.port_op(0xEE);
        a.inc_dx();
        a.dec_ecx();
        a.jnz_to(l);
        ExitLoopGuest::finish(a, out_rip)
    }

    /// `mov ecx, N; again: mov dx, port; test ecx, ecx; jz pause; l: out dx, al; dec ecx; jnz l;
    /// pause: mov dx, PAUSE_PORT; in eax, dx; mov ecx, eax; test ecx, ecx; jnz again; hlt`.
    pub fn paused_in(mode: Mode, before: u32, after: u32, out_port: u16) -> ExitLoopGuest {
        let mut a = Asm::new(mode);
        a.mov_ecx_imm(before);
        let again = a.code.len();
        let out_rip = emit_loop_body(&mut a, out_port, 0xEE);
        a.mov_dx_imm(PAUSE_PORT);
        let pause_rip = a.here();
        a.in_eax_dx();
        a.mov_ecx_eax();
        a.test_ecx_ecx();
        a.jnz_to(again);
        ExitLoopGuest { pause_rip, outs_after_pause: after, ..ExitLoopGuest::finish(a, out_rip) }
    }
}

/// `mov ecx, n; <body>`. Returns the guest address of `<op>`.
fn emit_port_loop(a: &mut Asm, n: u32, port: u16, op: u8) -> u64 {
    a.mov_ecx_imm(n);
    emit_loop_body(a, port, op)
}

/// `mov dx, port; test ecx, ecx; jz done; l: <op>; dec ecx; jnz l; done:`.
fn emit_loop_body(a: &mut Asm, port: u16, op: u8) -> u64 {
    a.mov_dx_imm(port);
    a.test_ecx_ecx();
    let done = a.jz_forward();
    let l = a.code.len();
    let op_at = a.here();
    a.port_op(op);
    a.dec_ecx();
    a.jnz_to(l);
    a.land(done);
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
    // The long-mode tables sit above the code.
    assert!(LOAD_ADDR + (guest.code.len() as u64) <= long_mode::GDT_ADDR, "guest code too long");
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
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    match guest.mode {
        Mode::Real => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
        }
        Mode::Long => {
            long_mode::write_tables(&mem)?;
            sregs = long_mode::sregs(sregs);
        }
    }
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    let mut regs = vcpu.get_regs().context("KVM_GET_REGS")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(g: &ExitLoopGuest) -> String {
        g.code.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Real mode is byte for byte what it was before long mode existed (the recorded RIPs of
    /// every existing test and benchmark depend on it).
    #[test]
    fn real_mode_code_is_unchanged() {
        let g = ExitLoopGuest::new(3001, 1207, 0x80, 0x71);
        assert_eq!(hex(&g), "66b9b90b0000ba80006685c97405ee664975fb66b9b7040000ba71006685c97405ec664975fbf4");
        assert_eq!((g.out_rip, g.in_rip, g.hlt_rip), (0x100e, 0x1021, 0x1026));
        let g = ExitLoopGuest::interleaved(5, 7, 0x80);
        assert_eq!(hex(&g), "66b905000000ba8000ee42ee66bb070000006643664b75fcba8200ee42ee66bb070000006643664b75fc664975d8f4");
        assert_eq!((g.out_rip, g.second_rip, g.hlt_rip), (0x1009, 0x101b, 0x102e));
        let g = ExitLoopGuest::sweep(300, 0x10);
        assert_eq!(hex(&g), "66b92c010000ba1000ee42664975faf4");
        assert_eq!((g.out_rip, g.hlt_rip), (0x1009, 0x100f));
        let g = ExitLoopGuest::paused(2500, 1700, 0x80);
        assert_eq!(hex(&g), "66b9c4090000ba80006685c97405ee664975fbba990066ed6689c16685c975e6f4");
        assert_eq!((g.out_rip, g.pause_rip, g.hlt_rip), (0x100e, 0x1016, 0x1020));
    }

    /// 64-bit encodings: no 0x40-0x4f byte where an opcode starts (they are REX prefixes
    /// there), 0x66 only on the 16-bit `dx` operations.
    #[test]
    fn long_mode_code_uses_64_bit_encodings() {
        let g = ExitLoopGuest::new_in(Mode::Long, 3001, 1207, 0x80, 0x71);
        // mov ecx, 3001; mov dx, 0x80; test ecx, ecx; jz +6; l: out dx, al; dec ecx; jnz l; ...
        assert_eq!(hex(&g), "b9b90b000066ba800085c97405eeffc975fbb9b704000066ba710085c97405ecffc975fbf4");
        assert_eq!((g.out_rip, g.in_rip, g.hlt_rip), (0x100d, 0x101f, 0x1024));
        assert_eq!(g.code[(g.out_rip - LOAD_ADDR) as usize], 0xEE);
        let g = ExitLoopGuest::paused_in(Mode::Long, 2500, 1700, 0x80);
        assert_eq!(hex(&g), "b9c409000066ba800085c97405eeffc975fb66ba9900ed89c185c975e8f4");
        assert_eq!(g.code[(g.pause_rip - LOAD_ADDR) as usize], 0xED);
        let g = ExitLoopGuest::interleaved_in(Mode::Long, 5, 7, 0x80);
        // out dx, al; inc dx (66 FF C2); out dx, al: the pair's second `out` is 4 bytes on.
        for rip in [g.out_rip, g.out_rip + 4, g.second_rip, g.second_rip + 4] {
            assert_eq!(g.code[(rip - LOAD_ADDR) as usize], 0xEE, "out at {rip:#x}: {}", hex(&g));
        }
    }

    fn run_both(make: impl Fn(Mode) -> ExitLoopGuest) -> [ExitLoopStats; 2] {
        [Mode::Real, Mode::Long].map(|m| run(&make(m), Options::default()).unwrap_or_else(|e| panic!("{m:?}: {e:#}")))
    }

    /// Runs every guest in both modes on /dev/kvm (needs it: fails without) and counts exits.
    #[test]
    fn both_modes_make_exactly_the_same_exits() {
        for st in run_both(|m| ExitLoopGuest::new_in(m, 1000, 17, 0x80, 0x71)) {
            assert_eq!((st.outs, st.ins, st.exits), (1000, 17, 1018), "{st:?}");
        }
        for st in run_both(|m| ExitLoopGuest::new_in(m, 0, 0, 0x80, 0x71)) {
            assert_eq!(st.exits, 1, "only the hlt: {st:?}");
        }
        for st in run_both(|m| ExitLoopGuest::sweep_in(m, 300, 0x10)) {
            assert_eq!((st.outs, st.exits), (300, 301), "{st:?}");
        }
        for st in run_both(|m| ExitLoopGuest::interleaved_in(m, 20, 3, 0x80)) {
            assert_eq!((st.outs, st.exits), (80, 81), "{st:?}");
        }
    }
}
