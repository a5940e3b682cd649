//! `tinyvmm`: run the bundled guest (or another ELF) on KVM with the paper's devices.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use vmm::{Outcome, VmConfig, Workload};

/// A minimal KVM VMM that reproduces the I/O behaviour measured by Zhang et al.,
/// "Evaluating and Optimizing I/O Virtualization in KVM", and its two optimizations:
/// batched port I/O (`--batch-pio`) and a lower timer rate (`--pit-hz`).
#[derive(Parser)]
#[command(name = "tinyvmm", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the guest, run one workload, print exit statistics.
    ///
    /// Example: tinyvmm run --disk disk.img --workload disk-write --count 1000 --batch-pio
    ///
    /// Network (in the test network, inside HostB's namespace, which holds the TAP):
    /// ip netns exec HOSTB tinyvmm run --net tap:NAME --nic-mode napi --workload net-rx --count 1000
    Run(RunArgs),
    /// Write the bundled guest ELF (symbols + DWARF) to FILE, for symbolizing guest RIPs.
    GuestElf {
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}



#[derive(clap::Args)]
struct RunArgs {
    /// Guest ELF to boot instead of the bundled one (same boot protocol, see crate docs).
    #[arg(long, value_name = "ELF")]
    guest: Option<PathBuf>,
    /// Raw disk image for the IDE disk (primary master); writes go to this file.
    #[arg(long, value_name = "IMG")]
    disk: Option<PathBuf>,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Sectors for disk-write/disk-read/timer-disk, iterations for pio-loop.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    count: u64,
    /// Duration of the timer workload, measured by the guest on its PM timer (default 1);
    /// of net-echo, and net-rx's idle timeout (default 10).
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
    /// Merge each IDE command's register accesses into one doorbell hypercall.
    #[arg(long)]
    batch_pio: bool,
    /// Deliver IRQ0 at HZ whatever rate the guest programmed (it programs 1000 Hz);
    /// counter reads stay consistent with what the guest wrote.
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pit_hz: Option<u32>,
    /// Skip the guest's boot-time PM-timer calibration loop (verify_pmtmr_rate).
    #[arg(long)]
    skip_pmtmr_calibration: bool,
    /// Write the statistics (and the guest's report) as JSON to FILE: the
    /// `tinyvmm_abi::stats::RunStats` document.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// A label copied into the statistics.
    #[arg(long)]
    name: Option<String>,
    /// Write the guest memory map (guest-physical -> host-virtual) as JSON to FILE before
    /// the vCPU starts, for reading guest memory through /proc/PID/mem.
    #[arg(long, value_name = "FILE")]
    memory_map: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    mem_mib: u64,
    /// Do not echo the guest console to stdout.
    #[arg(long)]
    quiet: bool,
    /// The NIC (RTL8139-compatible, I/O base 0xc000, IRQ 5): `none`, or `tap:NAME` to
    /// create (or attach to) the TAP device NAME and move frames through it (needs
    /// CAP_NET_ADMIN).
    #[arg(long, value_name = "none|tap:NAME", default_value = "none", value_parser = parse_net)]
    net: NetArg,
    /// The guest NIC driver's receive mode: `irq` (an interrupt per packet: read ISR, ack,
    /// take one packet) or `napi` (on an interrupt mask the NIC, poll the ring until empty
    /// under a budget of 64, unmask).
    #[arg(long, value_name = "irq|napi", default_value = "irq", value_parser = parse_nic_mode)]
    nic_mode: vmm::abi::net::NicMode,
    /// UDP payload bytes per datagram for net-tx (16-1472: the stream's header is 16).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    size: u32,
    /// The guest's IPv4 address; its gateway is .1 of the same /24 (HostB in the test
    /// network: 198.18.1.1).
    #[arg(long, default_value = "198.18.1.2", value_name = "A.B.C.D")]
    guest_ip: std::net::Ipv4Addr,
}

fn parse_nic_mode(s: &str) -> Result<vmm::abi::net::NicMode, String> {
    vmm::abi::net::NicMode::parse(s).ok_or_else(|| format!("{s:?}: give `irq` or `napi`"))
}

#[derive(Clone, Debug)]
enum NetArg {
    None,
    Tap(String),
}

fn parse_net(s: &str) -> Result<NetArg, String> {
    match s.split_once(':') {
        _ if s == "none" => Ok(NetArg::None),
        Some(("tap", name)) if !name.is_empty() => Ok(NetArg::Tap(name.into())),
        _ => Err(format!("{s:?}: give `none` or `tap:NAME` (e.g. tap:tap0)")),
    }
}

fn run(a: RunArgs) -> Result<i32> {
    let mut cfg = VmConfig::new(a.workload);
    if let Some(p) = &a.guest {
        cfg.guest_elf = std::fs::read(p).with_context(|| format!("cannot read guest {}", p.display()))?;
    }
    cfg.disk = a.disk;
    cfg.count = a.count;
    cfg.seconds = a.seconds.unwrap_or(if a.workload.needs_net() { 10 } else { 1 });
    cfg.nic_mode = a.nic_mode;
    cfg.net_size = a.size;
    cfg.guest_ip = a.guest_ip.octets();
    cfg.batch_pio = a.batch_pio;
    cfg.pit_hz = a.pit_hz;
    cfg.skip_pmtmr_calibration = a.skip_pmtmr_calibration;
    cfg.memory_map = a.memory_map;
    cfg.mem_mib = a.mem_mib;
    cfg.echo_console = !a.quiet;
    cfg.name = a.name;
    cfg.net_tap = match a.net {
        NetArg::None => None,
        NetArg::Tap(name) => Some(name),
    };
    let report = vmm::run(&cfg)?;
    eprint!("{}", report.stats.render());
    if let Some(p) = &a.stats_json {
        write_stats(p, &report.run_stats).with_context(|| format!("cannot write {}", p.display()))?;
    }
    match report.outcome {
        Outcome::GuestExit(0) => Ok(0),
        ref o => {
            eprintln!("tinyvmm: {o}");
            Ok(2)
        }
    }
}

/// The `--stats-json` file: the [`vmm::abi::stats::RunStats`] document, pretty-printed,
/// with a final newline.
fn write_stats(path: &std::path::Path, stats: &vmm::abi::stats::RunStats) -> Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut w, stats)?;
    w.write_all(b"\n")?;
    w.flush()?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::GuestElf { output } => std::fs::write(&output, vmm::GUEST_ELF)
            .with_context(|| format!("cannot write {}", output.display()))
            .map(|_| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tinyvmm: {e:#}");
            std::process::exit(1);
        }
    }
}

