//! The command line: the only place that knows clap. Each subcommand maps its flags onto the
//! library's plain types, runs it, and prints; errors get the flag names here.
use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod advise;
mod check;
mod demo;
mod diff;
mod import;
mod record;
mod report;
mod serve;
mod symbolize;
mod symbols;
mod top;

#[derive(Parser)]
#[command(
    name = "kvmprof",
    version,
    about = "Which guest functions cause your VM exits, and what do those exits cost?",
    long_about = "kvmprof records every VM exit of a KVM guest with eBPF on the KVM tracepoints, \
aggregates them in the kernel by (vCPU thread, reason, guest RIP, port, caller), and prints the hot-exit \
tables of Zhang et al., \"Evaluating and Optimizing I/O Virtualization in KVM\".\n\n\
Typical use:\n  sudo kvmprof record -o run.kvmprof -- qemu-system-x86_64 -enable-kvm ...\n  \
sudo kvmprof record -o run.kvmprof --pid $(pidof qemu-system-x86_64) --duration 10\n  \
kvmprof report run.kvmprof --vmlinux vmlinux --by function\n\n\
Exit sources: `hw` (kvm_exit/kvm_entry, VMX/SVM hosts) and `emulated` (hosts where kvm_exit \
never fires, e.g. PVM: the RIP is read from the instruction emulator at each exit, as kvm_emulate_insn \
reports it). The source is detected and named in every report."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Record the VM exits of a command, a running VM (--pid), or every VM on the host.
    Record(record::RecordArgs),
    /// Print the hot-exit tables of a recording.
    Report(report::ReportArgs),
    /// Map guest addresses to function+offset, file:line and inlined frames.
    Symbolize(symbolize::SymbolizeArgs),
    /// Convert recorded KVM tracepoint text (perf script, ftrace) into a recording.
    Import(import::ImportArgs),
    /// Load and attach the eBPF programs, then detach: checks that kvmprof can trace here.
    Check(check::CheckArgs),
    /// Compare two recordings per RIP or function: the paper's Table 4 (before/after).
    Diff(diff::DiffArgs),
    /// Run tinyvmm's bundled guest under the profiler and print the paper's comparisons.
    Demo(demo::DemoArgs),
    /// Live view of VM exits per second by guest function, RIP, reason, port or vCPU.
    Top(top::TopArgs),
    /// Always-on exporter: every VM's exits as Prometheus metrics (/metrics) and pprof.
    Serve(serve::ServeArgs),
    /// Batching candidates: runs of successive I/O exits in guest functions, ranked by the
    /// exits batching them would save (the paper's §3.1.1, automated).
    Advise(advise::AdviseArgs),
}

/// Runs one command; the exit code on success.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Record(a) => record::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Diff(a) => diff::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Symbolize(a) => symbolize::run(&a),
        Cmd::Import(a) => import::run(a),
        Cmd::Check(a) => check::run(a),
        Cmd::Top(a) => top::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Advise(a) => advise::run(a),
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<i32> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        r => r.map(|_| 0).context("writing the output"),
    }
}
