//! The demo's SVG charts (Table 4, Fig. 7, Fig. 8), drawn from its JSON sections.
use super::*;
use crate::model::Direction;
use crate::render::plot::{BarChart, Series, BLUE, GREEN, ORANGE};

/// Writes the charts into `out`; returns the demo JSON's `plots` map (without the flame graph).
pub(super) fn write_plots(
    out: &Path,
    n: &str,
    t4_before: &Profile,
    t4_after: &Profile,
    table4: &Table4,
    timer: &TimerExperiment,
    pmtmr: &PmtmrExperiment,
) -> Result<BTreeMap<String, String>> {
    let (before, after) = (table4.before, table4.after);
    let reduction_pct = table4.reduction_pct;
    let images_identical = table4.images_identical;
    let (hz1000, hz100) = (&timer.hz1000, &timer.hz100);
    let fig7_n = timer.sectors;
    let timer_factor = timer.timer_exit_reduction_factor;
    let gain = timer.throughput_gain_pct;
    let (pm_on, pm_off) = (&pmtmr.on, &pmtmr.off);
    let ports: Vec<u16> = (IDE_REG_FIRST..=IDE_REG_LAST).chain([DOORBELL_PORT]).collect();
    let per_port = |r: &Profile, p: u16| -> f64 {
        r.exits.iter().filter(|e| e.access.port() == Some((Direction::Out, p))).map(|e| e.stats.count as f64).sum()
    };
    let t4_chart = BarChart {
        title: format!("Table 4: IDE register-write exits, {n} sectors: {before} -> {after} (-{:.1}%)", reduction_pct),
        x_label: "I/O port written (0x510 = batched-PIO doorbell hypercall)".into(),
        y_label: "VM exits".into(),
        categories: ports.iter().map(|p| render::hex(*p as u64)).collect(),
        series: vec![
            Series { name: "one exit per outb".into(), values: ports.iter().map(|p| per_port(t4_before, *p)).collect(), color: BLUE },
            Series { name: "--batch-pio".into(), values: ports.iter().map(|p| per_port(t4_after, *p)).collect(), color: ORANGE },
        ],
        note: Some(format!("paper (Zhang et al., Table 4): -{:.0}% exits; disk images identical: {images_identical}", paper::TABLE4_EXIT_REDUCTION_PCT)),
    };
    let fig7_exits = BarChart {
        title: format!("Fig. 7: timer-related exits while writing {fig7_n} sectors"),
        x_label: "timer rate delivered to the guest (it programs 1000 Hz)".into(),
        y_label: "VM exits (EOI, interrupt window)".into(),
        categories: vec!["1000 Hz".into(), "100 Hz (--pit-hz 100)".into()],
        series: vec![Series { name: "timer-related exits".into(), values: vec![hz1000.timer_exits as f64, hz100.timer_exits as f64], color: BLUE }],
        note: Some(format!("{timer_factor:.1}x fewer timer-related exits at 100 Hz")),
    };
    let fig7_io = BarChart {
        title: "Fig. 7: disk write throughput with the guest timer on".into(),
        x_label: "timer rate delivered to the guest (it programs 1000 Hz)".into(),
        y_label: "sectors/s (guest PM timer)".into(),
        categories: vec!["1000 Hz".into(), "100 Hz (--pit-hz 100)".into()],
        series: vec![Series { name: "timer-disk sectors/s".into(), values: vec![hz1000.sectors_per_s, hz100.sectors_per_s], color: GREEN }],
        note: Some(format!("ours: {gain:+.1}%; paper (Zhang et al., Fig. 7): up to +{:.0}% I/O throughput at 100 Hz", paper::FIG7_MAX_IO_GAIN_PCT)),
    };
    let fig8 = BarChart {
        title: "Fig. 8: boot with and without verify_pmtmr_rate".into(),
        x_label: "guest boot (PM-timer calibration)".into(),
        y_label: "VM exits during boot".into(),
        categories: vec![format!("calibration on ({:.0} ms)", pm_on.boot_ms), format!("calibration off ({:.0} ms)", pm_off.boot_ms)],
        series: vec![
            Series { name: "all exits".into(), values: vec![pm_on.exits as f64, pm_off.exits as f64], color: BLUE },
            Series { name: "exits in verify_pmtmr_rate".into(), values: vec![pm_on.verify_pmtmr_rate_exits as f64, pm_off.verify_pmtmr_rate_exits as f64], color: ORANGE },
        ],
        note: Some("boot time (in the labels) = tinyvmm's wall time from vCPU start to the guest's exit".into()),
    };
    let plots = [
        ("table4", "table4-ide-exits.svg", t4_chart.to_svg()),
        ("fig7_exits", "fig7-timer-exits.svg", fig7_exits.to_svg()),
        ("fig7_throughput", "fig7-throughput.svg", fig7_io.to_svg()),
        ("fig8", "fig8-pmtmr.svg", fig8.to_svg()),
    ];
    let mut plot_paths = BTreeMap::new();
    for (key, file, svg) in &plots {
        let p = out.join(file);
        write_file(&p, svg.as_bytes())?;
        plot_paths.insert((*key).into(), p.display().to_string());
    }

    Ok(plot_paths)
}
