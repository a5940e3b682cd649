//! The exported numbers of one poll ([`Exposition`]) and their Prometheus form.
//!
//! The collector thread computes an `Exposition` from each snapshot and publishes it; a scrape
//! turns the latest one into metric families ([`ServeCollector`], a `prometheus::core::Collector`)
//! and the `prometheus` crate's text encoder prints them. Counters are absolute values read
//! from the in-kernel maps (cumulative since the daemon attached), not increments.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use profiler_common::{hist_bucket_bounds, HIST_BUCKETS};

use crate::model::{Direction, Source};

/// `le` bounds of `kvmprof_exit_duration_seconds`, in ns: 1 µs to 1 s.
pub const LE_NS: [u64; 14] =
    [1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000, 100_000_000, 1_000_000_000];

/// The first `le` of [`LE_NS`] that every value of the kernel's histogram bucket `i` is at or
/// below (`LE_NS.len()` = only `+Inf`). A kernel bucket that straddles a bound (at most 1/8
/// of an octave wide) is counted in the next one, so `le` never counts an exit above it.
pub fn le_index(i: usize) -> usize {
    let (_, hi) = hist_bucket_bounds(i);
    let max = hi.saturating_sub(1);
    LE_NS.iter().position(|le| max <= *le).unwrap_or(LE_NS.len())
}

/// Exit-time histogram in Prometheus' buckets (non-cumulative here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// Exits per `le` bound; the last slot is "above the last bound, or not timed".
    pub buckets: [u64; LE_NS.len() + 1],
    pub count: u64,
    pub sum_ns: u64,
}

impl Hist {
    /// Adds one exit site: `hist` is its kernel histogram; exits counted without one (the
    /// exit map was full) are in `+Inf` only, so `_count` is still every exit.
    pub fn add(&mut self, count: u64, total_ns: u64, hist: &[u64; HIST_BUCKETS], le_of: &[usize; HIST_BUCKETS]) {
        let mut timed = 0;
        for (i, c) in hist.iter().enumerate() {
            if *c != 0 {
                self.buckets[le_of[i]] += c;
                timed += c;
            }
        }
        self.buckets[LE_NS.len()] += count.saturating_sub(timed);
        self.count += count;
        self.sum_ns += total_ns;
    }
}

/// Whether a VM's function labels are served, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolState {
    /// No `[[vm]]` entry matches it.
    None,
    Loading,
    Ok,
    /// Its vmlinux/kallsyms could not be loaded (logged once, with the reason).
    Error,
}

impl SymbolState {
    pub fn name(self) -> &'static str {
        match self {
            SymbolState::None => "none",
            SymbolState::Loading => "loading",
            SymbolState::Ok => "ok",
            SymbolState::Error => "error",
        }
    }
}

/// One VM's series.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSeries {
    pub label: String,
    pub pid: u32,
    pub symbols: SymbolState,
    /// (vCPU index or "unknown", reason name) → exits.
    pub exits: BTreeMap<(String, String), u64>,
    /// Reason name → exit-time histogram.
    pub durations: BTreeMap<String, Hist>,
    pub pio: BTreeMap<(u16, Direction), u64>,
    /// MMIO exits by direction (in = read, out = write); both always exported.
    pub mmio: [u64; 2],
    /// (function or `[other]`) → (exits, ns), when the VM has symbols.
    pub functions: Vec<(String, u64, u64)>,
}

/// Everything one poll exports.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub source: Option<Source>,
    pub vms: Vec<VmSeries>,
    pub programs_attached: usize,
    pub records_dropped: u64,
    /// Exits counted without a histogram because the exit map was full.
    pub exits_map_full: u64,
    /// Exits lost: the exit map and its overflow map were both full.
    pub overflow_map_full: u64,
    pub threads_map_full: u64,
    /// Distinct exit keys in the in-kernel maps now.
    pub exit_keys: usize,
    pub live_vms: usize,
    pub snapshot_seconds: f64,
    pub polls: u64,
    pub config_reload_ok: bool,
}

/// The latest exposition, shared by the collector thread (writer) and scrapes (readers).
#[derive(Clone, Default)]
pub struct Published(pub Arc<RwLock<Arc<Exposition>>>);

impl Published {
    pub fn set(&self, e: Exposition) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(e);
    }

    pub fn get(&self) -> Arc<Exposition> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Metric family builder: one name, help and type, many labelled values.
struct Family(MetricFamily);

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

impl Family {
    fn new(name: &str, help: &str, t: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.into());
        mf.set_help(help.into());
        mf.set_field_type(t);
        Family(mf)
    }

    fn value(&mut self, pairs: &[(&str, &str)], v: f64) {
        let mut m = Metric::from_label(labels(pairs));
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
    }

    fn histogram(&mut self, pairs: &[(&str, &str)], h: &Hist) {
        let mut hist = Histogram::default();
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(LE_NS.len());
        for (le, c) in LE_NS.iter().zip(h.buckets.iter()) {
            cum += c;
            let mut b = Bucket::default();
            b.set_upper_bound(*le as f64 / 1e9);
            b.set_cumulative_count(cum);
            buckets.push(b);
        }
        hist.set_bucket(buckets);
        hist.set_sample_count(h.count);
        hist.set_sample_sum(h.sum_ns as f64 / 1e9);
        let mut m = Metric::from_label(labels(pairs));
        m.set_histogram(hist);
        self.0.mut_metric().push(m);
    }
}

/// Every family, in the order of the README's list.
pub fn families(e: &Exposition) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut exits = Family::new("kvmprof_exits_total", "VM exits by VM, vCPU and exit reason.", COUNTER);
    let mut dur = Family::new("kvmprof_exit_duration_seconds", "Time from a VM exit to the re-entry into the guest.", HISTOGRAM);
    let mut pio = Family::new("kvmprof_pio_exits_total", "Port-I/O exits by VM, port (hex) and direction.", COUNTER);
    let mut mmio = Family::new("kvmprof_mmio_exits_total", "MMIO exits by VM and direction (in = read, out = write).", COUNTER);
    let mut fexits = Family::new(
        "kvmprof_function_exits_total",
        "VM exits by guest function (VMs with symbols configured; top N per VM, the rest in function=\"[other]\").",
        COUNTER,
    );
    let mut ftime = Family::new("kvmprof_function_exit_seconds_total", "Time in VM exits by guest function (as kvmprof_function_exits_total).", COUNTER);
    let mut info = Family::new("kvmprof_vm_info", "One per VM traced: its PID and whether its guest symbols are loaded (none|loading|ok|error).", GAUGE);
    for vm in &e.vms {
        let v = vm.label.as_str();
        for ((vcpu, reason), n) in &vm.exits {
            exits.value(&[("vm", v), ("vcpu", vcpu), ("reason", reason)], *n as f64);
        }
        for (reason, h) in &vm.durations {
            dur.histogram(&[("vm", v), ("reason", reason)], h);
        }
        for ((port, dir), n) in &vm.pio {
            pio.value(&[("vm", v), ("port", &format!("{port:#x}")), ("direction", dir.name())], *n as f64);
        }
        mmio.value(&[("vm", v), ("direction", "in")], vm.mmio[0] as f64);
        mmio.value(&[("vm", v), ("direction", "out")], vm.mmio[1] as f64);
        for (f, n, ns) in &vm.functions {
            fexits.value(&[("vm", v), ("function", f)], *n as f64);
            ftime.value(&[("vm", v), ("function", f)], *ns as f64 / 1e9);
        }
        info.value(&[("vm", v), ("pid", &vm.pid.to_string()), ("symbols", vm.symbols.name())], 1.0);
    }
    let mut out: Vec<MetricFamily> = [exits, dur, pio, mmio, fexits, ftime, info].into_iter().map(|f| f.0).collect();

    let mut dropped = Family::new("kvmprof_dropped_records_total", "Streamed exit records the ring buffer had no room for (serve does not stream records: 0).", COUNTER);
    dropped.value(&[], e.records_dropped as f64);
    let mut full = Family::new(
        "kvmprof_map_full_total",
        "Events that found an in-kernel map full: map=exits (exit counted without a histogram), exits_overflow (exit lost), threads (thread event ignored).",
        COUNTER,
    );
    full.value(&[("map", "exits")], e.exits_map_full as f64);
    full.value(&[("map", "exits_overflow")], e.overflow_map_full as f64);
    full.value(&[("map", "threads")], e.threads_map_full as f64);
    let mut entries = Family::new("kvmprof_map_entries", "Distinct exit keys in the in-kernel exit maps (8192 fit with histograms).", GAUGE);
    entries.value(&[("map", "exits")], e.exit_keys as f64);
    let mut progs = Family::new("kvmprof_programs_attached", "eBPF programs attached now.", GAUGE);
    progs.value(&[], e.programs_attached as f64);
    let mut source = Family::new("kvmprof_exit_source_info", "The exit source: hw (kvm_exit/kvm_entry) or emulated (kvm_pio/kvm_mmio/kvm_userspace_exit).", GAUGE);
    if let Some(s) = e.source {
        source.value(&[("source", s.name())], 1.0);
    }
    let mut build = Family::new("kvmprof_build_info", "kvmprof's version.", GAUGE);
    build.value(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    let mut vms = Family::new("kvmprof_vms", "VMs (processes holding a KVM VM) traced now.", GAUGE);
    vms.value(&[], e.live_vms as f64);
    let mut snap = Family::new("kvmprof_snapshot_duration_seconds", "Time the last poll took to read the in-kernel maps.", GAUGE);
    snap.value(&[], e.snapshot_seconds);
    let mut polls = Family::new("kvmprof_polls_total", "Polls of the in-kernel maps.", COUNTER);
    polls.value(&[], e.polls as f64);
    let mut reload = Family::new("kvmprof_config_last_reload_successful", "1 if the last config load (start or SIGHUP) succeeded.", GAUGE);
    reload.value(&[], if e.config_reload_ok { 1.0 } else { 0.0 });
    out.extend([dropped, full, entries, progs, source, build, vms, snap, polls, reload].into_iter().map(|f| f.0));
    out
}

/// The `prometheus` crate's view of the published exposition.
pub struct ServeCollector {
    published: Published,
    descs: Vec<Desc>,
}

impl ServeCollector {
    pub fn new(published: Published) -> ServeCollector {
        // Descs are for registration only (unique names); the values come from `families`.
        let descs = families(&Exposition::default())
            .iter()
            .filter_map(|mf| Desc::new(mf.name().to_string(), mf.help().to_string(), Vec::new(), Default::default()).ok())
            .collect();
        ServeCollector { published, descs }
    }
}

impl Collector for ServeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.published.get())
    }
}

/// The registry a scrape gathers: kvmprof's series and the `process_*` ones (CPU, RSS, fds).
pub fn registry(published: Published) -> prometheus::Registry {
    let r = prometheus::Registry::new();
    // Both only fail on duplicate names, which these two collectors do not share.
    let _ = r.register(Box::new(ServeCollector::new(published)));
    let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    r
}

/// The text exposition format of everything `registry` holds (empty families left out).
pub fn encode(registry: &prometheus::Registry) -> Vec<u8> {
    let mut buf = Vec::new();
    // Encoding into a Vec fails only on an empty family, which gather() has pruned.
    let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::hist_bucket;

    #[test]
    fn le_counts_only_exits_at_or_below_the_bound() {
        for ns in [0u64, 7, 999, 1_000, 1_001, 9_700, 10_000, 10_001, 999_999_999, 1_000_000_000, 5_000_000_000, u64::MAX] {
            let le = le_index(hist_bucket(ns));
            if le < LE_NS.len() {
                assert!(ns <= LE_NS[le], "{ns} counted at le={}", LE_NS[le]);
            }
            // And not pushed further than one kernel bucket past the bound.
            if le > 0 && le < LE_NS.len() + 1 {
                let (lo, _) = hist_bucket_bounds(hist_bucket(ns));
                assert!(lo <= LE_NS[le - 1] || ns > LE_NS[le - 1], "{ns}");
            }
        }
    }

    #[test]
    fn histogram_count_includes_untimed_exits_in_inf() {
        let le_of: [usize; HIST_BUCKETS] = std::array::from_fn(le_index);
        let mut hist = [0u64; HIST_BUCKETS];
        hist[hist_bucket(9_000)] = 3;
        let mut h = Hist::default();
        h.add(5, 50_000, &hist, &le_of);
        assert_eq!(h.count, 5);
        assert_eq!(h.buckets[3], 3, "9 us is in le=10us");
        assert_eq!(h.buckets[LE_NS.len()], 2);
        let text = {
            let e = Exposition {
                vms: vec![VmSeries {
                    label: "a".into(),
                    pid: 1,
                    symbols: SymbolState::None,
                    exits: BTreeMap::new(),
                    durations: [("IO".to_string(), h)].into_iter().collect(),
                    pio: BTreeMap::new(),
                    mmio: [0, 0],
                    functions: vec![],
                }],
                ..Exposition::default()
            };
            let published = Published::default();
            published.set(e);
            String::from_utf8(encode(&registry(published))).unwrap()
        };
        assert!(text.contains("kvmprof_exit_duration_seconds_bucket{vm=\"a\",reason=\"IO\",le=\"0.00001\"} 3"), "{text}");
        assert!(text.contains("kvmprof_exit_duration_seconds_bucket{vm=\"a\",reason=\"IO\",le=\"+Inf\"} 5"), "{text}");
        assert!(text.contains("kvmprof_exit_duration_seconds_count{vm=\"a\",reason=\"IO\"} 5"), "{text}");
    }
}
