//! A live `scoring.rate_window` (`engine/src/rate_window.rs`, `WorkloadEntry::rebase_window`): the
//! owning shard re-bases a workload's token window to the new geometry while a permit on another
//! thread charges a finished request's tokens.
#![cfg(flowgate_loom)]

use flowgate_engine::config::WorkloadConfig;
use flowgate_engine::registry::{hash_workload_id, RateWindow, WorkloadTable};
use flowgate_engine::sync::AtomicUsize;
use flowgate_loom_tests::model;
use loom::thread;
use std::sync::Arc;
use std::time::Duration;

const S: u64 = 1_000_000_000;

/// 1200 weighted tokens in the 60 s window (20/s), re-based to 5 s (100 tokens seeded, 8 or 9 per
/// bucket) while another thread charges 100 more at the same instant. The window never holds more
/// than was seeded and charged, and loses at most the racing charge and the one bucket's seed it
/// restarts. A charge made once the new width is visible always counts (200): a re-base that
/// published the width before its seeded buckets would overwrite it (100), caught here.
#[test]
fn a_charge_racing_a_window_change_is_kept_or_lost_whole() {
    model(|| {
        let now = 30 * S;
        let mut table = WorkloadTable::new(
            &WorkloadConfig::default(),
            RateWindow::new(Duration::from_secs(60)),
            Arc::new(AtomicUsize::new(0)),
        );
        let entry = table.arrive("chat", hash_workload_id("chat"), 3, now);
        entry.charge(now, 1200, 0);
        let charger = {
            let entry = entry.clone();
            thread::spawn(move || {
                let saw_new = entry.window() == RateWindow::new(Duration::from_secs(5));
                (entry.charge(now, 100, 0), saw_new)
            })
        };
        table.set_window(RateWindow::new(Duration::from_secs(5)), now);
        let (cost, saw_new) = charger.join().unwrap();
        assert_eq!(cost, 100);
        let held = (entry.token_rate_per_s(now) * 5.0).round() as u64;
        assert!(held <= 200, "more than seeded and charged: {held}");
        assert!(held >= 100 - 9, "lost more than one charge and one bucket's seed: {held}");
        if saw_new {
            assert_eq!(held, 200, "a charge in the new geometry was lost");
        }
        // Totals never depend on the window.
        assert_eq!(entry.snapshot(now).prompt_tokens, 1300);
    });
}
