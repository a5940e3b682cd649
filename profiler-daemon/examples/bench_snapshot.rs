//! What `Session::snapshot()` costs against the number of exit keys in the in-kernel map.
//!
//! For each key count K, a calibration guest (`kvm-exit-loop --port-sweep --outs K`) makes one
//! `out` to each of K ports (K distinct keys) under a live session; after it halts, the
//! snapshot is taken 15 times and the median time and the profile's key count are printed as
//! a Markdown table (BENCHMARKS.md). Needs root, KVM, BPF, tracefs.
//!   sudo target/release/examples/bench_snapshot [K ...]   (default: 10 100 1000 10000 50000)
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use profiler_daemon::live::{self, detect_source, Session, SessionConfig, Target};

fn exit_loop() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("no target dir")?;
    let p = dir.join("kvm-exit-loop");
    if !p.exists() {
        bail!("{} not built: cargo build --release --workspace --bins", p.display());
    }
    Ok(p)
}

fn one(keys: u32) -> Result<(usize, f64, f64)> {
    let mut child = Command::new(exit_loop()?)
        .args(["--port-sweep", "--outs", &keys.to_string(), "--out-port", "0x0", "--wait-for-go"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let tfs = live::tracefs::ensure_mounted()?;
    let cfg = SessionConfig { source: detect_source(), target: Target::Process(child.id()), records: false, command: None };
    let mut session = Session::start(&tfs, cfg)?;
    writeln!(child.stdin.take().context("stdin")?, "go")?;
    if !child.wait()?.success() {
        bail!("kvm-exit-loop failed");
    }
    let mut times = Vec::new();
    let mut n = 0;
    for _ in 0..15 {
        let t0 = Instant::now();
        let p = session.snapshot()?;
        times.push(t0.elapsed().as_secs_f64());
        n = p.exits.len();
        eprintln!("keys {n} exits {} keys_full {} threads_full {}", p.total_exits(), p.meta.exit_keys_full, p.meta.threads_full);
    }
    drop(session.finish()?);
    times.sort_by(f64::total_cmp);
    Ok((n, times[times.len() / 2], times[times.len() - 1]))
}

fn main() -> Result<()> {
    let ks: Vec<u32> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let ks = if ks.is_empty() { vec![10, 100, 1000, 10000, 50000] } else { ks };
    println!("| exit keys in the map | snapshot() median | max of 15 | per key |");
    println!("|---:|---:|---:|---:|");
    for k in ks {
        let (n, med, max) = one(k)?;
        println!("| {n} | {:.2} ms | {:.2} ms | {:.2} µs |", med * 1e3, max * 1e3, med * 1e6 / n.max(1) as f64);
    }
    println!("\n{} CPUs; the per-CPU values of each key are summed.", std::thread::available_parallelism().map_or(0, |n| n.get()));
    Ok(())
}
