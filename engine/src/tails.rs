//! A shard's published tails: the scores of its two lowest queued requests, which newcomers of other
//! shards claim, one at a time, to displace them when the engine's queue is full.
//!
//! Both scores live in one atomic word (two `f32`s, least in the low half), so a publication and a
//! claim are each one compare-and-swap and a claim can never see half of a publication. A claim
//! replaces the claimed score by [`CLAIMED`]; the claimant then tells the shard (through its
//! displacement queue) to evict its tail. Two claims per publication, not one: a shard that has just
//! lost its tail still offers the next-lowest, so a burst of newcomers elsewhere does not find every
//! other shard's tail hidden until that shard runs again (which would refuse them, or make them
//! displace their own shard's better tail).
//!
//! The shard republishes at every pass ([`Tails::publish`]), skipping the lowest requests that claims
//! have already taken but it has not evicted yet: `max(claims still marked, displacements queued)`.
//! Both err on the safe side: a claim whose displacement the shard carried out just before the
//! publication still counts as marked there, so that one publication hides one request too many
//! (the next is exact); a claimant preempted between its claim and pushing its displacement is
//! the one case a request can be offered again, and then its second displacement evicts the next
//! tail only if that still scores below the newcomer.
//!
//! Scores are rounded *up* to `f32` (relative error below 10⁻⁷, far below the cross-shard slack of
//! 10⁻³), so a published tail never looks lower than the request it stands for.

use crate::sync::{AtomicU64, Ordering};

/// Requests a shard offers per publication; also how far, per shard, cross-shard displacements may
/// take the queue past `max_requests` until their victims evict (each victim evicts at its next
/// pass).
pub const TAILS_OFFERED: usize = 2;

/// Bits of an empty half: nothing to offer (`+∞`: no newcomer scores above it).
pub const EMPTY: u32 = 0x7f80_0000;
/// Bits of a claimed half: a NaN, which no comparison selects.
pub const CLAIMED: u32 = 0x7fc0_0c1a;

/// One shard's published tails. Written by its shard ([`publish`](Self::publish)) and by claimants
/// of any shard ([`claim`](Self::claim)); both by compare-and-swap.
#[derive(Debug)]
pub struct Tails {
    /// Low half: the least offered score's `f32` bits; high half: the next. Invariant: an offered
    /// low half is `<=` an offered high half; a claim only turns an offered half into [`CLAIMED`].
    word: AtomicU64,
}

/// A claimable tail as read: the word it was read from and which half.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offer {
    /// The score offered.
    pub score: f64,
    word: u64,
    high: bool,
}

impl Default for Tails {
    fn default() -> Self {
        Self::new()
    }
}

impl Tails {
    /// Nothing offered.
    ///
    /// ```
    /// use flowgate_engine::tails::Tails;
    /// let t = Tails::new();
    /// assert!(t.offer().is_none());
    /// t.publish([Some(0.2), Some(0.5)], 0);
    /// let o = t.offer().unwrap();
    /// assert!((o.score - 0.2).abs() < 1e-6);
    /// assert!(t.claim(o));
    /// assert!(!t.claim(o), "claimed once");
    /// assert!((t.offer().unwrap().score - 0.5).abs() < 1e-6, "then the next-lowest");
    /// ```
    pub fn new() -> Self {
        Self { word: AtomicU64::new(pack(EMPTY, EMPTY)) }
    }

    /// Shard side: offer `lowest` (its two least scores, least first), minus the `pending` least
    /// that displacements already queued for it will evict; claims marked since the last
    /// publication count as pending too.
    pub fn publish(&self, lowest: [Option<f64>; 2], pending: usize) {
        let bits = lowest.map(|s| s.map_or(EMPTY, round_up));
        debug_assert!(lowest[0].is_some() || lowest[1].is_none(), "least first");
        let mut current = self.word.load(Ordering::Acquire);
        loop {
            let claimed = usize::from(low(current) == CLAIMED) + usize::from(high(current) == CLAIMED);
            let fresh = match pending.max(claimed) {
                0 => pack(bits[0], bits[1]),
                1 => pack(bits[1], EMPTY),
                _ => pack(EMPTY, EMPTY),
            };
            // A claim landing between the load and here fails the swap; count it and retry.
            match self.word.compare_exchange_weak(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// The least score offered now, if any.
    pub fn offer(&self) -> Option<Offer> {
        let word = self.word.load(Ordering::Acquire);
        [(low(word), false), (high(word), true)]
            .into_iter()
            .find(|&(b, _)| b != CLAIMED && b != EMPTY)
            .map(|(b, high)| Offer { score: f64::from(f32::from_bits(b)), word, high })
    }

    /// Claimant side: take `offer` (from [`offer`](Self::offer)). `false` if the word changed
    /// since (another claim or a publication): read again.
    pub fn claim(&self, offer: Offer) -> bool {
        let w = offer.word;
        let claimed = if offer.high { pack(low(w), CLAIMED) } else { pack(CLAIMED, high(w)) };
        self.word.compare_exchange(w, claimed, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The least offered score, [`f64::INFINITY`] if none (diagnostics).
    pub fn least(&self) -> f64 {
        self.offer().map_or(f64::INFINITY, |o| o.score)
    }
}

const fn pack(low: u32, high: u32) -> u64 {
    (high as u64) << 32 | low as u64
}

fn low(word: u64) -> u32 {
    word as u32
}

fn high(word: u64) -> u32 {
    (word >> 32) as u32
}

/// `score` as `f32` bits, rounded towards `+∞` (a parked tail's `f64::MIN` becomes `f32::MIN`, still
/// below every real score).
fn round_up(score: f64) -> u32 {
    assert!(!score.is_nan(), "a NaN score reached the tails");
    let f = score as f32;
    let f = if f64::from(f) < score { f.next_up() } else { f };
    f.to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_never_lowers_a_score() {
        for s in [0.32, -0.2, 1.0 / 3.0, 1e-9, -1e-9, 123.456, 0.0] {
            assert!(f64::from(f32::from_bits(round_up(s))) >= s, "{s}");
        }
        // A parked tail (f64::MIN) stays below every real score.
        assert_eq!(f32::from_bits(round_up(f64::MIN)), f32::MIN);
    }

    #[test]
    fn publication_skips_what_is_already_claimed_or_pending() {
        let t = Tails::new();
        t.publish([Some(1.0), Some(2.0)], 1);
        assert_eq!(t.least(), 2.0, "one pending: the least is spoken for");
        t.publish([Some(1.0), Some(2.0)], 2);
        assert!(t.offer().is_none());
        t.publish([Some(1.0), Some(2.0)], 0);
        let o = t.offer().unwrap();
        assert!(t.claim(o));
        // A claim since the last publication: the next one still hides the claimed request.
        t.publish([Some(1.0), Some(3.0)], 0);
        assert_eq!(t.least(), 3.0);
        t.publish([Some(1.0), None], 0);
        assert_eq!(t.least(), 1.0, "no claim marked any more: the shard evicted it");
    }

    #[test]
    fn a_stale_offer_is_refused() {
        let t = Tails::new();
        t.publish([Some(1.0), Some(2.0)], 0);
        let o = t.offer().unwrap();
        t.publish([Some(0.5), Some(2.0)], 0);
        assert!(!t.claim(o));
        assert_eq!(t.least(), 0.5);
    }
}
