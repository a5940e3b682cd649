//! `kvmprof demo`: runs tinyvmm's bundled guest under the profiler and prints the paper's
//! comparisons measured on this host, beside the paper's own figures.
//!
//! Every number comes from a real eBPF recording ([`record::run`]) of a real tinyvmm run,
//! cross-checked with tinyvmm's own `--stats-json` counts. The experiments:
//!
//! 1. Hot functions (Tables 1–3): `disk-write` of N sectors, default boot.
//! 2. Table 4: the same workload with `--batch-pio`; IDE register-write exits (out to
//!    0x1f1–0x1f7, plus the doorbell hypercall exits that replace them) per RIP, before and
//!    after, with [`crate::diff`]; the two disk images are compared byte for byte.
//! 3. Fig. 7: the `timer-disk` workload (disk-write with IRQ0 unmasked and interrupts on
//!    during the I/O, the guest programming 1000 Hz) of [`FIG7_SECTORS_PER_SECOND`] ×
//!    `--timer-seconds` sectors, delivered at 1000 Hz and with `--pit-hz 100`: the
//!    timer-related exits as recorded (exits in `timer_interrupt`/`ack_irq`/the ISR entry)
//!    cross-checked with tinyvmm's count (EOI writes + interrupt windows), and the disk
//!    throughput the guest measured on its PM timer over the I/O phase.
//! 4. Fig. 8 / Table 3: boot only (the `timer` workload for 0 s: boot, report, exit) with
//!    the PM-timer calibration (`verify_pmtmr_rate`) on and off: exits and boot time. Boot
//!    only, as in the paper's Fig. 8, because in a disk workload of useful size the
//!    disk's data-port exits outnumber the calibration's.
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::diff::{self, DiffBy, DiffFormat};
use crate::plot::{BarChart, Series, BLUE, GREEN, ORANGE};
use crate::record::{self, RecordOptions};
use crate::recording::{parse_hex, Recording};
use crate::report::{self, Format, GroupBy};
use crate::{flame, symbolize_cmd, tracer};

/// The paper's figures, for printing beside ours. Zhang et al., "Evaluating and Optimizing
/// I/O Virtualization in KVM" (NPC 2010):
/// - Tables 1–3: the hot trap addresses are in a few guest functions: the IDE driver's
///   register writes (`ide_do_rw_disk`, 11 `outb` per command), the timer interrupt path
///   (`timer_interrupt`, the EOI `ack_ioapic_irq`) and `verify_pmtmr_rate` reading the
///   ACPI PM timer;
/// - Table 4: merging successive port I/O into one hypercall cut those exits by 85%;
/// - Fig. 7: lowering the guest timer from 1000 Hz to 100 Hz improved I/O throughput by
///   up to 15%;
/// - Fig. 8: removing the redundant `verify_pmtmr_rate` calibration removes its exits.
pub mod paper {
    pub const HOT_FUNCTIONS: &[&str] = &["ide_do_rw_disk", "timer_interrupt", "ack_ioapic_irq", "verify_pmtmr_rate"];
    pub const IDE_OUTB_PER_COMMAND: u32 = 11;
    pub const TABLE4_EXIT_REDUCTION_PCT: f64 = 85.0;
    pub const FIG7_HZ_BEFORE: u32 = 1000;
    pub const FIG7_HZ_AFTER: u32 = 100;
    pub const FIG7_MAX_IO_GAIN_PCT: f64 = 15.0;
}

/// Fig. 7 writes this many sectors per `--timer-seconds` (2 by default): 500 sectors,
/// about 1.5 s of disk I/O per run under the profiler on the PVM host the demo was
/// written on (~9 µs per port-I/O exit, 271 exits per sector).
pub const FIG7_SECTORS_PER_SECOND: u64 = 250;

/// IDE task-file and command registers (write side): 0x1f1–0x1f7.
pub const IDE_REG_FIRST: u64 = 0x1f1;
pub const IDE_REG_LAST: u64 = 0x1f7;
/// tinyvmm's batched port-I/O doorbell (one exit per merged batch).
pub const DOORBELL_PORT: u64 = 0x510;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub tinyvmm: Option<PathBuf>,
    /// Sectors written in the disk runs.
    pub sectors: u64,
    /// Scales the Fig. 7 runs: each writes `FIG7_SECTORS_PER_SECOND` × this many sectors.
    pub timer_seconds: u64,
    /// Print the progress line on stderr.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { out: PathBuf::from("kvmprof-demo"), tinyvmm: None, sectors: 100, timer_seconds: 2, progress: true }
    }
}

/// What the demo measured; `json` is the documented machine-readable object.
pub struct DemoResult {
    pub json: Value,
    pub text: String,
}

mod analysis;
mod experiments;
mod harness;
mod plots;
mod render;

use analysis::*;
pub use harness::find_tinyvmm;
use harness::*;
use render::render_text;

pub fn run(opts: &DemoOptions) -> Result<DemoResult> {
    tracer::require_root("demo")?;
    let tinyvmm = find_tinyvmm(opts.tinyvmm.as_deref())?;
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm does not exist: the demo needs KVM (load kvm_intel, kvm_amd or kvm_pvm)");
    }
    if opts.sectors == 0 || opts.timer_seconds == 0 {
        bail!("--sectors and --timer-seconds must be at least 1");
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create the work directory {}", opts.out.display()))?;
    let out = opts.out.canonicalize().with_context(|| format!("cannot resolve {}", opts.out.display()))?;
    let log = out.join("tinyvmm.log");
    let _ = std::fs::remove_file(&log);
    let ctx = Ctx { tinyvmm: tinyvmm.clone(), out: out.clone(), log };
    let mut progress = Progress { on: opts.progress, tty: std::io::stderr().is_terminal(), step: 0, total: 8, started: Instant::now() };

    progress.say("writing the bundled guest ELF (for symbols)");
    let elf = out.join("guest.elf");
    let st = Command::new(&tinyvmm)
        .args(["guest-elf", "-o"])
        .arg(&elf)
        .status()
        .with_context(|| format!("cannot run {}", tinyvmm.display()))?;
    if !st.success() {
        bail!("`{} guest-elf` failed ({st})", tinyvmm.display());
    }
    let sym = symbolize_cmd::load_symbolizer(Some(&elf), None, None)?.context("no symbols")?;
    let resolve = |rip: u64| sym.function_name(rip);

    let n = opts.sectors.to_string();
    // 1 + 2: disk-write without and with batching.
    progress.say(&format!("disk-write, {n} sectors, one exit per port access"));
    let img_before = out.join("disk-unbatched.img");
    let img_after = out.join("disk-batched.img");
    fresh_image(&img_before, opts.sectors)?;
    fresh_image(&img_after, opts.sectors)?;
    let disk = ctx.profile("disk-write", &["--workload".into(), "disk-write".into(), "--count".into(), n.clone(), "--disk".into(), img_before.display().to_string()])?;
    progress.say(&format!("disk-write, {n} sectors, --batch-pio"));
    let batched = ctx.profile(
        "disk-write-batched",
        &["--workload".into(), "disk-write".into(), "--count".into(), n.clone(), "--disk".into(), img_after.display().to_string(), "--batch-pio".into()],
    )?;

    progress.say("hot functions, callers, flame graph");
    let hot_rep = report::build(&disk.rec, GroupBy::Function, &resolve);
    let hot = hot_functions(&hot_rep, 10);
    let (callers, callers_note) = callers(&disk.rec, &resolve);
    let folded = report::build(&disk.rec, GroupBy::Caller, &resolve).render(Format::Folded, None);
    write_file(&out.join("disk-write.folded"), folded.as_bytes())?;
    let flame_path = out.join("flamegraph.svg");
    flame::write_svg(&folded, &format!("VM exits of tinyvmm's guest: disk-write, {n} sectors"), &flame_path)?;

    let t4_before = ide_register_writes(&disk.rec);
    let t4_after = ide_register_writes(&batched.rec);
    let t4 = diff::build(&t4_before, &t4_after, DiffBy::Rip, &resolve);
    let before = count_exits(&t4_before);
    let after = count_exits(&t4_after);
    let reduction_pct = if before > 0 { 100.0 * (before as f64 - after as f64) / before as f64 } else { 0.0 };
    let images_identical = files_identical(&img_before, &img_after)?;
    let checksums_equal = disk.stats["guest"]["checksum"] == batched.stats["guest"]["checksum"] && !disk.stats["guest"]["checksum"].is_null();
    let vmm_count = |s: &Value| -> u64 {
        let ports = &s["by_port"];
        (IDE_REG_FIRST..=IDE_REG_LAST).chain([DOORBELL_PORT]).map(|p| ports[format!("{p:#x}")].as_u64().unwrap_or(0)).sum()
    };
    // Cross-check: tinyvmm counts port exits per port, both directions together; so
    // does this sum over the recording.
    let rec_count = |r: &Recording| -> u64 {
        r.exits
            .iter()
            .filter(|e| port_of(e).is_some_and(|p| (IDE_REG_FIRST..=IDE_REG_LAST).contains(&p) || p == DOORBELL_PORT))
            .map(|e| e.count)
            .sum()
    };
    let cross = json!({
        "ports": "0x1f1-0x1f7 and 0x510, in and out",
        "recorded_before": rec_count(&disk.rec), "tinyvmm_before": vmm_count(&disk.stats),
        "recorded_after": rec_count(&batched.rec), "tinyvmm_after": vmm_count(&batched.stats),
    });
    let disk_sps = disk.stats["guest"]["sectors_per_sec"].as_f64().unwrap_or(0.0);
    let batched_sps = batched.stats["guest"]["sectors_per_sec"].as_f64().unwrap_or(0.0);

    let fig7_n = FIG7_SECTORS_PER_SECOND * opts.timer_seconds;
    let timer = experiments::timer_experiment(&ctx, &mut progress, fig7_n, &resolve)?;
    let pmtmr = experiments::pmtmr_experiment(&ctx, &mut progress, &resolve)?;
    progress.done();

    let table4 = json!({
        "before": before,
        "after": after,
        "reduction_pct": reduction_pct,
        "images_identical": images_identical,
        "checksums_equal": checksums_equal,
        "cross_check": cross,
        "hypercalls": batched.stats["hypercalls"],
        "sectors_per_s_before": disk_sps,
        "sectors_per_s_after": batched_sps,
        "exits_total_before": count_exits(&disk.rec),
        "exits_total_after": count_exits(&batched.rec),
        "rows": t4.rows,
    });
    let mut plot_paths = plots::write_plots(&out, &n, &t4_before, &t4_after, &table4, &timer, &pmtmr)?;
    plot_paths.insert("flamegraph".into(), json!(flame_path.display().to_string()));

    let json = json!({
        "source": disk.rec.meta.source,
        "kernel": disk.rec.meta.kernel,
        "work_dir": out.display().to_string(),
        "setup": {
            "disk": format!("tinyvmm run --workload disk-write --count {n} (default boot, calibration on)"),
            "table4": format!("disk-write --count {n} without and with --batch-pio; IDE register writes = out to 0x1f1-0x1f7, plus the doorbell (0x510) exits that replace them"),
            "timer": format!("tinyvmm run --workload timer-disk --count {fig7_n} (disk-write with IRQ0 on during the I/O, guest programs 1000 Hz), delivered at 1000 Hz and with --pit-hz 100, calibration skipped; sectors_per_s = sectors / the I/O phase's guest PM-timer time; timer_exits = recorded exits in timer_interrupt/ack_irq/timer_isr_entry, tinyvmm_timer_exits = EOI writes + interrupt windows"),
            "pmtmr": "boot only (timer workload for 0 s) with and without --skip-pmtmr-calibration; boot_ms = tinyvmm's wall time from vCPU start to guest exit",
        },
        "paper": {
            "hot_functions": paper::HOT_FUNCTIONS,
            "ide_outb_per_command": paper::IDE_OUTB_PER_COMMAND,
            "table4_reduction_pct": paper::TABLE4_EXIT_REDUCTION_PCT,
            "fig7_max_io_gain_pct": paper::FIG7_MAX_IO_GAIN_PCT,
        },
        "hot_functions": hot,
        "hot_total_exits": hot_rep.total_exits,
        "hot_total_time_ns": hot_rep.total_time_ns,
        "callers": callers,
        "callers_note": callers_note,
        "table4": table4,
        "timer": timer,
        "pmtmr": pmtmr,
        "plots": plot_paths,
    });

    let mut text = String::new();
    render_text(&mut text, &json, &hot_rep, &t4, opts);
    write_file(&out.join("demo.json"), (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
    write_file(&out.join("demo.txt"), text.as_bytes())?;
    Ok(DemoResult { json, text })
}
