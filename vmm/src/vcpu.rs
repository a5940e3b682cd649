//! The vCPU loop: KVM_RUN, dispatch each exit, deliver IRQ0 through the PIC with
//! `KVM_INTERRUPT` when the guest can take it (otherwise ask for an interrupt window).

use crate::abi::stats::RunOutcome;
use crate::abi::{NIC_IRQ, PORT_DOORBELL};
use crate::bus::PortBus;
use crate::hypercall;
use crate::stats::ExitStats;
use kvm_bindings::kvm_interrupt;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote its exit status to port 0x501.
    GuestExit(u8),
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault { rip: u64 },
    /// HLT with interrupts off, or with no interrupt source that could wake it.
    HaltedForever { rip: u64 },
    /// KVM could not run or emulate the guest (internal error, failed entry, ...).
    KvmFailure(String),
}

impl Outcome {
    /// The kind of outcome, as `--stats-json` writes it.
    pub fn kind(&self) -> RunOutcome {
        match self {
            Outcome::GuestExit(_) => RunOutcome::GuestExit,
            Outcome::TripleFault { .. } => RunOutcome::TripleFault,
            Outcome::HaltedForever { .. } => RunOutcome::HaltedForever,
            Outcome::KvmFailure(_) => RunOutcome::KvmFailure,
        }
    }

    /// `guest-exit`, `triple-fault`, `halted-forever` or `kvm-failure`.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::GuestExit(0) => write!(f, "guest exited with status 0"),
            Outcome::GuestExit(s) => write!(f, "guest reported failure (exit status {s})"),
            Outcome::TripleFault { rip } => write!(f, "guest triple fault (KVM_EXIT_SHUTDOWN) at rip {rip:#x}"),
            Outcome::HaltedForever { rip } => {
                write!(f, "guest halted at rip {rip:#x} with no interrupt that could wake it")
            }
            Outcome::KvmFailure(s) => write!(f, "KVM could not run the guest: {s}"),
        }
    }
}

// kvm-ioctls 0.25 wraps no KVM_INTERRUPT (the user-space irqchip's injection ioctl), so
// it is declared here with vmm-sys-util's macros, the way kvm-ioctls declares its own.
vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// Queues `vector` for the next entry; the caller checked the window is open.
fn inject(vcpu: &VcpuFd, vector: u8) -> bool {
    let irq = kvm_interrupt { irq: u32::from(vector) };
    // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer, which is valid for
    // the call; the fd is a vCPU fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    ret == 0
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
}

enum Io {
    In(u16, *mut u8, usize),
    Out(u16, *mut u8, usize),
}

pub fn run_loop(mut vcpu: VcpuFd, mut bus: PortBus, mem: GuestMemoryMmap) -> (Outcome, ExitStats, PortBus) {
    let mut st = ExitStats::default();
    let outcome = loop {
        // IRQ0 from the PIT, then delivery through the PIC.
        if let Some(due) = bus.pit.irq_deadline() {
            let now = Instant::now();
            if now >= due && bus.pit.take_irq(now) {
                bus.pic.raise_irq(0);
            }
        }
        poll_nic(&mut bus);
        let pending = bus.pic.has_pending();
        {
            let run = vcpu.get_kvm_run();
            let can_inject = pending && run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
            run.request_interrupt_window = u8::from(pending && !can_inject);
            if can_inject {
                if let Some(vector) = bus.pic.acknowledge() {
                    if inject(&vcpu, vector) {
                        st.interrupts_injected += 1;
                    }
                }
            }
        }

        let io = match vcpu.run() {
            Ok(exit) => {
                st.total += 1;
                match exit {
                    VcpuExit::IoOut(port, data) => Io::Out(port, data.as_ptr() as *mut u8, data.len()),
                    VcpuExit::IoIn(port, data) => Io::In(port, data.as_mut_ptr(), data.len()),
                    VcpuExit::Hlt => {
                        st.hlt += 1;
                        if let Some(o) = on_halt(&mut vcpu, &mut bus) {
                            break o;
                        }
                        continue;
                    }
                    VcpuExit::IrqWindowOpen => {
                        st.irq_window += 1;
                        continue;
                    }
                    VcpuExit::MmioRead(_, data) => {
                        st.mmio += 1;
                        data.fill(0xff);
                        continue;
                    }
                    VcpuExit::MmioWrite(..) => {
                        st.mmio += 1;
                        continue;
                    }
                    VcpuExit::Shutdown => {
                        st.shutdown += 1;
                        break Outcome::TripleFault { rip: rip(&vcpu) };
                    }
                    VcpuExit::Intr => {
                        st.intr += 1;
                        continue;
                    }
                    VcpuExit::InternalError => {
                        st.other += 1;
                        break Outcome::KvmFailure(format!("KVM_EXIT_INTERNAL_ERROR at rip {:#x}", rip(&vcpu)));
                    }
                    VcpuExit::FailEntry(reason, _) => {
                        st.other += 1;
                        break Outcome::KvmFailure(format!("KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}"));
                    }
                    other => {
                        st.other += 1;
                        break Outcome::KvmFailure(format!("unexpected exit {other:?}"));
                    }
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                st.intr += 1;
                continue;
            }
            Err(e) => break Outcome::KvmFailure(format!("KVM_RUN: {e}")),
        };

        st.io += 1;
        // SAFETY: this exit is KVM_EXIT_IO (only IoIn/IoOut reach here), so `io` is the
        // member of kvm_run's exit union the kernel filled in; it is plain integers.
        let size = usize::from(unsafe { vcpu.get_kvm_run().__bindgen_anon_1.io.size });
        let size = if matches!(size, 1 | 2 | 4) { size } else { 1 };
        match io {
            Io::Out(port, ptr, len) => {
                st.by_port[usize::from(port)] += 1;
                // SAFETY: `ptr`/`len` are the data slice kvm-ioctls built for this IO exit,
                // inside the vCPU's kvm_run mapping, which lives as long as `vcpu`; nothing
                // writes it until the next KVM_RUN, after this slice's last use.
                let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
                if port == PORT_DOORBELL {
                    doorbell(&mut vcpu, &mut bus, &mem, &mut st, data);
                } else {
                    for chunk in data.chunks_exact(size) {
                        bus.write(port, chunk);
                    }
                }
            }
            Io::In(port, ptr, len) => {
                st.by_port[usize::from(port)] += 1;
                // SAFETY: as for IoOut: the exit's data slice in the kvm_run mapping, which
                // the kernel reads back at the next KVM_RUN, after this slice's last use;
                // this is the only reference to it.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                for chunk in data.chunks_exact_mut(size) {
                    bus.read(port, chunk);
                }
            }
        }
        if let Some(s) = bus.debug.exit_status {
            break Outcome::GuestExit(s);
        }
    };
    (outcome, st, bus)
}

/// The NIC: frames waiting on its backend go into the guest's ring, and its interrupt line
/// is level-triggered (a PCI INTx line, as the 8259 in level mode sees it): while the line
/// is high and IRQ 5 is neither requested nor in service, it is requested. So a line still
/// high after the guest's EOI (another packet in the ring) interrupts again, and no change
/// of level between two looks can be lost.
fn poll_nic(bus: &mut PortBus) {
    if let Some(nic) = bus.nic.as_mut() {
        nic.poll_rx();
        if nic.irq_level() && !bus.pic.is_requested_or_in_service(NIC_IRQ) {
            bus.pic.raise_irq(NIC_IRQ);
        }
    }
}

/// How often a halted guest's NIC is looked at for frames.
const NIC_POLL: Duration = Duration::from_micros(100);

/// The guest halted. It stays halted (the vCPU is not re-entered) until an interrupt it can
/// take is due: the next timer tick, or a frame for its NIC (polled every 100 µs). If
/// nothing could ever wake it, the run ends.
fn on_halt(vcpu: &mut VcpuFd, bus: &mut PortBus) -> Option<Outcome> {
    let if_flag = vcpu.get_kvm_run().if_flag != 0;
    if bus.pic.has_pending() && if_flag {
        return None;
    }
    let nic_wakes = if_flag && bus.nic.is_some() && !bus.pic.is_masked(NIC_IRQ);
    let timer_due = bus.pit.irq_deadline().filter(|_| if_flag && !bus.pic.is_masked(0));
    if !nic_wakes && timer_due.is_none() {
        return Some(Outcome::HaltedForever { rip: rip(vcpu) });
    }
    loop {
        let now = Instant::now();
        if timer_due.is_some_and(|due| now >= due) {
            return None;
        }
        if nic_wakes {
            poll_nic(bus);
            if bus.pic.has_pending() {
                return None;
            }
        }
        let until = match timer_due {
            Some(due) if nic_wakes => (due - now).min(NIC_POLL),
            Some(due) => due - now,
            None => NIC_POLL,
        };
        std::thread::sleep(until);
    }
}

/// The batched port-I/O hypercall: EAX (the OUT value) = count, RSI = queue address,
/// status back in RAX.
fn doorbell(vcpu: &mut VcpuFd, bus: &mut PortBus, mem: &GuestMemoryMmap, st: &mut ExitStats, data: &[u8]) {
    st.hypercalls += 1;
    let count = crate::devices::le_value(data);
    let Ok(mut regs) = vcpu.get_regs() else { return };
    let replayed = &mut st.replayed_by_port;
    let status = match hypercall::replay(mem, bus, regs.rsi, count, |p| replayed[usize::from(p)] += 1) {
        Ok(n) => {
            st.hypercall_entries += u64::from(n);
            0
        }
        Err(e) => {
            let code = e as u32;
            st.hypercall_errors[code as usize] += 1;
            code
        }
    };
    regs.rax = u64::from(status);
    let _ = vcpu.set_regs(&regs);
}
