//! `kvmprof demo`.
use std::path::PathBuf;

use anyhow::Result;
use profiler_daemon::demo::{self, DemoOptions, NetOptions, Sections};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  sudo kvmprof demo\n  sudo kvmprof demo --json --out /tmp/kvmprof-demo > demo.json\n  \
sudo kvmprof demo --sections net --net-rounds 5      # the network half only, medians of 5 rounds\n\n\
Runs tinyvmm (found next to kvmprof, or --tinyvmm) under the profiler and prints the paper's \
experiments measured here, beside the paper's figures.\n\n\
Section disk (about 10 s): 1. the hot guest functions of a disk workload (Tables 1-3, with \
callers when available); 2. Table 4: IDE register-write exits without and with --batch-pio, \
disk images compared; 3. Fig. 7: timer exits at 1000 Hz vs --pit-hz 100; 4. Fig. 8: boot \
with and without verify_pmtmr_rate; 5. the batching advisor against Table 4.\n\n\
Section net (about a minute per round): builds a test network of namespaces (HostA, HostB \
with the guest's TAP; 198.18.0.0/15 only, removed afterwards) and runs the guest's RTL8139 \
driver in irq and napi mode: 6. Fig. 3: ping RTT HostA-HostB, HostB-guest, HostA-guest and \
the guest's share; 7. Fig. 4 / Fig. 9: UDP stream to and from the guest and UDP \
request/response, exits per packet, and whether removing NAPI helps here; 8. Table 2: the \
hot guest functions during the stream.\n\n\
Recordings, tinyvmm's statistics and consoles, disk images, the guest ELF, SVG plots and a \
flame graph are kept in --out. Needs root (eBPF, namespaces), /dev/kvm, and for the net \
section /dev/net/tun, `ip` and `ping`.")]
pub struct DemoArgs {
    /// Print the results as one JSON object (its fields are documented in the README) instead of tables.
    #[arg(long)]
    json: bool,
    /// Work directory for recordings, disk images, the guest ELF and the SVG plots.
    #[arg(long, value_name = "DIR", default_value = "kvmprof-demo")]
    out: PathBuf,
    /// The tinyvmm binary (default: next to this kvmprof; without it there, give its path).
    #[arg(long, value_name = "PATH")]
    tinyvmm: Option<PathBuf>,
    /// Sections to run, comma-separated: `disk` (1-5), `net` (6-8).
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "disk,net", value_parser = ["disk", "net"])]
    sections: Vec<String>,
    /// Sectors written by each disk run.
    #[arg(long, value_name = "N", default_value_t = 100)]
    sectors: u64,
    /// Guest seconds of each timer run.
    #[arg(long, value_name = "S", default_value_t = 2)]
    timer_seconds: u64,
    /// net: pings per path (Fig. 3).
    #[arg(long, value_name = "N", default_value_t = NetOptions::default().pings)]
    net_pings: u32,
    /// net: datagrams HostA offers to the guest (net-rx), at --net-rate.
    #[arg(long, value_name = "N", default_value_t = NetOptions::default().to_guest)]
    net_to_guest: u64,
    /// net: datagrams the guest sends to HostA (net-tx), as fast as it can.
    #[arg(long, value_name = "N", default_value_t = NetOptions::default().from_guest)]
    net_from_guest: u64,
    /// net: UDP payload bytes per datagram (16-1472), streams and request/response.
    #[arg(long, value_name = "BYTES", default_value_t = NetOptions::default().size)]
    net_size: u64,
    /// net: datagrams per second HostA offers to the guest (above what it takes: the excess is dropped and counted).
    #[arg(long, value_name = "N", default_value_t = NetOptions::default().rate)]
    net_rate: f64,
    /// net: seconds of UDP request/response per driver mode.
    #[arg(long, value_name = "S", default_value_t = NetOptions::default().rr_seconds)]
    net_rr_seconds: f64,
    /// net: rounds (each runs every test with the irq and then the napi driver); medians are reported.
    #[arg(long, value_name = "N", default_value_t = NetOptions::default().rounds)]
    net_rounds: u32,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: DemoArgs) -> Result<i32> {
    if a.sectors == 0 || a.timer_seconds == 0 {
        anyhow::bail!("--sectors and --timer-seconds must be at least 1");
    }
    if let Some(p) = a.tinyvmm.as_ref().filter(|p| !p.is_file()) {
        anyhow::bail!("--tinyvmm {}: no such file", p.display());
    }
    let sections = Sections { disk: a.sections.iter().any(|s| s == "disk"), net: a.sections.iter().any(|s| s == "net") };
    let net = NetOptions { pings: a.net_pings, to_guest: a.net_to_guest, from_guest: a.net_from_guest, size: a.net_size, rate: a.net_rate, rr_seconds: a.net_rr_seconds, rounds: a.net_rounds };
    net.check()?;
    let res = demo::run(&DemoOptions { out: a.out, tinyvmm: a.tinyvmm, sections, sectors: a.sectors, timer_seconds: a.timer_seconds, net, progress: !a.quiet })?;
    if a.json {
        super::emit(&(serde_json::to_string_pretty(&res.result)? + "\n"))
    } else {
        super::emit(&res.text)
    }
}
