//! What a [`MaxMinHeap`] hands out: the [`Handle`] naming an item, the [`Entry`] of an item taken
//! out, and [`StaleHandle`], the error for a handle whose item is gone. Split from `heap.rs`.

#[cfg(doc)]
use super::MaxMinHeap;

/// Names one item of one [`MaxMinHeap`], stable while the item moves inside the heap.
///
/// A handle is refused (treated as absent) once its item has been removed, or by any other heap.
/// Generations are 32-bit, so a handle kept across 2³² reuses of its slot could alias a newer item.
///
/// ```
/// use flowgate_engine::heap::MaxMinHeap;
/// let (mut a, mut b) = (MaxMinHeap::with_capacity(2), MaxMinHeap::with_capacity(2));
/// let h = a.push(1u32, 0, ());
/// b.push(1u32, 0, ());
/// assert!(a.contains(h));
/// assert!(!b.contains(h)); // foreign: issued by `a`
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    /// Index of the item's slot in the issuing heap's slab.
    pub(super) index: u32,
    /// The slot's generation when the item was pushed; the slot's moves past it when it is freed.
    pub(super) generation: u32,
    /// The id of the issuing heap.
    pub(super) heap_id: u32,
}

/// The error of [`MaxMinHeap::remove`]: the handle's item is gone or belongs to another heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleHandle;

impl std::fmt::Display for StaleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stale or foreign heap handle")
    }
}

impl std::error::Error for StaleHandle {}

/// An item taken out of a [`MaxMinHeap`]; its `handle` is stale from then on.
///
/// ```
/// use flowgate_engine::heap::MaxMinHeap;
/// let mut heap = MaxMinHeap::with_capacity(1);
/// let h = heap.push(7u8, 64, 'x');
/// let e = heap.pop_head().unwrap();
/// assert_eq!((e.handle, e.key, e.bytes, e.value), (h, 7, 64, 'x'));
/// ```
#[derive(Debug)]
pub struct Entry<K, T> {
    /// The handle the item was pushed under (now refused by the heap).
    pub handle: Handle,
    /// The item's key when it was removed.
    pub key: K,
    /// The byte size given at push; no longer counted in [`MaxMinHeap::bytes`].
    pub bytes: u64,
    /// The item.
    pub value: T,
}
