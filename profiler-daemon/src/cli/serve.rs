//! `kvmprof serve`.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use profiler_daemon::serve::{self, config::parse_interval, ServeOptions};

use super::record::SourceArg;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  kvmprof serve\n  \
kvmprof serve --config /etc/kvmprof/serve.toml\n  \
curl -s http://127.0.0.1:9477/metrics | grep kvmprof_exits_total\n  \
go tool pprof -top http://127.0.0.1:9477/debug/pprof/exits?seconds=10\n\n\
Traces every KVM guest on the host (any process holding a KVM VM), named by QEMU's -name, \
tinyvmm's --name, else comm-PID. Endpoints: / (links), /metrics, /healthz, \
/debug/pprof/exits?seconds=N. The config (TOML) gives per-VM guest symbols (vmlinux / kallsyms, \
by VM name glob) for the kvmprof_function_* series, top_functions, interval_seconds and listen; \
see dashboards/kvmprof-serve.toml. SIGHUP reloads it (a bad file keeps the previous one); \
SIGTERM or SIGINT detach every program and exit. Needs root (eBPF).")]
pub struct ServeArgs {
    /// Address to serve on (default 127.0.0.1:9477; a non-loopback address is warned about).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// The TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seconds between reads of the in-kernel maps (default 1; at least 0.1).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    interval: Option<f64>,
    /// Which tracepoints give the exits.
    #[arg(long, value_enum, default_value = "auto")]
    source: SourceArg,
}

pub fn run(a: ServeArgs) -> Result<i32> {
    let interval = a.interval.map(|s| parse_interval(s).map_err(|e| anyhow!("--interval {e}"))).transpose()?;
    serve::run(&ServeOptions { listen: a.listen, config: a.config, interval, source: a.source.resolve() })?;
    Ok(0)
}
