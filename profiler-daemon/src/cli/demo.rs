//! `kvmprof demo`.
use std::path::PathBuf;

use anyhow::Result;
use profiler_daemon::demo::{self, DemoOptions};

#[derive(clap::Args)]
#[command(after_help = "Example:\n  sudo kvmprof demo\n  sudo kvmprof demo --json --out /tmp/kvmprof-demo > demo.json\n\n\
Runs tinyvmm (found next to kvmprof, or --tinyvmm) eight times under the profiler, about a \
minute in all, and prints: 1. the hot guest functions of a disk workload (Tables 1-3, with \
callers when available); 2. Table 4: IDE register-write exits without and with --batch-pio, \
disk images compared; 3. Fig. 7: timer exits at 1000 Hz vs --pit-hz 100; 4. Fig. 8: boot \
with and without verify_pmtmr_rate. Recordings, disk images, the guest ELF, SVG plots and \
a flame graph are kept in --out. Needs root (eBPF) and /dev/kvm.")]
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
    /// Sectors written by each disk run.
    #[arg(long, value_name = "N", default_value_t = 100)]
    sectors: u64,
    /// Guest seconds of each timer run.
    #[arg(long, value_name = "S", default_value_t = 2)]
    timer_seconds: u64,
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
    let res = demo::run(&DemoOptions { out: a.out, tinyvmm: a.tinyvmm, sectors: a.sectors, timer_seconds: a.timer_seconds, progress: !a.quiet })?;
    if a.json {
        super::emit(&(serde_json::to_string_pretty(&res.result)? + "\n"))
    } else {
        super::emit(&res.text)
    }
}
