//! `kvmprof serve`: the always-on exporter. Attaches once, host-wide, follows VMs as they
//! start and stop, and serves their exits as Prometheus metrics (`/metrics`), with `/healthz`
//! and a pprof endpoint (`/debug/pprof/exits?seconds=N`).
//!
//! Two threads: the collector (`collector.rs`) owns the live session and publishes one
//! [`metrics::Exposition`] per interval; the HTTP side (`http.rs`, axum on a current-thread
//! tokio runtime) renders the latest one per scrape and handles the signals.
//! Files: `config.rs` the TOML config, `discovery.rs` which processes are VMs and their names,
//! `vm.rs` one VM's series (top-N functions), `metrics.rs` the Prometheus families,
//! `symbols.rs` shared symbol loading, `pprof.rs` the windows of the pprof endpoint.
pub mod collector;
pub mod config;
pub mod discovery;
mod http;
pub mod metrics;
pub mod pprof;
mod symbols;
pub mod vm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use self::collector::{log, Collector};
use self::config::{Config, DEFAULT_LISTEN};
use self::metrics::{registry, Published};
use crate::live::{detect_source, require_root, tracefs, Session, SessionConfig, Target};
use crate::model::Source;

/// `kvmprof serve`'s options; each given one wins over the config file's.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub config: Option<PathBuf>,
    pub interval: Option<Duration>,
    pub source: Option<Source>,
}

/// Serves until SIGTERM or SIGINT, then detaches every program.
pub fn run(opts: &ServeOptions) -> Result<()> {
    let config = match &opts.config {
        Some(p) => Config::load(p).map_err(|e| anyhow!(e))?,
        None => Config::default(),
    };
    require_root("serve")?;
    // Before the session parses BTF and reads maps: see fix_mmap_threshold.
    collector::fix_mmap_threshold();
    let listen = opts.listen.or(config.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
    // Bound before anything is attached: a busy port costs nothing to report.
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse { " (another kvmprof serve? choose another address with --listen)" } else { "" };
        anyhow!("cannot listen on {listen}: {e}{hint}")
    })?;
    listener.set_nonblocking(true).context("cannot make the listening socket non-blocking")?;
    if !listen.ip().is_loopback() {
        log(&format!(
            "warning: listening on {listen}, not loopback: anyone who can reach it reads your VM and guest function names; \
             put it behind a firewall or a TLS proxy"
        ));
    }
    let tracefs = tracefs::ensure_mounted()?;
    let source = opts.source.unwrap_or_else(detect_source);
    let session = Session::start(&tracefs, SessionConfig { source, target: Target::AllVms, records: false, command: None })?;

    let published = Published::default();
    let collector = Collector::new(session, config, opts.interval, published.clone());
    let interval = collector.interval();
    let (requests, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("kvmprof-collect".into())
        .spawn({
            let stop = Arc::clone(&stop);
            move || collector.run(rx, stop)
        })
        .context("cannot start the collector thread")?;
    log(&format!("serving http://{listen}/metrics (source {source}, every {} s); SIGHUP reloads the config, SIGTERM stops", interval.as_secs_f64()));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the tokio runtime")?;
    let served = runtime.block_on(http::serve(listener, registry(published), requests, opts.config.clone()));
    stop.store(true, Ordering::Relaxed);
    let detached = thread.join().map_err(|_| anyhow!("the collector thread panicked"))?;
    let n = detached.context("cannot detach the eBPF programs cleanly")?;
    log(&format!("stopped: detached {n} eBPF programs"));
    served
}
