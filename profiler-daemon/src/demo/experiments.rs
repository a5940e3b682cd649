//! The Fig. 7 and Fig. 8 experiments: profiled tinyvmm runs reduced to the demo's JSON.
use super::*;

/// Fig. 7: disk writes with the guest timer on (it programs 1000 Hz), delivered at 1000 Hz and
/// with `--pit-hz 100`.
pub(super) fn timer_experiment(ctx: &Ctx, progress: &mut Progress, fig7_n: u64, resolve: &dyn Fn(u64) -> Option<String>) -> Result<TimerExperiment> {
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
    let images_identical = files_identical(&fig7_imgs[0], &fig7_imgs[1])?;
    let hz1000 = timer_run_stats(timer_runs[0].0, &timer_runs[0].1, resolve);
    let hz100 = timer_run_stats(timer_runs[1].0, &timer_runs[1].1, resolve);
    let timer_exit_reduction_factor = if hz100.timer_exits > 0 { hz1000.timer_exits as f64 / hz100.timer_exits as f64 } else { 0.0 };
    let throughput_gain_pct = pct_change(hz1000.sectors_per_s, hz100.sectors_per_s).unwrap_or(0.0);
    Ok(TimerExperiment { hz1000, hz100, timer_exit_reduction_factor, sectors: fig7_n, throughput_gain_pct, images_identical })
}

pub(super) fn timer_run_stats(hz: u32, r: &Run, resolve: &dyn Fn(u64) -> Option<String>) -> TimerRun {
    let rep = report::build(&r.rec, GroupBy::Function, resolve);
    let timer_rows: Vec<&report::Row> = rep.rows.iter().filter(|x| x.function.as_deref().is_some_and(is_timer_function)).collect();
    let guest = r.stats.guest.clone().unwrap_or_default();
    let ticks = guest.ticks.unwrap_or(0);
    let sectors = guest.sectors.unwrap_or(0);
    // The guest's own clock: PM-timer ticks over its I/O phase (loop + FLUSH).
    let io_s = guest.pm_ticks.unwrap_or(0) as f64 / 3_579_545.0;
    let per_s = |n: u64| if io_s > 0.0 { n as f64 / io_s } else { 0.0 };
    // tinyvmm's count: EOIs on port 0x20 (minus the boot's ICW1) + interrupt windows.
    let eoi_port = r.stats.port_exits(0x20).saturating_sub(1);
    let windows = r.stats.by_kind.irq_window;
    TimerRun {
        delivered_hz: hz,
        timer_exits: timer_rows.iter().map(|x| x.count).sum(),
        timer_exit_time_ns: timer_rows.iter().map(|x| x.time_ns).sum(),
        tinyvmm_timer_exits: eoi_port + windows,
        eoi_writes: r.stats.timer.eoi_writes,
        irq_window_exits: windows,
        exits_total: rep.total_exits,
        ticks,
        ticks_per_s: per_s(ticks),
        irq0_missed_periods: r.stats.timer.irq0_missed_periods,
        sectors,
        io_s,
        sectors_per_s: per_s(sectors),
        checksum: guest.checksum,
        host_cpu_ns: r.cpu_ns,
        by_function: timer_rows
            .iter()
            .map(|x| TimerFnRow { function: x.function.clone(), rip: x.rip.map(render::hex), reason: x.reason.to_string(), count: x.count, time_ns: x.time_ns })
            .collect(),
    }
}

/// Fig. 8 / Table 3: boot only, with and without the PM-timer calibration
/// (`verify_pmtmr_rate`).
pub(super) fn pmtmr_experiment(ctx: &Ctx, progress: &mut Progress, resolve: &dyn Fn(u64) -> Option<String>) -> Result<PmtmrExperiment> {
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
        pm.push(PmtmrRun {
            exits: rep.total_exits,
            exit_time_ns: rep.total_time_ns,
            boot_ms: r.stats.run_ns as f64 / 1e6,
            top_function: rep.rows.first().and_then(|x| x.function.clone()),
            verify_pmtmr_rate_exits: vpr,
            hot_functions: hot_functions(&rep, 5),
        });
    }
    let off = pm.pop().context("two boots")?;
    let on = pm.pop().context("two boots")?;
    Ok(PmtmrExperiment { on, off })
}
