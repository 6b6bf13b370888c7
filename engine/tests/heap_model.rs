//! The max-min heap against the queue-conformance checklist, plus a differential property test
//! against a sorted-`Vec` reference model (`common/heap_model.rs`, shared with the `heap` fuzz
//! target).

use flowgate_engine::heap::{Entry, Handle, MaxMinHeap, StaleHandle};
use heap_model::Op;
use proptest::prelude::*;

#[path = "common/heap_model.rs"]
mod heap_model;

/// Keys with many duplicates: the heap never breaks ties itself, the caller's key type does.
type K = (u8, u64);

#[test]
fn empty_heap_peeks_and_pops_nothing() {
    let mut heap: MaxMinHeap<u32, ()> = MaxMinHeap::with_capacity(4);
    assert!(heap.is_empty());
    assert_eq!((heap.len(), heap.bytes()), (0, 0));
    assert!(heap.peek_head().is_none());
    assert!(heap.peek_tail().is_none());
    assert!(heap.pop_head().is_none());
    assert!(heap.pop_tail().is_none());
    let mut seen = 0;
    heap.drain(|_| seen += 1);
    heap.rekey_retain(|_, k| Some(k), |_| seen += 1);
    assert_eq!(seen, 0);
    heap.check_invariants();
}

#[test]
fn len_and_bytes_are_exact_after_every_op() {
    let mut heap = MaxMinHeap::with_capacity(8);
    let a = heap.push(5u32, 100, 'a');
    assert_eq!((heap.len(), heap.bytes()), (1, 100));
    let b = heap.push(3, 20, 'b');
    assert_eq!((heap.len(), heap.bytes()), (2, 120));
    heap.push(9, 3, 'c');
    heap.push(1, 4000, 'd');
    assert_eq!((heap.len(), heap.bytes()), (4, 4123));
    assert_eq!(heap.pop_head().unwrap().bytes, 3);
    assert_eq!((heap.len(), heap.bytes()), (3, 4120));
    assert_eq!(heap.pop_tail().unwrap().bytes, 4000);
    assert_eq!((heap.len(), heap.bytes()), (2, 120));
    assert_eq!(heap.remove(b).unwrap().bytes, 20);
    assert_eq!((heap.len(), heap.bytes()), (1, 100));
    heap.rekey_retain(|_, k| Some(k + 1), |_| panic!("nothing removed"));
    assert_eq!((heap.len(), heap.bytes()), (1, 100));
    assert_eq!(heap.get(a), Some((6, &'a')));
    heap.drain(|_| {});
    assert_eq!((heap.len(), heap.bytes()), (0, 0));
    heap.check_invariants();
}

#[test]
fn head_follows_order_and_tail_is_always_lowest() {
    let mut heap = MaxMinHeap::with_capacity(64);
    // A fixed pseudo-random permutation of 0..50 with every key pushed twice.
    let keys: Vec<u32> = (0..100).map(|i| (i * 37 % 100) / 2).collect();
    for (i, &k) in keys.iter().enumerate() {
        heap.push(k, 1, i);
        let mut seen: Vec<u32> = keys[..=i].to_vec();
        seen.sort();
        assert_eq!(heap.peek_head().unwrap().1, *seen.last().unwrap());
        assert_eq!(heap.peek_tail().unwrap().1, seen[0]);
        heap.check_invariants();
    }
    // Alternate ends: heads come out non-increasing, tails non-decreasing, and they meet.
    let (mut heads, mut tails) = (Vec::new(), Vec::new());
    while !heap.is_empty() {
        let tail = heap.peek_tail().unwrap().1;
        assert!(heap.iter().all(|(_, k, _)| k >= tail));
        heads.push(heap.pop_head().unwrap().key);
        if let Some(e) = heap.pop_tail() {
            tails.push(e.key);
        }
        heap.check_invariants();
    }
    assert!(heads.windows(2).all(|w| w[0] >= w[1]), "{heads:?}");
    assert!(tails.windows(2).all(|w| w[0] <= w[1]), "{tails:?}");
    assert!(tails.last() <= heads.last());
    assert_eq!(heads.len() + tails.len(), 100);
}

#[test]
fn peeks_do_not_mutate() {
    let mut heap = MaxMinHeap::with_capacity(8);
    for k in [4u32, 8, 1, 6, 3, 7] {
        heap.push(k, u64::from(k), k);
    }
    let before = keys_of_u32(&heap);
    for _ in 0..3 {
        assert_eq!(heap.peek_head().map(|(_, k, v)| (k, *v)), Some((8, 8)));
        assert_eq!(heap.peek_tail().map(|(_, k, v)| (k, *v)), Some((1, 1)));
    }
    assert_eq!(keys_of_u32(&heap), before);
    assert_eq!((heap.len(), heap.bytes()), (6, 29));
    // The handle a peek reports is the live item's.
    let (h, _, _) = heap.peek_tail().unwrap();
    assert_eq!(heap.remove(h).unwrap().key, 1);
}

fn keys_of_u32<T>(heap: &MaxMinHeap<u32, T>) -> Vec<u32> {
    let mut keys: Vec<u32> = heap.iter().map(|(_, k, _)| k).collect();
    keys.sort();
    keys
}

#[test]
fn remove_returns_the_item_and_invalidates_its_handle() {
    let mut heap = MaxMinHeap::with_capacity(8);
    let hs: Vec<Handle> = (0..8u32).map(|k| heap.push(k, 10, format!("v{k}"))).collect();
    let e = heap.remove(hs[5]).unwrap();
    assert_eq!((e.handle, e.key, e.bytes, e.value.as_str()), (hs[5], 5, 10, "v5"));
    assert!(!heap.contains(hs[5]));
    assert!(heap.get(hs[5]).is_none());
    assert_eq!(heap.remove(hs[5]).unwrap_err(), StaleHandle);
    // The freed slot is reused, but the old handle still names nothing.
    let fresh = heap.push(42, 1, "new".to_string());
    assert_ne!(fresh, hs[5]);
    assert!(!heap.contains(hs[5]));
    assert_eq!(heap.get(fresh).map(|(k, v)| (k, v.as_str())), Some((42, "new")));
    // Every other handle survived the sifts.
    for (k, &h) in hs.iter().enumerate().filter(|&(k, _)| k != 5) {
        assert_eq!(heap.get(h).map(|(key, v)| (key, v.clone())), Some((k as u32, format!("v{k}"))));
    }
    heap.check_invariants();
}

#[test]
fn stale_and_foreign_handles_are_refused_and_change_nothing() {
    let mut a = MaxMinHeap::with_capacity(4);
    let mut b = MaxMinHeap::with_capacity(4);
    let ha = a.push(1u32, 7, 'a');
    let hb = b.push(1u32, 9, 'b');
    // Same slot index and generation, different heaps.
    assert!(!a.contains(hb) && !b.contains(ha));
    assert_eq!(a.remove(hb).unwrap_err(), StaleHandle);
    assert!(a.get(hb).is_none());
    assert_eq!((a.len(), a.bytes(), b.len(), b.bytes()), (1, 7, 1, 9));
    // Stale: removed through another path.
    a.pop_head().unwrap();
    a.push(2, 3, 'c');
    assert_eq!(a.remove(ha).unwrap_err(), StaleHandle);
    assert_eq!((a.len(), a.bytes()), (1, 3));
    assert_eq!(a.peek_head().map(|(_, k, v)| (k, *v)), Some((2, 'c')));
    a.check_invariants();
    b.check_invariants();
}

/// The upstream Go heap refilled a removed middle slot with the last element and only sifted it
/// down. Here the last element is smaller than the removed node's min-level parent, so it must
/// move UP to stay correct (and the old parent must then sink).
#[test]
fn removing_a_middle_item_sifts_the_replacement_up() {
    let mut heap = MaxMinHeap::with_capacity(16);
    // Level 0: 100; level 1 (min): 10 | 1; level 2 (max): 40, 35 | 5, 4; level 3 (min): 20, 30 | ...
    // Built by push order so the array is exactly this (checked below).
    let mut handles = Vec::new();
    for k in [100u32, 10, 1, 40, 35, 5, 4, 20, 30, 15, 16, 2] {
        handles.push(heap.push(k, 1, k));
    }
    let array: Vec<u32> = heap.iter().map(|(_, k, _)| k).collect();
    assert_eq!(array, [100, 10, 1, 40, 35, 5, 4, 20, 30, 15, 16, 2]);
    heap.check_invariants();
    // Remove 40 (position 3, a max level under the min node 10): the last element, 2, fills the
    // hole. 2 < 10, so 2 must rise to position 1 and 10 must come down and sink below.
    let e = heap.remove(handles[3]).unwrap();
    assert_eq!(e.key, 40);
    heap.check_invariants();
    assert_eq!(heap.pop_tail().unwrap().key, 1);
    assert_eq!(heap.pop_tail().unwrap().key, 2);
    assert_eq!(heap.pop_tail().unwrap().key, 4);
    let mut rest = Vec::new();
    while let Some(e) = heap.pop_tail() {
        rest.push(e.key);
        heap.check_invariants();
    }
    assert_eq!(rest, [5, 10, 15, 16, 20, 30, 35, 100]);
}

/// Mirror image: the replacement lands on a min level below a smaller max-level parent, so it
/// must rise onto the max level (and the old parent sinks into the hole).
#[test]
fn removing_a_middle_item_sifts_the_replacement_up_onto_a_max_level() {
    let mut heap = MaxMinHeap::with_capacity(16);
    let handles: Vec<Handle> =
        [100u32, 10, 1, 40, 35, 90, 80, 20, 30, 15, 16, 85].iter().map(|&k| heap.push(k, 1, k)).collect();
    let array: Vec<u32> = heap.iter().map(|(_, k, _)| k).collect();
    assert_eq!(array, [100, 10, 1, 40, 35, 90, 80, 20, 30, 15, 16, 85]);
    // Remove 20 (position 7, min level under the max node 40); the last element, 85, fills the
    // hole but is greater than 40.
    assert_eq!(heap.remove(handles[7]).unwrap().key, 20);
    heap.check_invariants();
    let mut order = Vec::new();
    while let Some(e) = heap.pop_head() {
        order.push(e.key);
        heap.check_invariants();
    }
    assert_eq!(order, [100, 90, 85, 80, 40, 35, 30, 16, 15, 10, 1]);
}

/// Exhaustively: for every heap built from a permutation of 0..8 and every removal position.
#[test]
fn removing_any_item_of_small_heaps_keeps_the_order() {
    fn permutations(n: u32) -> Vec<Vec<u32>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }
    for perm in permutations(7) {
        for victim in 0..perm.len() {
            let mut heap = MaxMinHeap::with_capacity(8);
            let hs: Vec<Handle> = perm.iter().map(|&k| heap.push(k, 1, ())).collect();
            assert_eq!(heap.remove(hs[victim]).unwrap().key, perm[victim]);
            heap.check_invariants();
            let mut expect: Vec<u32> = perm.clone();
            expect.remove(victim);
            expect.sort();
            assert_eq!(keys_of_u32(&heap), expect);
        }
    }
}

#[test]
fn rekey_retain_none_all_and_subset() {
    let build = || {
        let mut heap = MaxMinHeap::with_capacity(32);
        let hs: Vec<Handle> = (0..20u64).map(|i| heap.push(((i % 3) as u8, i), i, i)).collect();
        (heap, hs)
    };
    // Remove none, reversing the order: every handle survives with its new key.
    let (mut heap, hs) = build();
    heap.rekey_retain(|&v, _| Some((0, 100 - v)), |_| panic!("kept all"));
    heap.check_invariants();
    assert_eq!((heap.len(), heap.bytes()), (20, (0..20).sum::<u64>()));
    for (i, &h) in hs.iter().enumerate() {
        assert_eq!(heap.get(h), Some(((0, 100 - i as u64), &(i as u64))));
    }
    assert_eq!(heap.peek_head().unwrap().1, (0, 100));
    assert_eq!(heap.peek_tail().unwrap().1, (0, 81));

    // Remove all.
    let (mut heap, hs) = build();
    let mut gone = Vec::new();
    heap.rekey_retain(|_, _| None, |e| gone.push((e.handle, e.value)));
    heap.check_invariants();
    assert!(heap.is_empty() && heap.bytes() == 0);
    gone.sort_by_key(|&(_, v)| v);
    assert_eq!(gone.iter().map(|&(h, _)| h).collect::<Vec<_>>(), hs);
    assert!(hs.iter().all(|&h| !heap.contains(h)));

    // Remove a subset (odd values), keep the rest with keys unchanged.
    let (mut heap, hs) = build();
    let mut gone = Vec::new();
    heap.rekey_retain(|&v, k| (v % 2 == 0).then_some(k), |e: Entry<K, u64>| gone.push(e.value));
    heap.check_invariants();
    gone.sort();
    assert_eq!(gone, (0..20).filter(|v| v % 2 == 1).collect::<Vec<_>>());
    assert_eq!(heap.len(), 10);
    assert_eq!(heap.bytes(), (0..20).filter(|v| v % 2 == 0).sum::<u64>());
    for (i, &h) in hs.iter().enumerate() {
        assert_eq!(heap.contains(h), i % 2 == 0);
    }
    assert_eq!(heap.peek_head().unwrap().1, (2, 14));
    assert_eq!(heap.peek_tail().unwrap().1, (0, 0));
    // The freed slots are reused cleanly.
    let h = heap.push((9, 9), 1, 99);
    assert_eq!(heap.peek_head().unwrap().0, h);
    heap.check_invariants();
}

#[test]
fn rekey_retain_stays_consistent_if_the_callback_panics() {
    let mut heap = MaxMinHeap::with_capacity(16);
    for i in 0..16u32 {
        heap.push(i, 1, i);
    }
    let mut calls = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        heap.rekey_retain(
            |&v, k| {
                calls += 1;
                if calls == 8 {
                    panic!("boom");
                }
                (v % 3 != 0).then_some(100 - k)
            },
            drop,
        )
    }));
    assert!(result.is_err());
    heap.check_invariants();
    assert_eq!(heap.len() as u64, heap.bytes());
}

#[test]
fn drain_twice() {
    let mut heap = MaxMinHeap::with_capacity(8);
    let hs: Vec<Handle> = (0..5u32).map(|k| heap.push(k, 2, k)).collect();
    let mut out = Vec::new();
    heap.drain(|e| out.push(e.value));
    out.sort();
    assert_eq!(out, [0, 1, 2, 3, 4]);
    assert_eq!((heap.len(), heap.bytes()), (0, 0));
    assert!(hs.iter().all(|&h| !heap.contains(h) && heap.remove(h).is_err()));
    heap.drain(|_| panic!("already empty"));
    heap.check_invariants();
    // Still usable and allocation-free up to its capacity.
    let cap = heap.capacity();
    let h = heap.push(7, 1, 7);
    assert_eq!(heap.pop_head().unwrap().handle, h);
    assert_eq!(heap.capacity(), cap);
}

#[test]
fn with_capacity_does_not_grow_up_to_capacity() {
    let mut heap = MaxMinHeap::with_capacity(100);
    let cap = heap.capacity();
    assert!(cap >= 100);
    for i in 0..100u32 {
        heap.push(i, 1, [0u8; 64]);
    }
    for i in 0..1000u32 {
        heap.pop_head();
        heap.push(i, 1, [0u8; 64]);
    }
    assert_eq!(heap.capacity(), cap);
    // Beyond capacity it grows.
    for i in 0..100u32 {
        heap.push(i, 1, [0u8; 64]);
    }
    assert_eq!(heap.len(), 200);
    heap.check_invariants();
}

// ----- differential test against a reference model -----

/// A random op for the model run.
fn op() -> impl Strategy<Value = Op<K>> {
    prop_oneof![
        // Mostly heavy duplicates; sometimes a wide range, so deep heaps with distinct keys form.
        10 => (prop_oneof![3 => (0u8..4, 0u64..6), 1 => (any::<u8>(), 0u64..1000)], any::<u16>())
            .prop_map(|(k, b)| Op::Push(k, b)),
        3 => Just(Op::PopHead),
        3 => Just(Op::PopTail),
        4 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::RemoveStale),
        1 => Just(Op::RemoveForeign),
        1 => (any::<u64>(), 1u8..5).prop_map(|(s, m)| Op::Rekey(s, m)),
        3 => (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Op::RekeyOne(i, s)),
        1 => Just(Op::Drain),
    ]
}

/// A rekeyed item's new key: few distinct values, so duplicates stay common.
fn fresh_key(h: u64) -> K {
    ((h >> 8) as u8 % 4, (h >> 16) % 6)
}

fn run_ops(ops: &[Op<K>]) {
    heap_model::run(8, fresh_key, ops.iter().copied());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn differential_against_sorted_vec(ops in proptest::collection::vec(op(), 0..300)) {
        run_ops(&ops);
    }
}
