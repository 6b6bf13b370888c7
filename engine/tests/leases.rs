//! Cluster mode's hooks: leases on the backend table (`lease.rs`, `backends.rs`) through the gate,
//! and remote rates on workload entries (`registry.rs`) through the score's penalty input.

use flowgate_engine::backends::{BackendId, Grants};
use flowgate_engine::clock::Clock;
use flowgate_engine::config::{BackendConfig, EngineConfig};
use flowgate_engine::gate::{Gate, Place, Refusal};
use flowgate_engine::lease::CapMode;

fn gate(caps: &[u32]) -> Gate {
    let config = EngineConfig {
        backends: caps
            .iter()
            .enumerate()
            .map(|(i, &m)| BackendConfig { address: format!("10.0.0.{i}:8000"), max_inflight: m })
            .collect(),
        ..EngineConfig::default()
    };
    Gate::new(&config, 1, Clock::new())
}

fn id(g: &Gate, i: usize) -> BackendId {
    g.backend_states()[i].id
}

/// Take places until refused.
fn fill(g: &Gate) -> Vec<Place> {
    let mut places = Vec::new();
    while let Ok(p) = g.try_acquire(3) {
        places.push(p);
        assert!(places.len() < 1000, "no cap");
    }
    places
}

#[test]
fn standalone_is_unchanged_and_reports_no_lease() {
    let g = gate(&[3]);
    assert_eq!(g.backends().cap_mode(), CapMode::Standalone);
    assert_eq!(fill(&g).len(), 3);
    let s = &g.backend_states()[0];
    assert_eq!((s.max_inflight, s.lease), (3, None));
}

#[test]
fn a_lease_caps_dispatch_below_max_inflight_and_zero_means_none() {
    let g = gate(&[8, 8]);
    let (a, b) = (id(&g, 0), id(&g, 1));
    assert!(
        !g.backends().grant_leases(Grants { slots: &[(a, 2), (b, 0)], ..Grants::default() }, u64::MAX),
        "leases only shrank"
    );
    let places = fill(&g);
    assert_eq!(places.len(), 2);
    assert!(places.iter().all(|p| p.backend == 0));
    assert_eq!(g.try_acquire(3).unwrap_err(), Refusal::NoRoom);
    let states = g.backend_states();
    assert_eq!((states[0].max_inflight, states[0].lease), (8, Some(2)));
    assert_eq!(states[1].lease, Some(0));
    // Ceilings still see the configured capacity.
    assert_eq!(g.capacity(), 16);
    // A grant above max_inflight is max_inflight; a grown lease says so.
    assert!(g.backends().grant_leases(Grants { slots: &[(a, 2), (b, 100)], ..Grants::default() }, u64::MAX));
    assert_eq!(fill(&g).len(), 8);
    for p in places {
        g.release(p);
    }
}

#[test]
fn lowering_below_inflight_keeps_the_places_and_takes_no_new_one() {
    let g = gate(&[4]);
    let a = id(&g, 0);
    let places = fill(&g);
    assert_eq!(places.len(), 4);
    g.backends().grant_leases(Grants { slots: &[(a, 1)], ..Grants::default() }, u64::MAX);
    let mut places = places.into_iter();
    for _ in 0..3 {
        g.release(places.next().unwrap());
        assert_eq!(g.try_acquire(3).unwrap_err(), Refusal::NoRoom, "still at or above the lease");
    }
    g.release(places.next().unwrap());
    let p = g.try_acquire(3).expect("below the lease now");
    assert_eq!(g.try_acquire(3).unwrap_err(), Refusal::NoRoom);
    g.release(p);
    assert_eq!(g.backend_states()[0].inflight, 0);
}

#[test]
fn local_mode_is_max_over_replicas_at_least_one() {
    let g = gate(&[7, 2, 0]);
    g.backends().local_caps(3);
    let s = g.backend_states();
    assert_eq!((s[0].lease, s[1].lease, s[2].lease), (Some(2), Some(1), None));
    assert_eq!(g.backends().cap_mode(), CapMode::Local { replicas: 3 });
    // The uncapped backend stays uncapped: fill stops only at the guard, so count the capped ones.
    let mut capped = 0;
    let mut held = Vec::new();
    for _ in 0..50 {
        let p = g.try_acquire(3).unwrap();
        if p.backend != 2 {
            capped += 1;
        }
        held.push(p);
    }
    assert!(capped <= 3, "{capped}");
}

#[test]
fn leases_lapse_to_local_mode_at_their_deadline_and_not_before() {
    let g = gate(&[6]);
    let a = id(&g, 0);
    g.backends().grant_leases(Grants { slots: &[(a, 5)], ..Grants::default() }, 1_000);
    assert!(!g.backends().lapse_leases(999, 2));
    assert_eq!(g.backend_states()[0].lease, Some(5));
    assert!(g.backends().lapse_leases(1_000, 2));
    assert_eq!(g.backend_states()[0].lease, Some(3));
    assert!(!g.backends().lapse_leases(5_000, 2), "already lapsed");
    assert_eq!(g.backends().cap_mode(), CapMode::Local { replicas: 2 });
}

#[test]
fn a_grant_for_a_reused_slot_does_not_apply_and_new_backends_wait_for_a_grant() {
    let g = gate(&[4]);
    let old = id(&g, 0);
    g.backends().grant_leases(Grants { slots: &[(old, 4)], ..Grants::default() }, u64::MAX);
    // The backend leaves (idle: freed at once) and another takes its slot: a new generation.
    g.set_backends(&[BackendConfig { address: "10.0.0.9:8000".into(), max_inflight: 4 }]);
    let s = &g.backend_states()[0];
    assert_ne!(s.id, old);
    assert_eq!(s.lease, Some(0), "leased mode: nothing until granted");
    g.backends().grant_leases(Grants { slots: &[(old, 4)], ..Grants::default() }, u64::MAX);
    assert_eq!(g.backend_states()[0].lease, Some(0), "the old id's grant is not this backend's");
    let new = g.backend_states()[0].id;
    g.backends().grant_leases(Grants { slots: &[(new, 3)], ..Grants::default() }, u64::MAX);
    assert_eq!(g.backend_states()[0].lease, Some(3));
}

#[test]
fn a_reload_keeps_the_lease_and_lowers_it_to_a_lower_max() {
    let g = gate(&[8]);
    let a = id(&g, 0);
    g.backends().grant_leases(Grants { slots: &[(a, 5)], ..Grants::default() }, u64::MAX);
    let changes = g.set_backends(&[BackendConfig { address: "10.0.0.0:8000".into(), max_inflight: 10 }]);
    assert_eq!(changes.updated, vec![a]);
    let s = &g.backend_states()[0];
    assert_eq!((s.max_inflight, s.lease), (10, Some(5)), "not raised to the new max");
    g.set_backends(&[BackendConfig { address: "10.0.0.0:8000".into(), max_inflight: 2 }]);
    assert_eq!(g.backend_states()[0].lease, Some(2));
    // In local mode a reload recomputes the share.
    g.backends().local_caps(2);
    g.set_backends(&[BackendConfig { address: "10.0.0.0:8000".into(), max_inflight: 9 }]);
    assert_eq!(g.backend_states()[0].lease, Some(4));
}

#[test]
fn criticality_ceilings_are_fractions_of_the_lease() {
    let mut config = EngineConfig {
        backends: vec![BackendConfig { address: "10.0.0.0:8000".into(), max_inflight: 8 }],
        ..EngineConfig::default()
    };
    config.ceilings = [0.5, 1.0, 1.0, 1.0, 1.0];
    let g = Gate::new(&config, 1, Clock::new());
    let a = id(&g, 0);
    // A lease of 4 of the 8 slots: criticality 1 may hold ⌈0.5 · 4⌉ = 2, not ⌈0.5 · 8⌉ = 4.
    g.grant_leases(Grants { slots: &[(a, 4)], ..Grants::default() }, u64::MAX);
    let mut held = Vec::new();
    while let Ok(p) = g.try_acquire(1) {
        held.push(p);
        assert!(held.len() <= 8);
    }
    assert_eq!(held.len(), 2, "criticality 1 held past half the lease");
    assert_eq!(g.try_acquire(1).err(), Some(Refusal::Ceiling));
    held.extend([g.try_acquire(5).unwrap(), g.try_acquire(5).unwrap()]);
    assert_eq!(g.try_acquire(5).err(), Some(Refusal::NoRoom), "the lease caps the rest");
    // Local mode over 4 replicas: 2 slots, of which criticality 1 may hold ⌈0.5 · 2⌉ = 1.
    for p in held.drain(..) {
        g.release(p);
    }
    g.local_caps(4);
    held.push(g.try_acquire(1).unwrap());
    assert_eq!(g.try_acquire(1).err(), Some(Refusal::Ceiling));
    assert!(g.try_acquire(5).is_ok());
}

#[test]
fn remote_rates_add_to_the_penalty_and_show_in_snapshots() {
    use flowgate_engine::config::{ScoringConfig, WorkloadConfig};
    use flowgate_engine::registry::{hash_workload_id, RateWindow, WorkloadTable};
    use std::sync::{atomic::AtomicUsize, Arc};
    let window = RateWindow::new(std::time::Duration::from_secs(60));
    let mut t = WorkloadTable::new(&WorkloadConfig::default(), window, Arc::new(AtomicUsize::new(0)));
    let e = t.arrive("flood", hash_workload_id("flood"), 3, 1_000);
    let local = e.snapshot(1_000).rate_per_s;
    assert!(local > 0.0);
    e.set_remote_rates(50.0, f64::NAN);
    assert_eq!(e.remote_rates(), (50.0, 0.0), "NaN reads as 0");
    t.refresh_pressures(2_000, None);
    assert!((e.cached_pressure() - (local + 50.0)).abs() < 1e-9, "{}", e.cached_pressure());
    let s = e.snapshot(2_000);
    assert_eq!(s.remote_rate_per_s, 50.0);
    e.set_remote_rates(-3.0, 7.0);
    assert_eq!(e.remote_rates(), (0.0, 7.0));
    let _ = ScoringConfig::default();
}
