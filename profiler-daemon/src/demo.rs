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

/// Finds tinyvmm: `--tinyvmm PATH`, else beside the running kvmprof binary.
pub fn find_tinyvmm(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("tinyvmm not found at {} (--tinyvmm)", p.display());
    }
    let exe = std::env::current_exe().context("cannot find the running kvmprof binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live in target/<profile>/deps: tinyvmm is one level up.
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("tinyvmm");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "tinyvmm not found next to kvmprof ({}): build it with `cargo build --release -p vmm`, or pass --tinyvmm PATH",
        dir.join("tinyvmm").display()
    )
}

struct Progress {
    on: bool,
    tty: bool,
    step: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    fn say(&mut self, what: &str) {
        self.step += 1;
        if !self.on {
            return;
        }
        let t = self.started.elapsed().as_secs_f64();
        let line = format!("kvmprof demo [{}/{}] {t:5.1}s  {what}", self.step, self.total);
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    fn done(&self) {
        if self.on && self.tty {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// One profiled tinyvmm run: its recording, its own statistics, and the CPU it used.
struct Run {
    rec: Recording,
    stats: Value,
    cpu_ns: u64,
}

fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// While alive, this process's stdout and stderr go to a log file, so tinyvmm (which
/// inherits them) does not print its statistics between the demo's progress lines.
struct Redirect {
    saved: [i32; 2],
}

impl Redirect {
    fn to(path: &Path) -> Result<Redirect> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mut saved = [-1; 2];
        for (i, fd) in [1, 2].into_iter().enumerate() {
            // SAFETY: plain fd duplication; the saved copies are restored and closed in Drop.
            unsafe {
                saved[i] = libc::dup(fd);
                libc::dup2(f.as_raw_fd(), fd);
            }
        }
        Ok(Redirect { saved })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        for (i, fd) in [1, 2].into_iter().enumerate() {
            if self.saved[i] >= 0 {
                // SAFETY: restores the descriptors saved in `to`.
                unsafe {
                    libc::dup2(self.saved[i], fd);
                    libc::close(self.saved[i]);
                }
            }
        }
    }
}

struct Ctx {
    tinyvmm: PathBuf,
    out: PathBuf,
    log: PathBuf,
}

impl Ctx {
    /// Records `tinyvmm run ARGS --stats-json NAME.stats.json --quiet` into NAME.kvmprof.
    /// tinyvmm's own terminal output goes to tinyvmm.log in the work directory.
    fn profile(&self, name: &str, args: &[String]) -> Result<Run> {
        let rec_path = self.out.join(format!("{name}.kvmprof"));
        let stats_path = self.out.join(format!("{name}.stats.json"));
        let _ = std::fs::remove_file(&stats_path);
        let mut command = vec![self.tinyvmm.display().to_string(), "run".into()];
        command.extend(args.iter().cloned());
        command.extend(["--quiet".into(), "--stats-json".into(), stats_path.display().to_string(), "--name".into(), name.into()]);
        let cpu0 = children_cpu_ns();
        let quiet = Redirect::to(&self.log)?;
        let recorded = record::run(&RecordOptions {
            output: rec_path.clone(),
            pid: None,
            duration: Some(Duration::from_secs(120)),
            records: false,
            source: None,
            command,
            quiet: true,
        });
        drop(quiet);
        recorded.with_context(|| format!("recording the {name} run"))?;
        let cpu_ns = children_cpu_ns().saturating_sub(cpu0);
        let rec = Recording::load(&rec_path)?;
        let stats: Value = std::fs::read(&stats_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("tinyvmm wrote no statistics for the {name} run: see {}", self.log.display()))?;
        match rec.meta.command_status {
            Some(0) => {}
            s => bail!(
                "the {name} run of tinyvmm failed (exit status {}, outcome {}): see {}",
                s.map_or("unknown".into(), |s| s.to_string()),
                stats["outcome_detail"].as_str().unwrap_or("?"),
                self.log.display()
            ),
        }
        if rec.exits.is_empty() {
            bail!("the {name} run recorded no exits: is the eBPF exit source working? try `kvmprof check`");
        }
        Ok(Run { rec, stats, cpu_ns })
    }
}

fn port_of(row: &crate::recording::ExitRow) -> Option<u64> {
    (row.detail_kind == "port_out" || row.detail_kind == "port_in").then(|| parse_hex(&row.detail)).flatten()
}

/// The recording restricted to IDE register writes and batched-PIO doorbells.
fn ide_register_writes(rec: &Recording) -> Recording {
    let mut r = rec.clone();
    r.exits.retain(|e| {
        e.detail_kind == "port_out" && port_of(e).is_some_and(|p| (IDE_REG_FIRST..=IDE_REG_LAST).contains(&p) || p == DOORBELL_PORT)
    });
    r.records = None;
    r
}

fn count_exits(rec: &Recording) -> u64 {
    rec.exits.iter().map(|e| e.count).sum()
}

fn is_timer_function(f: &str) -> bool {
    let last = f.rsplit("::").next().unwrap_or(f);
    matches!(last, "timer_interrupt" | "ack_irq" | "timer_isr_entry" | "timer_workload")
}

fn short_fn(f: &str) -> &str {
    // `tinyvmm_guest::ide::ide_do_rw_disk` -> `ide_do_rw_disk`; keeps `<T as W>::f` whole.
    if f.starts_with('<') {
        f
    } else {
        f.rsplit("::").next().unwrap_or(f)
    }
}

fn files_identical(a: &Path, b: &Path) -> Result<bool> {
    let x = std::fs::read(a).with_context(|| format!("cannot read {}", a.display()))?;
    let y = std::fs::read(b).with_context(|| format!("cannot read {}", b.display()))?;
    Ok(x == y)
}

fn fresh_image(path: &Path, sectors: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    // Room for the written sectors and some more; zero-filled.
    f.set_len((sectors + 64) * 512).with_context(|| format!("cannot size {}", path.display()))
}

#[derive(Serialize)]
struct HotFn {
    rip: Option<String>,
    function: Option<String>,
    reason: String,
    count: u64,
    time_ns: u64,
    percent: f64,
    mean_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
}

fn hot_functions(rep: &report::Report, n: usize) -> Vec<HotFn> {
    rep.rows
        .iter()
        .take(n)
        .map(|r| HotFn {
            rip: r.rip.clone(),
            function: r.function.clone(),
            reason: r.reason.clone(),
            count: r.count,
            time_ns: r.time_ns,
            percent: r.percent,
            mean_ns: r.mean_ns,
            p50_ns: r.p50_ns,
            p99_ns: r.p99_ns,
        })
        .collect()
}

/// Table 3: exits by (RIP, caller), from the same code as `kvmprof report --by caller`.
/// Empty, with the reason, when the recording carries no caller attribution.
fn callers(rec: &Recording, resolve: &dyn Fn(u64) -> Option<String>) -> (Vec<Value>, Option<String>) {
    let rep = report::build(rec, GroupBy::Caller, resolve);
    let rows: Vec<Value> = rep
        .rows
        .iter()
        .filter(|r| r.caller_rip.is_some())
        .map(|r| {
            json!({
                "rip": r.rip, "function": r.function, "caller_rip": r.caller_rip,
                "caller_function": r.caller_function, "count": r.count, "time_ns": r.time_ns,
            })
        })
        .collect();
    let note = if rows.is_empty() {
        Some(format!("no caller attribution in this recording ({})", rep.notes.join("; ")))
    } else {
        rep.notes.first().cloned()
    };
    (rows, note)
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

fn pct_change(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        100.0 * (after - before) / before
    } else {
        0.0
    }
}

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

    // 3: disk writes with the guest timer on, delivered at 1000 Hz vs 100 Hz.
    let fig7_n = FIG7_SECTORS_PER_SECOND * opts.timer_seconds;
    let mut timer_runs = Vec::new();
    let mut fig7_imgs = Vec::new();
    for hz in [paper::FIG7_HZ_BEFORE, paper::FIG7_HZ_AFTER] {
        progress.say(&format!("timer-disk, {fig7_n} sectors, guest timer on (programs 1000 Hz), delivered {hz} Hz"));
        let img = out.join(format!("disk-timer-{hz}hz.img"));
        fresh_image(&img, fig7_n)?;
        let mut args: Vec<String> = vec![
            "--workload".into(),
            "timer-disk".into(),
            "--count".into(),
            fig7_n.to_string(),
            "--disk".into(),
            img.display().to_string(),
            "--skip-pmtmr-calibration".into(),
        ];
        if hz != paper::FIG7_HZ_BEFORE {
            args.extend(["--pit-hz".into(), hz.to_string()]);
        }
        let r = ctx.profile(&format!("timer-disk-{hz}hz"), &args)?;
        timer_runs.push((hz, r));
        fig7_imgs.push(img);
    }
    let fig7_images_identical = files_identical(&fig7_imgs[0], &fig7_imgs[1])?;
    let timer_stats = |hz: u32, r: &Run| -> Value {
        let rep = report::build(&r.rec, GroupBy::Function, &resolve);
        let timer_rows: Vec<&report::Row> = rep.rows.iter().filter(|x| x.function.as_deref().is_some_and(is_timer_function)).collect();
        let timer_exits: u64 = timer_rows.iter().map(|x| x.count).sum();
        let timer_time: u64 = timer_rows.iter().map(|x| x.time_ns).sum();
        let g = &r.stats["guest"];
        let ticks = g["ticks"].as_u64().unwrap_or(0);
        let sectors = g["sectors"].as_u64().unwrap_or(0);
        // The guest's own clock: PM-timer ticks over its I/O phase (loop + FLUSH).
        let io_s = g["pm_ticks"].as_f64().unwrap_or(0.0) / 3_579_545.0;
        let sps = if io_s > 0.0 { sectors as f64 / io_s } else { 0.0 };
        // tinyvmm's count: EOIs on port 0x20 (minus the boot's ICW1) + interrupt windows.
        let eoi_port = r.stats["by_port"]["0x20"].as_u64().unwrap_or(0).saturating_sub(1);
        let windows = r.stats["by_kind"]["irq_window"].as_u64().unwrap_or(0);
        json!({
            "delivered_hz": hz,
            "timer_exits": timer_exits,
            "timer_exit_time_ns": timer_time,
            "tinyvmm_timer_exits": eoi_port + windows,
            "eoi_writes": r.stats["timer"]["eoi_writes"],
            "irq_window_exits": windows,
            "exits_total": rep.total_exits,
            "ticks": ticks,
            "ticks_per_s": if io_s > 0.0 { ticks as f64 / io_s } else { 0.0 },
            "irq0_missed_periods": r.stats["timer"]["irq0_missed_periods"],
            "sectors": sectors,
            "io_s": io_s,
            "sectors_per_s": sps,
            "checksum": g["checksum"],
            "host_cpu_ns": r.cpu_ns,
            "by_function": rep.rows.iter().filter(|x| x.function.as_deref().is_some_and(is_timer_function)).map(|x| json!({
                "function": x.function, "rip": x.rip, "reason": x.reason, "count": x.count, "time_ns": x.time_ns,
            })).collect::<Vec<_>>(),
        })
    };
    let hz1000 = timer_stats(timer_runs[0].0, &timer_runs[0].1);
    let hz100 = timer_stats(timer_runs[1].0, &timer_runs[1].1);
    let te = |v: &Value| v["timer_exits"].as_u64().unwrap_or(0);
    let timer_factor = if te(&hz100) > 0 { te(&hz1000) as f64 / te(&hz100) as f64 } else { 0.0 };
    let sps = |v: &Value| v["sectors_per_s"].as_f64().unwrap_or(0.0);
    let gain = pct_change(sps(&hz1000), sps(&hz100));

    // 4: boot with and without verify_pmtmr_rate.
    let mut pm = Vec::new();
    for on in [true, false] {
        progress.say(&format!("boot only, PM-timer calibration {}", if on { "on" } else { "off" }));
        let mut args: Vec<String> = vec!["--workload".into(), "timer".into(), "--seconds".into(), "0".into()];
        if !on {
            args.push("--skip-pmtmr-calibration".into());
        }
        let r = ctx.profile(if on { "boot-pmtmr-on" } else { "boot-pmtmr-off" }, &args)?;
        let rep = report::build(&r.rec, GroupBy::Function, &resolve);
        let vpr: u64 = rep.rows.iter().filter(|x| x.function.as_deref() == Some("verify_pmtmr_rate")).map(|x| x.count).sum();
        pm.push(json!({
            "exits": rep.total_exits,
            "exit_time_ns": rep.total_time_ns,
            "boot_ms": r.stats["run_ns"].as_u64().unwrap_or(0) as f64 / 1e6,
            "top_function": rep.rows.first().and_then(|x| x.function.clone()),
            "verify_pmtmr_rate_exits": vpr,
            "hot_functions": hot_functions(&rep, 5),
        }));
    }
    let (pm_on, pm_off) = (pm[0].clone(), pm[1].clone());
    progress.done();

    // Plots.
    let ports: Vec<u64> = (IDE_REG_FIRST..=IDE_REG_LAST).chain([DOORBELL_PORT]).collect();
    let per_port = |r: &Recording, p: u64| -> f64 {
        r.exits.iter().filter(|e| e.detail_kind == "port_out" && port_of(e) == Some(p)).map(|e| e.count as f64).sum()
    };
    let t4_chart = BarChart {
        title: format!("Table 4: IDE register-write exits, {n} sectors: {before} -> {after} (-{:.1}%)", reduction_pct),
        x_label: "I/O port written (0x510 = batched-PIO doorbell hypercall)".into(),
        y_label: "VM exits".into(),
        categories: ports.iter().map(|p| format!("{p:#x}")).collect(),
        series: vec![
            Series { name: "one exit per outb".into(), values: ports.iter().map(|p| per_port(&t4_before, *p)).collect(), color: BLUE },
            Series { name: "--batch-pio".into(), values: ports.iter().map(|p| per_port(&t4_after, *p)).collect(), color: ORANGE },
        ],
        note: Some(format!("paper (Zhang et al., Table 4): -{:.0}% exits; disk images identical: {images_identical}", paper::TABLE4_EXIT_REDUCTION_PCT)),
    };
    let fig7_exits = BarChart {
        title: format!("Fig. 7: timer-related exits while writing {fig7_n} sectors"),
        x_label: "timer rate delivered to the guest (it programs 1000 Hz)".into(),
        y_label: "VM exits (EOI, interrupt window)".into(),
        categories: vec!["1000 Hz".into(), "100 Hz (--pit-hz 100)".into()],
        series: vec![Series { name: "timer-related exits".into(), values: vec![te(&hz1000) as f64, te(&hz100) as f64], color: BLUE }],
        note: Some(format!("{timer_factor:.1}x fewer timer-related exits at 100 Hz")),
    };
    let fig7_io = BarChart {
        title: "Fig. 7: disk write throughput with the guest timer on".into(),
        x_label: "timer rate delivered to the guest (it programs 1000 Hz)".into(),
        y_label: "sectors/s (guest PM timer)".into(),
        categories: vec!["1000 Hz".into(), "100 Hz (--pit-hz 100)".into()],
        series: vec![Series { name: "timer-disk sectors/s".into(), values: vec![sps(&hz1000), sps(&hz100)], color: GREEN }],
        note: Some(format!("ours: {gain:+.1}%; paper (Zhang et al., Fig. 7): up to +{:.0}% I/O throughput at 100 Hz", paper::FIG7_MAX_IO_GAIN_PCT)),
    };
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let fig8 = BarChart {
        title: "Fig. 8: boot with and without verify_pmtmr_rate".into(),
        x_label: "guest boot (PM-timer calibration)".into(),
        y_label: "VM exits during boot".into(),
        categories: vec![format!("calibration on ({:.0} ms)", num(&pm_on, "boot_ms")), format!("calibration off ({:.0} ms)", num(&pm_off, "boot_ms"))],
        series: vec![
            Series { name: "all exits".into(), values: vec![num(&pm_on, "exits"), num(&pm_off, "exits")], color: BLUE },
            Series { name: "exits in verify_pmtmr_rate".into(), values: vec![num(&pm_on, "verify_pmtmr_rate_exits"), num(&pm_off, "verify_pmtmr_rate_exits")], color: ORANGE },
        ],
        note: Some("boot time (in the labels) = tinyvmm's wall time from vCPU start to the guest's exit".into()),
    };
    let plots = [
        ("table4", "table4-ide-exits.svg", t4_chart.to_svg()),
        ("fig7_exits", "fig7-timer-exits.svg", fig7_exits.to_svg()),
        ("fig7_throughput", "fig7-throughput.svg", fig7_io.to_svg()),
        ("fig8", "fig8-pmtmr.svg", fig8.to_svg()),
    ];
    let mut plot_paths = serde_json::Map::new();
    for (key, file, svg) in &plots {
        let p = out.join(file);
        write_file(&p, svg.as_bytes())?;
        plot_paths.insert((*key).into(), json!(p.display().to_string()));
    }
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
        "table4": {
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
        },
        "timer": {
            "hz1000": hz1000,
            "hz100": hz100,
            "timer_exit_reduction_factor": timer_factor,
            "sectors": fig7_n,
            "throughput_gain_pct": gain,
            "images_identical": fig7_images_identical,
        },
        "pmtmr": { "on": pm_on, "off": pm_off },
        "plots": plot_paths,
    });

    let mut text = String::new();
    render_text(&mut text, &json, &hot_rep, &t4, opts);
    write_file(&out.join("demo.json"), (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
    write_file(&out.join("demo.txt"), text.as_bytes())?;
    Ok(DemoResult { json, text })
}

fn render_text(s: &mut String, j: &Value, hot: &report::Report, t4: &diff::Diff, opts: &DemoOptions) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let n = opts.sectors;
    let _ = writeln!(s, "kvmprof demo: Zhang et al., \"Evaluating and Optimizing I/O Virtualization in KVM\", measured here");
    let _ = writeln!(s, "exit source: {}  |  kernel {}  |  work files: {}", report::source_description(j["source"].as_str().unwrap_or("")), j["kernel"].as_str().unwrap_or("?"), j["work_dir"].as_str().unwrap_or("?"));
    let _ = writeln!(s);

    let _ = writeln!(s, "1. Hot functions (paper Tables 1-3): tinyvmm disk-write, {n} sectors, default boot");
    let mut top = report::Report { source: hot.source.clone(), by: hot.by, total_exits: hot.total_exits, total_time_ns: hot.total_time_ns, rows: hot.rows.clone(), notes: vec![] };
    top.rows.truncate(8);
    for l in top.render(Format::Table, None).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   paper: {} lead its tables; ide_do_rw_disk issues {} outb per command",
        paper::HOT_FUNCTIONS.join(", "),
        paper::IDE_OUTB_PER_COMMAND
    );
    match j["callers"].as_array() {
        Some(c) if !c.is_empty() => {
            let _ = writeln!(s, "   callers (Table 3): exits by function and the guest function that called it");
            // Rows are per (RIP, caller); merge to (function, caller function) for reading.
            let mut merged: Vec<(String, String, u64)> = Vec::new();
            for r in c {
                let f = short_fn(r["function"].as_str().unwrap_or("?")).to_string();
                let cf = r["caller_function"].as_str().map(short_fn).or(r["caller_rip"].as_str()).unwrap_or("?").to_string();
                match merged.iter_mut().find(|m| m.0 == f && m.1 == cf) {
                    Some(m) => m.2 += u(&r["count"]),
                    None => merged.push((f, cf, u(&r["count"]))),
                }
            }
            merged.sort_by(|a, b| b.2.cmp(&a.2));
            for (f, cf, n) in merged.iter().take(6) {
                let _ = writeln!(s, "     {n:>8}  {f} <- {cf}");
            }
        }
        _ => {
            let _ = writeln!(s, "   callers (Table 3): {}", j["callers_note"].as_str().unwrap_or("none recorded"));
        }
    }
    let _ = writeln!(s);

    let t = &j["table4"];
    let _ = writeln!(s, "2. Table 4: IDE register-write exits (out 0x1f1-0x1f7; after: + the 0x510 doorbell that replaces them), {n} sectors");
    for l in t4.render(DiffFormat::Table, Some(16)).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   ours: {} -> {} exits ({:.1}% fewer)   paper: {:.0}% fewer",
        u(&t["before"]),
        u(&t["after"]),
        f(&t["reduction_pct"]),
        paper::TABLE4_EXIT_REDUCTION_PCT
    );
    let c = &t["cross_check"];
    let _ = writeln!(
        s,
        "   cross-check, all exits on these ports (in+out): recorded {} -> {}, tinyvmm counted {} -> {}",
        u(&c["recorded_before"]),
        u(&c["recorded_after"]),
        u(&c["tinyvmm_before"]),
        u(&c["tinyvmm_after"])
    );
    let _ = writeln!(
        s,
        "   disk images identical: {}   guest checksums equal: {}   all exits {} -> {}   guest-measured {} -> {} sectors/s",
        if t["images_identical"] == json!(true) { "yes" } else { "NO" },
        if t["checksums_equal"] == json!(true) { "yes" } else { "NO" },
        u(&t["exits_total_before"]),
        u(&t["exits_total_after"]),
        f(&t["sectors_per_s_before"]),
        f(&t["sectors_per_s_after"])
    );
    let _ = writeln!(s);

    let tm = &j["timer"];
    let _ = writeln!(
        s,
        "3. Fig. 7: disk writes with the guest timer on, 1000 Hz vs --pit-hz 100 (timer-disk, {} sectors)",
        u(&tm["sectors"])
    );
    let _ = writeln!(s, "   {:<10} {:>12} {:>14} {:>14} {:>8} {:>10} {:>16}", "rate", "timer exits", "exit time (s)", "tinyvmm count", "ticks", "I/O (s)", "guest sectors/s");
    for (name, v) in [("1000 Hz", &tm["hz1000"]), ("100 Hz", &tm["hz100"])] {
        let _ = writeln!(
            s,
            "   {:<10} {:>12} {:>14.6} {:>14} {:>8} {:>10.3} {:>16.1}",
            name,
            u(&v["timer_exits"]),
            f(&v["timer_exit_time_ns"]) / 1e9,
            u(&v["tinyvmm_timer_exits"]),
            u(&v["ticks"]),
            f(&v["io_s"]),
            f(&v["sectors_per_s"])
        );
    }
    let _ = writeln!(
        s,
        "   ours: {:.1}x fewer timer-related exits, {:+.1}% disk write throughput   paper: up to +{:.0}% I/O throughput",
        f(&tm["timer_exit_reduction_factor"]),
        f(&tm["throughput_gain_pct"]),
        paper::FIG7_MAX_IO_GAIN_PCT
    );
    let _ = writeln!(
        s,
        "   (timer exits = recorded exits in timer_interrupt, ack_irq, timer_isr_entry; tinyvmm count = EOI writes + interrupt windows; sectors/s by the guest's PM timer over its I/O phase; disk images identical: {})",
        if tm["images_identical"] == json!(true) { "yes" } else { "NO" }
    );
    let _ = writeln!(s);

    let p = &j["pmtmr"];
    let _ = writeln!(s, "4. Fig. 8 / Table 3: boot with the PM-timer calibration (verify_pmtmr_rate) on and off");
    let _ = writeln!(s, "   {:<16} {:>8} {:>26} {:>10}  {}", "calibration", "exits", "exits in verify_pmtmr_rate", "boot (ms)", "top function");
    for (name, v) in [("on", &p["on"]), ("off", &p["off"])] {
        let _ = writeln!(
            s,
            "   {:<16} {:>8} {:>26} {:>10.1}  {}",
            name,
            u(&v["exits"]),
            u(&v["verify_pmtmr_rate_exits"]),
            f(&v["boot_ms"]),
            v["top_function"].as_str().map(short_fn).unwrap_or("-")
        );
    }
    let _ = writeln!(s, "   paper: verify_pmtmr_rate's PM-timer reads are redundant boot-time exits; removing them removes the exits");
    let _ = writeln!(s);
    let _ = writeln!(s, "plots:");
    if let Some(m) = j["plots"].as_object() {
        for v in m.values() {
            let _ = writeln!(s, "   {}", v.as_str().unwrap_or(""));
        }
    }
}
