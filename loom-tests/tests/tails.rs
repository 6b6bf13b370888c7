//! The published tails (`engine/src/tails.rs`): newcomers of other shards claim a shard's lowest
//! queued requests for cross-shard displacement while the shard republishes them.
#![cfg(flowgate_loom)]

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::tails::Tails;
use flowgate_loom_tests::{gate, model};
use loom::thread;
use std::sync::Arc;

/// Claim the least offered tail, as `Gate::claim_victim` does for one shard: read, then
/// compare-and-swap, again while the word changed under us.
fn claim(tails: &Tails) -> Option<f64> {
    loop {
        let offer = tails.offer()?;
        if tails.claim(offer) {
            return Some(offer.score);
        }
    }
}

/// Two newcomers claim while the shard, which has evicted nothing yet, publishes its two lowest
/// requests again. No request may be claimed twice (two displacements for one victim would evict
/// a request better than either newcomer's victim), and no claim may take a score that was never
/// published. The shard's republication must count the claims marked since its last one: a
/// publication that forgot them is caught here.
#[test]
fn a_claimed_tail_is_never_offered_again_before_its_eviction() {
    model(|| {
        let tails = Arc::new(Tails::new());
        tails.publish([Some(1.0), Some(2.0)], 0);
        let claimants: Vec<_> = (0..2)
            .map(|_| {
                let tails = tails.clone();
                thread::spawn(move || claim(&tails))
            })
            .collect();
        // The shard's next pass: the same two lowest (no displacement carried out yet).
        tails.publish([Some(1.0), Some(2.0)], 0);
        let claimed: Vec<f64> = claimants.into_iter().filter_map(|c| c.join().unwrap()).collect();
        for s in &claimed {
            assert!(*s == 1.0 || *s == 2.0, "claimed a score never published: {s}");
        }
        if let [a, b] = claimed[..] {
            assert_ne!(a, b, "one request claimed twice");
        }
        // Whatever is still offered was claimed by nobody.
        if let Some(o) = tails.offer() {
            assert!(!claimed.contains(&o.score), "claimed {claimed:?}, still offered {}", o.score);
        }
    });
}

/// A displacement queued for the shard (`pending`) hides its lowest request from a publication
/// even after the claim mark is gone, so a claimant racing that publication takes the next one.
#[test]
fn a_pending_displacement_hides_the_lowest_request() {
    model(|| {
        let tails = Arc::new(Tails::new());
        tails.publish([Some(1.0), Some(2.0)], 0);
        assert_eq!(claim(&tails), Some(1.0));
        // The shard republishes twice before carrying out the queued displacement.
        let claimant = {
            let tails = tails.clone();
            thread::spawn(move || claim(&tails))
        };
        tails.publish([Some(1.0), Some(2.0)], 1);
        tails.publish([Some(1.0), Some(2.0)], 1);
        let second = claimant.join().unwrap();
        assert_ne!(second, Some(1.0), "the request already claimed was claimed again");
    });
}

/// A shard admits a newcomer (announcing it, then reserving its queue room) while the other shard's
/// newcomer finds the queue full. The full shard must then read that the first holds a request it
/// offers nothing for, so it holds back for that shard's publication instead of refusing a request
/// that may outrank the one it cannot see. An announcement made after the reservation, or none (the
/// queue length published once a pass), is caught here: "full, nothing queued anywhere else".
#[test]
fn a_full_queue_sees_the_other_shards_unpublished_admission() {
    model(|| {
        let gate = gate(&[1], 2);
        let budget = Arc::new(QueueBudget::new(1, 0));
        let admitting = {
            let (gate, budget) = (gate.clone(), budget.clone());
            thread::spawn(move || {
                // Worker::pass on shard 0: announce (length + batch), reserve, then the exact length.
                gate.announce_queued(0, 1);
                let queued = budget.try_reserve(0);
                gate.announce_queued(0, u64::from(queued));
                queued
            })
        };
        // Shard 1's newcomer: the queue of one is full only through shard 0's reservation.
        let full = !budget.try_reserve(0);
        if full {
            assert_eq!(gate.offers_exhausted_elsewhere(1), Some(0), "full, yet nothing queued elsewhere");
        }
        let admitted = admitting.join().unwrap();
        assert!(admitted || !full, "shard 0 was refused, yet shard 1 found the queue full");
        assert!(!admitted || full, "two reservations of the one place");
    });
}
