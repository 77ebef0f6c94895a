//! berth's own implementation of the small `base2histogram` API that openraft's runtime
//! statistics use (`Histogram`, `PercentileStats`, `AsciiChart`), patched in for the
//! published crate by the workspace's root `Cargo.toml`.
//!
//! The published crate builds its lookup tables for all sixteen bucket widths the first
//! time any histogram is made: about 26 MiB of resident memory in every berth process,
//! although openraft only ever uses the default width. This one has that single width
//! (3 bits: four buckets per power of two, at most 12.5 % error around a bucket's
//! midpoint), computes bucket indices with a few shifts and keeps no global tables.
//!
//! Only the parts openraft calls exist. A histogram never loses counts: `record_n`
//! saturates instead of wrapping.

use std::fmt;
use std::marker::PhantomData;

/// Significant bits that pick a bucket: one leading bit plus two bits of offset.
const WIDTH: u32 = 3;
/// Buckets per power of two.
const GROUP: usize = 1 << (WIDTH - 1);
/// Buckets that cover every `u64`.
pub const BUCKETS: usize = GROUP * (66 - WIDTH as usize);

/// The bucket that holds `value`. Values below `GROUP` have a bucket each.
fn bucket_of(value: u64) -> usize {
    if value < GROUP as u64 {
        return value as usize;
    }
    let bits = (u64::BITS - value.leading_zeros()) as usize;
    let shift = bits - WIDTH as usize;
    let offset = ((value >> shift) as usize) & (GROUP - 1);
    GROUP + shift * GROUP + offset
}

/// The smallest and the largest value of a bucket, both inclusive.
fn bucket_bounds(bucket: usize) -> (u64, u64) {
    if bucket < GROUP {
        return (bucket as u64, bucket as u64);
    }
    let shift = (bucket - GROUP) / GROUP;
    let offset = (bucket - GROUP) % GROUP;
    let low = ((offset | GROUP) as u64) << shift;
    (low, low + ((1u64 << shift) - 1))
}

/// Counts of values in logarithmic buckets. `T` is a tag the published API carries for
/// per-period metadata; this implementation keeps a single period and ignores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram<T = ()> {
    counts: Vec<u64>,
    total: u64,
    tag: PhantomData<fn() -> T>,
}

impl<T> Default for Histogram<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Histogram<T> {
    /// An empty histogram (252 counters, 2 KiB).
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            tag: PhantomData,
        }
    }

    /// Counts `value` once.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Counts `value` `count` times.
    pub fn record_n(&mut self, value: u64, count: u64) {
        let slot = &mut self.counts[bucket_of(value)];
        *slot = slot.saturating_add(count);
        self.total = self.total.saturating_add(count);
    }

    /// How many values were recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The value below which the fraction `p` (0.0 to 1.0) of the recorded values lie,
    /// as the midpoint of the bucket that holds it; 0 when nothing was recorded.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(count);
            if seen >= rank {
                let (low, high) = bucket_bounds(bucket);
                return low + (high - low) / 2;
            }
        }
        let (low, high) = bucket_bounds(BUCKETS - 1);
        low + (high - low) / 2
    }

    /// The usual percentiles in one go.
    pub fn percentile_stats(&self) -> PercentileStats {
        PercentileStats {
            samples: self.total,
            p0_1: self.percentile(0.001),
            p1: self.percentile(0.01),
            p5: self.percentile(0.05),
            p10: self.percentile(0.10),
            p50: self.percentile(0.50),
            p90: self.percentile(0.90),
            p99: self.percentile(0.99),
            p99_9: self.percentile(0.999),
        }
    }

    /// The non-empty buckets as `(smallest value, largest value, count)`, smallest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, &c)| {
                let (low, high) = bucket_bounds(b);
                (low, high, c)
            })
    }
}

/// Percentiles of a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PercentileStats {
    /// Recorded values.
    pub samples: u64,
    /// 0.1th percentile.
    pub p0_1: u64,
    /// 1st percentile.
    pub p1: u64,
    /// 5th percentile.
    pub p5: u64,
    /// 10th percentile.
    pub p10: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
}

impl fmt::Display for PercentileStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={} p90={} p99={} p99.9={}",
            self.samples, self.p50, self.p90, self.p99, self.p99_9
        )
    }
}

/// Named histograms drawn as text bars, one row per non-empty bucket.
#[derive(Debug, Clone)]
pub struct AsciiChart<T = ()> {
    series: Vec<(String, Histogram<T>)>,
}

impl<T> Default for AsciiChart<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AsciiChart<T> {
    /// An empty chart.
    pub fn new() -> Self {
        Self { series: Vec::new() }
    }

    /// Adds a named histogram.
    pub fn add(mut self, name: &str, hist: Histogram<T>) -> Self {
        self.series.push((name.to_owned(), hist));
        self
    }

    /// One line per series with its percentiles.
    pub fn compact(&self) -> Compact<'_, T> {
        Compact(self)
    }

    /// Every non-empty bucket of every series as a bar.
    pub fn detailed(&self) -> Detailed<'_, T> {
        Detailed(self)
    }
}

/// [`AsciiChart::compact`] as text.
pub struct Compact<'a, T>(&'a AsciiChart<T>);

impl<T> fmt::Display for Compact<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, hist) in &self.0.series {
            writeln!(f, "{name}: {}", hist.percentile_stats())?;
        }
        Ok(())
    }
}

/// [`AsciiChart::detailed`] as text.
pub struct Detailed<'a, T>(&'a AsciiChart<T>);

impl<T> fmt::Display for Detailed<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BAR: u64 = 40;
        let widest = self
            .0
            .series
            .iter()
            .flat_map(|(_, h)| h.buckets().map(|(_, _, c)| c))
            .max()
            .unwrap_or(0)
            .max(1);
        for (name, hist) in &self.0.series {
            writeln!(f, "{name}: {}", hist.percentile_stats())?;
            for (low, high, count) in hist.buckets() {
                let len = (count.saturating_mul(BAR) / widest).max(1) as usize;
                writeln!(
                    f,
                    "  {low:>12}..={high:<12} {count:>10} {}",
                    "#".repeat(len)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_tile_the_whole_range() {
        assert_eq!(bucket_bounds(0), (0, 0));
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_bounds(BUCKETS - 1).1, u64::MAX);
        for b in 1..BUCKETS {
            assert_eq!(
                bucket_bounds(b).0,
                bucket_bounds(b - 1).1 + 1,
                "gap before bucket {b}"
            );
        }
    }

    #[test]
    fn an_empty_histogram_has_zero_percentiles() {
        let h = Histogram::<()>::new();
        assert_eq!(h.percentile_stats(), PercentileStats::default());
        assert!(
            AsciiChart::new()
                .add("x", h)
                .detailed()
                .to_string()
                .starts_with("x: n=0")
        );
    }

    proptest! {
        #[test]
        fn a_value_lies_in_its_bucket(value in any::<u64>()) {
            let (low, high) = bucket_bounds(bucket_of(value));
            prop_assert!(low <= value && value <= high);
            // Four buckets per power of two: a bucket spans at most a quarter of its start.
            prop_assert!(high - low <= low / 4);
        }

        #[test]
        fn percentiles_are_within_an_eighth_of_the_exact_ones(
            mut values in prop::collection::vec(0u64..10_000_000, 1..400),
            p in 0.0f64..=1.0,
        ) {
            let mut h = Histogram::<()>::new();
            for v in &values {
                h.record(*v);
            }
            values.sort_unstable();
            let rank = ((p * values.len() as f64).ceil() as usize).max(1);
            let exact = values[rank - 1];
            let got = h.percentile(p);
            prop_assert!(got.abs_diff(exact) <= exact / 8 + 1, "p={p} exact={exact} got={got}");
            prop_assert_eq!(h.total(), values.len() as u64);
        }

        #[test]
        fn record_n_counts_like_repeated_records(value in any::<u64>(), n in 0u64..50) {
            let mut one = Histogram::<()>::new();
            let mut many = Histogram::<()>::new();
            one.record_n(value, n);
            for _ in 0..n {
                many.record(value);
            }
            prop_assert_eq!(one, many);
        }
    }
}
