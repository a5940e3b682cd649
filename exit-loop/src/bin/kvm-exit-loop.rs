//! `kvm-exit-loop --outs N --ins M`: a KVM guest that executes exactly N `out` and M `in`, then
//! `hlt`, under a bare KVM_RUN loop. Prints the exits it saw (and the RIPs) as JSON.
use std::time::Duration;

use clap::Parser;
use kvm_exit_loop::{run, ExitLoopGuest, Mode, Options};

#[derive(Parser)]
#[command(
    about = "A KVM guest with an exactly known number of port-I/O exits (test and benchmark calibration)",
    after_help = "With --pause-then-outs M the guest makes N outs, then pauses: kvm-exit-loop prints `paused` \
and waits for a line on stdin, then the guest makes M more outs at the same RIP and halts. \
With --wait-for-go it prints `ready` once the VM exists and waits for a line before the guest starts. \
Every guest runs in real mode, or with --long-mode in 64-bit mode (the same exits at other RIPs: \
see `out_rip` etc. in the output)."
)]
struct Args {
    /// Number of `out dx, al` the guest executes.
    #[arg(long, default_value_t = 1000)]
    outs: u32,
    /// Number of `in al, dx` the guest executes (not with --pause-then-outs).
    #[arg(long, default_value_t = 0)]
    ins: u32,
    /// Port written by the `out`s (hex with 0x, or decimal).
    #[arg(long, default_value = "0x80", value_parser = parse_port)]
    out_port: u16,
    /// Port read by the `in`s.
    #[arg(long, default_value = "0x71", value_parser = parse_port)]
    in_port: u16,
    /// After the outs, pause (see below), then make this many more outs at the same RIP.
    #[arg(long, value_name = "M", conflicts_with = "ins")]
    pause_then_outs: Option<u32>,
    /// Instead: one `out` to each of N successive ports from --out-port (N = --outs): N
    /// distinct exit sites.
    #[arg(long, conflicts_with_all = ["ins", "pause_then_outs"])]
    port_sweep: bool,
    /// Instead: N rounds (N = --outs) of two back-to-back `out`s to --out-port and +1 at one
    /// place, W iterations of guest work, two `out`s to --out-port+2 and +3 at another place,
    /// W iterations of work (`second_rip` in the output is the second place).
    #[arg(long, value_name = "W", conflicts_with_all = ["ins", "pause_then_outs", "port_sweep"])]
    interleaved_work: Option<u32>,
    /// Run the guest in 64-bit long mode (identity-mapped paging, CS base 0) instead of real
    /// mode: the same exits, as a 64-bit guest (every modern OS) makes them.
    #[arg(long)]
    long_mode: bool,
    /// Print `ready` and wait for a line on stdin before the guest's first instruction.
    #[arg(long)]
    wait_for_go: bool,
    /// The VMM answers each `in` after this many microseconds (busy-waiting).
    #[arg(long, value_name = "US", default_value_t = 0)]
    in_delay_us: u64,
    /// Pace the outs to R per second: after the i-th out the VMM waits until i/R seconds
    /// after the start before resuming the guest (a known exit rate for live views).
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    outs_per_second: Option<f64>,
}

fn parse_port(s: &str) -> Result<u16, String> {
    let n = match profiler_common::parse_hex(s) {
        Some(n) if s.starts_with("0x") || s.starts_with("0X") => Some(n),
        _ => s.parse().ok(),
    };
    n.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| format!("not a port number (0 to 0xffff): {s}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("not a positive rate: {s}")),
    }
}

fn main() {
    let a = Args::parse();
    let mode = if a.long_mode { Mode::Long } else { Mode::Real };
    let guest = match a.pause_then_outs {
        _ if a.port_sweep => ExitLoopGuest::sweep_in(mode, a.outs, a.out_port),
        _ if a.interleaved_work.is_some() => ExitLoopGuest::interleaved_in(mode, a.outs, a.interleaved_work.unwrap_or(0), a.out_port),
        Some(m) => ExitLoopGuest::paused_in(mode, a.outs, m, a.out_port),
        None => ExitLoopGuest::new_in(mode, a.outs, a.ins, a.out_port, a.in_port),
    };
    let opts = Options { in_delay: Duration::from_micros(a.in_delay_us), wait_before_start: a.wait_for_go, outs_per_second: a.outs_per_second };
    match run(&guest, opts) {
        Ok(st) => {
            let v = serde_json::json!({
                "mode": guest.mode.name(),
                "out_rip": format!("{:#x}", guest.out_rip),
                "in_rip": format!("{:#x}", guest.in_rip),
                "pause_rip": format!("{:#x}", guest.pause_rip),
                "hlt_rip": format!("{:#x}", guest.hlt_rip),
                "second_rip": format!("{:#x}", guest.second_rip),
                "stats": st,
            });
            println!("{v}");
        }
        Err(e) => {
            eprintln!("kvm-exit-loop: error: {e:#}");
            std::process::exit(1);
        }
    }
}
