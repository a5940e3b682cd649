//! The live Session: kvmprof's eBPF programs loaded and attached for a set of targets, with
//! the in-kernel maps readable at any moment ([`Session::snapshot`]) and read one last time
//! when it ends ([`Session::finish`]). `record`, `top` and `serve` are loops around it.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aya::maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, Queue, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use profiler_common::guest::GuestMemMap;
use profiler_common::runs::{RunKey, RunStats, DEFAULT_MAX_GAP_NS_EMULATED, DEFAULT_MAX_GAP_NS_HW};
use profiler_common::{counter, globals, maps, CountTime, ExitKey, ExitRecord, ExitStats, RecordBatch, ThreadSlot, ThreadState, FIELD_GLOBALS};

use super::error::LiveError;
use super::kfunc::{self, KernelReads};
use super::targets::thread_alive;
use super::tracefs::EventFormat;
use crate::model::aggregate::Aggregate;
use crate::model::record_stream::RecordSink;
use crate::model::{Meta, Profile, Source, ThreadInfo};

/// The eBPF object, built by build.rs from `profiler-ebpf/` (empty with KVMPROF_SKIP_EBPF=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-ebpf.o"));

/// Which programs each exit source attaches.
pub trait SourcePrograms {
    /// Classic tracepoints (all in the `kvm` system) whose programs this source attaches;
    /// each program has the tracepoint's name.
    fn tracepoints(self) -> &'static [&'static str];
    /// Raw-tracepoint programs attached for the whole session: `(program, tracepoint)`.
    fn raw_programs(self) -> &'static [(&'static str, &'static str)];
    /// Raw-tracepoint programs needed only while some vCPU thread's `struct kvm_vcpu *` is not
    /// cached yet: those that note it, and what stands in for it meanwhile ([`Session::poll`]).
    fn vcpu_programs(self) -> &'static [(&'static str, &'static str)];
    /// Everything attached, for messages.
    fn attach_points(self) -> Vec<String>;
}

impl SourcePrograms for Source {
    fn tracepoints(self) -> &'static [&'static str] {
        match self {
            // kvm_exit's raw arguments lack the reason and RIP on VMX (see the eBPF kvm_entry).
            Source::Hw => &["kvm_exit"],
            // Raw tracepoints only: a classic one costs the event's TP_fast_assign and a
            // perf-buffer record on top of the program.
            Source::Emulated => &[],
        }
    }

    fn raw_programs(self) -> &'static [(&'static str, &'static str)] {
        // cpu_switch first: the others may trust a CPU's CPU_THREAD entry only while every
        // context switch clears it (see the eBPF `cpu_switch`).
        match self {
            Source::Hw => &[CPU_SWITCH, ("kvm_entry", "kvm_entry"), ("kvm_pio", "kvm_pio"), ("kvm_mmio", "kvm_mmio")],
            // kvm_fpu: re-entry (load) and every KVM_RUN return (unload), which takes the
            // place of kvm_userspace_exit (see the eBPF `kvm_fpu`).
            Source::Emulated => &[CPU_SWITCH, ("kvm_pio", "kvm_pio"), ("kvm_mmio", "kvm_mmio"), ("kvm_fpu", "kvm_fpu")],
        }
    }

    // (fentry/tp_btf would be the BTF-typed choice, but BPF_PROG_TYPE_TRACING is not available
    // on every kernel, e.g. not on this PVM host.)
    fn vcpu_programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Source::Hw => &[("vcpu_of_exit", "kvm_exit")],
            // kvm_userspace_exit only for the KVM_RUN returns of a vCPU whose `kvm_run` the
            // programs do not know yet, so it comes and goes with vcpu_of_insn.
            Source::Emulated => &[("vcpu_of_insn", "kvm_emulate_insn"), (USERSPACE_EXIT, USERSPACE_EXIT)],
        }
    }

    fn attach_points(self) -> Vec<String> {
        let mut v: Vec<String> = self.tracepoints().iter().map(|t| t.to_string()).collect();
        for (_, tp) in self.vcpu_programs().iter().chain(self.raw_programs()) {
            v.push(format!("{tp} (raw)"));
        }
        v
    }
}

/// The program that keeps each CPU's running traced thread current, and its raw tracepoint.
const CPU_SWITCH: (&str, &str) = ("cpu_switch", "sched_switch");

/// The program (and raw tracepoint) that hands a KVM_RUN return's reason to the emulated
/// source while a vCPU's `kvm_run` is not known (maps::control::USERSPACE_EXIT_ATTACHED).
const USERSPACE_EXIT: &str = "kvm_userspace_exit";

/// Tells the programs whether `kvm_userspace_exit` is attached: set after it is attached and
/// cleared before it is detached, so "set" always means "it will run".
fn mark_userspace_exit(control: &mut Array<MapData, u32>, attached: bool) {
    // A failed write leaves the flag clear at worst: kvm_fpu then handles those returns
    // itself (with an unknown reason) and kvm_userspace_exit skips them, so none is lost.
    let _ = control.set(maps::control::USERSPACE_EXIT_ATTACHED, attached as u32, 0);
}

/// The exit source this host has: `kvm_exit` fires on VMX/SVM hosts; elsewhere (PVM, or no
/// hardware support) KVM runs the guest through its emulator and only the emulated source
/// sees exits.
pub fn detect_source() -> Source {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_intel") || loaded("kvm_amd") {
        Source::Hw
    } else {
        Source::Emulated
    }
}

/// Whose exits a session counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One VMM process (a PID given by the user, or a command started for the session).
    Process(u32),
    /// Every process on the host.
    AllVms,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub source: Source,
    pub target: Target,
    /// Also stream every exit (start, duration) through the ring buffer.
    pub records: bool,
    /// The command line of the target, for the profile's metadata.
    pub command: Option<Vec<String>>,
}

pub struct Session {
    cfg: SessionConfig,
    ebpf: Option<Ebpf>,
    control: Array<MapData, u32>,
    /// The in-kernel aggregation (maps::EXIT_INDEX): key -> index, stats per index, free indexes.
    exit_index: HashMap<MapData, ExitKey, u64>,
    exit_stats: PerCpuArray<MapData, ExitStats>,
    free_exit_indexes: Queue<MapData, u64>,
    exits_overflow: PerCpuHashMap<MapData, ExitKey, CountTime>,
    threads: HashMap<MapData, u32, ThreadState>,
    /// Thread states in slots (maps::THREAD_SLOTS) and who owns each used slot.
    thread_slots: Array<MapData, ThreadSlot>,
    slot_owners: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// The records ring buffer and the per-thread batches on their way to it (`--records`).
    records: Option<(RingBuf<MapData>, Array<MapData, RecordBatch>)>,
    guest_memory: Option<GuestMemoryMap>,
    /// Runs of successive I/O exits (profiler_common::runs) and the gap that delimits them.
    runs: PerCpuHashMap<MapData, RunKey, RunStats>,
    max_gap_ns: u64,
    drained: Vec<ExitRecord>,
    /// Where streamed records go as they are read, when set ([`Session::set_record_sink`]);
    /// else they collect in `drained` until the next snapshot.
    record_sink: Option<Box<dyn RecordSink>>,
    /// The vcpu-noting raw tracepoints, attached only while needed (see [`Session::poll`]).
    vcpu_links: Vec<(&'static str, &'static str, Option<RawTracePointLinkId>)>,
    /// Every thread seen so far, kept after it ends (marked `ended`).
    known_threads: BTreeMap<u32, ThreadInfo>,
    start_unix_ns: u64,
    /// The walked stacks and how (`record --stack-depth` above 1).
    stacks: Option<super::stacks::StackMap>,
    /// Possible CPUs: the number of values of each per-CPU map entry.
    ncpus: usize,
}

pub(super) fn raw_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut RawTracePoint, LiveError> {
    let prog = ebpf.program_mut(name).ok_or(LiveError::MissingInObject { kind: "program", name })?;
    prog.try_into().map_err(|source| LiveError::Verify { program: name, source })
}

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LiveError> {
    ebpf.take_map(name).ok_or(LiveError::MissingInObject { kind: "map", name })
}

fn kernel_fact<E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: &'static str) -> impl FnOnce(E) -> LiveError {
    move |e| LiveError::Kernel { what, source: e.into() }
}

pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Write access to the in-kernel `GUEST_MEMORY` map, movable to the thread that waits for a
/// VMM's memory map.
pub struct GuestMemoryMap(HashMap<MapData, u32, GuestMemMap>, Array<MapData, u32>);

impl GuestMemoryMap {
    /// From now on, exits of process `tgid` get callers read through `map`.
    pub fn set(&mut self, tgid: u32, map: &GuestMemMap) -> Result<(), LiveError> {
        self.0.insert(tgid, map, 0).map_err(|source| LiveError::WriteMap { map: maps::GUEST_MEMORY, source })?;
        // Only now do the programs look maps up at all (maps::GUEST_MEMORY_USED).
        self.1.set(0, 1, 0).map_err(|source| LiveError::WriteMap { map: maps::GUEST_MEMORY_USED, source })
    }
}

/// One thread's in-kernel state and where it lives.
struct KernelThread {
    tid: u32,
    state: ThreadState,
    /// Its `THREAD_SLOTS` index, or None for a `THREADS` entry.
    slot: Option<u32>,
}

/// A vCPU thread's description, with its VM's name read now.
fn thread_info(state: &ThreadState) -> ThreadInfo {
    ThreadInfo { vm_name: super::targets::vm_name(state.tgid), ..ThreadInfo::from_comm(state.tgid, &state.comm) }
}

impl Session {
    /// Loads the programs of `cfg.source`, attaches them, and opens the counted window, with
    /// the source's default run gap ([`default_max_gap_ns`]).
    pub fn start(tracefs: &Path, cfg: SessionConfig) -> Result<Session, LiveError> {
        Session::start_with_max_gap(tracefs, cfg, None)
    }

    /// [`Session::start`] with the run-detection gap `max_gap_ns` (None: the source's default).
    pub fn start_with_max_gap(tracefs: &Path, cfg: SessionConfig, max_gap_ns: Option<u64>) -> Result<Session, LiveError> {
        Session::start_with_records_buffer(tracefs, cfg, max_gap_ns, None)
    }

    /// [`Session::start_with_max_gap`] with the records ring buffer's size in bytes (a power
    /// of two multiple of the page size; None: `maps::RECORDS_BYTES`).
    pub fn start_with_records_buffer(tracefs: &Path, cfg: SessionConfig, max_gap_ns: Option<u64>, records_buffer: Option<u32>) -> Result<Session, LiveError> {
        Session::start_with_stacks(tracefs, cfg, max_gap_ns, records_buffer, None)
    }

    /// [`Session::start_with_records_buffer`], walking guest stacks at each exit as `stacks`
    /// says (None: the caller only, the stack walker pruned away).
    pub fn start_with_stacks(
        tracefs: &Path,
        cfg: SessionConfig,
        max_gap_ns: Option<u64>,
        records_buffer: Option<u32>,
        stacks: Option<&super::stacks::StackSetup>,
    ) -> Result<Session, LiveError> {
        let max_gap_ns = max_gap_ns.unwrap_or(default_max_gap_ns(cfg.source));
        if env!("KVMPROF_EBPF_BUILT") != "1" {
            return Err(LiveError::NoEbpfObject);
        }
        let mut offsets = Vec::new();
        for (global, event, field) in FIELD_GLOBALS {
            let fmt = EventFormat::read(tracefs, "kvm", event).map_err(kernel_fact("cannot read a KVM tracepoint's format"))?;
            offsets.push((*global, fmt.offset(field).map_err(kernel_fact("a KVM tracepoint lacks a field kvmprof reads"))?));
        }
        let target_tgid = match cfg.target {
            Target::Process(pid) => pid,
            Target::AllVms => 0,
        };
        let hw = (cfg.source == Source::Hw) as u8;
        let stream = cfg.records as u8;
        let stack_globals = super::stacks::globals_of(stacks);
        let kbtf = super::btf::Btf::from_file(Path::new(super::btf::VMLINUX_BTF)).map_err(kernel_fact("cannot read the kernel's BTF"))?;
        let reads = KernelReads::detect(&kbtf);
        let direct_reads = reads.global();
        let object = kfunc::rewrite(EBPF_OBJECT, reads).map_err(|e| LiveError::Object { source: e.into() })?;
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::TARGET_TGID, &target_tgid, true)
            .override_global(globals::DIRECT_READS, &direct_reads, true)
            .override_global(globals::STREAM_RECORDS, &stream, true)
            .override_global(globals::HW_SOURCE, &hw, true)
            .override_global(globals::MAX_GAP_NS, &max_gap_ns, true);
        for (name, off) in &offsets {
            loader.override_global(name, off, true);
        }
        // struct kvm_vcpu offsets from this kernel's BTF (see profiler_common::VCPU_GLOBALS).
        let vcpu_offsets = super::btf::vcpu_offsets(&kbtf).map_err(kernel_fact("caller attribution needs struct kvm_vcpu in the kernel's BTF"))?;
        for (name, off) in &vcpu_offsets {
            loader.override_global(name, off, true);
        }
        // struct x86_emulate_ctxt offsets (the emulated source's RIP) and PVM's CS base.
        let emu_offsets =
            super::btf::emulator_offsets(&kbtf).map_err(kernel_fact("the emulated source needs struct x86_emulate_ctxt in the kernel's BTF"))?;
        for (name, off) in &emu_offsets {
            loader.override_global(name, off, true);
        }
        if !cfg.records {
            // The ring buffer is never written: don't pin 16 MiB of kernel memory for it.
            loader.map_max_entries(maps::RECORDS, 4096);
            loader.map_max_entries(maps::RECORD_BATCHES, 1);
        } else if let Some(bytes) = records_buffer {
            loader.map_max_entries(maps::RECORDS, bytes);
        }
        super::stacks::configure(&mut loader, &stack_globals);
        let mut ebpf = loader.load(object.bytes()).map_err(|source| LiveError::Load { source })?;
        let stack_map = super::stacks::open(&mut ebpf, stacks)?;

        for tp in cfg.source.tracepoints() {
            let prog: &mut TracePoint = ebpf
                .program_mut(tp)
                .ok_or(LiveError::MissingInObject { kind: "program", name: tp })?
                .try_into()
                .map_err(|source| LiveError::Verify { program: tp, source })?;
            prog.load().map_err(|source| LiveError::Verify { program: tp, source })?;
            prog.attach("kvm", tp).map_err(|source| LiveError::Attach { program: tp, tracepoint: format!("tracepoint kvm:{tp}"), source })?;
        }
        for (name, tp) in cfg.source.raw_programs() {
            let prog = raw_program(&mut ebpf, name)?;
            prog.load().map_err(|source| LiveError::Verify { program: name, source })?;
            prog.attach(tp).map_err(|source| LiveError::Attach { program: name, tracepoint: format!("raw tracepoint {tp}"), source })?;
        }
        // Attached after the classic programs, so on a shared tracepoint they run second.
        let mut vcpu_links = Vec::new();
        for (name, tp) in cfg.source.vcpu_programs() {
            let prog = raw_program(&mut ebpf, name)?;
            prog.load().map_err(|source| LiveError::Verify { program: name, source })?;
            let link = prog.attach(tp).map_err(|source| LiveError::Attach { program: name, tracepoint: format!("raw tracepoint {tp}"), source })?;
            vcpu_links.push((*name, *tp, Some(link)));
        }

        let map_type = |map: &'static str| move |source| LiveError::MapType { map, source };
        let exit_index = HashMap::try_from(take_map(&mut ebpf, maps::EXIT_INDEX)?).map_err(map_type(maps::EXIT_INDEX))?;
        let exit_stats = PerCpuArray::try_from(take_map(&mut ebpf, maps::EXIT_STATS)?).map_err(map_type(maps::EXIT_STATS))?;
        let mut free_exit_indexes = Queue::try_from(take_map(&mut ebpf, maps::FREE_EXIT_INDEXES)?).map_err(map_type(maps::FREE_EXIT_INDEXES))?;
        // Before the window opens: every EXIT_STATS index is free.
        for index in 0..u64::from(maps::EXITS_MAX_ENTRIES) {
            free_exit_indexes.push(index, 0).map_err(|source| LiveError::WriteMap { map: maps::FREE_EXIT_INDEXES, source })?;
        }
        let exits_overflow =
            PerCpuHashMap::try_from(take_map(&mut ebpf, maps::EXITS_OVERFLOW)?).map_err(map_type(maps::EXITS_OVERFLOW))?;
        let threads = HashMap::try_from(take_map(&mut ebpf, maps::THREADS)?).map_err(map_type(maps::THREADS))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, maps::COUNTERS)?).map_err(map_type(maps::COUNTERS))?;
        let records = if cfg.records {
            Some((
                RingBuf::try_from(take_map(&mut ebpf, maps::RECORDS)?).map_err(map_type(maps::RECORDS))?,
                Array::try_from(take_map(&mut ebpf, maps::RECORD_BATCHES)?).map_err(map_type(maps::RECORD_BATCHES))?,
            ))
        } else {
            None
        };
        let guest_memory = Some(GuestMemoryMap(
            HashMap::try_from(take_map(&mut ebpf, maps::GUEST_MEMORY)?).map_err(map_type(maps::GUEST_MEMORY))?,
            Array::try_from(take_map(&mut ebpf, maps::GUEST_MEMORY_USED)?).map_err(map_type(maps::GUEST_MEMORY_USED))?,
        ));
        let thread_slots = Array::try_from(take_map(&mut ebpf, maps::THREAD_SLOTS)?).map_err(map_type(maps::THREAD_SLOTS))?;
        let slot_owners = HashMap::try_from(take_map(&mut ebpf, maps::SLOT_OWNERS)?).map_err(map_type(maps::SLOT_OWNERS))?;
        let runs = PerCpuHashMap::try_from(take_map(&mut ebpf, maps::RUNS)?).map_err(map_type(maps::RUNS))?;
        let mut control = Array::try_from(take_map(&mut ebpf, maps::CONTROL)?).map_err(map_type(maps::CONTROL))?;
        if vcpu_links.iter().any(|(name, _, link)| *name == USERSPACE_EXIT && link.is_some()) {
            mark_userspace_exit(&mut control, true);
        }
        if stack_map.as_ref().is_some_and(|s| s.ready()) {
            control.set(maps::control::STACKS_READY, 1, 0).map_err(|source| LiveError::WriteMap { map: maps::CONTROL, source })?;
        }
        // Every program is attached: open the counted window.
        control.set(maps::control::RECORDING, 1, 0).map_err(|source| LiveError::WriteMap { map: maps::CONTROL, source })?;
        Ok(Session {
            cfg,
            ebpf: Some(ebpf),
            control,
            exit_index,
            exit_stats,
            free_exit_indexes,
            exits_overflow,
            threads,
            thread_slots,
            slot_owners,
            counters,
            records,
            guest_memory,
            runs,
            max_gap_ns,
            drained: Vec::new(),
            record_sink: None,
            vcpu_links,
            known_threads: BTreeMap::new(),
            start_unix_ns: unix_ns(),
            stacks: stack_map,
            ncpus: aya::util::nr_cpus().map_err(|(what, e)| LiveError::Kernel { what: "cannot count the possible CPUs", source: format!("{what}: {e}").into() })?,
        })
    }

    pub fn source(&self) -> Source {
        self.cfg.source
    }

    pub fn target(&self) -> Target {
        self.cfg.target
    }

    /// The writer of the in-kernel guest memory maps (once; later calls get `None`).
    pub fn guest_memory(&mut self) -> Option<GuestMemoryMap> {
        self.guest_memory.take()
    }

    /// Every thread state in the kernel: the `THREADS` entries and the owned `THREAD_SLOTS`.
    fn kernel_threads(&self) -> Result<Vec<KernelThread>, LiveError> {
        let mut out = Vec::new();
        for item in self.threads.iter() {
            let (tid, state) = item.map_err(|source| LiveError::ReadMap { map: maps::THREADS, source })?;
            out.push(KernelThread { tid, state, slot: None });
        }
        for item in self.slot_owners.iter() {
            let (index, tid) = item.map_err(|source| LiveError::ReadMap { map: maps::SLOT_OWNERS, source })?;
            let slot = self.thread_slots.get(&index, 0).map_err(|source| LiveError::ReadMap { map: maps::THREAD_SLOTS, source })?;
            // A slot just claimed is published by its tid: until then it has no state yet.
            if slot.tid == tid {
                out.push(KernelThread { tid, state: slot.state, slot: Some(index) });
            }
        }
        Ok(out)
    }

    /// Call often (every 20 ms or so) while the session runs: moves streamed records out of
    /// the ring buffer before it fills, and detaches the per-instruction vcpu-noting program
    /// once every vCPU thread's `struct kvm_vcpu *` is cached in its thread state (measured:
    /// ~60 ns per emulated instruction saved, about 5% of a run on PVM). It is attached again
    /// when a thread without one appears (a vCPU started later).
    pub fn poll(&mut self) {
        self.drain_records();
        if self.stacks.as_ref().is_some_and(|s| s.slide_due()) {
            self.find_stack_slide();
        }
        let mut seen = false;
        let mut missing = false;
        for t in self.kernel_threads().unwrap_or_default() {
            seen = true;
            missing |= t.state.vcpu_ptr == 0;
            // Named while the VM still runs: a VM that ends before the recording does keeps
            // its name (`report --by vm`).
            self.known_threads.entry(t.tid).or_insert_with(|| thread_info(&t.state));
        }
        let want = !seen || missing;
        // Following every VM, a VM can start at any moment: its vCPU thread's first KVM_RUN
        // returns come before this poll sees the thread, and only kvm_userspace_exit has their
        // reason then (a port read's return would otherwise be counted twice: once without a
        // reason, once at its completion). So it stays attached there; one VMM's later vCPU
        // threads are rare enough for the cheaper path (see the eBPF `run_return`).
        let keep_userspace_exit = self.cfg.target == Target::AllVms;
        let Some(ebpf) = self.ebpf.as_mut() else { return };
        for (name, tp, link) in &mut self.vcpu_links {
            let Ok(prog) = raw_program(ebpf, name) else { continue };
            let want = want || (keep_userspace_exit && *name == USERSPACE_EXIT);
            match (want, link.take()) {
                (false, Some(l)) => {
                    if *name == USERSPACE_EXIT {
                        mark_userspace_exit(&mut self.control, false);
                    }
                    let _ = prog.detach(l);
                }
                (true, None) => {
                    *link = prog.attach(tp).ok();
                    if *name == USERSPACE_EXIT && link.is_some() {
                        mark_userspace_exit(&mut self.control, true);
                    }
                }
                (_, l) => *link = l,
            }
        }
    }

    /// `record --kaslr-offset auto` without kallsyms: tries to find the guest kernel's slide
    /// from the exits so far; once found, the unwind table is at its runtime addresses and the
    /// programs start walking stacks (maps::control::STACKS_READY).
    fn find_stack_slide(&mut self) {
        let Ok(so_far) = self.snapshot() else { return };
        let Some(stacks) = self.stacks.as_mut() else { return };
        if let Ok(true) = stacks.try_slide(&so_far) {
            let _ = self.control.set(maps::control::STACKS_READY, 1, 0);
        }
    }

    /// From now on, streamed records go to `sink` as they are read from the ring buffer (in
    /// bounded memory) instead of into the next snapshot; so do the exits still open at
    /// [`Session::finish`].
    pub fn set_record_sink(&mut self, sink: Box<dyn RecordSink>) {
        self.record_sink = Some(sink);
    }

    /// The records the ring buffer had no room for, per possible CPU (`RECORDS_DROPPED`).
    pub fn records_dropped_per_cpu(&self) -> Result<Vec<u64>, LiveError> {
        let v = self.counters.get(&counter::RECORDS_DROPPED, 0).map_err(|source| LiveError::ReadMap { map: maps::COUNTERS, source })?;
        Ok(v.iter().copied().collect())
    }

    fn drain_records(&mut self) {
        let Some((rb, _)) = &mut self.records else { return };
        while let Some(item) = rb.next() {
            // One record, or a thread's batch of RECORD_BATCH_LEN.
            for chunk in item.chunks_exact(std::mem::size_of::<ExitRecord>()) {
                // SAFETY: the programs write whole ExitRecords (plain integers, any bit
                // pattern valid); read_unaligned tolerates the ring buffer's alignment.
                let rec = unsafe { std::ptr::read_unaligned(chunk.as_ptr() as *const ExitRecord) };
                deliver_record(&mut self.record_sink, &mut self.drained, &rec);
            }
        }
    }

    /// Moves the records still waiting in the batches of the slots `indexes` (after the ring
    /// buffer's, so each thread's stay in order) to where drained records go, and empties those
    /// batches. Call it only when their threads cannot write: the programs are detached, or the
    /// process has ended.
    fn flush_record_batches(&mut self, indexes: impl Iterator<Item = u32>) -> Result<(), LiveError> {
        self.drain_records();
        let Some((_, batches)) = &mut self.records else { return Ok(()) };
        for index in indexes {
            let batch = batches.get(&index, 0).map_err(|source| LiveError::ReadMap { map: maps::RECORD_BATCHES, source })?;
            if batch.len == 0 {
                continue;
            }
            for rec in batch.filled() {
                deliver_record(&mut self.record_sink, &mut self.drained, rec);
            }
            batches.set(index, RecordBatch::default(), 0).map_err(|source| LiveError::WriteMap { map: maps::RECORD_BATCHES, source })?;
        }
        Ok(())
    }

    /// The profile so far: the per-CPU maps summed, read while every program stays attached
    /// and nothing is reset. Exits still in progress are not in it (they are in the next one).
    /// It has no run data (`runs: None`): that is read once, by [`Session::finish`].
    pub fn snapshot(&mut self) -> Result<Profile, LiveError> {
        self.drain_records();
        let mut agg = Aggregate::new(self.records.is_some());
        if let Some(r) = &mut agg.records {
            r.extend_from_slice(&self.drained);
        }
        self.collect(agg, false)
    }

    /// Closes the counted window, detaches every program, and returns the final profile,
    /// exits still open charged with the time measured until now.
    pub fn finish(mut self) -> Result<Profile, LiveError> {
        // Close the window before the programs detach one by one.
        self.control.set(maps::control::RECORDING, 0, 0).map_err(|source| LiveError::WriteMap { map: maps::CONTROL, source })?;
        drop(self.ebpf.take());
        self.flush_record_batches(0..maps::THREAD_SLOTS_MAX_ENTRIES)?;
        let mut agg = Aggregate::new(self.records.is_some());
        if let Some(r) = &mut agg.records {
            r.append(&mut self.drained);
        }
        self.collect(agg, true)
    }

    /// How many programs are attached now (the per-instruction vcpu-noting ones only while
    /// needed, see [`Session::poll`]); 0 once finished.
    pub fn attached_programs(&self) -> usize {
        if self.ebpf.is_none() {
            return 0;
        }
        let s = self.cfg.source;
        s.tracepoints().len() + s.raw_programs().len() + self.vcpu_links.iter().filter(|(_, _, l)| l.is_some()).count()
    }

    /// Threads that have a state in the kernel (each thread that exited at least once and
    /// was not forgotten). Keys only: one system call per thread.
    pub fn thread_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.threads.keys().flatten().collect();
        ids.extend(self.slot_owners.iter().flatten().map(|(_, tid)| tid));
        ids
    }

    /// For processes that have ended: reads their exits one last time (exits still open are
    /// charged as [`Session::finish`] does: a VMM's last exit, e.g. the write that ends the
    /// guest, never re-enters the guest), then deletes every in-kernel entry they left
    /// (exit keys, I/O runs, thread states, guest memory maps) and forgets their threads. A session
    /// that runs for days (`serve`) would otherwise fill its maps with dead VMs' keys, after
    /// which new exits lose their histograms and then their counts. The returned exits are
    /// no longer in later snapshots. Call it only for processes that are gone: a process
    /// that is still running keeps counting from zero.
    pub fn forget_processes(&mut self, tgids: &std::collections::BTreeSet<u32>) -> Result<Vec<crate::model::Exit>, LiveError> {
        if tgids.is_empty() {
            return Ok(Vec::new());
        }
        let mut agg = Aggregate::new(false);
        let mut exit_keys = Vec::new();
        for (key, index, per_cpu) in self.exit_entries()? {
            if tgids.contains(&key.tgid) {
                per_cpu.iter().for_each(|stats| agg.merge(key, stats));
                exit_keys.push((key, index));
            }
        }
        let mut overflow_keys = Vec::new();
        for (key, per_cpu) in read_per_cpu(&self.exits_overflow, maps::EXITS_OVERFLOW, self.ncpus)? {
            if tgids.contains(&key.tgid) {
                per_cpu.iter().for_each(|ct| agg.merge(key, &ct.to_stats()));
                overflow_keys.push(key);
            }
        }
        let mut states: Vec<KernelThread> = self.kernel_threads()?.into_iter().filter(|t| tgids.contains(&t.state.tgid)).collect();
        agg.finish_threads(states.iter_mut().map(|t| &mut t.state));
        // Deleting can race only with the programs of a new process that got a recycled PID
        // within one interval; a key already gone (NotFound) is not an error.
        let gone = |r: Result<(), aya::maps::MapError>, map: &'static str| match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(LiveError::WriteMap { map, source }),
        };
        // Each key's index is freed for a new key: the key deleted first, then its stats zeroed
        // on every CPU, then the index queued (a program takes it only from the queue).
        for (k, index) in &exit_keys {
            gone(self.exit_index.remove(k), maps::EXIT_INDEX)?;
            let zeros = PerCpuValues::try_from(vec![ExitStats::default(); self.ncpus]).map_err(kernel_fact("cannot count the possible CPUs"))?;
            self.exit_stats.set(*index, zeros, 0).map_err(|source| LiveError::WriteMap { map: maps::EXIT_STATS, source })?;
            self.free_exit_indexes.push(u64::from(*index), 0).map_err(|source| LiveError::WriteMap { map: maps::FREE_EXIT_INDEXES, source })?;
        }
        for k in &overflow_keys {
            gone(self.exits_overflow.remove(k), maps::EXITS_OVERFLOW)?;
        }
        self.flush_record_batches(states.iter().filter_map(|t| t.slot))?;
        for t in &states {
            match t.slot {
                None => gone(self.threads.remove(&t.tid), maps::THREADS)?,
                // Zeroed first, then freed: a thread that claims the index finds it all zeros.
                Some(index) => {
                    self.thread_slots.set(index, ThreadSlot::default(), 0).map_err(|source| LiveError::WriteMap { map: maps::THREAD_SLOTS, source })?;
                    gone(self.slot_owners.remove(&index), maps::SLOT_OWNERS)?;
                }
            }
        }
        let run_keys: Vec<RunKey> = self.runs.keys().flatten().filter(|k| tgids.contains(&k.tgid)).collect();
        for k in &run_keys {
            gone(self.runs.remove(k), maps::RUNS)?;
        }
        if let Some(GuestMemoryMap(gm, _)) = &mut self.guest_memory {
            for t in tgids {
                gone(gm.remove(t), maps::GUEST_MEMORY)?;
            }
        }
        self.known_threads.retain(|_, info| !tgids.contains(&info.tgid));
        Ok(agg.exits.iter().filter_map(|(k, s)| crate::model::Exit::from_key(k, *s).ok()).collect())
    }

    /// Every exit key with its `EXIT_STATS` index and per-CPU stats: the keys in a few batched
    /// calls, then one lookup per key. A key inserted after the batch read is in the next read.
    fn exit_entries(&self) -> Result<Vec<(ExitKey, u32, PerCpuValues<ExitStats>)>, LiveError> {
        let keys = super::batch::entries::<ExitKey, u64>(IterableMap::map(&self.exit_index)).or_else(|e| match e.kind() {
            // Kernels before 5.6: one key at a time.
            std::io::ErrorKind::Unsupported => {
                self.exit_index.iter().collect::<Result<Vec<_>, _>>().map_err(|source| LiveError::ReadMap { map: maps::EXIT_INDEX, source })
            }
            _ => Err(LiveError::ReadMap {
                map: maps::EXIT_INDEX,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error: e }),
            }),
        })?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, index) in keys {
            let index = index as u32;
            let stats = self.exit_stats.get(&index, 0).map_err(|source| LiveError::ReadMap { map: maps::EXIT_STATS, source })?;
            out.push((key, index, stats));
        }
        Ok(out)
    }

    fn collect(&mut self, mut agg: Aggregate, finishing: bool) -> Result<Profile, LiveError> {
        // Runs (for `advise`) only in the final profile: snapshots (`top`, `serve`) have no use
        // for them, and reading them there would cost every poll.
        if finishing {
            agg.max_gap_ns = Some(self.max_gap_ns);
            for (key, per_cpu) in read_per_cpu(&self.runs, maps::RUNS, self.ncpus)? {
                for stats in &per_cpu {
                    agg.merge_run(key, stats);
                }
            }
        }
        for (key, _, per_cpu) in self.exit_entries()? {
            for stats in per_cpu.iter() {
                agg.merge(key, stats);
            }
        }
        for (key, per_cpu) in read_per_cpu(&self.exits_overflow, maps::EXITS_OVERFLOW, self.ncpus)? {
            for ct in &per_cpu {
                agg.merge(key, &ct.to_stats());
            }
        }
        let mut states: Vec<ThreadState> = Vec::new();
        for t in self.kernel_threads()? {
            self.known_threads.entry(t.tid).or_insert_with(|| thread_info(&t.state));
            states.push(t.state);
        }
        for (tid, info) in self.known_threads.iter_mut() {
            info.ended |= !thread_alive(info.tgid, *tid);
        }
        if finishing {
            agg.finish_threads(states.iter_mut());
        }
        // Exits charged here (still open at the end) follow the streamed ones to the sink.
        if let (Some(sink), Some(records)) = (&mut self.record_sink, &mut agg.records) {
            records.drain(..).for_each(|r| sink.push(&r));
            agg.records = None;
        }
        if finishing && self.record_sink.is_some() {
            let dropped = self.records_dropped_per_cpu()?;
            if let Some(sink) = &mut self.record_sink {
                sink.set_dropped(&dropped);
            }
        }
        let count = |i: u32| -> Result<u64, LiveError> {
            let v = self.counters.get(&i, 0).map_err(|source| LiveError::ReadMap { map: maps::COUNTERS, source })?;
            Ok(v.iter().sum())
        };
        let meta = Meta {
            source: self.cfg.source,
            origin: "live".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            host: read_trimmed("/proc/sys/kernel/hostname"),
            start_unix_ns: self.start_unix_ns,
            end_unix_ns: unix_ns(),
            pid: match self.cfg.target {
                Target::Process(p) => Some(p),
                Target::AllVms => None,
            },
            command: self.cfg.command.clone(),
            command_status: None,
            records_requested: self.cfg.records,
            records_dropped: count(counter::RECORDS_DROPPED)?,
            exit_keys_full: count(counter::EXIT_KEYS_FULL)?,
            threads_full: count(counter::THREADS_FULL)?,
            unfinished_exits: 0,
            partial: false,
            guest_memory: None,
            stacks: None,
        };
        agg.runs_lost = count(counter::RUNS_FULL)?;
        // A key no kvmprof program writes would be a bug in the programs: count it as lost.
        let (mut profile, undecodable) = agg.into_profile(meta, self.known_threads.clone());
        profile.meta.exit_keys_full += undecodable as u64;
        if let Some(stacks) = &self.stacks {
            stacks.resolve(&mut profile, count(counter::STACKS_FULL)?)?;
        }
        Ok(profile)
    }
}

/// Where a streamed record goes: to the record sink when one is set, else into `drained` for
/// the next snapshot. (Fields, not `&mut Session`: the caller holds the ring buffer or the
/// batch map borrowed.)
fn deliver_record(sink: &mut Option<Box<dyn RecordSink>>, drained: &mut Vec<ExitRecord>, rec: &ExitRecord) {
    match sink {
        Some(sink) => sink.push(rec),
        None => drained.push(*rec),
    }
}

/// Every entry of a per-CPU hash map: in batches where the kernel can, else key by key.
fn read_per_cpu<K: aya::Pod, V: aya::Pod>(map: &PerCpuHashMap<MapData, K, V>, name: &'static str, ncpus: usize) -> Result<Vec<(K, Vec<V>)>, LiveError> {
    let read = |source| LiveError::ReadMap { map: name, source };
    match super::batch::per_cpu_entries::<K, V>(IterableMap::map(map), ncpus) {
        Ok(entries) => Ok(entries),
        // Kernels before 5.6: one key at a time.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            map.iter().map(|item| item.map(|(k, v)| (k, v.iter().copied().collect())).map_err(read)).collect()
        }
        Err(e) => Err(read(aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error: e }))),
    }
}

/// The run-detection gap used when none is given: measured on the emulated source (PVM), a
/// reasoned bound on hw (see [`profiler_common::runs`]).
pub fn default_max_gap_ns(source: Source) -> u64 {
    match source {
        Source::Hw => DEFAULT_MAX_GAP_NS_HW,
        Source::Emulated => DEFAULT_MAX_GAP_NS_EMULATED,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// Loads and attaches the programs of `source` without counting anything: proves they pass
/// the verifier and that the tracepoints exist on this kernel.
pub fn check_attach(tracefs: &Path, source: Source) -> Result<(), LiveError> {
    let cfg = SessionConfig { source, target: Target::Process(u32::MAX), records: true, command: None };
    drop(Session::start(tracefs, cfg.clone())?);
    // Again with the stack walker switched on at its deepest, over a table of 2^20 entries
    // (the verifier follows the binary search as deep as the table's length makes it).
    let stacks = super::stacks::StackSetup::for_verifier();
    drop(Session::start_with_stacks(tracefs, cfg, None, None, Some(&stacks))?);
    Ok(())
}
