//! `kvmprof check`.
use anyhow::Result;
use clap::ValueEnum;
use profiler_daemon::live::{self, check_attach, detect_source, require_root, SourcePrograms};
use profiler_daemon::model::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckSource {
    /// Both program sets.
    All,
    Hw,
    Emulated,
}

#[derive(clap::Args)]
#[command(after_help = "Loads each program set through the kernel's verifier and attaches it to its \
tracepoints, then detaches. Needs root. Prints which exit source this host uses, and how the \
programs read kernel memory: direct loads where the verifier casts with bpf_rdonly_cast, else \
bpf_probe_read_kernel (KVMPROF_HELPER_READS=1 forces the latter).")]
pub struct CheckArgs {
    /// Which program set to load and attach.
    #[arg(long, value_enum, default_value = "all")]
    source: CheckSource,
}

pub fn run(a: CheckArgs) -> Result<i32> {
    require_root("check")?;
    let tfs = live::tracefs::ensure_mounted()?;
    let sources = match a.source {
        CheckSource::Hw => vec![Source::Hw],
        CheckSource::Emulated => vec![Source::Emulated],
        CheckSource::All => vec![Source::Hw, Source::Emulated],
    };
    for s in sources {
        check_attach(&tfs, s)?;
        println!("{}: loaded and attached to {}", s.name(), s.attach_points().join(", "));
    }
    println!("detected source on this host: {}", detect_source().name());
    let btf = live::btf::Btf::from_file(std::path::Path::new(live::btf::VMLINUX_BTF))?;
    println!("kernel memory reads: {}", live::kfunc::KernelReads::detect(&btf).describe());
    Ok(0)
}
