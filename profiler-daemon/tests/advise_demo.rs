//! `kvmprof demo`'s batching-advisor section (issue 12): advise's predicted saving on the
//! unbatched disk-write against the saving `--batch-pio` measured (Table 4), from one real run.
//! Needs root, /dev/kvm and BPF: fails (never skips) without them.
mod common;

use std::path::Path;

use common::*;

#[test]
fn demo_predicts_the_batch_pio_saving_within_5_percent() {
    require_live();
    let dir = tmpdir();
    let o = run(KVMPROF, &["demo", "--json", "--quiet", "--timer-seconds", "1", "--out", path_str(dir.path())]);
    assert!(o.status.success(), "demo failed: {}", stderr(&o));
    let j = json(&stdout(&o));
    let a = &j["advise"];
    let (pred, meas) = (a["predicted_exits_saved"].as_u64().unwrap(), a["measured_exits_saved"].as_u64().unwrap());
    let sectors = 100;
    assert_eq!(meas, 11 * sectors, "12 register writes -> 1 doorbell per command: {a:#}");
    assert_eq!(meas, j["table4"]["before"].as_u64().unwrap() - j["table4"]["after"].as_u64().unwrap());
    assert!(pred.abs_diff(meas) * 20 <= meas, "predicted {pred} not within 5% of measured {meas}");
    assert!((a["error_pct"].as_f64().unwrap() - 100.0 * (pred as f64 - meas as f64) / meas as f64).abs() < 1e-9);
    assert!(a["predicted_time_saved_ns"].as_u64().unwrap() > 0 && a["measured_time_saved_ns"].as_i64().unwrap() > 0, "{a:#}");
    let top = &a["candidates"][0];
    assert_eq!(top["functions"], serde_json::json!(["tinyvmm_guest::ide::ide_output_data"]), "{a:#}");
    assert!(a["candidates"].as_array().unwrap().iter().any(|c| c["functions"] == serde_json::json!(["tinyvmm_guest::ide::ide_do_rw_disk"]) && c["run_length"] == 12));
    // The plot: two bars, predicted then measured.
    let svg = std::fs::read_to_string(Path::new(j["plots"]["advise"].as_str().unwrap())).unwrap();
    assert!(svg.contains(&format!("data-value=\"{pred}\"")) && svg.contains(&format!("data-value=\"{meas}\"")), "{svg}");
    let txt = std::fs::read_to_string(dir.path().join("demo.txt")).unwrap();
    assert!(txt.contains("5. Batching advisor (paper §3.1.1, automated)") && txt.contains(&format!("measured with --batch-pio (Table 4): {meas} exits")), "{txt}");
}
