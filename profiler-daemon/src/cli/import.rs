//! `kvmprof import`.
use std::path::PathBuf;

use std::io::{BufReader, Seek, SeekFrom};

use anyhow::{Context, Result};
use clap::ValueEnum;
use profiler_daemon::import::{self, ImportOptions, TextFormat};
use profiler_daemon::model::record_stream::{self, StreamWriter};
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
kvmprof import ftrace /sys/kernel/tracing/trace -o kvm.kvmprof\n\n\
The input is read in one pass, in bounded memory, whatever its size (a file is first scanned \
for kvm_exit, stopping at the first, then mapped and parsed in place on every CPU). Every exit is also written, in trace order, to \
FILE.records beside the output (for `report --format perfetto`). Lines that are not \
understood are counted, and the first 10 are named by line number.")]
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
    let format = match a.format {
        TextFormatArg::PerfScript => TextFormat::PerfScript,
        TextFormatArg::Ftrace => TextFormat::Ftrace,
    };
    let mut opts = ImportOptions { max_gap_ns: a.max_gap, hw: None };
    let input = if a.file.as_os_str() == "-" {
        None
    } else {
        let cannot = || format!("cannot read {}", a.file.display());
        let mut f = std::fs::File::open(&a.file).with_context(cannot)?;
        // A file is scanned for kvm_exit first (stopping at the first one), then replayed.
        opts.hw = Some(import::trace_is_hw(&mut f).with_context(cannot)?);
        f.seek(SeekFrom::Start(0)).with_context(cannot)?;
        Some(f)
    };
    // Every exit, in trace order, streams to the record stream beside the output.
    let stream_path = record_stream::path_for(&a.output);
    let mut tmp = stream_path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut writer = StreamWriter::create(&tmp)?;
    let imported = match &input {
        // A file is mapped and parsed in place where it can be.
        Some(f) => import::import_file(f, format, opts, Some(&mut writer)),
        None => import::import_with(BufReader::with_capacity(READ_BUFFER, std::io::stdin()), format, opts, Some(&mut writer)),
    };
    let imported = match imported {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let mut info = writer.finish()?;
    std::fs::rename(&tmp, &stream_path).with_context(|| format!("cannot write {}", stream_path.display()))?;
    info.path = stream_path;
    let mut profile = imported.profile;
    profile.records_file = Some(info);
    recording::save(&profile, &a.output)?;
    eprintln!(
        "kvmprof: imported {} exits (source {}) from {} events in {} lines ({} lines not understood) -> {}",
        profile.total_exits(),
        profile.meta.source,
        imported.events,
        imported.lines,
        imported.skipped,
        a.output.display()
    );
    if imported.skipped > 0 {
        let nums: Vec<String> = imported.skipped_lines.iter().map(u64::to_string).collect();
        let more = if imported.skipped > nums.len() as u64 { ", ..." } else { "" };
        eprintln!("kvmprof: lines not understood: {}{more}", nums.join(", "));
    }
    Ok(0)
}

/// Small: the importer reads blocks of a MiB, which a reader with a smaller buffer passes
/// straight to the file (no copy through the buffer); the buffer only serves the lookahead
/// over standard input, which reads a line at a time.
const READ_BUFFER: usize = 64 << 10;
