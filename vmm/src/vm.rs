//! Building a VM from a [`VmConfig`] and running it to a [`RunReport`].

use crate::abi::stats::{GuestReport, RunStats, TimerStats};
use crate::abi::*;
use crate::boot;
use crate::bus::PortBus;
use crate::devices::{debug::DebugPorts, ide::Ide, pic::Pic, pit::Pit, pmtimer::PmTimer, rtl8139::Rtl8139, serial::Uart};

/// The NIC's MAC address (a locally administered one, QEMU's prefix).
pub const NIC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
use crate::stats::ExitStats;
use crate::vcpu::{self, Outcome};
use crate::{VmmError, Workload};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use std::path::PathBuf;
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemoryBackend};

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The guest ELF image (the bundled one by default).
    pub guest_elf: Vec<u8>,
    pub disk: Option<PathBuf>,
    pub workload: Workload,
    pub count: u64,
    pub seconds: u64,
    pub batch_pio: bool,
    pub pit_hz: Option<u32>,
    pub skip_pmtmr_calibration: bool,
    pub mem_mib: u64,
    pub memory_map: Option<PathBuf>,
    /// Echo the guest console to stdout.
    pub echo_console: bool,
    pub name: Option<String>,
    /// The NIC's backend: `None` = no NIC (`--net none`), `Some(name)` = the TAP device
    /// `name` (`--net tap:NAME`).
    pub net_tap: Option<String>,
    /// The guest driver's receive mode (`--nic-mode`).
    pub nic_mode: crate::abi::net::NicMode,
    /// Datagram size for `net-tx` (`--size`).
    pub net_size: u32,
    /// The guest's address (`--guest-ip`); its gateway is `.1` of its /24.
    pub guest_ip: [u8; 4],
}

impl VmConfig {
    pub fn new(workload: Workload) -> Self {
        VmConfig {
            guest_elf: crate::GUEST_ELF.to_vec(),
            disk: None,
            workload,
            count: 1000,
            seconds: 1,
            batch_pio: false,
            pit_hz: None,
            skip_pmtmr_calibration: false,
            mem_mib: 64,
            memory_map: None,
            echo_console: true,
            name: None,
            net_tap: None,
            nic_mode: crate::abi::net::NicMode::Irq,
            net_size: 64,
            guest_ip: crate::abi::net::GUEST_IP,
        }
    }
}

/// What a run produced: how it ended, its statistics, and the guest's own report.
pub struct RunReport {
    pub outcome: Outcome,
    /// The exit counters as the vCPU loop kept them.
    pub stats: crate::stats::ExitStats,
    /// The guest's `@@result` report (also in `run_stats.guest`).
    pub guest: Option<GuestReport>,
    pub run_ns: u128,
    /// The `--stats-json` document.
    pub run_stats: RunStats,
}

impl RunReport {
    /// True if the guest ran to its end and reported success.
    pub fn success(&self) -> bool {
        matches!(self.outcome, Outcome::GuestExit(0))
    }
}

pub fn run(cfg: &VmConfig) -> Result<RunReport, VmmError> {
    if cfg.workload.needs_disk() && cfg.disk.is_none() {
        return Err(VmmError::Config(format!("workload {} needs --disk IMG", cfg.workload.name())));
    }
    if cfg.workload.needs_net() && cfg.net_tap.is_none() {
        return Err(VmmError::Config(format!(
            "workload {} needs a NIC: add --net tap:NAME (e.g. inside the test network: `ip netns exec HOSTB tinyvmm run --net tap:NAME ...`)",
            cfg.workload.name()
        )));
    }
    let size = cfg.net_size as usize;
    if !(crate::abi::net::DATAGRAM_HEADER..=crate::abi::net::DATAGRAM_MAX).contains(&size) {
        return Err(VmmError::Config(format!(
            "--size {size}: a datagram is {} to {} bytes",
            crate::abi::net::DATAGRAM_HEADER,
            crate::abi::net::DATAGRAM_MAX
        )));
    }
    if cfg.pit_hz == Some(0) {
        return Err(VmmError::Config("--pit-hz must be at least 1".into()));
    }
    if !(2..=3072).contains(&cfg.mem_mib) {
        return Err(VmmError::Config("--mem-mib must be between 2 and 3072".into()));
    }
    let ide = match &cfg.disk {
        None => None,
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| VmmError::Disk(format!("{}: {e}", p.display())))?;
            let ide = Ide::new(f).map_err(|e| VmmError::Disk(format!("{}: {e}", p.display())))?;
            if ide.sectors() == 0 {
                return Err(VmmError::Disk(format!("{}: image is smaller than one 512-byte sector", p.display())));
            }
            Some(ide)
        }
    };

    let kvm = Kvm::new().map_err(|e| VmmError::Kvm(format!("cannot open /dev/kvm: {e}")))?;
    let vm = kvm.create_vm().map_err(|e| VmmError::Kvm(format!("KVM_CREATE_VM: {e}")))?;
    let mem_size = cfg.mem_mib << 20;
    let mem = boot::create_memory(mem_size)?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| VmmError::Config(format!("guest memory: {e}")))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is exactly the live mmap of `mem` (its host address and size),
    // and `mem` outlives the VM: the vCPU thread is joined and `vm` dropped before `mem`
    // is, at the end of this function.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| VmmError::Kvm(format!("KVM_SET_USER_MEMORY_REGION: {e}")))?;

    let loaded = boot::load_elf(&mem, &cfg.guest_elf)?;
    let mut flags = 0;
    if cfg.batch_pio {
        flags |= FLAG_BATCH_PIO;
    }
    if cfg.skip_pmtmr_calibration {
        flags |= FLAG_SKIP_PMTMR_CALIBRATION;
    }
    let params = BootParams {
        magic: BOOT_PARAMS_MAGIC,
        version: BOOT_PARAMS_VERSION,
        workload: cfg.workload.abi(),
        flags,
        count: cfg.count,
        seconds: cfg.seconds,
        ram_size: mem_size,
        net_size: cfg.net_size,
        net_mode: cfg.nic_mode.abi(),
        net_guest_ip: cfg.guest_ip,
        net_gateway: [cfg.guest_ip[0], cfg.guest_ip[1], cfg.guest_ip[2], 1],
        net_peer_ip: crate::abi::net::HOST_A_IP,
        net_port: crate::abi::net::STREAM_PORT,
        net_prefix: crate::abi::net::PREFIX_LEN,
        _reserved: 0,
    };
    boot::write_boot_structures(&mem, &params)?;

    let vcpu_fd = vm.create_vcpu(0).map_err(|e| VmmError::Kvm(format!("KVM_CREATE_VCPU: {e}")))?;
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::Kvm(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    vcpu_fd.set_cpuid2(&cpuid).map_err(|e| VmmError::Kvm(format!("KVM_SET_CPUID2: {e}")))?;
    let sregs = vcpu_fd.get_sregs().map_err(|e| VmmError::Kvm(format!("KVM_GET_SREGS: {e}")))?;
    vcpu_fd
        .set_sregs(&boot::long_mode_sregs(sregs))
        .map_err(|e| VmmError::Kvm(format!("KVM_SET_SREGS: {e}")))?;
    vcpu_fd
        .set_regs(&boot::entry_regs(loaded.entry))
        .map_err(|e| VmmError::Kvm(format!("KVM_SET_REGS: {e}")))?;

    if let Some(path) = &cfg.memory_map {
        let text = serde_json::to_string_pretty(&boot::memory_map_json(&mem)).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|e| VmmError::Config(format!("{}: {e}", path.display())))?;
    }

    let mut bus = PortBus::new(
        Uart::new(PORT_COM1, cfg.echo_console),
        Pit::new(cfg.pit_hz),
        Pic::new(),
        PmTimer::new(PORT_PMTMR),
        ide,
        DebugPorts::default(),
    );
    if let Some(name) = &cfg.net_tap {
        let tap = crate::net::tap::Tap::open(name).map_err(|e| VmmError::Config(format!("--net tap:{name}: {e}")))?;
        bus.attach_nic(Rtl8139::new(PORT_NIC, NIC_MAC, mem.clone(), Box::new(tap)));
    }
    let started = Instant::now();
    let thread_mem = mem.clone();
    let handle = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(move || vcpu::run_loop(vcpu_fd, bus, thread_mem))
        .map_err(|e| VmmError::Kvm(format!("cannot start the vCPU thread: {e}")))?;
    let (outcome, stats, mut bus) = handle.join().map_err(|_| VmmError::Kvm("the vCPU thread panicked".into()))?;
    let run_ns = started.elapsed().as_nanos();
    drop(vm);

    bus.serial.console().finish();
    let guest = bus.serial.console().results.last().map(|s| parse_guest_report(s));
    let run_stats = run_stats(cfg, &outcome, &stats, &bus, guest.clone(), run_ns, loaded.entry);
    Ok(RunReport { outcome, stats, guest, run_ns, run_stats })
}

/// The guest's `@@result` line (without the prefix) as a report; a line that is not a
/// report of the bundled guest's shape is kept whole in `unparsed`.
pub fn parse_guest_report(line: &str) -> GuestReport {
    serde_json::from_str(line).unwrap_or_else(|_| GuestReport { unparsed: Some(line.to_string()), ..GuestReport::default() })
}

fn run_stats(
    cfg: &VmConfig,
    outcome: &Outcome,
    stats: &crate::stats::ExitStats,
    bus: &PortBus,
    guest: Option<GuestReport>,
    run_ns: u128,
    entry: u64,
) -> RunStats {
    RunStats {
        name: cfg.name.clone(),
        workload: cfg.workload.name().to_string(),
        count: cfg.count,
        seconds: cfg.seconds,
        batch_pio: cfg.batch_pio,
        pit_hz: cfg.pit_hz,
        pmtmr_calibration: !cfg.skip_pmtmr_calibration,
        outcome: outcome.kind(),
        outcome_detail: outcome.to_string(),
        guest_exit_status: match outcome {
            Outcome::GuestExit(s) => Some(*s),
            _ => None,
        },
        guest_entry: entry,
        run_ns: u64::try_from(run_ns).unwrap_or(u64::MAX),
        exits_total: stats.total,
        by_kind: stats.by_kind(),
        by_port: ExitStats::port_counts(&stats.by_port),
        hypercalls: stats.hypercalls,
        hypercall_entries: stats.hypercall_entries,
        hypercall_errors: stats.hypercall_error_counts(),
        replayed_by_port: ExitStats::port_counts(&stats.replayed_by_port),
        interrupts_injected: stats.interrupts_injected,
        timer: TimerStats {
            programmed_hz: bus.pit.programmed_millihz() as f64 / 1000.0,
            delivered_hz: cfg.pit_hz,
            irq0_edges: bus.pit.irqs,
            irq0_missed_periods: bus.pit.irqs_missed,
            pic_coalesced: bus.pic.coalesced,
            eoi_writes: bus.pic.eois,
        },
        unclaimed_port_accesses: bus.unclaimed,
        ide: bus.ide.as_ref().map(|d| d.stats),
        nic: bus.nic.as_ref().map(|d| d.stats.clone()),
        guest,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_guest_report;

    #[test]
    fn guest_reports_parse_typed_or_are_kept_whole() {
        let g = parse_guest_report(r#"{"workload":"pio-loop","status":"ok","count":10,"pm_ticks":99,"pmtmr_calibrated":false}"#);
        assert_eq!((g.workload.as_deref(), g.count, g.pm_ticks, g.pmtmr_calibrated), (Some("pio-loop"), Some(10), Some(99), Some(false)));
        assert_eq!(g.unparsed, None);
        for line in [r#"{"status":"ok","my_own_field":1}"#, "not json {", r#"{"count":-1}"#] {
            let g = parse_guest_report(line);
            assert_eq!(g.unparsed.as_deref(), Some(line));
            assert_eq!(g, super::GuestReport { unparsed: Some(line.into()), ..Default::default() });
        }
    }
}
