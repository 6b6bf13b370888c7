//! Token accounting: what a request cost, and a sliding window of weighted tokens that any thread
//! may charge.
//!
//! A request's usage is known only when its response ends, on whichever thread holds its permit,
//! so unlike the arrival counters (written by the owning shard alone) the token window is written
//! from anywhere. Each of its [`RATE_BUCKETS`] slots is one `AtomicU64` packing the absolute
//! bucket index it holds (high 32 bits) with the weighted tokens charged in it (low 32 bits): a
//! charge is one CAS loop on one word, a stale slot is recognised by its index and restarted in
//! the same CAS, and nobody ever has to zero anything.

use crate::config::{ScoringConfig, RATE_BUCKETS};
use crate::rate_window::{seed_share, slot_bucket};
use crate::sync::{AtomicU64, Ordering};

/// Most weighted tokens one bucket can hold; charges beyond it saturate (4.3 G: no pool serves
/// that many weighted tokens in one twelfth of a window).
pub const MAX_BUCKET_TOKENS: u64 = u32::MAX as u64;

/// Most weighted tokens one request is charged: a report above it is clamped (a billion prompt
/// tokens at the highest weight is already far beyond any model's context).
pub const MAX_REQUEST_COST: u64 = 1 << 40;

/// Prices of prompt and generated tokens in weighted tokens (VTC's `w_in`, `w_out`), swapped live
/// on a reload. Shared by a shard's table and every workload entry of it.
#[derive(Debug)]
pub struct TokenPrices {
    /// `input_token_weight` as f64 bits.
    input: AtomicU64,
    /// `output_token_weight` as f64 bits.
    output: AtomicU64,
}

impl TokenPrices {
    /// The prices of `scoring` (assumed validated: finite, 0..=1000).
    ///
    /// ```
    /// use flowgate_engine::{config::ScoringConfig, tokens::TokenPrices};
    /// let prices = TokenPrices::new(&ScoringConfig::default()); // 1 and 2
    /// assert_eq!(prices.weigh(100, 10), 120);
    /// ```
    pub fn new(scoring: &ScoringConfig) -> Self {
        Self {
            input: AtomicU64::new(scoring.input_token_weight.to_bits()),
            output: AtomicU64::new(scoring.output_token_weight.to_bits()),
        }
    }

    /// Take a reloaded configuration's prices (charges from now on).
    pub fn set(&self, scoring: &ScoringConfig) {
        self.input.store(scoring.input_token_weight.to_bits(), Ordering::Relaxed);
        self.output.store(scoring.output_token_weight.to_bits(), Ordering::Relaxed);
    }

    /// The weighted cost of `prompt` and `completion` tokens, rounded, at most [`MAX_REQUEST_COST`].
    pub fn weigh(&self, prompt: u64, completion: u64) -> u64 {
        let input = f64::from_bits(self.input.load(Ordering::Relaxed));
        let output = f64::from_bits(self.output.load(Ordering::Relaxed));
        let cost = prompt as f64 * input + completion as f64 * output;
        // `as` saturates, and NaN (impossible with validated prices) would give 0.
        (cost.round() as u64).min(MAX_REQUEST_COST)
    }
}

/// Weighted tokens charged per bucket over a sliding window, chargeable from any thread.
///
/// Slot `b % RATE_BUCKETS` holds bucket `b` as `(b as u32) << 32 | tokens`. A read sums the slots
/// whose bucket is among the last [`RATE_BUCKETS`] (the current one included), so, like the
/// arrival window, it covers between `window − bucket` and `window` of history.
#[derive(Debug)]
pub struct TokenWindow {
    /// Packed `(bucket index, tokens)` per slot. Invariant: a slot's tokens were all charged in
    /// the bucket its index names.
    slots: [AtomicU64; RATE_BUCKETS],
}

impl Default for TokenWindow {
    fn default() -> Self {
        Self { slots: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl TokenWindow {
    /// Charge `tokens` in bucket `bucket` (absolute index: `now / bucket_width`).
    ///
    /// ```
    /// use flowgate_engine::tokens::TokenWindow;
    /// let w = TokenWindow::default();
    /// w.charge(100, 30);
    /// w.charge(101, 12);
    /// assert_eq!(w.sum(101), 42);
    /// assert_eq!(w.sum(100 + 12), 12); // bucket 100 slid out of the window
    /// ```
    pub fn charge(&self, bucket: u64, tokens: u64) {
        let slot = &self.slots[(bucket % RATE_BUCKETS as u64) as usize];
        let index = bucket as u32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            // The slot still holds an older bucket: this charge restarts it.
            let held = if (current >> 32) as u32 == index { current & MAX_BUCKET_TOKENS } else { 0 };
            let next = (u64::from(index) << 32) | held.saturating_add(tokens).min(MAX_BUCKET_TOKENS);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// A re-base to a new geometry (see [`crate::rate_window`]): the window ending at bucket
    /// `head` holds `total`, spread by [`seed_share`]; every other slot holds nothing. Plain
    /// stores: a charge racing this (it read the old width) may be lost, and so may the share of
    /// the one slot it restarts; one that reads the new width after the re-base adds to it.
    ///
    /// ```
    /// use flowgate_engine::tokens::TokenWindow;
    /// let w = TokenWindow::default();
    /// w.charge(7, 500); // an index of the old geometry
    /// w.reseed(40, 24);
    /// assert_eq!(w.sum(40), 24);
    /// assert_eq!(w.sum(40 + 11), 2, "one twelfth left in the newest bucket of the window");
    /// ```
    pub fn reseed(&self, head: u64, total: u64) {
        for (i, slot) in self.slots.iter().enumerate() {
            let value = match slot_bucket(head, i) {
                Some(b) => (u64::from(b as u32) << 32) | seed_share(total, head, b).min(MAX_BUCKET_TOKENS),
                None => 0,
            };
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Weighted tokens charged in the [`RATE_BUCKETS`] buckets ending with `now_bucket`.
    pub fn sum(&self, now_bucket: u64) -> u64 {
        let now = now_bucket as u32;
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            // A bucket from the future (a charge that read a later clock) counts as current.
            .filter(|v| {
                let age = now.wrapping_sub((v >> 32) as u32);
                (age as usize) < RATE_BUCKETS || age > u32::MAX - RATE_BUCKETS as u32
            })
            .map(|v| v & MAX_BUCKET_TOKENS)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_in_one_bucket_add_up() {
        let w = TokenWindow::default();
        for _ in 0..10 {
            w.charge(7, 5);
        }
        assert_eq!(w.sum(7), 50);
        assert_eq!(w.sum(7 + RATE_BUCKETS as u64 - 1), 50, "still in the window");
        assert_eq!(w.sum(7 + RATE_BUCKETS as u64), 0, "slid out");
    }

    #[test]
    fn a_stale_slot_restarts_on_its_next_charge() {
        let w = TokenWindow::default();
        w.charge(3, 1000);
        // Same slot, a lap later: the old 1000 must not be added to.
        w.charge(3 + RATE_BUCKETS as u64, 1);
        assert_eq!(w.sum(3 + RATE_BUCKETS as u64), 1);
    }

    #[test]
    fn a_bucket_saturates_instead_of_wrapping_into_the_index() {
        let w = TokenWindow::default();
        w.charge(5, MAX_BUCKET_TOKENS);
        w.charge(5, 10);
        assert_eq!(w.sum(5), MAX_BUCKET_TOKENS);
        w.charge(6, 1);
        assert_eq!(w.sum(6), MAX_BUCKET_TOKENS + 1, "the neighbour is untouched");
    }

    #[test]
    fn a_charge_slightly_ahead_of_the_reader_counts() {
        let w = TokenWindow::default();
        w.charge(11, 4);
        assert_eq!(w.sum(10), 4);
    }

    #[test]
    fn concurrent_charges_are_all_counted() {
        let w = std::sync::Arc::new(TokenWindow::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || (0..10_000).for_each(|i| w.charge(100 + i % 3, 1)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(w.sum(102), 40_000);
    }

    #[test]
    fn prices_weigh_and_clamp() {
        let mut s = ScoringConfig::default();
        let p = TokenPrices::new(&s);
        assert_eq!(p.weigh(0, 0), 0);
        assert_eq!(p.weigh(3, 4), 11);
        s.input_token_weight = 0.5;
        s.output_token_weight = 1000.0;
        p.set(&s);
        assert_eq!(p.weigh(3, 0), 2, "1.5 rounds to 2");
        assert_eq!(p.weigh(0, u64::MAX), MAX_REQUEST_COST);
    }
}
