//! A fixed-bucket latency histogram, rendered in Prometheus' cumulative `_bucket` form.

/// Upper bounds in seconds of the latency buckets (vLLM's time-to-first-token buckets, which
/// also serve for end-to-end latency here). Strictly increasing; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 18] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0];

/// Observations counted per bucket of [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// `counts[i]`: observations `<= LATENCY_BUCKETS[i]` and above the bucket before (not
    /// cumulative); `counts[LATENCY_BUCKETS.len()]` holds the ones above every bound.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations in seconds; ≥ 0.
    sum: f64,
    /// Number of observations; equals the sum of `counts`.
    count: u64,
}

impl Histogram {
    /// Record one observation of `seconds` (negative or NaN values count as 0).
    pub fn observe(&mut self, seconds: f64) {
        let v = if seconds.is_nan() || seconds < 0.0 { 0.0 } else { seconds };
        let i = LATENCY_BUCKETS.iter().position(|&b| v <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the observations in seconds.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, cumulative count)` per bucket, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        bounds.zip(self.counts.iter()).scan(0u64, |acc, (b, &c)| {
            *acc += c;
            Some((b, *acc))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_counts_end_with_the_total() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 100.0] {
            h.observe(s);
        }
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[1], (0.005, 3));
        assert_eq!(c.last().copied(), Some((f64::INFINITY, 4)));
        assert_eq!(h.count(), 4);
    }
}
