//! eBPF cost per exit of kvmprof's programs, from the kernel's own `bpf_stats`: a calibration
//! guest makes exactly N port writes under a live session; after it halts and before the
//! session ends, each program's `run_time_ns / run_cnt` is read with `bpftool prog show`.
//! Wall-clock slowdowns swing ±10% here; this does not. Needs root, KVM, BPF, tracefs, bpftool.
//!   sudo target/release/examples/bench_ebpf_cost [N] [--records]
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use profiler_daemon::live::{self, detect_source, Session, SessionConfig, Target};

/// kvmprof's program names as bpftool shows them (the kernel keeps 15 characters).
const PROGRAMS: &[&str] = &["kvm_pio", "kvm_mmio", "kvm_userspace_e", "kvm_fpu", "vcpu_of_insn", "vcpu_of_exit", "kvm_exit", "kvm_entry", "cpu_switch"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records = args.iter().any(|a| a == "--records");
    let n: u64 = args.iter().find(|a| !a.starts_with("--")).map_or(Ok(400_000), |a| a.parse())?;
    let exe = std::env::current_exe()?;
    let loop_bin = exe.parent().and_then(|d| d.parent()).context("target dir")?.join("kvm-exit-loop");
    let mut child = Command::new(&loop_bin)
        .args(["--outs", &n.to_string(), "--wait-for-go"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} (cargo build --release --workspace --bins)", loop_bin.display()))?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling bpf_stats")?;
    let tfs = live::tracefs::ensure_mounted()?;
    let cfg = SessionConfig { source: detect_source(), target: Target::Process(child.id()), records, command: None };
    let mut session = Session::start(&tfs, cfg)?;
    writeln!(child.stdin.take().context("stdin")?, "go")?;
    while child.try_wait()?.is_none() {
        session.poll();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let profile = session.finish()?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    let exits = profile.total_exits();
    if exits != n + 1 {
        bail!("expected {} exits, recorded {exits}", n + 1);
    }
    println!("{} source, {} mode, {exits} exits (N = {n} outs + 1 hlt)\n", profile.meta.source, if records { "--records" } else { "aggregate" });
    println!("| program | runs | runs per exit | ns per run | ns per exit |");
    println!("|---|---:|---:|---:|---:|");
    let mut total = 0.0;
    for p in progs.as_array().context("bpftool JSON")? {
        let name = p["name"].as_str().unwrap_or("");
        let (cnt, ns) = (p["run_cnt"].as_u64().unwrap_or(0), p["run_time_ns"].as_u64().unwrap_or(0));
        if !PROGRAMS.contains(&name) || cnt == 0 {
            continue;
        }
        let per_exit = ns as f64 / exits as f64;
        total += per_exit;
        println!("| `{name}` | {cnt} | {:.2} | {:.0} | {per_exit:.0} |", cnt as f64 / exits as f64, ns as f64 / cnt as f64);
    }
    println!("| **total** | | | | **{total:.0}** |");
    Ok(())
}
