//! The demo's result as types: `kvmprof demo --json` prints [`DemoResult`] (fields documented
//! in the README), and the text and plots are drawn from the same values.
use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::paper;
use crate::model::Source;
use crate::render::diff::JsonDiffRow;

fn hex_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&format!("{v:#018x}")),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Serialize)]
pub struct DemoResult {
    pub source: Source,
    pub kernel: String,
    pub work_dir: String,
    /// The sections run (`--sections`): `disk`, `net`.
    pub sections: Vec<&'static str>,
    /// Sections 1–5 (the disk and timer experiments), at the top level of the JSON; absent
    /// without `--sections disk`.
    #[serde(flatten)]
    pub disk: Option<DiskResult>,
    /// Sections 6–8 (the network experiments); `null` without `--sections net`.
    pub net: Option<super::NetSection>,
    /// Plot name → SVG path.
    pub plots: BTreeMap<String, String>,
}

/// Sections 1–5.
#[derive(Debug, Serialize)]
pub struct DiskResult {
    pub setup: Setup,
    pub paper: PaperFigures,
    pub hot_functions: Vec<HotFn>,
    pub hot_total_exits: u64,
    pub hot_total_time_ns: u64,
    pub callers: Vec<CallerRow>,
    pub callers_note: Option<String>,
    pub table4: Table4,
    pub timer: TimerExperiment,
    pub pmtmr: PmtmrExperiment,
    /// The batching advisor on the unbatched disk-write, beside Table 4's measured saving.
    pub advise: super::AdviseSection,
}

/// One sentence per experiment: the exact runs.
#[derive(Debug, Serialize)]
pub struct Setup {
    pub disk: String,
    pub table4: String,
    pub timer: String,
    pub pmtmr: &'static str,
}

impl Setup {
    pub fn new(n: &str, fig7_n: u64) -> Setup {
        Setup {
            disk: format!("tinyvmm run --workload disk-write --count {n} (default boot, calibration on)"),
            table4: format!("disk-write --count {n} without and with --batch-pio; IDE register writes = out to 0x1f1-0x1f7, plus the doorbell (0x510) exits that replace them"),
            timer: format!("tinyvmm run --workload timer-disk --count {fig7_n} (disk-write with IRQ0 on during the I/O, guest programs 1000 Hz), delivered at 1000 Hz and with --pit-hz 100, calibration skipped; sectors_per_s = sectors / the I/O phase's guest PM-timer time; timer_exits = recorded exits in timer_interrupt/ack_irq/timer_isr_entry, tinyvmm_timer_exits = EOI writes + interrupt windows"),
            pmtmr: "boot only (timer workload for 0 s) with and without --skip-pmtmr-calibration; boot_ms = tinyvmm's wall time from vCPU start to guest exit",
        }
    }
}

/// The paper's figures printed beside ours.
#[derive(Debug, Serialize)]
pub struct PaperFigures {
    pub hot_functions: &'static [&'static str],
    pub ide_outb_per_command: u32,
    pub table4_reduction_pct: f64,
    pub fig7_max_io_gain_pct: f64,
}

impl Default for PaperFigures {
    fn default() -> Self {
        PaperFigures {
            hot_functions: paper::HOT_FUNCTIONS,
            ide_outb_per_command: paper::IDE_OUTB_PER_COMMAND,
            table4_reduction_pct: paper::TABLE4_EXIT_REDUCTION_PCT,
            fig7_max_io_gain_pct: paper::FIG7_MAX_IO_GAIN_PCT,
        }
    }
}

/// A hot-function row (`report --by function`).
#[derive(Debug, Clone, Serialize)]
pub struct HotFn {
    pub rip: Option<String>,
    pub function: Option<String>,
    pub reason: String,
    pub count: u64,
    pub time_ns: u64,
    pub percent: f64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

/// Table 3: exits per (RIP, caller).
#[derive(Debug, Clone, Serialize)]
pub struct CallerRow {
    pub rip: Option<String>,
    pub function: Option<String>,
    pub caller_rip: Option<String>,
    pub caller_function: Option<String>,
    pub count: u64,
    pub time_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct CrossCheck {
    pub ports: &'static str,
    pub recorded_before: u64,
    pub tinyvmm_before: u64,
    pub recorded_after: u64,
    pub tinyvmm_after: u64,
}

#[derive(Debug, Serialize)]
pub struct Table4 {
    /// IDE register-write exits (out 0x1f1–0x1f7, + doorbell 0x510), without / with batching.
    pub before: u64,
    pub after: u64,
    pub reduction_pct: f64,
    pub images_identical: bool,
    pub checksums_equal: bool,
    pub cross_check: CrossCheck,
    pub hypercalls: u64,
    pub sectors_per_s_before: f64,
    pub sectors_per_s_after: f64,
    pub exits_total_before: u64,
    pub exits_total_after: u64,
    pub rows: Vec<JsonDiffRow>,
}

/// Exits in one timer function during a Fig. 7 run.
#[derive(Debug, Clone, Serialize)]
pub struct TimerFnRow {
    pub function: Option<String>,
    pub rip: Option<String>,
    pub reason: String,
    pub count: u64,
    pub time_ns: u64,
}

/// One Fig. 7 run.
#[derive(Debug, Serialize)]
pub struct TimerRun {
    pub delivered_hz: u32,
    /// Recorded exits in the timer functions.
    pub timer_exits: u64,
    pub timer_exit_time_ns: u64,
    /// tinyvmm's own count: EOI writes + interrupt-window exits.
    pub tinyvmm_timer_exits: u64,
    pub eoi_writes: u64,
    pub irq_window_exits: u64,
    pub exits_total: u64,
    pub ticks: u64,
    pub ticks_per_s: f64,
    pub irq0_missed_periods: u64,
    pub sectors: u64,
    pub io_s: f64,
    pub sectors_per_s: f64,
    #[serde(serialize_with = "hex_opt")]
    pub checksum: Option<u64>,
    pub host_cpu_ns: u64,
    pub by_function: Vec<TimerFnRow>,
}

#[derive(Debug, Serialize)]
pub struct TimerExperiment {
    pub hz1000: TimerRun,
    pub hz100: TimerRun,
    pub timer_exit_reduction_factor: f64,
    pub sectors: u64,
    pub throughput_gain_pct: f64,
    pub images_identical: bool,
}

/// One Fig. 8 boot.
#[derive(Debug, Serialize)]
pub struct PmtmrRun {
    pub exits: u64,
    pub exit_time_ns: u64,
    pub boot_ms: f64,
    pub top_function: Option<String>,
    pub verify_pmtmr_rate_exits: u64,
    pub hot_functions: Vec<HotFn>,
}

#[derive(Debug, Serialize)]
pub struct PmtmrExperiment {
    pub on: PmtmrRun,
    pub off: PmtmrRun,
}
