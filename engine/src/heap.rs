//! A max-min heap with stable handles: O(1) access to both the greatest key (the *head*, dispatched
//! next) and the least key (the *tail*, shed first under pressure), O(log n) push, pop at either end
//! and removal of any item by [`Handle`].
//!
//! # Layout
//!
//! The heap array holds `(K, u32)` entries: the key next to the index of the item's slot in a slab,
//! so every comparison touches only the contiguous array. Level 0 (the root) and every even level
//! are *max* levels: a node there is `>=` every key below it. Odd levels are *min* levels: a node
//! there is `<=` every key below it. Hence the head is the root and the tail is the least of the
//! root and its (at most two) children.
//!
//! A slot holds the value, its byte size and a generation; a parallel `u32` array holds each
//! item's current position in the heap array (updated on every move), so sifting touches only two
//! dense arrays. A [`Handle`] names a slot and the generation it was issued with; freeing a slot
//! bumps its generation, so a handle to a removed item is refused. Handles also carry the id of
//! the heap that issued them, so a handle from another heap is refused too.
//!
//! Removing from the middle refills the hole with the last entry, which may belong *above* the
//! hole (it came from another subtree) as well as below it, so it is sifted whichever way it must
//! go; when it must climb past its parent, the parent's old entry comes down and may have to sink.
//!
//! Equal keys are allowed; which of several equal keys is the head or tail is unspecified, so
//! callers that need a deterministic order break ties inside `K` (as [`crate::score::Key`] does with
//! its arrival sequence).

// Not the `sync` facade: this is an id allocator, not a protocol worth model-checking, and loom's
// atomics cannot live in a `static`.
use std::sync::atomic::{AtomicU32, Ordering};

mod bulk;
mod handle;

pub use handle::{Entry, Handle, StaleHandle};

/// Source of [`MaxMinHeap`] ids; every heap takes the next one.
static NEXT_HEAP_ID: AtomicU32 = AtomicU32::new(1);

/// The "no slot" link: ends the free list. Also marks a heap entry deleted inside `rekey_retain`.
const NIL: u32 = u32::MAX;

/// One slab slot: an item's storage. Its link (position or next free slot) lives in `links`.
struct Slot<T> {
    /// `Some` iff the slot is occupied, i.e. exactly one heap entry names this slot.
    value: Option<T>,
    /// The item's byte size while occupied (counted in the heap's `bytes`); stale when vacant.
    bytes: u64,
    /// Incremented (wrapping) each time the slot is freed; handles match it only while occupied.
    generation: u32,
}

/// A max-min heap of values `T` ordered by keys `K`, with O(1) head (greatest) and tail (least),
/// O(log n) removal at either end or by [`Handle`], a running byte total, and an O(n) bulk rekey.
///
/// See the [module docs](self) for the layout.
///
/// ```
/// use flowgate_engine::heap::MaxMinHeap;
/// let mut heap = MaxMinHeap::with_capacity(16);
/// for k in [4, 8, 1, 6, 3] {
///     heap.push(k, 1, k * 10);
/// }
/// // Both ends in O(1).
/// assert_eq!(heap.peek_head().map(|(_, k, _)| k), Some(8));
/// assert_eq!(heap.peek_tail().map(|(_, k, _)| k), Some(1));
/// let mut order = Vec::new();
/// while let Some(e) = heap.pop_head() {
///     order.push(e.key);
/// }
/// assert_eq!(order, [8, 6, 4, 3, 1]);
/// ```
pub struct MaxMinHeap<K, T> {
    /// The max-min-ordered array: entry `i` is `(key, slot)` with `links[slot] == i`; an entry
    /// on an even level is `>=` all its descendants, one on an odd level `<=` all its descendants.
    heap: Vec<(K, u32)>,
    /// Item storage; exactly `heap.len()` slots are occupied, the rest form the free list.
    slab: Vec<Slot<T>>,
    /// One per slab slot, apart from the slab so that sifting touches only two dense arrays.
    /// Occupied slot: its item's position in `heap`. Vacant: the next vacant slot, or `NIL`.
    links: Vec<u32>,
    /// First vacant slot of the free list (LIFO), or `NIL` if every slot is occupied.
    free_head: u32,
    /// Sum of `bytes` over the occupied slots.
    bytes: u64,
    /// This heap's process-unique id, stamped into its handles.
    id: u32,
}

/// Whether heap position `i` is on a min (odd) level. Level = ⌊log2(i + 1)⌋.
#[inline(always)]
fn is_min_level(i: usize) -> bool {
    (usize::BITS - (i + 1).leading_zeros()) & 1 == 0
}

/// `a` belongs above `b` on a min level (`MIN`) or on a max level (`!MIN`).
#[inline(always)]
fn above<K: Ord, const MIN: bool>(a: &K, b: &K) -> bool {
    (MIN && a < b) || (!MIN && a > b)
}

/// Index of the best of four entries: two semifinals, then a final on the winners' keys (selected
/// by value, not reloaded by index), keeping the dependency chain short.
#[inline(always)]
fn tournament<K: Ord + Copy, const MIN: bool>(gs: &[(K, u32); 4]) -> usize {
    let (a, ka) = if above::<K, MIN>(&gs[1].0, &gs[0].0) { (1, gs[1].0) } else { (0, gs[0].0) };
    let (b, kb) = if above::<K, MIN>(&gs[3].0, &gs[2].0) { (3, gs[3].0) } else { (2, gs[2].0) };
    if above::<K, MIN>(&kb, &ka) {
        b
    } else {
        a
    }
}

impl<K: Ord + Copy, T> MaxMinHeap<K, T> {
    /// An empty heap that can hold `capacity` items without allocating.
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(100);
    /// assert!(heap.capacity() >= 100 && heap.is_empty());
    /// heap.push(1, 5, ());
    /// heap.push(2, 7, ());
    /// assert_eq!((heap.len(), heap.bytes(), heap.is_empty()), (2, 12, false));
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            heap: Vec::with_capacity(capacity),
            slab: Vec::with_capacity(capacity),
            links: Vec::with_capacity(capacity),
            free_head: NIL,
            bytes: 0,
            id: NEXT_HEAP_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// How many items the heap holds without allocating.
    pub fn capacity(&self) -> usize {
        self.heap.capacity().min(self.slab.capacity()).min(self.links.capacity())
    }

    /// Number of items.
    #[inline]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the heap holds no items.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Sum of the `bytes` of the items present.
    #[inline]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `value` under `key`, counting `bytes`, and returns its handle. O(log n); allocates only
    /// beyond [`capacity`](Self::capacity).
    ///
    /// # Panics
    ///
    /// If the heap would hold 2³² − 1 items.
    pub fn push(&mut self, key: K, bytes: u64, value: T) -> Handle {
        let pos = self.heap.len();
        assert!(pos < NIL as usize, "heap full");
        let link = pos as u32;
        // Take a vacant slot from the free list, or grow the slab.
        let (index, generation) = if self.free_head != NIL {
            let index = self.free_head;
            let slot = &mut self.slab[index as usize];
            debug_assert!(slot.value.is_none());
            (slot.value, slot.bytes) = (Some(value), bytes);
            self.free_head = std::mem::replace(&mut self.links[index as usize], link);
            (index, slot.generation)
        } else {
            let index = self.slab.len() as u32; // < NIL: the slab has no more slots than items.
            self.slab.push(Slot { value: Some(value), bytes, generation: 0 });
            self.links.push(link);
            (index, 0)
        };
        self.bytes += bytes;
        // Append as the last leaf and let it rise to its level.
        self.heap.push((key, index));
        self.fix(pos);
        self.handle(index, generation)
    }

    /// The greatest key (the next to dispatch) with its handle and value. O(1).
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(4);
    /// assert!(heap.peek_head().is_none() && heap.peek_tail().is_none());
    /// let h = heap.push(3, 0, "a");
    /// heap.push(1, 0, "b");
    /// assert_eq!(heap.peek_head(), Some((h, 3, &"a")));
    /// assert_eq!(heap.peek_tail().map(|(_, k, v)| (k, *v)), Some((1, "b")));
    /// ```
    #[inline]
    pub fn peek_head(&self) -> Option<(Handle, K, &T)> {
        self.peek_at(0)
    }

    /// The least key (the first to shed) with its handle and value. O(1).
    #[inline]
    pub fn peek_tail(&self) -> Option<(Handle, K, &T)> {
        self.peek_at(self.tail_pos()?)
    }

    /// The two least keys, least first (`None` past the heap's length). O(1): the second least is
    /// the other level-1 entry or a child or grandchild of the least (each min-level entry is `<=`
    /// its subtree; a max-level child with children is `>=` them).
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(8);
    /// assert_eq!(heap.lowest_two(), [None, None]);
    /// for k in [5, 9, 2, 7, 3, 8] {
    ///     heap.push(k, 0, ());
    /// }
    /// assert_eq!(heap.lowest_two(), [Some(2), Some(3)]);
    /// ```
    pub fn lowest_two(&self) -> [Option<K>; 2] {
        let h = &self.heap;
        match h.len() {
            0 => [None, None],
            1 => [Some(h[0].0), None],
            2 => [Some(h[1].0), Some(h[0].0)],
            n => {
                let least = 1 + usize::from(h[2].0 < h[1].0);
                let descendants = [
                    2 * least + 1,
                    2 * least + 2,
                    4 * least + 3,
                    4 * least + 4,
                    4 * least + 5,
                    4 * least + 6,
                ];
                let second = descendants
                    .into_iter()
                    .take_while(|&i| i < n)
                    .map(|i| h[i].0)
                    .fold(h[3 - least].0, |a, b| if b < a { b } else { a });
                [Some(h[least].0), Some(second)]
            }
        }
    }

    /// Removes and returns the item with the greatest key. O(log n).
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(4);
    /// for k in [2, 7, 5] {
    ///     heap.push(k, 1, ());
    /// }
    /// assert_eq!(heap.pop_head().map(|e| e.key), Some(7));
    /// assert_eq!(heap.pop_tail().map(|e| e.key), Some(2));
    /// assert_eq!(heap.pop_tail().map(|e| e.key), Some(5));
    /// assert!(heap.pop_head().is_none() && heap.pop_tail().is_none());
    /// ```
    pub fn pop_head(&mut self) -> Option<Entry<K, T>> {
        (!self.heap.is_empty()).then(|| self.remove_at(0, true))
    }

    /// Removes and returns the item with the least key. O(log n).
    pub fn pop_tail(&mut self) -> Option<Entry<K, T>> {
        let pos = self.tail_pos()?;
        Some(self.remove_at(pos, true))
    }

    /// Removes the item `handle` names, wherever it is. O(log n). A stale or foreign handle is
    /// refused and changes nothing.
    ///
    /// ```
    /// use flowgate_engine::heap::{MaxMinHeap, StaleHandle};
    /// let mut heap = MaxMinHeap::with_capacity(4);
    /// let a = heap.push(1, 10, "a");
    /// heap.push(2, 20, "b");
    /// assert_eq!(heap.get(a), Some((1, &"a")));
    /// assert_eq!(heap.remove(a).map(|e| e.value), Ok("a"));
    /// assert!(!heap.contains(a) && heap.get(a).is_none());
    /// assert_eq!(heap.remove(a).map(|e| e.value), Err(StaleHandle));
    /// assert_eq!((heap.len(), heap.bytes()), (1, 20));
    /// ```
    pub fn remove(&mut self, handle: Handle) -> Result<Entry<K, T>, StaleHandle> {
        let pos = self.position(handle).ok_or(StaleHandle)?;
        Ok(self.remove_at(pos, false))
    }

    /// Gives the item `handle` names a new key, keeping its handle. O(log n). A stale or foreign
    /// handle is refused and changes nothing.
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(4);
    /// let a = heap.push(1, 0, "a");
    /// heap.push(5, 0, "b");
    /// heap.rekey(a, 9).unwrap();
    /// assert_eq!(heap.peek_head().map(|(h, k, _)| (h, k)), Some((a, 9)));
    /// ```
    pub fn rekey(&mut self, handle: Handle, key: K) -> Result<(), StaleHandle> {
        let pos = self.position(handle).ok_or(StaleHandle)?;
        self.heap[pos].0 = key;
        // Out of place in either direction, everything else in order: what `fix` restores.
        self.fix(pos);
        Ok(())
    }

    /// The key and value of the item `handle` names, or `None` if the handle is stale or foreign.
    #[inline]
    pub fn get(&self, handle: Handle) -> Option<(K, &T)> {
        let pos = self.position(handle)?;
        let slot = &self.slab[handle.index as usize];
        Some((self.heap[pos].0, slot.value.as_ref()?))
    }

    /// The value of the item `handle` names, to change in place (its key stays: see
    /// [`rekey`](Self::rekey)), or `None` if the handle is stale or foreign.
    #[inline]
    pub fn value_mut(&mut self, handle: Handle) -> Option<&mut T> {
        self.position(handle)?;
        self.slab[handle.index as usize].value.as_mut()
    }

    /// Whether `handle` names an item of this heap.
    #[inline]
    pub fn contains(&self, handle: Handle) -> bool {
        self.position(handle).is_some()
    }

    /// The items in unspecified order, with their handles and keys.
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(3);
    /// for k in [3, 1, 2] {
    ///     heap.push(k, 0, k);
    /// }
    /// let mut keys: Vec<_> = heap.iter().map(|(h, k, v)| { assert_eq!(k, *v); k }).collect();
    /// keys.sort();
    /// assert_eq!(keys, [1, 2, 3]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (Handle, K, &T)> + '_ {
        (0..self.heap.len()).filter_map(move |pos| self.peek_at(pos))
    }

    // ----- internals -----

    /// The heap position of the item `handle` names, if it is live and ours.
    #[inline]
    fn position(&self, handle: Handle) -> Option<usize> {
        if handle.heap_id != self.id {
            return None;
        }
        let slot = self.slab.get(handle.index as usize)?;
        if slot.generation != handle.generation || slot.value.is_none() {
            return None;
        }
        let pos = self.links[handle.index as usize] as usize;
        debug_assert_eq!(self.heap[pos].1, handle.index, "back-link of a live slot");
        Some(pos)
    }

    /// Position of the least key: the root or the lesser of its children.
    #[inline]
    fn tail_pos(&self) -> Option<usize> {
        match self.heap.len() {
            0 => None,
            1 => Some(0),
            2 => Some(1),
            _ => Some(1 + usize::from(self.heap[2].0 < self.heap[1].0)),
        }
    }

    #[inline]
    fn peek_at(&self, pos: usize) -> Option<(Handle, K, &T)> {
        let (key, index) = *self.heap.get(pos)?;
        let slot = &self.slab[index as usize];
        Some((self.handle(index, slot.generation), key, slot.value.as_ref()?))
    }

    #[inline]
    fn handle(&self, index: u32, generation: u32) -> Handle {
        Handle { index, generation, heap_id: self.id }
    }

    /// Frees slot `index` (its heap entry must already be gone) and hands out its item.
    fn release(&mut self, index: u32, key: K) -> Entry<K, T> {
        let slot = &mut self.slab[index as usize];
        let value = slot.value.take().expect("released a vacant slot");
        let generation = slot.generation;
        // Bump the generation so outstanding handles go stale; push onto the free list.
        slot.generation = generation.wrapping_add(1);
        self.links[index as usize] = self.free_head;
        self.free_head = index;
        self.bytes -= slot.bytes;
        let bytes = slot.bytes;
        Entry { handle: self.handle(index, generation), key, bytes, value }
    }

    /// Removes the entry at `pos`: the last entry fills the hole and is sifted up or down. `end`
    /// says `pos` is the head or tail, where sinking the hole first (see `sink_hole`) pays off.
    fn remove_at(&mut self, pos: usize, end: bool) -> Entry<K, T> {
        let last = self.heap.pop().expect("remove_at on an empty heap");
        let (key, index) = if pos < self.heap.len() {
            let gone = std::mem::replace(&mut self.heap[pos], last);
            self.links[last.1 as usize] = pos as u32;
            match (end, is_min_level(pos)) {
                (false, _) => self.fix(pos),
                (true, false) => self.sink_hole::<false>(pos),
                (true, true) => self.sink_hole::<true>(pos),
            }
            gone
        } else {
            last
        };
        self.release(index, key)
    }

    /// Restores the heap order around `pos`, whose entry may be out of place in either direction
    /// while everything else is in order (after a push, or a hole filled by the last entry).
    fn fix(&mut self, pos: usize) {
        if is_min_level(pos) {
            self.fix_at::<true, false>(pos);
        } else {
            self.fix_at::<false, true>(pos);
        }
    }

    /// `fix` for a position on a `MIN` level (`OTHER` is `!MIN`: the parent's kind of level).
    #[inline(always)]
    fn fix_at<const MIN: bool, const OTHER: bool>(&mut self, pos: usize) {
        debug_assert!(MIN != OTHER && is_min_level(pos) == MIN);
        let parent = pos.wrapping_sub(1) / 2;
        if pos > 0 && above::<K, OTHER>(&self.heap[pos].0, &self.heap[parent].0) {
            // It belongs on the parent's kind of level: trade places with the parent. The entry
            // rises along the parent's levels; the old parent, now at `pos`, may have to sink.
            self.swap(pos, parent);
            self.sift_up::<OTHER>(parent);
            self.sift_down::<MIN>(pos);
        } else if !self.sift_up::<MIN>(pos) {
            self.sift_down::<MIN>(pos);
        }
    }

    #[inline]
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.links[self.heap[a].1 as usize] = a as u32;
        self.links[self.heap[b].1 as usize] = b as u32;
    }

    /// Moves the entry at `pos` up through its grandparents (all on its own kind of level, `MIN`)
    /// while it belongs above them. Returns whether it moved. Each grandparent passed over moves
    /// down into the hole, which is sound because it bounds its whole subtree.
    #[inline]
    fn sift_up<const MIN: bool>(&mut self, mut pos: usize) -> bool {
        let (key, index) = self.heap[pos];
        let start = pos;
        while pos >= 3 {
            let grand = (pos - 3) / 4;
            let g = self.heap[grand];
            if !above::<K, MIN>(&key, &g.0) {
                break;
            }
            self.heap[pos] = g;
            self.links[g.1 as usize] = pos as u32;
            pos = grand;
        }
        if pos == start {
            return false;
        }
        self.heap[pos] = (key, index);
        self.links[index as usize] = pos as u32;
        true
    }

    /// Bottom-up variant of `sift_down` for the last entry moved to the head or tail, which
    /// almost always belongs near the bottom: first walk the hole at `pos` down to the bottom,
    /// promoting the best grandchild each time (no comparison with the entry, so few mispredicted
    /// branches), then put the entry there and let `fix` move it up (rarely far) or down.
    fn sink_hole<const MIN: bool>(&mut self, mut pos: usize) {
        let entry = self.heap[pos];
        while let Some(gs) = self.heap.get(4 * pos + 3..4 * pos + 7) {
            // With all four grandchildren present the best descendant is one of them.
            let gs: &[(K, u32); 4] = gs.try_into().expect("four grandchildren");
            let best = 4 * pos + 3 + tournament::<K, MIN>(gs);
            // Promote it; the heap minus the hole stays ordered.
            let moved = self.heap[best];
            self.heap[pos] = moved;
            self.links[moved.1 as usize] = pos as u32;
            pos = best;
        }
        self.heap[pos] = entry;
        self.links[entry.1 as usize] = pos as u32;
        self.fix(pos);
    }

    /// Moves the entry at `pos` (on a `MIN` or max level) down until it bounds its subtree
    /// (Atkinson et al.'s trickle-down, with a hole instead of swaps).
    fn sift_down<const MIN: bool>(&mut self, mut pos: usize) {
        let n = self.heap.len();
        let (mut key, mut index) = self.heap[pos];
        loop {
            // The best (greatest on a max level, least on a min level) child or grandchild.
            let child = 2 * pos + 1;
            let grand = 2 * child + 1;
            let best = if let Some(gs) = self.heap.get(grand..grand + 4) {
                // All four grandchildren exist, so each child is bounded by its own children: the
                // best is a grandchild. A two-round tournament keeps the dependency chain short.
                let gs: &[(K, u32); 4] = gs.try_into().expect("four grandchildren");
                grand + tournament::<K, MIN>(gs)
            } else if child < n {
                // Near the bottom: scan whichever children and grandchildren exist.
                let mut best = child;
                if child + 1 < n && above::<K, MIN>(&self.heap[child + 1].0, &self.heap[best].0) {
                    best = child + 1;
                }
                for g in grand..n.min(grand + 4) {
                    if above::<K, MIN>(&self.heap[g].0, &self.heap[best].0) {
                        best = g;
                    }
                }
                best
            } else {
                break; // A leaf.
            };
            let b = self.heap[best];
            if !above::<K, MIN>(&b.0, &key) {
                break; // The entry bounds its subtree already.
            }
            // Promote the best into the hole.
            self.heap[pos] = b;
            self.links[b.1 as usize] = pos as u32;
            pos = best;
            if best < grand {
                // A child: it has no children beyond ties with it, so the entry settles here.
                break;
            }
            // A grandchild: the entry must still fit under the grandchild's parent (an opposite
            // level); if not, they trade places and the parent's entry carries on sinking.
            let parent = (best - 1) / 2;
            if above::<K, MIN>(&self.heap[parent].0, &key) {
                let p = std::mem::replace(&mut self.heap[parent], (key, index));
                self.links[index as usize] = parent as u32;
                (key, index) = p;
            }
        }
        self.heap[pos] = (key, index);
        self.links[index as usize] = pos as u32;
    }
}
