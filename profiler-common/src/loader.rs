//! What the loader and the eBPF programs must agree on by name: maps, their sizes, loss
//! counters, and the read-only globals (tracepoint field offsets, kernel struct offsets).

/// Names and sizes of the maps, shared so the loader and the programs cannot disagree.
pub mod maps {
    /// `Array<u32>` of one slot: 1 while recording. Programs attach and detach one at a time;
    /// the switch makes the recorded window start after the last attach and end before the
    /// first detach, so no exit is seen by only some of the programs.
    pub const CONTROL: &str = "CONTROL";
    /// `CONTROL` indexes.
    pub mod control {
        /// 1 while recording (see [`super::CONTROL`]).
        pub const RECORDING: u32 = 0;
        /// 1 while the `kvm_userspace_exit` program is attached (set after it is attached,
        /// cleared before it is detached): a KVM_RUN return of a vCPU whose `kvm_run` is not
        /// known yet is then left to it, since it has the reason as an argument.
        pub const USERSPACE_EXIT_ATTACHED: u32 = 1;
        /// 1 once the guest's unwind table is at its runtime addresses (`record
        /// --stack-depth`): at once with a known KASLR slide; with `--kaslr-offset auto` and
        /// no kallsyms, when the daemon has found the slide from the first exits. Until then
        /// exits get their caller only.
        pub const STACKS_READY: u32 = 2;
        pub const COUNT: u32 = 3;
    }
    /// The in-kernel aggregation is three maps: `EXIT_INDEX`, a `HashMap<ExitKey, u64>` giving
    /// each exit key its index in `EXIT_STATS`, a `PerCpuArray<ExitStats>` of
    /// `EXITS_MAX_ENTRIES`; a new key takes a free index from `FREE_EXIT_INDEXES`, a `Queue<u64>`
    /// the daemon fills with every index at the start and gives an index back to when it
    /// forgets a key (`Session::forget_processes`). Why not one per-CPU hash map of
    /// `ExitStats`: a thread caches its last key's index (`ThreadState::stats_key`), so an exit
    /// of the same key as the thread's previous one is charged with an array access instead of
    /// a hash lookup (~110 ns here); the stats stay in the map, so every snapshot reads them
    /// exactly as they are, with nothing held back in a cache.
    /// All preallocated: a new key never allocates in the tracepoint (with `BPF_F_NO_PREALLOC`,
    /// 167 of 1000 new keys were lost in a burst of 1000 distinct ports, measured). An
    /// ExitStats is ~2 KiB, so `EXIT_STATS` pins EXITS_MAX_ENTRIES × 2 KiB × CPUs (16 MiB per
    /// CPU).
    pub const EXIT_INDEX: &str = "EXIT_INDEX";
    pub const EXIT_STATS: &str = "EXIT_STATS";
    pub const FREE_EXIT_INDEXES: &str = "FREE_EXIT_INDEXES";
    pub const EXITS_MAX_ENTRIES: u32 = 8192;
    /// `PerCpuHashMap<ExitKey, CountTime>`: exits whose key found no free `EXIT_STATS` index, counted
    /// exactly but without a time histogram. 16-byte values, so 64 Ki keys cost ~6 MiB per CPU:
    /// a guest touching thousands of MMIO addresses (SeaBIOS clearing the VGA framebuffer makes
    /// ~7 800 keys from one instruction) takes every `EXIT_STATS` index and must not lose the exits after it.
    pub const EXITS_OVERFLOW: &str = "EXITS_OVERFLOW";
    pub const EXITS_OVERFLOW_MAX_ENTRIES: u32 = 65536;
    /// `HashMap<u32 tid, ThreadState>`: per vCPU-thread state machine of the threads that have
    /// no slot in `THREAD_SLOTS` (their slot was taken by another thread).
    pub const THREADS: &str = "THREADS";
    pub const THREADS_MAX_ENTRIES: u32 = 16384;
    /// `Array<ThreadSlot>`: the state of thread `tid` at index `tid % THREAD_SLOTS_MAX_ENTRIES`
    /// when `ThreadSlot::tid` names it. An array lookup is inlined by the verifier, where a
    /// hash lookup cost ~100 ns per event here (three events per exit); a thread whose slot is
    /// taken falls back to `THREADS`.
    pub const THREAD_SLOTS: &str = "THREAD_SLOTS";
    pub const THREAD_SLOTS_MAX_ENTRIES: u32 = 1024;
    /// `HashMap<u32 index, u32 tid>`: who owns each used `THREAD_SLOTS` index. A thread claims a
    /// free index by inserting here with `BPF_NOEXIST` (atomic: one of two new threads wins),
    /// once; the daemon frees it (slot zeroed first, then this entry deleted) when the process
    /// has ended.
    pub const SLOT_OWNERS: &str = "SLOT_OWNERS";
    /// `Array<u32>` of one slot: 1 once the daemon has put any guest memory map in
    /// `GUEST_MEMORY`, so exits of VMMs without one skip that hash lookup.
    pub const GUEST_MEMORY_USED: &str = "GUEST_MEMORY_USED";
    /// `RingBuf` of [`crate::ExitRecord`], written only when records are requested.
    pub const RECORDS: &str = "RECORDS";
    pub const RECORDS_BYTES: u32 = 16 << 20;
    /// `Array<RecordBatch>`: the records of the thread that owns `THREAD_SLOTS[i]`, at `i`,
    /// written to `RECORDS` eight at a time (threads without a slot write each record at
    /// once). The daemon reads what is left when the session ends or the slot is freed.
    pub const RECORD_BATCHES: &str = "RECORD_BATCHES";
    /// `PerCpuArray<u64>` of loss counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `HashMap<u32 tgid, guest::GuestMemMap>`: guest-physical -> host-virtual regions of each
    /// traced VMM, filled by the daemon (from `--guest-memory-map` or tinyvmm's `--memory-map`).
    pub const GUEST_MEMORY: &str = "GUEST_MEMORY";
    pub const GUEST_MEMORY_MAX_ENTRIES: u32 = 256;
    /// `PerCpuHashMap<runs::RunKey, runs::RunStats>`: runs of successive I/O exits by
    /// signature (see [`crate::runs`]). Runs are far fewer than exits (one per driver request
    /// at most); a signature that finds the map full is counted in `counter::RUNS_FULL`.
    pub const RUNS: &str = "RUNS";
    pub const RUNS_MAX_ENTRIES: u32 = 4096;
    /// `Array<ThreadState>` of one all-zero slot, read-only to the programs: the initial value
    /// of a new THREADS entry (a ThreadState is too big to build on the 512-byte BPF stack).
    pub const ZERO_THREAD: &str = "ZERO_THREAD";
    /// `Array<unwind::UnwindEntry>`: the guest's unwind table at runtime addresses (KASLR slide
    /// applied), sorted by start, written by the daemon before recording starts
    /// (`record --stack-depth` above 1 with `--vmlinux`). Its size is set at load time to the
    /// table's length (`globals::UNWIND_LEN`), at least 1.
    pub const UNWIND: &str = "UNWIND";
    /// Entries a table may have: 2^SEARCH_STEPS (what the bounded binary search covers).
    pub const UNWIND_MAX_ENTRIES: u32 = 1 << crate::unwind::SEARCH_STEPS;
    /// `HashMap<u32 stack id, unwind::GuestStack>`: every distinct walked stack, by the id that
    /// `ExitKey::stack` holds. A stack that finds it full is counted (`counter::STACKS_FULL`)
    /// and its exit keeps only its caller.
    pub const STACKS: &str = "STACKS";
    pub const STACKS_MAX_ENTRIES: u32 = 16384;
    /// `PerCpuArray<unwind::GuestStack>` of one slot: where a stack is walked (it would take
    /// 72 of the 512 bytes of BPF stack) before it is copied into `STACKS`.
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
}

/// Indexes into the `COUNTERS` map: everything that was lost is counted, never silent.
pub mod counter {
    /// Records that did not fit in the ring buffer (they are still aggregated).
    pub const RECORDS_DROPPED: u32 = 0;
    /// Exits not counted because `EXITS` and `EXITS_OVERFLOW` were both full.
    pub const EXIT_KEYS_FULL: u32 = 1;
    /// Events ignored because `THREADS` was full.
    pub const THREADS_FULL: u32 = 2;
    /// Runs not aggregated because `RUNS` was full.
    pub const RUNS_FULL: u32 = 3;
    /// Stacks not kept because `STACKS` was full (their exits keep only their caller).
    pub const STACKS_FULL: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Read-only globals (besides the field offsets) the loader sets.
pub mod globals {
    /// `u32`: only this process is traced; 0 traces every process.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// `u8`: 1 streams every exit through `RECORDS`.
    pub const STREAM_RECORDS: &str = "STREAM_RECORDS";
    /// `u8`: 1 = hw source (`kvm_pio`/`kvm_mmio` only add detail to a `kvm_exit`).
    pub const HW_SOURCE: &str = "HW_SOURCE";
    /// `u64`: the longest gap (ns) between an exit's re-entry and the next exit that still
    /// extends a run of successive I/O exits (see [`crate::runs`]).
    pub const MAX_GAP_NS: &str = "MAX_GAP_NS";
    /// `u32`: return addresses walked per exit (`record --stack-depth`, 1 to
    /// `unwind::MAX_STACK_DEPTH`). 1 (the default) reads the caller at `[RBP + 8]` as always
    /// and the stack walker is pruned by the verifier: it costs nothing.
    pub const STACK_DEPTH: &str = "STACK_DEPTH";
    /// `u32`: entries in the `UNWIND` map (0: no table, frame pointers only).
    pub const UNWIND_LEN: &str = "UNWIND_LEN";
    /// `u8`: 1 reads kernel memory with plain loads through `bpf_rdonly_cast` (the daemon has
    /// rewritten the placeholder calls, see [`crate::kfunc`]); 0 with `bpf_probe_read_kernel`.
    pub const DIRECT_READS: &str = "DIRECT_READS";
}

/// The kfunc the eBPF programs call, which neither Rust nor aya can name: the programs make a
/// helper call with a placeholder number, and the daemon rewrites each such instruction in the
/// object before loading it.
pub mod kfunc {
    /// The helper number of the placeholder for `bpf_rdonly_cast(addr, 0)`. No helper has it
    /// (they number in the hundreds), so an unrewritten one fails verification, loudly.
    pub const RDONLY_CAST_PLACEHOLDER: i32 = 0x3f7a_c057;
    /// The kfunc's name in the kernel's BTF.
    pub const RDONLY_CAST: &str = "bpf_rdonly_cast";
}

/// Offsets of the tracepoint fields the eBPF programs read, taken at load time from the
/// running kernel's `events/kvm/*/format` files (never from a header) and passed in as
/// read-only globals. Names are `<EVENT>_<FIELD>`.
/// Only the hw source's `kvm_exit` is a classic tracepoint program: every emulated-source
/// event is a raw tracepoint (its arguments are the TP_PROTO arguments, no format file).
pub const FIELD_GLOBALS: &[(&str, &str, &str)] = &[
    ("EXIT_REASON", "kvm_exit", "exit_reason"),
    ("EXIT_GUEST_RIP", "kvm_exit", "guest_rip"),
    ("EXIT_ISA", "kvm_exit", "isa"),
    ("EXIT_VCPU_ID", "kvm_exit", "vcpu_id"),
];

/// Byte offsets inside `struct kvm_vcpu` the programs read guest registers at, taken at load
/// time from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), never from a header: the
/// layout changes with kernel version and config. `(global, kvm_vcpu_arch member, index)`:
/// the offset is `offsetof(kvm_vcpu, arch) + offsetof(kvm_vcpu_arch, member) + 8 * index`.
pub const VCPU_GLOBALS: &[(&str, &str, u32)] = &[
    // regs[VCPU_REGS_RSP = 4], regs[VCPU_REGS_RBP = 5] (arch/x86/include/asm/kvm_vcpu_regs.h).
    ("VCPU_RSP", "regs", 4),
    ("VCPU_RBP", "regs", 5),
    ("VCPU_REGS_AVAIL", "regs_avail", 0),
    ("VCPU_CR0", "cr0", 0),
    ("VCPU_CR3", "cr3", 0),
    ("VCPU_CR4", "cr4", 0),
    ("VCPU_EFER", "efer", 0),
    // The instruction emulator's state (a pointer to struct x86_emulate_ctxt): the live
    // emulated source reads the exiting instruction's RIP from it (see EMULATOR_GLOBALS).
    ("VCPU_EMULATE_CTXT", "emulate_ctxt", 0),
];

/// Byte offsets inside `struct x86_emulate_ctxt` (from the running kernel's BTF), for the RIP
/// of the instruction being emulated, computed exactly as the kernel's `kvm_emulate_insn`
/// tracepoint does: `rip = ctxt->_eip - (ctxt->fetch.ptr - ctxt->fetch.data)`. `_eip` and
/// `fetch.ptr` advance together while the instruction is decoded, so the expression names the
/// instruction's first byte from decode until the next instruction is fetched: at `kvm_pio`
/// (mid-instruction, also on a read's completion), `kvm_mmio` and `kvm_userspace_exit`.
/// `(global, member path, expected width)`; `fetch.data` is an array: its address is used.
pub const EMULATOR_GLOBALS: &[(&str, &[&str], u64)] = &[
    ("CTXT_EIP", &["_eip"], 8),
    // `eip`: the instruction's own RIP from decode until the emulator writes the next one back
    // after executing it. `kvm_pio` and `kvm_mmio` fire while the instruction executes (a read's
    // completion re-executes it), so there the RIP is this one read, next to `mode`; the
    // user-space exit of a HLT or a write comes after the write-back and needs `_eip - len`.
    ("CTXT_START_EIP", &["eip"], 8),
    ("CTXT_MODE", &["mode"], 4),
    ("CTXT_FETCH_PTR", &["fetch", "ptr"], 8),
    ("CTXT_FETCH_DATA", &["fetch", "data"], 15),
];

/// Global: `offsetof(struct kvm_vcpu, run)` from the running kernel's BTF: the vcpu's
/// `struct kvm_run`, whose `io` member says whether a port exit is a write (see
/// `ThreadState::on_live_userspace_exit_of_access`).
pub const VCPU_RUN: &str = "VCPU_RUN";
/// Global: `offsetof(struct kvm_vcpu, wants_to_run)` (a bool, true from KVM_RUN's start to
/// its return unless `immediate_exit` was set), or [`NO_OFFSET`] on kernels before 6.10:
/// a `kvm_fpu` unload outside KVM_RUN (the FPU loaded around an xstate MSR ioctl) is no exit.
pub const VCPU_WANTS_TO_RUN: &str = "VCPU_WANTS_TO_RUN";
pub const NO_OFFSET: u32 = u32::MAX;
/// `offsetof(struct kvm_run, immediate_exit)` and `offsetof(struct kvm_run, exit_reason)`
/// (uapi/linux/kvm.h): read in one go with `io` at a KVM_RUN return.
pub const KVM_RUN_IMMEDIATE_EXIT: u64 = 1;
pub const KVM_RUN_EXIT_REASON: u64 = 8;
/// `offsetof(struct kvm_run, io)` (uapi/linux/kvm.h, a stable ABI): `{ u8 direction; u8 size;
/// u16 port; u32 count; u64 data_offset }`, direction `KVM_EXIT_IO_OUT` = 1.
pub const KVM_RUN_IO: u64 = 32;
pub const KVM_EXIT_IO_OUT: u8 = 1;

/// `x86_emulate_ctxt::mode` value for 64-bit mode (`enum x86emul_mode`), where the CS base is
/// ignored by the CPU and taken as 0.
pub const X86EMUL_MODE_PROT64: u32 = 4;

/// Global: offset in the vcpu of the CS base in PVM's segment cache
/// (`struct vcpu_pvm { struct kvm_vcpu vcpu; struct kvm_segment seg[8]; ... }`, `seg[VCPU_SREG_CS
/// = 1].base`, what PVM's `get_segment_base(vcpu, CS)` returns to the kernel's own tracepoint),
/// or [`NO_CS_BASE`] when the kernel has no such struct (then a linear RIP outside 64-bit mode
/// assumes CS base 0).
pub const VCPU_CS_BASE: &str = "VCPU_CS_BASE";
pub const NO_CS_BASE: u32 = u32::MAX;

/// Bit of `kvm_vcpu_arch::regs_avail` saying `regs[VCPU_REGS_RSP]` is current. On VMX/SVM the
/// guest RSP lives in the VMCS/VMCB and is copied into `regs[]` only on demand.
pub const REGS_AVAIL_RSP: u32 = 1 << 4;
