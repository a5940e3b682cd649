//! Loads kvmprof's eBPF programs, attaches the set for one exit source, and collects the
//! in-kernel aggregation when done.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfLoader};
use profiler_common::guest::GuestMemMap;
use profiler_common::{counter, globals, maps, ExitKey, ExitRecord, ExitStats, ThreadState, FIELD_GLOBALS};

use crate::aggregate::Aggregate;
use crate::recording::ThreadInfo;
use crate::tracefs::EventFormat;

/// The eBPF object, built by build.rs from `profiler-ebpf/`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-ebpf.o"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `kvm_exit`/`kvm_entry`: hardware-assisted KVM (VMX/SVM).
    Hw,
    /// `kvm_pio`/`kvm_mmio`/`kvm_userspace_exit` + `kvm_fpu`, the RIP read from the vcpu's
    /// emulator context: KVM without `kvm_exit` (PVM, where every instruction is emulated).
    Emulated,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Hw => "hw",
            Source::Emulated => "emulated",
        }
    }

    /// Classic tracepoints (all in the `kvm` system) whose programs this source attaches;
    /// each program has the tracepoint's name.
    pub fn tracepoints(self) -> &'static [&'static str] {
        match self {
            Source::Hw => &["kvm_exit", "kvm_entry"],
            // Raw tracepoints only: a classic one costs the event's TP_fast_assign and a
            // perf-buffer record on top of the program (see raw_programs).
            Source::Emulated => &[],
        }
    }

    /// Raw-tracepoint programs attached for the whole recording: `(program, tracepoint)`.
    pub fn raw_programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Source::Hw => &[("kvm_pio", "kvm_pio"), ("kvm_mmio", "kvm_mmio")],
            Source::Emulated => &[
                ("kvm_pio", "kvm_pio"),
                ("kvm_mmio", "kvm_mmio"),
                ("kvm_userspace_exit", "kvm_userspace_exit"),
                ("kvm_fpu", "kvm_fpu"),
            ],
        }
    }

    /// Raw-tracepoint programs that note each vCPU thread's `struct kvm_vcpu *` (for caller
    /// attribution, and on the emulated source for the exiting instruction's RIP):
    /// `(program, tracepoint)`. Attached only until every vCPU thread's pointer is cached
    /// ([`Tracer::tick`]). (fentry/tp_btf would be the BTF-typed choice, but
    /// BPF_PROG_TYPE_TRACING is not available on every kernel, e.g. not on this PVM host.)
    pub fn vcpu_programs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Source::Hw => &[("vcpu_of_exit", "kvm_exit")],
            Source::Emulated => &[("vcpu_of_insn", "kvm_emulate_insn")],
        }
    }

    /// Everything `check` and `record` attach, for messages.
    pub fn attach_points(self) -> Vec<String> {
        let mut v: Vec<String> = self.tracepoints().iter().map(|t| t.to_string()).collect();
        for (_, tp) in self.vcpu_programs().iter().chain(self.raw_programs()) {
            v.push(format!("{tp} (raw)"));
        }
        v
    }

    /// `kvm_exit` fires on VMX/SVM hosts; elsewhere (PVM, or no hardware support) KVM runs
    /// the guest through its emulator and only the emulated source sees exits.
    pub fn detect() -> Source {
        let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
        if loaded("kvm_intel") || loaded("kvm_amd") {
            Source::Hw
        } else {
            Source::Emulated
        }
    }
}

pub struct TracerConfig {
    pub source: Source,
    /// Trace only this process (0 = every process).
    pub target_tgid: u32,
    pub stream_records: bool,
}

pub struct Tracer {
    ebpf: Option<Ebpf>,
    control: Array<MapData, u32>,
    exits: PerCpuHashMap<MapData, ExitKey, ExitStats>,
    threads: HashMap<MapData, u32, ThreadState>,
    counters: PerCpuArray<MapData, u64>,
    records: Option<RingBuf<MapData>>,
    guest_memory: Option<HashMap<MapData, u32, GuestMemMap>>,
    drained: Vec<ExitRecord>,
    /// The vcpu-noting raw tracepoints, attached only while needed (see [`Tracer::tick`]).
    vcpu_links: Vec<(&'static str, &'static str, Option<RawTracePointLinkId>)>,
}

fn raw_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut RawTracePoint> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
        .try_into()
        .map_err(|e| anyhow!("program {name}: {e}"))
}

/// Write access to the in-kernel `GUEST_MEMORY` map, movable to the thread that waits for a
/// VMM's memory map.
pub struct GuestMemoryMap(HashMap<MapData, u32, GuestMemMap>);

impl GuestMemoryMap {
    /// From now on, exits of process `tgid` get callers read through `map`.
    pub fn set(&mut self, tgid: u32, map: &GuestMemMap) -> Result<()> {
        self.0.insert(tgid, map, 0).context("cannot store the guest memory map in the kernel")
    }
}

/// What one recording collected, plus its loss counters.
pub struct Collected {
    pub aggregate: Aggregate,
    pub threads: BTreeMap<u32, ThreadInfo>,
    pub records_dropped: u64,
    pub exit_keys_full: u64,
    pub threads_full: u64,
}

impl Tracer {
    pub fn start(tracefs: &Path, cfg: &TracerConfig) -> Result<Tracer> {
        let mut offsets = Vec::new();
        for (global, event, field) in FIELD_GLOBALS {
            let fmt = EventFormat::read(tracefs, "kvm", event)?;
            offsets.push((*global, fmt.offset(field).with_context(|| format!("tracepoint kvm:{event}"))?));
        }
        let hw = (cfg.source == Source::Hw) as u8;
        let stream = cfg.stream_records as u8;
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::TARGET_TGID, &cfg.target_tgid, true)
            .override_global(globals::STREAM_RECORDS, &stream, true)
            .override_global(globals::HW_SOURCE, &hw, true);
        for (name, off) in &offsets {
            loader.override_global(name, off, true);
        }
        // struct kvm_vcpu offsets from this kernel's BTF (see profiler_common::VCPU_GLOBALS).
        let kbtf = crate::btf::Btf::from_file(Path::new(crate::btf::VMLINUX_BTF))?;
        let vcpu_offsets = crate::btf::vcpu_offsets(&kbtf).context("caller attribution needs struct kvm_vcpu in the kernel's BTF")?;
        for (name, off) in &vcpu_offsets {
            loader.override_global(name, off, true);
        }
        // struct x86_emulate_ctxt offsets (the emulated source's RIP) and PVM's CS base.
        let emu_offsets = crate::btf::emulator_offsets(&kbtf).context("the emulated source needs struct x86_emulate_ctxt in the kernel's BTF")?;
        for (name, off) in &emu_offsets {
            loader.override_global(name, off, true);
        }
        if !cfg.stream_records {
            // The ring buffer is never written: don't pin 16 MiB of kernel memory for it.
            loader.map_max_entries(maps::RECORDS, 4096);
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| anyhow!("cannot load the eBPF programs: {e}{}", hint(&e.to_string())))?;

        for tp in cfg.source.tracepoints() {
            let prog: &mut TracePoint = ebpf
                .program_mut(tp)
                .ok_or_else(|| anyhow!("eBPF object has no program {tp}"))?
                .try_into()
                .map_err(|e| anyhow!("program {tp}: {e}"))?;
            prog.load().map_err(|e| anyhow!("the kernel rejected eBPF program {tp}: {e}"))?;
            prog.attach("kvm", tp).map_err(|e| anyhow!("cannot attach to tracepoint kvm:{tp}: {e}"))?;
        }
        for (name, tp) in cfg.source.raw_programs() {
            let prog = raw_program(&mut ebpf, name)?;
            prog.load().map_err(|e| anyhow!("the kernel rejected eBPF program {name}: {e}"))?;
            prog.attach(tp).map_err(|e| anyhow!("cannot attach to raw tracepoint {tp}: {e}"))?;
        }
        // Attached after the classic programs, so on a shared tracepoint they run second.
        let mut vcpu_links = Vec::new();
        for (name, tp) in cfg.source.vcpu_programs() {
            let prog = raw_program(&mut ebpf, name)?;
            prog.load().map_err(|e| anyhow!("the kernel rejected eBPF program {name}: {e}"))?;
            let link = prog.attach(tp).map_err(|e| anyhow!("cannot attach to raw tracepoint {tp}: {e}"))?;
            vcpu_links.push((*name, *tp, Some(link)));
        }

        let take = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("eBPF object has no map {name}"));
        let exits = PerCpuHashMap::try_from(take(&mut ebpf, maps::EXITS)?)?;
        let threads = HashMap::try_from(take(&mut ebpf, maps::THREADS)?)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)?;
        let records = if cfg.stream_records { Some(RingBuf::try_from(take(&mut ebpf, maps::RECORDS)?)?) } else { None };
        let guest_memory = Some(HashMap::try_from(take(&mut ebpf, maps::GUEST_MEMORY)?)?);
        let mut control = Array::try_from(take(&mut ebpf, maps::CONTROL)?)?;
        // Every program is attached: open the recorded window.
        control.set(0, 1, 0).context("enabling the eBPF programs")?;
        Ok(Tracer { ebpf: Some(ebpf), control, exits, threads, counters, records, guest_memory, drained: Vec::new(), vcpu_links })
    }

    /// The writer of the in-kernel guest memory maps (once; later calls get `None`).
    pub fn guest_memory(&mut self) -> Option<GuestMemoryMap> {
        self.guest_memory.take().map(GuestMemoryMap)
    }

    /// Call periodically while recording. The vcpu-noting raw tracepoint runs on every
    /// emulated instruction on the emulated source, and a vCPU thread's `struct kvm_vcpu *`
    /// never changes: once every vCPU thread seen has its pointer cached in its thread state,
    /// the program is detached (measured: ~60 ns per instruction saved, about 5% of a run on
    /// PVM); it is attached again when a thread without one appears (a vCPU started later).
    pub fn tick(&mut self) {
        let mut seen = false;
        let mut missing = false;
        for (_, state) in self.threads.iter().flatten() {
            seen = true;
            missing |= state.vcpu_ptr == 0;
        }
        let want = !seen || missing;
        let Some(ebpf) = self.ebpf.as_mut() else { return };
        for (name, tp, link) in &mut self.vcpu_links {
            let Ok(prog) = raw_program(ebpf, name) else { continue };
            match (want, link.take()) {
                (false, Some(l)) => {
                    let _ = prog.detach(l);
                }
                (true, None) => *link = prog.attach(tp).ok(),
                (_, l) => *link = l,
            }
        }
    }

    /// Moves streamed records out of the ring buffer; call it often while recording so the
    /// buffer does not fill.
    pub fn drain_records(&mut self) -> usize {
        let Some(rb) = &mut self.records else { return 0 };
        let mut n = 0;
        while let Some(item) = rb.next() {
            if item.len() >= std::mem::size_of::<ExitRecord>() {
                // SAFETY: the program writes whole ExitRecords; read_unaligned tolerates any alignment.
                let rec = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ExitRecord) };
                self.drained.push(rec);
                n += 1;
            }
        }
        n
    }

    /// Detaches every program (so the maps stop changing), then reads them.
    pub fn finish(mut self) -> Result<Collected> {
        // Close the recorded window before the programs detach one by one.
        self.control.set(0, 0, 0).context("disabling the eBPF programs")?;
        drop(self.ebpf.take());
        self.drain_records();
        let keep_records = self.records.is_some();
        let mut agg = Aggregate::new(keep_records);
        for item in self.exits.iter() {
            let (key, per_cpu) = item.context("reading the exit map")?;
            for stats in per_cpu.iter() {
                agg.merge(key, stats);
            }
        }
        if let Some(r) = &mut agg.records {
            r.append(&mut self.drained);
        }
        let mut states: Vec<ThreadState> = Vec::new();
        let mut threads = BTreeMap::new();
        for item in self.threads.iter() {
            let (tid, state) = item.context("reading the thread map")?;
            threads.insert(tid, ThreadInfo::from_comm(state.tgid, &state.comm));
            states.push(state);
        }
        agg.finish_threads(states.iter_mut());
        let count = |i: u32| -> Result<u64> { Ok(self.counters.get(&i, 0)?.iter().sum()) };
        Ok(Collected {
            records_dropped: count(counter::RECORDS_DROPPED)?,
            exit_keys_full: count(counter::EXIT_KEYS_FULL)?,
            threads_full: count(counter::THREADS_FULL)?,
            aggregate: agg,
            threads,
        })
    }
}

/// Loads and attaches the programs of `source` without recording: proves they pass the
/// verifier and that the tracepoints exist on this kernel.
pub fn check_attach(tracefs: &Path, source: Source) -> Result<()> {
    let t = Tracer::start(tracefs, &TracerConfig { source, target_tgid: u32::MAX, stream_records: true })?;
    drop(t);
    Ok(())
}

fn hint(err: &str) -> &'static str {
    if err.contains("Operation not permitted") || err.contains("EPERM") {
        " (loading eBPF needs root, or CAP_BPF + CAP_PERFMON)"
    } else {
        ""
    }
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kvmprof {what} needs root (it loads eBPF programs and reads tracefs): run it with sudo");
    }
    Ok(())
}
