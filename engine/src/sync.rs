//! The `sync` facade: every atomic and cross-thread primitive the engine uses comes from here, so
//! the protocols built on them can be model-checked with loom (`RUSTFLAGS="--cfg flowgate_loom"`).

#[cfg(not(flowgate_loom))]
pub use std::sync::{
    atomic::{fence, AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Mutex,
};

#[cfg(flowgate_loom)]
pub use loom::sync::{
    atomic::{fence, AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
    Mutex,
};

/// An `UnsafeCell` whose accesses loom checks for data races (causality) under `flowgate_loom`.
#[cfg(flowgate_loom)]
pub use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` behind loom's closure API (`with`, `with_mut`), so the same code is
/// race-checked by loom under `flowgate_loom`. Zero-cost: the closures get the raw pointer.
#[cfg(not(flowgate_loom))]
#[derive(Debug, Default)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(flowgate_loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }
    /// Run `f` with a shared pointer to the contents.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    /// Run `f` with an exclusive pointer to the contents.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Thread handle and park/unpark, swapped for loom's under `flowgate_loom`.
pub mod thread {
    #[cfg(not(flowgate_loom))]
    pub use std::thread::{current, park, park_timeout, Thread};

    #[cfg(flowgate_loom)]
    pub use loom::thread::{current, park, Thread};

    /// Park with a timeout; under loom a plain park (loom has no time).
    #[cfg(flowgate_loom)]
    pub fn park_timeout(_dur: std::time::Duration) {
        loom::thread::park();
    }
}

/// A float published across threads (shard head scores).
#[cfg(not(flowgate_loom))]
pub use atomic_float::AtomicF64;

/// Loom stand-in for `atomic_float::AtomicF64`: the bits in a model-checked `AtomicU64`.
#[cfg(flowgate_loom)]
#[derive(Debug)]
pub struct AtomicF64(AtomicU64);

#[cfg(flowgate_loom)]
impl AtomicF64 {
    /// A new cell holding `v`.
    pub fn new(v: f64) -> Self {
        Self(AtomicU64::new(v.to_bits()))
    }
    /// Load the value.
    pub fn load(&self, order: Ordering) -> f64 {
        f64::from_bits(self.0.load(order))
    }
    /// Store `v`.
    pub fn store(&self, v: f64, order: Ordering) {
        self.0.store(v.to_bits(), order)
    }
    /// Replace `current` with `new` if it is still there.
    pub fn compare_exchange(
        &self,
        current: f64,
        new: f64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<f64, f64> {
        self.0
            .compare_exchange(current.to_bits(), new.to_bits(), success, failure)
            .map(f64::from_bits)
            .map_err(f64::from_bits)
    }
}
