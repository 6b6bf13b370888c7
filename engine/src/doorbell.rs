//! The doorbell: how a sleeping shard is woken with no lost wake-up and no busy spinning.
//!
//! The shard, before it sleeps, stores its waker, sets `sleeping`, issues a SeqCst fence and then
//! looks for work once more. Whoever publishes work (a ring push, a cancel, a freed slot, a better
//! head elsewhere) first makes it visible, then issues a SeqCst fence and rings. The two fences order
//! the two sides: either the shard's last look sees the work, or the ringer sees `sleeping` and
//! wakes it. Only the ringer that flips `sleeping` back to false pays for the wake.

use crate::sync::{fence, AtomicBool, Mutex, Ordering};
use std::task::Waker;

/// One shard's doorbell.
#[derive(Debug, Default)]
pub struct Doorbell {
    /// True while the shard is asleep (or about to be). Set by the shard, cleared by whoever wakes
    /// it (or by the shard when it finds work after all).
    sleeping: AtomicBool,
    /// The waker of the shard's task; replaced before each sleep.
    waker: Mutex<Option<Waker>>,
}

impl Doorbell {
    /// A doorbell for an awake shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ringer side, after making work visible: wake the shard if it sleeps.
    ///
    /// ```
    /// use flowgate_engine::doorbell::Doorbell;
    /// let bell = Doorbell::new();
    /// bell.ring(); // nobody sleeps: nothing to do
    /// assert!(!bell.is_sleeping());
    /// ```
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Shard side: announce the coming sleep. The caller must look for work once more afterwards
    /// and call [`cancel_sleep`](Self::cancel_sleep) if it finds any.
    pub fn prepare_sleep(&self, waker: &Waker) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Shard side, on each later poll of its sleep: keep the newest waker, and return `true` once
    /// someone has rung (stored first, checked second, so a ring in between is never lost).
    pub fn rung(&self, waker: &Waker) -> bool {
        {
            let mut slot = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *slot = Some(waker.clone());
            }
        }
        !self.sleeping.load(Ordering::Acquire)
    }

    /// Shard side: not sleeping after all (found work, or a timer fired).
    pub fn cancel_sleep(&self) {
        self.sleeping.store(false, Ordering::Release);
    }

    /// Whether the shard sleeps and nobody has rung since.
    pub fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Acquire)
    }
}
