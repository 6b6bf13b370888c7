//! A sorted-`Vec` reference model of `flowgate_engine::heap::MaxMinHeap`, for differential testing.
//!
//! One copy shared by the integration test `engine/tests/heap_model.rs` (proptest) and the fuzz
//! target `fuzz/fuzz_targets/heap.rs` (libFuzzer), which both include this file with `#[path]`.
//! Each brings its own way of producing [`Op`]s and its own key type and rekey function; [`run`]
//! applies the ops to a real heap and to the model side by side, and after every one the heap's
//! head, tail, length, byte total, key multiset and structural invariants must match the model.

use std::fmt::Debug;

use flowgate_engine::heap::{Entry, Handle, MaxMinHeap, StaleHandle};

/// One step of an op sequence. Indices are reduced modulo the live (or stale) population.
#[derive(Clone, Copy, Debug)]
pub enum Op<K> {
    /// Push an item with this key and byte size.
    Push(K, u16),
    PopHead,
    PopTail,
    /// Remove the live item at this index (mod the live count).
    Remove(usize),
    /// Try a handle whose item is gone (mod the stale count).
    RemoveStale(usize),
    /// Try a handle issued by another heap.
    RemoveForeign,
    /// Rekey with `(salt, drop_mod)`: keeps an item iff `(id ^ salt) % drop_mod != 0`, new key from
    /// the id and salt (sometimes unchanged). See [`rekey`].
    Rekey(u64, u8),
    /// Give the live item at this index (mod the live count) the new key `fresh_key(salt)`.
    RekeyOne(usize, u64),
    Drain,
}

/// The reference: a Vec of (key, id, bytes) sorted by key, plus handle bookkeeping.
#[derive(Default)]
struct Model<K> {
    items: Vec<(K, u64, u64)>,
    live: Vec<(u64, Handle)>,
    stale: Vec<Handle>,
    next_id: u64,
}

impl<K: Ord + Copy + Debug> Model<K> {
    fn insert(&mut self, key: K, id: u64, bytes: u64) {
        let at = self.items.partition_point(|&(k, _, _)| k <= key);
        self.items.insert(at, (key, id, bytes));
    }

    /// Checks a removed entry (key, id, bytes and handle) against the model, drops it from the
    /// model and moves its handle to the stale list.
    fn check_removed(&mut self, e: &Entry<K, u64>) {
        let at = self.items.iter().position(|&(_, i, _)| i == e.value).expect("id in model");
        let (key, id, bytes) = self.items.remove(at);
        assert_eq!((e.key, e.value, e.bytes), (key, id, bytes));
        let at = self.live.iter().position(|&(i, _)| i == id).expect("id has a live handle");
        let (_, handle) = self.live.swap_remove(at);
        assert_eq!(e.handle, handle);
        self.stale.push(handle);
    }
}

/// The rekey rule of [`Op::Rekey`]: `None` drops the item; otherwise its key is kept or replaced by
/// `fresh_key` of a hash of the id and salt.
fn rekey<K>(salt: u64, drop_mod: u8, id: u64, old: K, fresh_key: fn(u64) -> K) -> Option<K> {
    let h = (id ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if drop_mod > 1 && (h >> 32).is_multiple_of(u64::from(drop_mod)) {
        return None;
    }
    Some(if h & 4 == 0 { old } else { fresh_key(h) })
}

/// Applies `ops` to a fresh heap of `capacity` and to the model, checking the heap against the
/// model after every op. `fresh_key` turns a hash into a new key for [`Op::Rekey`].
pub fn run<K: Ord + Copy + Debug + Default>(
    capacity: usize,
    fresh_key: fn(u64) -> K,
    ops: impl IntoIterator<Item = Op<K>>,
) {
    let mut heap: MaxMinHeap<K, u64> = MaxMinHeap::with_capacity(capacity);
    let mut other: MaxMinHeap<K, u64> = MaxMinHeap::with_capacity(1);
    let foreign = other.push(K::default(), 0, 0);
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Push(key, bytes) => {
                let id = model.next_id;
                model.next_id += 1;
                let h = heap.push(key, u64::from(bytes), id);
                model.insert(key, id, u64::from(bytes));
                model.live.push((id, h));
            }
            Op::PopHead => match heap.pop_head() {
                Some(e) => {
                    // Any item with the greatest key may be the head.
                    assert_eq!(Some(e.key), model.items.last().map(|&(k, _, _)| k));
                    model.check_removed(&e);
                }
                None => assert!(model.items.is_empty()),
            },
            Op::PopTail => match heap.pop_tail() {
                Some(e) => {
                    assert_eq!(Some(e.key), model.items.first().map(|&(k, _, _)| k));
                    model.check_removed(&e);
                }
                None => assert!(model.items.is_empty()),
            },
            Op::Remove(i) => {
                if !model.live.is_empty() {
                    let (id, h) = model.live[i % model.live.len()];
                    let e = heap.remove(h).expect("live handle refused");
                    assert_eq!((e.handle, e.value), (h, id));
                    model.check_removed(&e);
                    assert!(!heap.contains(h));
                }
            }
            Op::RemoveStale(i) => {
                if !model.stale.is_empty() {
                    let h = model.stale[i % model.stale.len()];
                    let before = (heap.len(), heap.bytes());
                    assert_eq!(heap.remove(h).unwrap_err(), StaleHandle);
                    assert!(heap.get(h).is_none() && !heap.contains(h));
                    assert_eq!((heap.len(), heap.bytes()), before);
                }
            }
            Op::RemoveForeign => {
                let before = (heap.len(), heap.bytes());
                assert!(heap.remove(foreign).is_err() && !heap.contains(foreign));
                assert_eq!((heap.len(), heap.bytes()), before);
            }
            Op::Rekey(salt, drop_mod) => {
                let mut removed = Vec::new();
                heap.rekey_retain(|&id, k| rekey(salt, drop_mod, id, k, fresh_key), |e| removed.push(e));
                // Every removed item is one the rule drops, with its old key, bytes and handle.
                for e in &removed {
                    assert!(
                        rekey(salt, drop_mod, e.value, e.key, fresh_key).is_none(),
                        "removed a kept item"
                    );
                    model.check_removed(e);
                }
                // Every other item is one the rule keeps: rekey it in the model.
                for (key, id, bytes) in std::mem::take(&mut model.items) {
                    let key = rekey(salt, drop_mod, id, key, fresh_key).expect("kept by the heap");
                    model.insert(key, id, bytes);
                }
                // Survivors keep valid handles with their new keys.
                for &(id, h) in &model.live {
                    let key = model.items.iter().find(|&&(_, i, _)| i == id).unwrap().0;
                    assert_eq!(heap.get(h), Some((key, &id)));
                }
            }
            Op::RekeyOne(i, salt) => {
                if !model.live.is_empty() {
                    let (id, h) = model.live[i % model.live.len()];
                    let key = fresh_key(salt);
                    heap.rekey(h, key).expect("live handle refused");
                    let at = model.items.iter().position(|&(_, i, _)| i == id).expect("id in model");
                    let (_, _, bytes) = model.items.remove(at);
                    model.insert(key, id, bytes);
                    assert_eq!(heap.get(h), Some((key, &id)), "same handle, new key");
                }
                if let Some(&h) = model.stale.first() {
                    assert_eq!(heap.rekey(h, fresh_key(salt)), Err(StaleHandle));
                }
            }
            Op::Drain => {
                let mut out = Vec::new();
                heap.drain(|e| out.push(e));
                assert_eq!(out.len(), model.items.len());
                for e in &out {
                    model.check_removed(e);
                }
                assert!(model.items.is_empty());
            }
        }
        // After every step: head, tail, len, bytes, key multiset, structure.
        heap.check_invariants();
        assert_eq!(heap.len(), model.items.len());
        assert_eq!(heap.bytes(), model.items.iter().map(|&(_, _, b)| b).sum::<u64>());
        assert_eq!(heap.peek_head().map(|(_, k, _)| k), model.items.last().map(|&(k, _, _)| k));
        assert_eq!(heap.peek_tail().map(|(_, k, _)| k), model.items.first().map(|&(k, _, _)| k));
        assert_eq!(heap.lowest_two(), [0, 1].map(|i| model.items.get(i).map(|&(k, _, _)| k)));
        let mut keys: Vec<K> = heap.iter().map(|(_, k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, model.items.iter().map(|&(k, _, _)| k).collect::<Vec<_>>());
    }
}
