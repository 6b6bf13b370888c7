//! Scaling efficiency: how the queue's CPU per request grows with the shards, measured by the
//! `throughput` run (issue #14, item 6). With a core per shard, N shards would run at about
//! N × efficiency times one shard's rate while the queue's CPU is the bound; on this 2-core
//! machine the shards share the cores with the producers, so only the prediction can be shown.

use crate::baseline::Kind;
use crate::measurement::Measurement;
use crate::report::Table;
use serde::Serialize;

/// How the queue's CPU per request grows with the shards: `efficiency` = 1-shard queue CPU per
/// request ÷ this layout's. On cores of their own, `shards` shards would run at about
/// `shards × efficiency` times one shard's rate while the queue's CPU is the bound (this 2-core
/// machine cannot show that: the shards share the cores with the producers).
#[derive(Debug, Serialize)]
pub struct ScalingEfficiency {
    /// `low_load`, `saturation`, `saturation_no_polling` or `deep_queue`.
    pub mode: String,
    /// Shards of the layout.
    pub shards: usize,
    /// Its queue CPU per request, ns.
    pub queue_cpu_ns: f64,
    /// 1 shard's, same mode and run, ns.
    pub one_shard_queue_cpu_ns: f64,
    /// `one_shard_queue_cpu_ns / queue_cpu_ns`.
    pub efficiency: f64,
    /// `shards × efficiency`: the predicted speed-up over 1 shard with a core per shard.
    pub predicted_speedup: f64,
}

/// The scaling efficiency of `shards` shards in `mode`, if both CPU figures were measured.
pub fn of(results: &[Measurement], mode: &str, shards: usize) -> Option<ScalingEfficiency> {
    let queue_cpu = |label: String| {
        results.iter().find(|m| m.mode == mode && m.implementation == label).and_then(|m| m.queue_cpu_ns)
    };
    let one = queue_cpu(Kind::Flowgate(1).label()).filter(|&q| q > 0.0)?;
    let many = queue_cpu(Kind::Flowgate(shards).label()).filter(|&q| q > 0.0)?;
    let efficiency = one / many;
    Some(ScalingEfficiency {
        mode: mode.into(),
        shards,
        queue_cpu_ns: many,
        one_shard_queue_cpu_ns: one,
        efficiency,
        predicted_speedup: shards as f64 * efficiency,
    })
}

/// The table for stdout (empty when nothing was measured).
pub fn render(rows: &[ScalingEfficiency]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut e = Table::new(&[
        "mode",
        "shards",
        "queue CPU/req",
        "1 shard",
        "scaling efficiency",
        "predicted speed-up, a core per shard",
    ]);
    for row in rows {
        e.row(vec![
            row.mode.clone(),
            row.shards.to_string(),
            format!("{:.0} ns", row.queue_cpu_ns),
            format!("{:.0} ns", row.one_shard_queue_cpu_ns),
            format!("{:.2}", row.efficiency),
            format!("{:.2}x", row.predicted_speedup),
        ]);
    }
    format!(
        "\n== scaling efficiency (1-shard queue CPU/request ÷ N-shard; N × it predicts N shards on cores of their own) ==\n{}",
        e.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(implementation: &str, queue_cpu_ns: Option<f64>) -> Measurement {
        Measurement {
            implementation: implementation.into(),
            mode: "saturation".into(),
            producers: 2,
            batch: 1,
            mean_depth: None,
            requests: 1,
            seconds: 1.0,
            req_per_s: 1.0,
            rounds_req_per_s: vec![1.0],
            producer_cpu_ns: None,
            queue_cpu_ns,
            set_changes: None,
        }
    }

    #[test]
    fn efficiency_is_one_shards_queue_cpu_over_n_shards() {
        let results =
            [m("flowgate-1sh", Some(200.0)), m("flowgate-2sh", Some(250.0)), m("fifo", Some(100.0))];
        let e = of(&results, "saturation", 2).unwrap();
        assert_eq!((e.efficiency, e.predicted_speedup), (0.8, 1.6));
        assert!(of(&results, "low_load", 2).is_none(), "nothing measured in that mode");
        assert!(of(&[m("flowgate-1sh", None), m("flowgate-2sh", Some(1.0))], "saturation", 2).is_none());
        assert!(render(&[e]).contains("0.80"));
    }
}
