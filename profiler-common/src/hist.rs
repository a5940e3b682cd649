//! Layout of the exit-time histogram: log-linear (HDR-style), 8 buckets per power of two.
//!
//! Why not plain log2 buckets: a quantile read from a log2 bucket is only known within a
//! factor 1.41 (the old p50/p99), while the issue asks for 10 %. Eight linear sub-buckets per
//! octave bound the error of a bucket's representative value to 1/16 (6.25 %) for 256
//! buckets (2 KiB of u64 counters per key), and the bucket of a value is still a few integer
//! operations, cheap and bounded enough for the eBPF verifier.
//!
//! Layout: values 0..8 each have their own bucket (bucket = value). A value `v >= 8` with
//! `k = floor(log2 v)` goes to `8 + (k - 3) * 8 + ((v >> (k - 3)) & 7)`: the octave
//! `[2^k, 2^(k+1))` split into 8 equal parts. Octaves up to k = 33 fit, so every value below
//! 2^34 ns (about 17 s) has an exact bucket; longer ones all land in the last bucket.

/// log2 of the number of sub-buckets per power of two.
pub const HIST_SUB_BITS: u32 = 3;
/// Buckets in [`crate::ExitStats::hist`].
pub const HIST_BUCKETS: usize = 256;

const SUB: usize = 1 << HIST_SUB_BITS;
/// Largest `k = floor(log2 v)` with buckets of its own: 31 octaves of 8 after the first 8.
const MAX_EXP: u32 = HIST_SUB_BITS + ((HIST_BUCKETS - SUB) / SUB) as u32 - 1;

/// Bucket of a duration in ns. Always `< HIST_BUCKETS`; still, callers that index with it in
/// eBPF keep an explicit bound check, which the verifier needs to see.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let k = 63 - ns.leading_zeros();
    if k > MAX_EXP {
        return HIST_BUCKETS - 1;
    }
    let shift = k - HIST_SUB_BITS;
    SUB + shift as usize * SUB + ((ns >> shift) as usize & (SUB - 1))
}

/// `(lo, hi)` of bucket `i`: `lo` inclusive, `hi` exclusive. The last bucket also takes
/// everything above its nominal range, so its `hi` is `u64::MAX` (and `u64::MAX` itself is
/// in it too). `i >= HIST_BUCKETS` (e.g. from a damaged file) is taken as the last bucket.
pub fn hist_bucket_bounds(i: usize) -> (u64, u64) {
    let i = if i < HIST_BUCKETS { i } else { HIST_BUCKETS - 1 };
    let (lo, width) = nominal(i);
    let hi = if i == HIST_BUCKETS - 1 { u64::MAX } else { lo + width };
    (lo, hi)
}

/// The value reported for a quantile that falls in bucket `i`: `lo` for a bucket of width 1
/// (exact), else the middle of the bucket, within 1/16 (6.25 %) of every value in it, because
/// a bucket of width `w` starts at `>= 8 w`. For the last bucket that holds only for its
/// nominal range `[15 * 2^30, 2^34)`: an exit longer than ~17 s is under-reported.
pub fn hist_bucket_value(i: usize) -> u64 {
    let i = if i < HIST_BUCKETS { i } else { HIST_BUCKETS - 1 };
    let (lo, width) = nominal(i);
    lo + width / 2
}

/// Start and width of bucket `i < HIST_BUCKETS`, ignoring the last bucket's overflow.
fn nominal(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, 1);
    }
    let shift = ((i - SUB) / SUB) as u32;
    let sub = ((i - SUB) % SUB) as u64;
    ((SUB as u64 + sub) << shift, 1 << shift)
}

/// Buckets of the histogram recordings made before this layout: bucket `i` counted
/// `[2^i, 2^(i+1))` ns (bucket 0 also 0 ns), the last one everything longer.
pub const LEGACY_LOG2_BUCKETS: usize = 32;

/// The value the old layout reported for its bucket `i`: 1 ns for bucket 0, else the
/// geometric middle `round(2^i * sqrt 2) = round(sqrt(2^(2i+1)))`, in integers. `i` past the
/// last old bucket is taken as the last.
pub fn legacy_log2_estimate(i: usize) -> u64 {
    let i = if i < LEGACY_LOG2_BUCKETS { i } else { LEGACY_LOG2_BUCKETS - 1 };
    if i == 0 {
        return 1;
    }
    let n = 1u64 << (2 * i + 1);
    let r = n.isqrt();
    // sqrt(n) lies in [r, r + 1); it rounds up iff n > (r + 1/2)^2 = r^2 + r + 1/4, i.e. (n
    // being an integer) iff n - r^2 > r. It is never exactly r + 1/2: n is an integer.
    if n - r * r > r {
        r + 1
    } else {
        r
    }
}

/// The new bucket an old recording's bucket `i` is converted into: the one holding the value
/// the old layout reported for it, so converted quantiles match what old reports printed.
pub fn hist_bucket_of_legacy(i: usize) -> usize {
    hist_bucket(legacy_log2_estimate(i))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// 0..100000 exhaustively, and every power of two and its neighbours up to 2^40, u64::MAX.
    fn sample() -> Vec<u64> {
        let mut v: Vec<u64> = (0..100_000).collect();
        for p in 0..=40 {
            let x = 1u64 << p;
            v.extend([x - 1, x, x + 1]);
        }
        v.push(u64::MAX);
        v.sort_unstable();
        v
    }

    #[test]
    fn every_value_lies_in_its_buckets_bounds() {
        for v in sample() {
            let b = hist_bucket(v);
            assert!(b < HIST_BUCKETS, "{v}");
            let (lo, hi) = hist_bucket_bounds(b);
            assert!(lo <= v && (v < hi || v == u64::MAX), "{v} in bucket {b} = [{lo}, {hi})");
        }
    }

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        assert_eq!(hist_bucket_bounds(0), (0, 1));
        for i in 1..HIST_BUCKETS {
            let (lo, hi) = hist_bucket_bounds(i);
            assert!(lo < hi, "bucket {i}");
            assert_eq!(lo, hist_bucket_bounds(i - 1).1, "bucket {i} starts where {} ends", i - 1);
            assert_eq!(hist_bucket(lo), i);
            if i < HIST_BUCKETS - 1 {
                assert_eq!(hist_bucket(hi - 1), i);
            }
        }
        assert_eq!(hist_bucket_bounds(HIST_BUCKETS - 1), (15 << 30, u64::MAX));
        assert_eq!(hist_bucket((1 << 34) - 1), HIST_BUCKETS - 1);
        assert_eq!(hist_bucket(1 << 34), HIST_BUCKETS - 1);
        let mut last = 0;
        for v in sample() {
            let b = hist_bucket(v);
            assert!(b >= last, "bucket of {v} went down");
            last = b;
        }
    }

    #[test]
    fn representative_is_within_a_sixteenth() {
        for v in sample() {
            let b = hist_bucket(v);
            let r = hist_bucket_value(b);
            if v < 16 {
                assert_eq!(r, v, "small values are exact");
            } else if v < 1 << 34 {
                assert!(r.abs_diff(v) * 16 <= v, "{v}: representative {r}");
                assert!(hist_bucket(r) == b, "{v}: representative {r} outside its bucket");
            }
        }
        // The worst case: the first value of a width-2 bucket.
        assert_eq!(hist_bucket_value(hist_bucket(16)), 17);
    }

    #[test]
    fn exit_stats_add_and_merge_use_the_layout() {
        let mut a = crate::ExitStats::default();
        a.add(0);
        a.add(11_585);
        a.add(1 << 40);
        let mut b = a;
        b.merge(&a);
        assert_eq!((b.count, b.total_ns), (6, 2 * (11_585 + (1 << 40))));
        for (bucket, n) in [(0, 2), (hist_bucket(11_585), 2), (HIST_BUCKETS - 1, 2)] {
            assert_eq!(b.hist[bucket], n, "bucket {bucket}");
        }
        assert_eq!(b.hist.iter().sum::<u64>(), 6);
    }

    #[test]
    fn legacy_buckets_map_to_the_old_estimate() {
        assert_eq!(hist_bucket_of_legacy(0), 1);
        // What old reports printed for p50 on the demo (bucket 13: 11.59 us).
        assert_eq!(legacy_log2_estimate(13), 11585);
        for i in 0..LEGACY_LOG2_BUCKETS {
            let want = if i == 0 { 1.0 } else { (std::f64::consts::SQRT_2 * (1u64 << i) as f64).round() };
            let est = legacy_log2_estimate(i);
            assert_eq!(est as f64, want, "old bucket {i}");
            // The estimate lies in the old bucket [2^i, 2^(i+1)) and in the new one it maps to.
            assert!(i == 0 || (est >= 1 << i && est < 2 << i), "old bucket {i}");
            let (lo, hi) = hist_bucket_bounds(hist_bucket_of_legacy(i));
            assert!(lo <= est && est < hi, "old bucket {i}: {est} not in [{lo}, {hi})");
        }
        assert!((1..LEGACY_LOG2_BUCKETS).all(|i| hist_bucket_of_legacy(i) > hist_bucket_of_legacy(i - 1)));
    }
}
