//! Differential fuzzing of the max-min heap against a sorted-`Vec` reference model.
//!
//! The input decodes (via `arbitrary`) into a sequence of operations; after every one the heap's
//! head, tail, length, byte total, key multiset and structural invariants must match the model.
//! Keys are `(u8, u8)` so duplicates are common.
//!
//! Run with `scripts/fuzz.sh heap 60`.
#![no_main]

use arbitrary::Arbitrary;
use flowgate_engine::heap::{Entry, Handle, MaxMinHeap};
use libfuzzer_sys::fuzz_target;

type K = (u8, u8);

#[derive(Arbitrary, Debug)]
enum Op {
    Push(K, u16),
    PopHead,
    PopTail,
    /// Remove the live item at this index (mod the live count).
    Remove(u16),
    /// Try a handle whose item is gone (mod the stale count).
    RemoveStale(u16),
    /// Try a handle issued by another heap.
    RemoveForeign,
    /// Rekey every item: keep iff `(id ^ salt) % modulus != 0`; new key from id and salt.
    Rekey(u64, u8),
    Drain,
}

/// The reference: `(key, id, bytes)` sorted by key, plus handle bookkeeping.
#[derive(Default)]
struct Model {
    items: Vec<(K, u64, u64)>,
    live: Vec<(u64, Handle)>,
    stale: Vec<Handle>,
    next_id: u64,
}

impl Model {
    fn insert(&mut self, key: K, id: u64, bytes: u64) {
        let at = self.items.partition_point(|&(k, _, _)| k <= key);
        self.items.insert(at, (key, id, bytes));
    }

    fn retire(&mut self, id: u64) {
        let at = self.live.iter().position(|&(i, _)| i == id).expect("live id");
        let (_, h) = self.live.swap_remove(at);
        self.stale.push(h);
    }

    /// Checks a removed entry against the model and drops it from the model.
    fn removed(&mut self, e: &Entry<K, u64>) {
        let at = self.items.iter().position(|&(_, i, _)| i == e.value).expect("id in model");
        let (key, _, bytes) = self.items.remove(at);
        assert_eq!((e.key, e.bytes), (key, bytes));
        let h = self.live.iter().find(|&&(i, _)| i == e.value).unwrap().1;
        assert_eq!(e.handle, h);
        self.retire(e.value);
    }
}

fn rekey(salt: u64, modulus: u8, id: u64, old: K) -> Option<K> {
    let h = (id ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if modulus > 1 && (h >> 32).is_multiple_of(u64::from(modulus)) {
        return None;
    }
    Some(if h & 4 == 0 { old } else { ((h >> 8) as u8, (h >> 16) as u8 % 8) })
}

fuzz_target!(|ops: Vec<Op>| {
    let mut heap: MaxMinHeap<K, u64> = MaxMinHeap::with_capacity(4);
    let mut other: MaxMinHeap<K, u64> = MaxMinHeap::with_capacity(1);
    let foreign = other.push((0, 0), 0, 0);
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
                    assert_eq!(Some(e.key), model.items.last().map(|&(k, _, _)| k));
                    model.removed(&e);
                }
                None => assert!(model.items.is_empty()),
            },
            Op::PopTail => match heap.pop_tail() {
                Some(e) => {
                    assert_eq!(Some(e.key), model.items.first().map(|&(k, _, _)| k));
                    model.removed(&e);
                }
                None => assert!(model.items.is_empty()),
            },
            Op::Remove(i) => {
                if !model.live.is_empty() {
                    let (id, h) = model.live[usize::from(i) % model.live.len()];
                    let e = heap.remove(h).expect("live handle refused");
                    assert_eq!(e.value, id);
                    model.removed(&e);
                    assert!(!heap.contains(h));
                }
            }
            Op::RemoveStale(i) => {
                if !model.stale.is_empty() {
                    let h = model.stale[usize::from(i) % model.stale.len()];
                    let before = (heap.len(), heap.bytes());
                    assert!(heap.remove(h).is_err() && heap.get(h).is_none());
                    assert_eq!((heap.len(), heap.bytes()), before);
                }
            }
            Op::RemoveForeign => {
                let before = (heap.len(), heap.bytes());
                assert!(heap.remove(foreign).is_err() && !heap.contains(foreign));
                assert_eq!((heap.len(), heap.bytes()), before);
            }
            Op::Rekey(salt, modulus) => {
                let mut gone = Vec::new();
                heap.rekey_retain(|&id, k| rekey(salt, modulus, id, k), |e| gone.push(e));
                for e in &gone {
                    assert!(rekey(salt, modulus, e.value, e.key).is_none());
                    model.removed(e);
                }
                for (key, id, bytes) in std::mem::take(&mut model.items) {
                    let key = rekey(salt, modulus, id, key).expect("kept by the heap");
                    model.insert(key, id, bytes);
                }
                // Survivors keep working handles with their new keys.
                for &(id, h) in &model.live {
                    let key = model.items.iter().find(|&&(_, i, _)| i == id).unwrap().0;
                    assert_eq!(heap.get(h), Some((key, &id)));
                }
            }
            Op::Drain => {
                let mut out = Vec::new();
                heap.drain(|e| out.push(e));
                for e in &out {
                    model.removed(e);
                }
                assert!(model.items.is_empty());
            }
        }
        heap.check_invariants();
        assert_eq!(heap.len(), model.items.len());
        assert_eq!(heap.bytes(), model.items.iter().map(|&(_, _, b)| b).sum::<u64>());
        assert_eq!(heap.peek_head().map(|(_, k, _)| k), model.items.last().map(|&(k, _, _)| k));
        assert_eq!(heap.peek_tail().map(|(_, k, _)| k), model.items.first().map(|&(k, _, _)| k));
        let mut keys: Vec<K> = heap.iter().map(|(_, k, _)| k).collect();
        keys.sort_unstable();
        assert!(keys.iter().eq(model.items.iter().map(|(k, _, _)| k)));
    }
});
