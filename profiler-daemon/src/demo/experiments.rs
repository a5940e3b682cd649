//! The Fig. 7 and Fig. 8 experiments: profiled tinyvmm runs reduced to the demo's JSON.
use super::*;

/// Fig. 7: disk writes with the guest timer on (it programs 1000 Hz), delivered at 1000 Hz and
/// with `--pit-hz 100`. Returns the demo JSON's `timer` object.
pub(super) fn timer_experiment(ctx: &Ctx, progress: &mut Progress, fig7_n: u64, resolve: &dyn Fn(u64) -> Option<String>) -> Result<Value> {
    let out = &ctx.out;
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
    let hz1000 = timer_run_stats(timer_runs[0].0, &timer_runs[0].1, resolve);
    let hz100 = timer_run_stats(timer_runs[1].0, &timer_runs[1].1, resolve);
    let te = |v: &Value| v["timer_exits"].as_u64().unwrap_or(0);
    let timer_factor = if te(&hz100) > 0 { te(&hz1000) as f64 / te(&hz100) as f64 } else { 0.0 };
    let sps = |v: &Value| v["sectors_per_s"].as_f64().unwrap_or(0.0);
    let gain = pct_change(sps(&hz1000), sps(&hz100));

    Ok(json!({
        "hz1000": hz1000,
        "hz100": hz100,
        "timer_exit_reduction_factor": timer_factor,
        "sectors": fig7_n,
        "throughput_gain_pct": gain,
        "images_identical": fig7_images_identical,
    }))
}

pub(super) fn timer_run_stats(hz: u32, r: &Run, resolve: &dyn Fn(u64) -> Option<String>) -> Value {
    let rep = report::build(&r.rec, GroupBy::Function, resolve);
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
}

/// Fig. 8 / Table 3: boot only, with and without the PM-timer calibration
/// (`verify_pmtmr_rate`). Returns the demo JSON's `pmtmr` object.
pub(super) fn pmtmr_experiment(ctx: &Ctx, progress: &mut Progress, resolve: &dyn Fn(u64) -> Option<String>) -> Result<Value> {
    let mut pm = Vec::new();
    for on in [true, false] {
        progress.say(&format!("boot only, PM-timer calibration {}", if on { "on" } else { "off" }));
        let mut args: Vec<String> = vec!["--workload".into(), "timer".into(), "--seconds".into(), "0".into()];
        if !on {
            args.push("--skip-pmtmr-calibration".into());
        }
        let r = ctx.profile(if on { "boot-pmtmr-on" } else { "boot-pmtmr-off" }, &args)?;
        let rep = report::build(&r.rec, GroupBy::Function, resolve);
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
    Ok(json!({ "on": pm[0], "off": pm[1] }))
}
