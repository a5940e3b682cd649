//! Quantiles of exit times from the log-linear histogram (profiler_common::hist_bucket).

use profiler_common::hist_bucket_value;

/// The `q`-quantile (0 < q ≤ 1) of the exit times counted in `hist`: the representative value
/// of the bucket holding the ⌈q·n⌉-th smallest exit, within 6.25% of that exit's time (exact
/// below 16 ns). 0 when the histogram is empty.
pub fn hist_quantile(hist: &[u64], q: f64) -> u64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0;
    }
    let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return hist_bucket_value(i);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::{hist_bucket, HIST_BUCKETS};

    /// Exact quantile by the same rank rule.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn quantiles_are_within_a_sixteenth_of_exact() {
        // A bimodal mix like fast port writes and slow reads, spread over three decades.
        let mut times: Vec<u64> = (0..7000u64).map(|i| 9_000 + (i * 37) % 3_000).collect();
        times.extend((0..3000u64).map(|i| 250_000 + (i * 7919) % 900_000));
        times.sort_unstable();
        let mut hist = [0u64; HIST_BUCKETS];
        for t in &times {
            hist[hist_bucket(*t)] += 1;
        }
        for q in [0.01, 0.25, 0.5, 0.69, 0.71, 0.9, 0.99, 1.0] {
            let (est, ex) = (hist_quantile(&hist, q) as f64, exact(&times, q) as f64);
            assert!((est - ex).abs() <= ex / 16.0, "q {q}: estimate {est} vs exact {ex}");
        }
        assert_eq!(hist_quantile(&[0; HIST_BUCKETS], 0.5), 0);
    }
}
