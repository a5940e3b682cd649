//! The import's exit sites: each distinct exit key numbered in order of appearance (the record
//! stream's site numbers), with the count, total time and histogram of its exits.
//!
//! The replay charges every exit here, one at a time, so this is laid out for the cache: a
//! trace has thousands of sites, and with a hash map of keys beside 2 KiB histograms every
//! exit cost three or four cache misses. Here a site is two cache lines, the key with its
//! count and total, then its histogram's few buckets in use; the index that finds it is a
//! small array of 8-byte slots.
use profiler_common::{hist_bucket, ExitKey, ExitStats, HIST_BUCKETS};

#[derive(Default)]
pub(super) struct Sites {
    /// Open addressing with linear probing, at most half full: `hash >> 32 << 32 | site + 1`,
    /// 0 for a free slot. The high half of the hash skips most other sites without reading them.
    index: Vec<u64>,
    sites: Vec<Site>,
    /// The full histograms of the sites whose buckets found no slot ([`Site::spill`]).
    spilled: Vec<[u64; HIST_BUCKETS]>,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Site {
    key: ExitKey,
    count: u64,
    total_ns: u64,
    /// `bucket << 24 | exits` (a free slot is 0): the buckets a site's durations fall in are
    /// few. A slot that reaches `SLOT_MAX` exits moves them to the full histogram and is free
    /// again; so a bucket may have two slots, which only adds up the same.
    slots: [u32; SLOTS],
    /// 1 + the index in [`Sites::spilled`] of this site's full histogram; 0: none yet.
    spill: u32,
}

const SLOTS: usize = 15;
const SLOT_MAX: u32 = (1 << 24) - 1;
const _: () = assert!(std::mem::size_of::<Site>() == 128 && HIST_BUCKETS <= 256);

impl Site {
    /// As `ExitStats::add`.
    #[inline]
    fn add(&mut self, ns: u64, spilled: &mut Vec<[u64; HIST_BUCKETS]>) {
        self.count += 1;
        self.total_ns += ns;
        let bucket = hist_bucket(ns);
        let tag = (bucket as u32) << 24;
        for slot in &mut self.slots {
            if *slot == 0 {
                *slot = tag | 1;
                return;
            }
            if *slot & !SLOT_MAX == tag {
                *slot += 1;
                if *slot & SLOT_MAX == SLOT_MAX {
                    // Full: its exits go to the full histogram.
                    *slot = 0;
                    self.spill_histogram(spilled)[bucket] += SLOT_MAX as u64;
                }
                return;
            }
        }
        self.spill_histogram(spilled)[bucket] += 1;
    }

    fn spill_histogram<'a>(&mut self, spilled: &'a mut Vec<[u64; HIST_BUCKETS]>) -> &'a mut [u64; HIST_BUCKETS] {
        if self.spill == 0 {
            spilled.push([0; HIST_BUCKETS]);
            self.spill = spilled.len() as u32;
        }
        &mut spilled[self.spill as usize - 1]
    }

    fn stats(&self, spilled: &[[u64; HIST_BUCKETS]]) -> ExitStats {
        let mut s = ExitStats { count: self.count, total_ns: self.total_ns, ..ExitStats::default() };
        if self.spill != 0 {
            s.hist = spilled[self.spill as usize - 1];
        }
        for slot in self.slots {
            s.hist[(slot >> 24) as usize] += (slot & SLOT_MAX) as u64;
        }
        s
    }
}

/// The key folded to one word, then mixed (a fixed hash: the input is a local file).
#[inline]
fn hash(k: &ExitKey) -> u64 {
    let ids = (k.tgid as u64) << 32 | k.tid as u64;
    let what = (k.reason as u64) << 32 | k.vcpu as u64;
    let small = (k.stack as u64) << 32 | (k.isa as u64) << 8 | k.detail_kind as u64;
    let h = k.rip ^ k.detail.rotate_left(21) ^ k.caller.rotate_left(42) ^ ids.rotate_left(11) ^ what.rotate_left(33) ^ small.rotate_left(50);
    let h = (h ^ h >> 32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ h >> 29
}

impl Sites {
    /// The site of `key`, numbering it if it is new.
    #[inline]
    pub fn site(&mut self, key: &ExitKey) -> u32 {
        if self.sites.len() * 2 >= self.index.len() {
            self.grow();
        }
        let h = hash(key);
        let mask = self.index.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let slot = self.index[i];
            if slot == 0 {
                self.sites.push(Site { key: *key, count: 0, total_ns: 0, slots: [0; SLOTS], spill: 0 });
                let site = self.sites.len() as u32 - 1;
                self.index[i] = h >> 32 << 32 | (site as u64 + 1);
                return site;
            }
            if slot >> 32 == h >> 32 {
                let site = (slot as u32) - 1;
                if self.sites[site as usize].key == *key {
                    return site;
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Charges one exit of `ns` to `key`'s site; returns the site.
    #[inline]
    pub fn charge(&mut self, key: &ExitKey, ns: u64) -> u32 {
        let site = self.site(key);
        self.sites[site as usize].add(ns, &mut self.spilled);
        site
    }

    fn grow(&mut self) {
        let len = (self.index.len() * 2).max(1024);
        self.index = vec![0; len];
        for (site, s) in self.sites.iter().enumerate() {
            let h = hash(&s.key);
            let mut i = h as usize & (len - 1);
            while self.index[i] != 0 {
                i = (i + 1) & (len - 1);
            }
            self.index[i] = h >> 32 << 32 | (site as u64 + 1);
        }
    }

    /// Every site's key and what was charged to it.
    pub fn stats(&self) -> impl Iterator<Item = (ExitKey, ExitStats)> + '_ {
        self.sites.iter().map(|s| (s.key, s.stats(&self.spilled)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sites numbered in order of appearance, and each site's counts, total and histogram as
    /// `ExitStats::add` gives them, through growth of the index, slot overflow and spilling.
    #[test]
    fn charges_as_exit_stats_add() {
        let mut sites = Sites::default();
        let mut want: Vec<(ExitKey, ExitStats)> = Vec::new();
        let mut xs = crate::import::XorShift(0x1234_5678_9abc_def1u64);
        for i in 0..300_000u64 {
            let rng = xs.next();
            let key = ExitKey { rip: 0xffff_ffff_8100_0000 + (rng % 3000) * 0x40, tid: (rng >> 20) as u32 % 3, ..ExitKey::default() };
            // Narrow for most sites, wide (more buckets than slots) for a few.
            let ns = if key.rip.is_multiple_of(7) { rng >> 40 } else { 2_000 + (i % 7) * 1_000 };
            let site = sites.charge(&key, ns) as usize;
            if site == want.len() {
                want.push((key, ExitStats::default()));
            }
            assert_eq!(want[site].0, key);
            want[site].1.add(ns);
        }
        assert!(want.len() > 5_000);
        let got: Vec<(ExitKey, ExitStats)> = sites.stats().collect();
        assert!(got == want);
        assert!(!sites.spilled.is_empty());
        // A slot that fills up moves its exits to the histogram.
        let mut s = Site { key: ExitKey::default(), count: 0, total_ns: 0, slots: [0; SLOTS], spill: 0 };
        let mut spilled = Vec::new();
        let mut e = ExitStats::default();
        for _ in 0..SLOT_MAX as u64 + 5 {
            s.add(100, &mut spilled);
            e.add(100);
        }
        assert!(s.stats(&spilled) == e);
    }
}
