//! [`Load`]: one backend's scrape view, packed in one word so that the scraper can replace it whole
//! and a dispatcher can take a place in it with one compare-and-swap.
//!
//! Layout of the `u64`:
//!
//! | bits | field |
//! |---|---|
//! | 0..24 | `sent`: requests dispatched since the last scrape |
//! | 24..48 | `waiting`: requests the last scrape saw waiting |
//! | 48 | KV-cache use at or above the threshold |
//! | 49 | stale: no good scrape within `staleness` (or none yet) |
//! | 50..64 | generation of the backend slot (which backend the word is about) |
//!
//! The generation lets a scraper that outlived its backend (the slot was freed and reused by a new
//! one) fail its compare-and-swap instead of publishing for the wrong backend.

/// Bits of each count (`waiting`, `sent`).
const COUNT_BITS: u32 = 24;
/// Largest count a [`Load`] holds; larger scraped queues are clamped to it (still saturated:
/// `queue_depth_threshold` ≤ 2^20).
pub(crate) const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
/// KV-cache use at or above the threshold.
const KV_FULL: u64 = 1 << (2 * COUNT_BITS);
/// No good scrape within `staleness` (or none yet).
const STALE: u64 = 1 << (2 * COUNT_BITS + 1);
/// Where the generation starts.
const GENERATION_SHIFT: u32 = 2 * COUNT_BITS + 2;
/// Generations wrap at this many (14 bits): a scraper would have to outlive this many reuses of
/// its slot to be confused, and scrapers stop within one scrape of their backend leaving.
pub const GENERATIONS: u32 = 1 << (64 - GENERATION_SHIFT);

/// A backend's scrape view (see the module docs).
///
/// ```
/// use flowgate_engine::load::Load;
/// let l = Load::scraped(3, false, 7);
/// assert_eq!(l.room(5), 2);
/// assert_eq!(l.with_one_more_sent().room(5), 1);
/// assert_eq!(l.with_one_more_sent().generation(), 7);
/// assert_eq!(Load::never_scraped(7).room(5), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load(u64);

impl Load {
    /// Before the first good scrape of generation `generation`: no room.
    pub fn never_scraped(generation: u32) -> Load {
        Load(STALE | Self::generation_bits(generation))
    }

    /// What a good scrape publishes: its waiting count (clamped), nothing sent since.
    pub fn scraped(waiting: u64, kv_full: bool, generation: u32) -> Load {
        Load(
            (waiting.min(COUNT_MAX) << COUNT_BITS)
                | if kv_full { KV_FULL } else { 0 }
                | Self::generation_bits(generation),
        )
    }

    fn generation_bits(generation: u32) -> u64 {
        u64::from(generation % GENERATIONS) << GENERATION_SHIFT
    }

    /// The word as stored.
    pub fn from_bits(bits: u64) -> Load {
        Load(bits)
    }

    /// Requests the last scrape saw waiting.
    pub fn waiting(self) -> u32 {
        ((self.0 >> COUNT_BITS) & COUNT_MAX) as u32
    }

    /// Requests dispatched since the last scrape.
    pub fn sent(self) -> u32 {
        (self.0 & COUNT_MAX) as u32
    }

    /// The last scrape put KV-cache use at or above the threshold.
    pub fn kv_full(self) -> bool {
        self.0 & KV_FULL != 0
    }

    /// No good scrape is recent enough.
    pub fn stale(self) -> bool {
        self.0 & STALE != 0
    }

    /// Generation of the backend slot this word is about.
    pub fn generation(self) -> u32 {
        (self.0 >> GENERATION_SHIFT) as u32
    }

    /// The same view with the waiting count replaced (clamped; `sent`, the flags and the
    /// generation kept): how a cluster queue share is applied between scrapes.
    ///
    /// ```
    /// use flowgate_engine::load::Load;
    /// let l = Load::scraped(1, false, 3).with_one_more_sent().with_waiting(4);
    /// assert_eq!((l.waiting(), l.sent(), l.generation()), (4, 1, 3));
    /// ```
    pub fn with_waiting(self, waiting: u64) -> Load {
        Load((self.0 & !(COUNT_MAX << COUNT_BITS)) | (waiting.min(COUNT_MAX) << COUNT_BITS))
    }

    /// The same view with `sent` replaced (clamped): a scrape carries over what was sent after it
    /// was requested.
    ///
    /// ```
    /// use flowgate_engine::load::Load;
    /// let l = Load::scraped(2, false, 3).with_sent(4);
    /// assert_eq!((l.waiting(), l.sent(), l.generation(), l.room(8)), (2, 4, 3, 2));
    /// ```
    pub fn with_sent(self, sent: u64) -> Load {
        Load((self.0 & !COUNT_MAX) | sent.min(COUNT_MAX))
    }

    /// The same view, marked stale.
    pub fn into_stale(self) -> Load {
        Load(self.0 | STALE)
    }

    /// Places left before `threshold` (0 when stale or KV-full).
    pub fn room(self, threshold: u32) -> u32 {
        if self.0 & (KV_FULL | STALE) != 0 {
            return 0;
        }
        threshold.saturating_sub(self.waiting() + self.sent())
    }

    /// One more sent. Only called with `room > 0`, so `sent < threshold ≤ COUNT_MAX`: the
    /// addition never carries into `waiting`.
    pub fn with_one_more_sent(self) -> Load {
        debug_assert!(u64::from(self.sent()) < COUNT_MAX);
        Load(self.0 + 1)
    }

    /// The raw word.
    pub fn bits(self) -> u64 {
        self.0
    }
}

/// What a scrape of a backend's metrics page found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScrapeReading {
    /// Requests waiting in the model server (summed over its models).
    pub waiting: f64,
    /// Requests running in it.
    pub running: f64,
    /// KV-cache use, a fraction (the max over its models).
    pub kv_cache_usage: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_survives_every_update_and_wraps() {
        let g = GENERATIONS - 1;
        let l = Load::scraped(COUNT_MAX + 5, true, g);
        assert_eq!(l.waiting() as u64, COUNT_MAX);
        assert_eq!(l.generation(), g);
        assert_eq!(l.into_stale().generation(), g);
        assert_eq!(Load::scraped(0, false, g).with_one_more_sent().generation(), g);
        assert_eq!(Load::never_scraped(GENERATIONS).generation(), 0);
    }

    #[test]
    fn full_or_stale_has_no_room() {
        assert_eq!(Load::scraped(0, true, 0).room(5), 0);
        assert_eq!(Load::scraped(0, false, 0).into_stale().room(5), 0);
        assert_eq!(Load::scraped(9, false, 0).room(5), 0);
    }
}
