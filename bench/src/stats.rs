//! Statistics the harness reports: percentiles, Jain's fairness index, max-min fair shares.

use serde::Serialize;

/// Jain's fairness index `(Σx)² / (n·Σx²)`: 1 when all `xs` are equal, `1/n` when one takes all.
/// An empty or all-zero input is perfectly fair (1).
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if xs.is_empty() || sq == 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

/// Max-min fair shares of `capacity` among `demands` (water-filling): nobody gets more than it
/// asks for, and what is left is split equally among those who want more.
pub fn maxmin_shares(capacity: f64, demands: &[f64]) -> Vec<f64> {
    let mut share = vec![0.0; demands.len()];
    let mut open: Vec<usize> = (0..demands.len()).filter(|&i| demands[i] > 0.0).collect();
    let mut left = capacity.max(0.0);
    while !open.is_empty() && left > 1e-12 {
        let each = left / open.len() as f64;
        let (sated, hungry): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| demands[i] - share[i] <= each);
        if sated.is_empty() {
            for &i in &hungry {
                share[i] += each;
            }
            break;
        }
        for &i in &sated {
            left -= demands[i] - share[i];
            share[i] = demands[i];
        }
        open = hungry;
    }
    share
}

/// The `q`-quantile (0..=1) of ascending `sorted` values by nearest rank; `None` when empty.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A distribution summary in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Summary {
    /// Summarise nanosecond samples (sorted here).
    pub fn of_ns(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let ms = |v: Option<u64>| v.map_or(0.0, |v| v as f64 / 1e6);
        let count = samples.len() as u64;
        let mean_ms = if count == 0 {
            0.0
        } else {
            samples.iter().map(|&v| v as f64).sum::<f64>() / count as f64 / 1e6
        };
        Summary {
            count,
            mean_ms,
            p50_ms: ms(percentile(samples, 0.50)),
            p95_ms: ms(percentile(samples, 0.95)),
            p99_ms: ms(percentile(samples, 0.99)),
            p999_ms: ms(percentile(samples, 0.999)),
            max_ms: ms(samples.last().copied()),
        }
    }
}

/// A latency histogram (ns, 3 significant digits, 1 ns .. 100 s).
pub struct Hist(hdrhistogram::Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"))
    }
}

impl Hist {
    /// Record one sample in ns (clamped into range).
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Merge another histogram in.
    pub fn add(&mut self, other: &Hist) {
        self.0.add(&other.0).expect("same bounds");
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q`-quantile in ns.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// Summary in milliseconds.
    pub fn summary(&self) -> Summary {
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1e6;
        Summary {
            count: self.0.len(),
            mean_ms: self.0.mean() / 1e6,
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.0.max() as f64 / 1e6,
        }
    }
}

/// The median of `xs` (0 when empty; the mean of the middle two for an even count).
///
/// ```
/// use flowgate_bench::stats::median;
/// assert_eq!((median(&[]), median(&[3.0, 1.0, 2.0]), median(&[4.0, 1.0])), (0.0, 2.0, 2.5));
/// ```
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_extremes_and_a_known_value() {
        assert_eq!(jain(&[]), 1.0);
        assert_eq!(jain(&[0.0, 0.0]), 1.0);
        assert!((jain(&[3.0, 3.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        // (1+2+3)² / (3·(1+4+9)) = 36/42
        assert!((jain(&[1.0, 2.0, 3.0]) - 36.0 / 42.0).abs() < 1e-12);
    }

    #[test]
    fn maxmin_shares_water_fill() {
        // A flood that wants everything and a client that wants 50 of 400.
        assert_eq!(maxmin_shares(400.0, &[2500.0, 50.0]), vec![350.0, 50.0]);
        // Nobody sated: equal split.
        assert_eq!(maxmin_shares(300.0, &[1000.0, 1000.0, 1000.0]), vec![100.0, 100.0, 100.0]);
        // Everybody sated: each gets its demand.
        assert_eq!(maxmin_shares(300.0, &[10.0, 20.0, 0.0]), vec![10.0, 20.0, 0.0]);
        // Two rounds: 10 sated, then 50 sated, the rest to the last.
        let s = maxmin_shares(150.0, &[10.0, 50.0, 500.0]);
        assert!((s[0] - 10.0).abs() < 1e-9 && (s[1] - 50.0).abs() < 1e-9 && (s[2] - 90.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.999), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
        let mut samples: Vec<u64> = (0..1000).rev().map(|i| i * 1_000_000).collect();
        let s = Summary::of_ns(&mut samples);
        assert_eq!((s.count, s.p50_ms, s.p99_ms, s.max_ms), (1000, 499.0, 989.0, 999.0));
    }

    #[test]
    fn histogram_percentiles_agree_with_exact_ones() {
        let mut h = Hist::default();
        let mut exact: Vec<u64> = Vec::new();
        for i in 1..=10_000u64 {
            let v = i * 997 % 50_000 + 1_000;
            h.record(v);
            exact.push(v);
        }
        exact.sort_unstable();
        for q in [0.5, 0.99, 0.999] {
            let (a, b) = (h.quantile_ns(q) as f64, percentile(&exact, q).unwrap() as f64);
            assert!((a - b).abs() / b < 0.002, "q={q}: hdr {a} vs exact {b}");
        }
        assert_eq!(h.len(), 10_000);
    }
}
