//! `kvmprof import`.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use profiler_daemon::import::{self, TextFormat};
use profiler_daemon::model::recording;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextFormatArg {
    /// `perf script` output of `perf record -e 'kvm:*'`.
    PerfScript,
    /// ftrace text from /sys/kernel/tracing/trace or trace_pipe.
    Ftrace,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  perf record -e 'kvm:*' -a -- sleep 5 && perf script > kvm.txt\n  \
kvmprof import perf-script kvm.txt -o kvm.kvmprof\n  \
kvmprof import ftrace /sys/kernel/tracing/trace -o kvm.kvmprof")]
pub struct ImportArgs {
    #[arg(value_enum)]
    format: TextFormatArg,
    /// The text file ("-" for standard input).
    file: PathBuf,
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Run detection (`kvmprof advise`), as `record --max-gap`. Default: the trace's source's
    /// default (5us for kvm_exit text, 200us for emulated-source text).
    #[arg(long, value_name = "DURATION", value_parser = super::advise::parse_gap)]
    max_gap: Option<u64>,
}

pub fn run(a: ImportArgs) -> Result<i32> {
    let reader: Box<dyn std::io::BufRead> = if a.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let format = match a.format {
        TextFormatArg::PerfScript => TextFormat::PerfScript,
        TextFormatArg::Ftrace => TextFormat::Ftrace,
    };
    let imported = import::import_with_max_gap(reader, format, a.max_gap)?;
    recording::save(&imported.profile, &a.output)?;
    eprintln!(
        "kvmprof: imported {} exits (source {}) from {} events in {} lines ({} lines not understood) -> {}",
        imported.profile.total_exits(),
        imported.profile.meta.source,
        imported.events,
        imported.lines,
        imported.skipped,
        a.output.display()
    );
    Ok(0)
}
