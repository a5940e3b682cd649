//! The per-thread state machine that turns KVM tracepoint events into exits: run by the eBPF
//! programs live and by `kvmprof import` over recorded text, so both aggregate alike.
use crate::runs::RunState;
use crate::{detail, isa, kvm_exit, ExitKey, ExitRecord, NO_VCPU};

/// An exit that has begun and not yet been charged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingExit {
    pub key: ExitKey,
    pub start_ns: u64,
    /// When the thread re-entered the guest (0 = not seen yet).
    pub end_ns: u64,
    pub active: u8,
    /// The emulated exit has reached user space (`kvm_userspace_exit` seen).
    pub exited: u8,
    /// The caller of this exit has been looked up (see [`ThreadState::take_caller_lookup`]).
    pub caller_done: u8,
    /// The completion of this exit's MMIO read (`kvm_mmio` READ after the re-entry) has been
    /// seen: a further identical access is a new exit (the same instruction in a loop), not
    /// this one's completion.
    pub completed: u8,
    pub _pad: [u8; 4],
}

/// Per vCPU-thread state. Events of one thread arrive in order, so no locking is needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// Linear address of the last instruction the emulator started on this thread.
    pub last_rip: u64,
    pub pending: PendingExit,
    /// Thread name and process, taken when the state is created, so a report can name vCPU
    /// threads (`vcpu0`, QEMU's `CPU 0/KVM`) even after the VMM has exited.
    pub comm: [u8; 16],
    pub tgid: u32,
    /// 1 when this state is driven by the live emulated-source programs, which get no
    /// per-instruction event (see [`ThreadState::on_live_access`]): an exit then cannot be
    /// ended by "the next instruction started", which changes how [`ThreadState::take_pending`]
    /// ends an exit that never reached user space. 0 for the hw source and the importer.
    pub no_insn_events: u8,
    /// 1 from a KVM_RUN return handled at `kvm_fpu` unload until the next re-entry, so that
    /// `kvm_userspace_exit` (attached only while a vCPU is not known yet) does not handle the
    /// same return a second time ([`ThreadState::take_return_handled`]).
    pub return_handled: u8,
    pub _pad: [u8; 2],
    /// The thread's `struct kvm_vcpu *` (kernel address), as last seen by the raw tracepoint
    /// on `kvm_emulate_insn` / `kvm_exit`: the guest registers are read from it at each exit.
    pub vcpu_ptr: u64,
    /// `vcpu->arch.emulate_ctxt` and `vcpu->run` of `vcpu_ptr` (0 = not read yet). Both are
    /// allocated with the vcpu and never change, so the programs read them once per vcpu
    /// instead of once per exit.
    pub ctxt_ptr: u64,
    pub run_ptr: u64,
    /// The run of successive I/O exits this thread is in ([`crate::runs`]).
    pub run: RunState,
    /// The key this thread's last exit was charged to and its `EXIT_STATS` index
    /// (`maps::EXIT_INDEX`), valid when `stats_valid` is 1: the next exit of the same key (a
    /// loop's port, a string I/O's 256 writes) is charged without the hash lookup (~110 ns).
    /// The index of a key never changes while the key exists (only the daemon frees it, for a
    /// process that has ended, whose threads are gone).
    pub stats_key: ExitKey,
    pub stats_index: u32,
    pub stats_valid: u32,
}

/// A `THREAD_SLOTS` entry (see `maps::THREAD_SLOTS`): the state of thread `tid`, 0 = free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSlot {
    pub tid: u32,
    pub _pad: u32,
    pub state: ThreadState,
}

/// Who ran the event: the VMM process and its vCPU thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thread {
    pub tgid: u32,
    pub tid: u32,
}

impl ThreadState {
    /// Charges the pending exit, ending it at its recorded re-entry or else at `now`.
    ///
    /// Live emulated source (`no_insn_events`): an access KVM handled in the kernel (no
    /// `kvm_userspace_exit`, so no re-entry either) has no observable end there: the next event
    /// on the thread is the next exit, possibly after a long stretch of guest execution, which
    /// must not be charged to the access. Such an exit is counted with 0 ns (its time is a
    /// lower bound, not a measurement). With per-instruction events (the importer) it ends
    /// when the next instruction starts, as before.
    pub fn take_pending(&mut self, now: u64) -> Option<ExitRecord> {
        if self.pending.active == 0 {
            return None;
        }
        let p = self.pending;
        self.pending = PendingExit::default();
        let end = if p.end_ns != 0 {
            p.end_ns
        } else if self.no_insn_events != 0 && p.exited == 0 {
            p.start_ns
        } else {
            now
        };
        Some(ExitRecord { key: p.key, start_ns: p.start_ns, duration_ns: end.saturating_sub(p.start_ns) })
    }

    fn begin(&mut self, now: u64, key: ExitKey, exited: bool) {
        self.pending = PendingExit {
            key,
            start_ns: now,
            end_ns: 0,
            active: 1,
            exited: exited as u8,
            caller_done: 0,
            completed: 0,
            _pad: [0; 4],
        };
    }

    // ---- hw source: kvm_exit / kvm_entry ----

    /// `kvm:kvm_exit`. An exit still pending (its entry was lost) is charged up to now.
    pub fn on_hw_exit(&mut self, now: u64, t: Thread, vcpu: u32, isa: u8, reason: u32, rip: u64) -> Option<ExitRecord> {
        let done = self.take_pending(now);
        let key = ExitKey { rip, tgid: t.tgid, tid: t.tid, vcpu, reason, isa, ..ExitKey::default() };
        self.begin(now, key, true);
        self.last_rip = rip;
        done
    }

    /// `kvm:kvm_entry`: the exit's time is entry − exit on the same thread.
    pub fn on_hw_entry(&mut self, now: u64) -> Option<ExitRecord> {
        self.take_pending(now)
    }

    /// `kvm:kvm_pio` / `kvm:kvm_mmio` on the hw source: adds the port or address to the
    /// pending exit; never starts one (the exit came from `kvm_exit`).
    pub fn on_hw_detail(&mut self, kind: u8, detail: u64) {
        if self.pending.active != 0 && self.pending.key.detail_kind == detail::NONE {
            self.pending.key.detail_kind = kind;
            self.pending.key.detail = detail;
        }
    }

    // ---- emulated source: kvm_emulate_insn + kvm_pio/kvm_mmio/kvm_userspace_exit + kvm_fpu ----

    /// `kvm:kvm_emulate_insn`: a new instruction starts, so any pending exit is over.
    pub fn on_emulated_insn(&mut self, now: u64, rip: u64) -> Option<ExitRecord> {
        let done = self.take_pending(now);
        self.last_rip = rip;
        done
    }

    /// `kvm:kvm_pio` (kind PORT_*) or `kvm:kvm_mmio` (kind MMIO_*) on the emulated source.
    /// Writes trace before the exit to user space, reads on completion after it; both name the
    /// exit of the instruction at `last_rip`.
    pub fn on_emulated_access(&mut self, now: u64, t: Thread, kind: u8, addr: u64) -> Option<ExitRecord> {
        let reason = if detail::is_port(kind) { kvm_exit::IO } else { kvm_exit::MMIO };
        let p = &mut self.pending;
        if p.active != 0 && p.key.rip == self.last_rip && p.key.reason == reason {
            if p.key.detail_kind == detail::NONE {
                // A read completing after its user-space exit.
                p.key.detail_kind = kind;
                p.key.detail = addr;
                return None;
            }
            if kind == detail::MMIO_READ
                && p.key.detail_kind == kind
                && p.key.detail == addr
                && p.exited != 0
                && p.completed == 0
            {
                // The completion (after re-entry) of an MMIO read already traced as
                // unsatisfied before its user-space exit. Only once: without per-instruction
                // events the same read again, in a loop, is a new exit.
                p.completed = 1;
                return None;
            }
        }
        let done = self.take_pending(now);
        let key = ExitKey {
            rip: self.last_rip,
            detail: addr,
            tgid: t.tgid,
            tid: t.tid,
            vcpu: NO_VCPU,
            reason,
            isa: isa::KVM_EXIT,
            detail_kind: kind,
            ..ExitKey::default()
        };
        self.begin(now, key, false);
        done
    }

    /// `kvm:kvm_userspace_exit`: KVM_RUN returned to the VMM with `reason`.
    pub fn on_userspace_exit(&mut self, now: u64, t: Thread, reason: u32) -> Option<ExitRecord> {
        let p = &mut self.pending;
        if p.active != 0 && p.exited == 0 && p.key.rip == self.last_rip && p.key.reason == reason {
            // The port/MMIO write traced just before this exit.
            p.exited = 1;
            return None;
        }
        let done = self.take_pending(now);
        let key = ExitKey {
            rip: self.last_rip,
            tgid: t.tgid,
            tid: t.tid,
            vcpu: NO_VCPU,
            reason,
            isa: isa::KVM_EXIT,
            ..ExitKey::default()
        };
        self.begin(now, key, true);
        done
    }

    // ---- live emulated source: no per-instruction event ----
    //
    // Tracing every emulated instruction cost ~250 ns per instruction (a PVM guest runs ~1 M
    // instructions/s through the emulator), so the live programs instead read, at each exit
    // event, the RIP of the instruction being emulated from the vcpu's emulator context (the
    // very expression the kernel's kvm_emulate_insn tracepoint prints). These take that RIP
    // with the event; the exit ends at re-entry (`on_run_entry`) and is charged at the next
    // exit event on the thread or when the recording ends (`Aggregate::finish_threads`).

    /// Live `kvm:kvm_pio` / `kvm:kvm_mmio`: `rip` is the linear address of the instruction
    /// that made the access.
    pub fn on_live_access(&mut self, now: u64, t: Thread, kind: u8, addr: u64, rip: u64) -> Option<ExitRecord> {
        self.no_insn_events = 1;
        self.last_rip = rip;
        self.on_emulated_access(now, t, kind, addr)
    }

    /// Live `kvm:kvm_userspace_exit`: `rip` is the last instruction the emulator decoded
    /// (the HLT, port or MMIO access that exited; for exits between instructions, such as a
    /// pending signal, the one before).
    pub fn on_live_userspace_exit(&mut self, now: u64, t: Thread, reason: u32, rip: u64) -> Option<ExitRecord> {
        self.no_insn_events = 1;
        self.last_rip = rip;
        self.on_userspace_exit(now, t, reason)
    }

    /// True once per exit, right after it began: the moment to read its caller, while the
    /// guest registers still belong to the exiting instruction. Later events of the same exit
    /// (a read's completion, the user-space exit after a write) return false, so the frame walk
    /// runs once per exit, never per instruction.
    pub fn take_caller_lookup(&mut self) -> bool {
        let p = &mut self.pending;
        if p.active == 0 || p.caller_done != 0 {
            return false;
        }
        p.caller_done = 1;
        true
    }

    /// Live `kvm:kvm_userspace_exit(reason)` that is the user-space exit of the pending access
    /// (so it only marks it exited, without the RIP the general path compares): true when the
    /// pending exit is a port write or an MMIO access not yet in user space, with the same
    /// reason, and it is that access's own exit.
    ///
    /// Why no RIP is needed: KVM traces every MMIO access (`kvm_mmio` write, unsatisfied read)
    /// before it exits to user space for it, so an MMIO exit right after an MMIO access is that
    /// access's. A port *read* is traced only on completion, after the exit, so a port exit
    /// right after a port write handled in the kernel may be a read's: `io_out_port()` (from
    /// the vcpu's `kvm_run`: `Some(port)` when it is a port write) tells them apart. Called
    /// lazily, only for a pending port write; `None` (not a write, or unknown) takes the
    /// general path.
    pub fn on_live_userspace_exit_of_access(&mut self, reason: u32, io_out_port: impl FnOnce() -> Option<u16>) -> bool {
        let p = &mut self.pending;
        if p.active == 0 || p.exited != 0 || p.key.reason != reason {
            return false;
        }
        let same = match p.key.detail_kind {
            detail::MMIO_READ | detail::MMIO_WRITE => true,
            detail::PORT_OUT => io_out_port().is_some_and(|port| port as u64 == p.key.detail),
            _ => false,
        };
        if same {
            p.exited = 1;
        }
        same
    }

    /// Live `kvm:kvm_userspace_exit` while `kvm_fpu` unload may have handled the same KVM_RUN
    /// return already (both fire there, unload first): true when it did (then skip it), and
    /// clears the mark either way.
    pub fn take_return_handled(&mut self) -> bool {
        let handled = self.return_handled != 0;
        self.return_handled = 0;
        handled
    }

    /// Live `kvm:kvm_fpu` unload at a KVM_RUN return whose `kvm_run` could not be read (the
    /// vcpu is not known yet) while no `kvm_userspace_exit` program is attached to say why:
    /// the user-space exit of the pending access if it has not exited yet (what it almost
    /// always is), else an exit of unknown reason and RIP.
    pub fn on_live_return_unknown(&mut self, now: u64, t: Thread) -> Option<ExitRecord> {
        self.return_handled = 1;
        let p = &mut self.pending;
        if p.active != 0 && p.exited == 0 && (detail::is_port(p.key.detail_kind) || detail::is_mmio(p.key.detail_kind)) {
            p.exited = 1;
            return None;
        }
        self.on_live_userspace_exit(now, t, kvm_exit::UNKNOWN, 0)
    }

    /// `kvm:kvm_fpu` load: the thread re-entered KVM_RUN, which ends a user-space exit.
    pub fn on_run_entry(&mut self, now: u64) {
        self.return_handled = 0;
        let p = &mut self.pending;
        if p.active != 0 && p.exited != 0 && p.end_ns == 0 {
            p.end_ns = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm_exit::IO;

    const T: Thread = Thread { tgid: 10, tid: 11 };
    const HLT: u32 = 5;

    fn rec(r: Option<ExitRecord>) -> ExitRecord {
        r.expect("an exit was charged")
    }

    // The event order seen on this PVM host for `out dx, al`: kvm_pio (write), then the
    // user-space exit, then kvm_fpu load on re-entry.
    #[test]
    fn live_out_is_charged_from_the_write_to_the_reentry() {
        let mut s = ThreadState::default();
        assert_eq!(s.on_live_access(100, T, detail::PORT_OUT, 0x80, 0x100e), None);
        assert_eq!(s.on_live_userspace_exit(103, T, IO, 0x100e), None);
        s.on_run_entry(140);
        let r = rec(s.on_live_access(150, T, detail::PORT_OUT, 0x80, 0x100e));
        assert_eq!((r.key.rip, r.key.reason, r.key.detail_kind, r.key.detail), (0x100e, IO, detail::PORT_OUT, 0x80));
        assert_eq!((r.start_ns, r.duration_ns), (100, 40));
        assert_eq!((r.key.tgid, r.key.tid, r.key.vcpu), (10, 11, NO_VCPU));
    }

    // `in al, dx`: the user-space exit comes first; kvm_pio (read) fires on completion, after
    // the re-entry, and names the port of that same exit.
    #[test]
    fn live_in_gets_its_port_from_the_completion() {
        let mut s = ThreadState::default();
        assert_eq!(s.on_live_userspace_exit(200, T, IO, 0x1021), None);
        s.on_run_entry(230);
        assert_eq!(s.on_live_access(231, T, detail::PORT_IN, 0x71, 0x1021), None);
        let r = rec(s.on_live_userspace_exit(260, T, IO, 0x1021));
        assert_eq!((r.key.rip, r.key.detail_kind, r.key.detail), (0x1021, detail::PORT_IN, 0x71));
        assert_eq!(r.duration_ns, 30);
    }

    // The user-space exit of a port write or an MMIO access is recognised without its RIP; a
    // port exit after a write handled in the kernel is a new exit (a read's) unless kvm_run
    // names a write to the same port.
    #[test]
    fn userspace_exit_of_the_pending_access_needs_no_rip() {
        let mut s = ThreadState::default();
        assert_eq!(s.on_live_access(100, T, detail::PORT_OUT, 0x80, 0x100e), None);
        assert!(!s.on_live_userspace_exit_of_access(HLT, || Some(0x80)), "another reason");
        assert!(!s.on_live_userspace_exit_of_access(IO, || None), "kvm_run says: not a write");
        assert!(!s.on_live_userspace_exit_of_access(IO, || Some(0x81)), "a write to another port");
        assert!(s.on_live_userspace_exit_of_access(IO, || Some(0x80)));
        assert!(!s.on_live_userspace_exit_of_access(IO, || Some(0x80)), "already in user space");
        s.on_run_entry(140);
        let r = rec(s.on_live_access(150, T, detail::PORT_OUT, 0x80, 0x100e));
        assert_eq!((r.key.rip, r.duration_ns), (0x100e, 40));
        // MMIO: the access always precedes its exit; kvm_run is not consulted.
        // (The port write begun at 150 never reached user space: charged with 0 ns here.)
        assert_eq!(rec(s.on_live_access(200, T, detail::MMIO_WRITE, 0xd000, 0x2000)).duration_ns, 0);
        assert!(s.on_live_userspace_exit_of_access(crate::kvm_exit::MMIO, || panic!("not read for MMIO")));
        // A port read handled in the kernel: its exit is never taken for the pending one.
        let mut k = ThreadState::default();
        assert_eq!(k.on_live_access(300, T, detail::PORT_IN, 0x40, 0x3000), None);
        assert!(!k.on_live_userspace_exit_of_access(IO, || Some(0x40)));
    }

    // An access KVM handles in the kernel never exits to user space: without per-instruction
    // events its end is unobservable, so it is counted with 0 ns, not the gap to the next exit.
    #[test]
    fn live_in_kernel_access_is_counted_with_zero_time() {
        let mut s = ThreadState::default();
        assert_eq!(s.on_live_access(100, T, detail::PORT_OUT, 0x43, 0x2000), None);
        let r = rec(s.on_live_userspace_exit(5_000, T, HLT, 0x3000));
        assert_eq!((r.key.rip, r.key.detail, r.duration_ns), (0x2000, 0x43, 0));
        // The HLT is still open: finish it as the recording's end would.
        s.on_run_entry(5_900);
        let h = rec(s.take_pending(9_999));
        assert_eq!((h.key.rip, h.key.reason, h.duration_ns), (0x3000, HLT, 900));
    }

    // The importer's path (per-instruction events): the exit ends when the next instruction starts.
    #[test]
    fn imported_exit_ends_at_the_next_instruction_or_reentry() {
        let mut s = ThreadState::default();
        assert_eq!(s.on_emulated_insn(0, 0x100e), None);
        assert_eq!(s.on_emulated_access(10, T, detail::PORT_OUT, 0x80), None);
        assert_eq!(s.on_userspace_exit(12, T, IO), None);
        s.on_run_entry(50);
        let r = rec(s.on_emulated_insn(55, 0x100f));
        assert_eq!((r.key.rip, r.duration_ns), (0x100e, 40));
        // In-kernel access: ends at the next instruction.
        assert_eq!(s.on_emulated_access(60, T, detail::PORT_OUT, 0x43), None);
        let k = rec(s.on_emulated_insn(65, 0x1011));
        assert_eq!((k.key.rip, k.key.detail, k.duration_ns), (0x100f, 0x43, 5));
    }

    // A KVM_RUN interrupted by a signal returns -EINTR with the previous exit's reason still
    // in kvm_run: it is an INTR exit of its own, and the port-I/O exit before it keeps its port.
    #[test]
    fn interrupted_run_is_an_intr_exit_not_a_copy_of_the_last_one() {
        use crate::kvm_exit::{userspace_exit_reason, INTR, UNKNOWN};
        assert_eq!(userspace_exit_reason(IO, 0), IO);
        assert_eq!(userspace_exit_reason(IO, -4), INTR);
        assert_eq!(userspace_exit_reason(IO, -14), UNKNOWN);
        let mut s = ThreadState::default();
        assert_eq!(s.on_live_access(100, T, detail::PORT_OUT, 0x5f1, 0x6a), None);
        assert_eq!(s.on_live_userspace_exit(101, T, IO, 0x6a), None);
        s.on_run_entry(120);
        let io = rec(s.on_live_userspace_exit(130, T, userspace_exit_reason(IO, -4), 0x6a));
        assert_eq!((io.key.reason, io.key.detail_kind, io.key.detail, io.duration_ns), (IO, detail::PORT_OUT, 0x5f1, 20));
        s.on_run_entry(150);
        let intr = rec(s.take_pending(999));
        assert_eq!((intr.key.reason, intr.key.rip, intr.duration_ns), (INTR, 0x6a, 20));
    }

    // The live emulated source handles each KVM_RUN return at kvm_fpu unload, from kvm_run:
    // the port write's own exit is only marked; a HLT begins an exit; kvm_userspace_exit
    // (attached while a vcpu is not known) skips the returns unload handled, once each.
    #[test]
    fn run_return_at_fpu_unload_is_handled_once() {
        use crate::kvm_exit::{run_return_reason, INTR};
        assert_eq!(run_return_reason(0, IO), IO);
        assert_eq!(run_return_reason(1, IO), INTR, "immediate_exit: -EINTR, exit_reason untouched");
        let mut s = ThreadState::default();
        assert_eq!(s.on_live_access(100, T, detail::PORT_OUT, 0x80, 0x100e), None);
        assert!(s.on_live_userspace_exit_of_access(run_return_reason(0, IO), || Some(0x80)));
        s.return_handled = 1;
        assert!(s.take_return_handled(), "kvm_userspace_exit skips it");
        assert!(!s.take_return_handled(), "only once");
        s.return_handled = 1;
        s.on_run_entry(140);
        assert_eq!(s.return_handled, 0, "re-entry clears the mark");
        // A return the unload could not read: the pending access's exit if it has not exited...
        assert_eq!(s.on_live_access(150, T, detail::PORT_OUT, 0x80, 0x100e).map(|r| r.duration_ns), Some(40));
        assert_eq!(s.on_live_return_unknown(151, T), None);
        assert!(s.take_return_handled());
        s.on_run_entry(190);
        // ... else an exit of unknown reason and RIP.
        let io = rec(s.on_live_return_unknown(200, T));
        assert_eq!((io.key.detail, io.duration_ns), (0x80, 40));
        s.on_run_entry(230);
        let u = rec(s.take_pending(999));
        assert_eq!((u.key.reason, u.key.rip, u.duration_ns), (crate::kvm_exit::UNKNOWN, 0, 30));
    }

    #[test]
    fn hw_exit_lasts_until_the_entry_and_takes_the_port() {
        let mut s = ThreadState::default();
        assert_eq!(s.on_hw_exit(1_000, T, 3, isa::VMX, 30, 0xffff_ffff_8100_1000), None);
        s.on_hw_detail(detail::PORT_OUT, 0x1f7);
        s.on_hw_detail(detail::PORT_OUT, 0x999); // a second detail does not overwrite the first
        let r = rec(s.on_hw_entry(11_000));
        assert_eq!((r.key.vcpu, r.key.isa, r.key.reason, r.key.detail), (3, isa::VMX, 30, 0x1f7));
        assert_eq!(r.duration_ns, 10_000);
        assert_eq!(s.on_hw_entry(12_000), None, "an entry without an exit charges nothing");
    }

    // MMIO read to user space: unsatisfied read (before the exit), exit, completion (after
    // re-entry). The same read again in a loop is a new exit, not a second completion.
    #[test]
    fn live_mmio_read_in_a_loop_counts_each_read_once() {
        let mut s = ThreadState::default();
        let mut charged = 0;
        for i in 0..3u64 {
            let t0 = i * 100;
            if let Some(r) = s.on_live_access(t0, T, detail::MMIO_READ, 0xfee0_0030, 0x4000) {
                assert_eq!((r.key.detail_kind, r.duration_ns), (detail::MMIO_READ, 20));
                charged += 1;
            }
            assert_eq!(s.on_live_userspace_exit(t0 + 1, T, crate::kvm_exit::MMIO, 0x4000), None);
            s.on_run_entry(t0 + 20);
            assert_eq!(s.on_live_access(t0 + 21, T, detail::MMIO_READ, 0xfee0_0030, 0x4000), None);
        }
        assert_eq!(charged, 2, "the third read is still pending");
        assert_eq!(rec(s.take_pending(999)).duration_ns, 20);
    }
}
