//! `kvm-exit-loop --outs N --ins M`: a KVM guest that executes exactly N `out` and M `in`, then
//! `hlt`, under a bare KVM_RUN loop. Prints the exits it saw (and the two RIPs) as JSON.
use clap::Parser;
use profiler_daemon::exit_loop::{run, ExitLoopGuest};

#[derive(Parser)]
#[command(about = "A KVM guest with an exactly known number of port-I/O exits (test and benchmark calibration)")]
struct Args {
    /// Number of `out dx, al` the guest executes.
    #[arg(long, default_value_t = 1000)]
    outs: u32,
    /// Number of `in al, dx` the guest executes.
    #[arg(long, default_value_t = 0)]
    ins: u32,
    /// Port written by the `out`s.
    #[arg(long, default_value_t = 0x80, value_parser = parse_port)]
    out_port: u16,
    /// Port read by the `in`s.
    #[arg(long, default_value_t = 0x71, value_parser = parse_port)]
    in_port: u16,
}

fn parse_port(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("not a port number: {s}"))
}

fn main() {
    let a = Args::parse();
    let guest = ExitLoopGuest::new(a.outs, a.ins, a.out_port, a.in_port);
    match run(&guest) {
        Ok(st) => {
            let v = serde_json::json!({
                "out_rip": format!("{:#x}", guest.out_rip),
                "in_rip": format!("{:#x}", guest.in_rip),
                "hlt_rip": format!("{:#x}", guest.hlt_rip),
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
