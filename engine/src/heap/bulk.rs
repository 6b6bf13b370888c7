//! The heap's whole-heap operations: re-keying (and filtering) every item in O(n), draining, and
//! the structural self-check the tests run. Split from `heap.rs` (same type, its private parts).

use super::{is_min_level, Entry, MaxMinHeap, NIL};

impl<K: Ord + Copy, T> MaxMinHeap<K, T> {
    /// Re-keys every item in O(n): `f(&value, old_key)` returns `Some(new_key)` to keep the item
    /// under that key, or `None` to remove it, in which case it is passed to `removed` (in no
    /// particular order). Handles of kept items stay valid. The heap is then rebuilt bottom-up.
    ///
    /// If `f` or `removed` panics, the heap stays consistent: items not yet visited keep their old
    /// keys.
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(8);
    /// let handles: Vec<_> = (0..6).map(|k| heap.push(k, 1, k)).collect();
    /// let mut gone = Vec::new();
    /// // Reverse the order and drop the odd values.
    /// heap.rekey_retain(|&v, k| (v % 2 == 0).then(|| 10 - k), |e| gone.push(e.value));
    /// gone.sort();
    /// assert_eq!(gone, [1, 3, 5]);
    /// assert_eq!((heap.len(), heap.bytes()), (3, 3));
    /// assert_eq!(heap.get(handles[4]), Some((6, &4)));
    /// assert_eq!(heap.peek_head().map(|(_, k, v)| (k, *v)), Some((10, 0)));
    /// ```
    pub fn rekey_retain(
        &mut self,
        mut f: impl FnMut(&T, K) -> Option<K>,
        mut removed: impl FnMut(Entry<K, T>),
    ) {
        // The guard compacts and rebuilds on the way out, including during unwinding.
        let mut guard = Rebuild { heap: self, dead: 0 };
        let heap = &mut *guard.heap;
        // Pass 1, over the slab in memory order: new keys go into the array in place; deleted items
        // leave a `NIL` tombstone and their slot is freed.
        for index in 0..heap.slab.len() {
            let Some(value) = heap.slab[index].value.as_ref() else {
                continue;
            };
            let pos = heap.links[index] as usize;
            match f(value, heap.heap[pos].0) {
                Some(key) => heap.heap[pos].0 = key,
                None => {
                    let key = heap.heap[pos].0;
                    heap.heap[pos].1 = NIL;
                    guard.dead += 1;
                    let entry = heap.release(index as u32, key);
                    removed(entry);
                }
            }
        }
        // Pass 2 (compaction) and pass 3 (rebuild) run when `guard` drops.
    }

    /// Removes every item, in no particular order, passing each to `f`. Their handles go stale.
    /// The heap keeps its capacity.
    ///
    /// ```
    /// use flowgate_engine::heap::MaxMinHeap;
    /// let mut heap = MaxMinHeap::with_capacity(4);
    /// let h = heap.push(1, 8, 'a');
    /// heap.push(2, 8, 'b');
    /// let mut out = Vec::new();
    /// heap.drain(|e| out.push(e.value));
    /// out.sort();
    /// assert_eq!(out, ['a', 'b']);
    /// assert!(heap.is_empty() && heap.bytes() == 0 && !heap.contains(h));
    /// ```
    pub fn drain(&mut self, mut f: impl FnMut(Entry<K, T>)) {
        // Popping the last array entry removes a leaf, so the heap is valid after every step
        // (even if `f` panics).
        while let Some((key, index)) = self.heap.pop() {
            let entry = self.release(index, key);
            f(entry);
        }
    }

    /// Verifies every structural invariant, panicking on the first violation. O(n); for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let n = self.heap.len();
        for (pos, &(key, index)) in self.heap.iter().enumerate() {
            let slot = &self.slab[index as usize];
            assert!(slot.value.is_some(), "heap[{pos}] names vacant slot {index}");
            assert_eq!(self.links[index as usize] as usize, pos, "slot {index} back-link");
            // Checking each node against its parent and grandparent implies the level property.
            if pos > 0 {
                let parent = &self.heap[(pos - 1) / 2].0;
                let min = is_min_level(pos);
                assert!(if min { key <= *parent } else { key >= *parent }, "heap[{pos}] vs parent");
                if pos >= 3 {
                    let grand = &self.heap[(pos - 3) / 4].0;
                    assert!(if min { key >= *grand } else { key <= *grand }, "heap[{pos}] vs grandparent");
                }
            }
        }
        let occupied = self.slab.iter().filter(|s| s.value.is_some());
        let (count, bytes) = occupied.fold((0, 0), |(c, b), s| (c + 1, b + s.bytes));
        assert_eq!((count, bytes), (n, self.bytes), "occupied slots and bytes");
        // The free list visits exactly the vacant slots.
        let (mut free, mut at) = (0, self.free_head);
        while at != NIL {
            let slot = &self.slab[at as usize];
            assert!(slot.value.is_none(), "free list holds occupied slot {at}");
            free += 1;
            assert!(free <= self.slab.len(), "free list cycles");
            at = self.links[at as usize];
        }
        assert_eq!(free + n, self.slab.len(), "free list length");
    }
}

/// Finishes [`MaxMinHeap::rekey_retain`] when dropped: drops tombstones, then rebuilds the order.
struct Rebuild<'a, K: Ord + Copy, T> {
    /// The heap whose array holds new keys and `dead` tombstones but is not yet in heap order.
    heap: &'a mut MaxMinHeap<K, T>,
    /// Number of `NIL` tombstones in the array.
    dead: usize,
}

impl<K: Ord + Copy, T> Drop for Rebuild<'_, K, T> {
    fn drop(&mut self) {
        let heap = &mut *self.heap;
        // Pass 2: compact the array over the tombstones (if any), fixing the back-links of moved
        // entries.
        if self.dead > 0 {
            let mut write = 0;
            for read in 0..heap.heap.len() {
                let entry = heap.heap[read];
                if entry.1 != NIL {
                    heap.heap[write] = entry;
                    heap.links[entry.1 as usize] = write as u32;
                    write += 1;
                }
            }
            heap.heap.truncate(write);
        }
        // Pass 3 (Floyd): sink every internal node, bottom-up; each subtree is then a max-min heap
        // whose root is on the right kind of level. O(n) in total.
        for pos in (0..heap.heap.len() / 2).rev() {
            if is_min_level(pos) {
                heap.sift_down::<true>(pos);
            } else {
                heap.sift_down::<false>(pos);
            }
        }
        debug_assert_eq!(heap.heap.len(), heap.slab.iter().filter(|s| s.value.is_some()).count());
    }
}
