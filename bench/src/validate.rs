//! Reading back what a run wrote: each result file must be the JSON object its run meant to
//! write (a broken harness fails the run instead of leaving a plausible-looking file).

use crate::extproc::layouts::{CONDITIONS, LAYOUTS, RATES};
use std::path::Path;

/// Read back a result file and check it is the JSON object we meant to write.
pub fn validate(dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |what: &str| Err(format!("{}: {what}", path.display()));
    let positive = |x: &serde_json::Value| x.as_f64().is_some_and(|f| f.is_finite() && f > 0.0);
    match name {
        "throughput" => {
            let results = items(&v["results"]);
            if results.len() < 12 || !results.iter().all(|r| positive(&r["req_per_s"])) {
                return bad("expected 12 measurements, all with a positive req_per_s");
            }
        }
        "latency" => {
            let results = items(&v["results"]);
            if results.is_empty() || !results.iter().all(|r| positive(&r["latency"]["p50_ms"])) {
                return bad("expected latency results with a positive p50");
            }
        }
        "layouts" => {
            let cells = items(&v["cells"]);
            let n = (LAYOUTS.len() + 1) * CONDITIONS.len() * RATES.len();
            if cells.len() < n || !cells.iter().all(|c| positive(&c["latency"]["p50_ms"])) {
                return bad("expected every (server, condition, rate) cell with a positive p50");
            }
        }
        "scaling" => {
            let points = items(&v["flowgate"]);
            if points.len() != 3 || !points.iter().all(|p| positive(&p["req_per_s"])) {
                return bad("expected 3 scaling points");
            }
            if !has_svg(&v) {
                return bad("scaling plot missing");
            }
        }
        "scenarios" => {
            let scs = items(&v["scenarios"]);
            let tokens = &v["token_fairness"];
            let quotas = &v["quota_isolation"];
            if scs.is_empty() && tokens.is_null() && quotas.is_null() {
                return bad("no scenario results");
            }
            if !tokens.is_null() {
                let results = items(&tokens["results"]);
                if results.len() != 4
                    || !results.iter().all(|r| {
                        r["failed"].as_u64() == Some(0)
                            && r["records"] == r["submitted"]
                            && r["per_workload"].as_array().is_some_and(|w| {
                                w.len() == 2 && w.iter().all(|w| w["served"].as_u64().is_some_and(|n| n > 0))
                            })
                    })
                {
                    return bad(
                        "token_fairness needs 4 implementations, each serving both workloads, no failures",
                    );
                }
            }
            if !quotas.is_null() {
                let runs = items(&quotas["runs"]);
                let max = quotas["scenario"]["pinned_max_inflight"].as_u64().unwrap_or(0);
                if runs.len() != flowgate_bench::scenarios::quota_isolation::RUNS.len()
                    || !runs.iter().all(|r| {
                        r["failed"].as_u64() == Some(0)
                            && r["records"] == r["submitted"]
                            && r["pinned_peak_inflight"].as_u64().is_some_and(|p| p <= max)
                            && r["per_workload"].as_array().is_some_and(|w| {
                                !w.is_empty() && w.iter().all(|w| w["served"].as_u64().is_some_and(|n| n > 0))
                            })
                    })
                    || quotas["comparison"].as_array().is_none_or(Vec::is_empty)
                {
                    return bad(
                        "quota_isolation needs its 4 runs, every workload served, no failures, pinned within its max_inflight",
                    );
                }
            }
            for sc in scs {
                let results = items(&sc["results"]);
                if results.len() != 3
                    || !results.iter().all(|r| r["dispatches"].as_u64().is_some_and(|n| n > 0))
                {
                    return bad("every scenario needs 3 implementations with dispatches");
                }
                if !has_svg(sc) {
                    return bad("scenario plot missing");
                }
            }
        }
        "extproc" => {
            let results = items(&v["results"]);
            if results.len() != 2
                || !results.iter().all(|r| {
                    positive(&r["latency"]["p50_ms"])
                        && r["failed"].as_u64() == Some(0)
                        && r["not_dispatched"].as_u64() == Some(0)
                })
            {
                return bad("expected baseline and flowgate results, no failures, a positive p50");
            }
        }
        "streams" => {
            let results = items(&v["results"]);
            if results.len() != 2
                || !results.iter().all(|r| {
                    positive(&r["idle"]["rss_kib"])
                        && positive(&r["held"]["rss_kib"])
                        && positive(&r["settled"]["rss_kib"])
                        && r["kib_per_stream"].as_f64().is_some_and(f64::is_finite)
                        && r["returned_share"].as_f64().is_some_and(f64::is_finite)
                })
                || !v["targets"]["per_stream_met"].is_boolean()
            {
                return bad(
                    "expected bare and flowgate readings with positive RSS (settled too), a finite KiB/stream and share given back",
                );
            }
        }
        "scrape_cost"
            if !positive(&v["scrapes_ok"]) || !v["added_core_share"].as_f64().is_some_and(f64::is_finite) =>
        {
            return bad("expected good scrapes and a finite CPU share");
        }
        "pool" => {
            let configs = items(&v["configs"]);
            if configs.is_empty()
                || !configs.iter().all(|c| {
                    c["failed"].as_u64() == Some(0)
                        && c["classes"].as_array().is_some_and(|k| k.len() == 3)
                        && c["per_server_completed"].as_array().is_some_and(|s| !s.is_empty())
                })
            {
                return bad("expected configurations with 3 classes each and no failed requests");
            }
            if !has_svg(&v) {
                return bad("pool plot missing");
            }
        }
        "usage_cost" => {
            let results = items(&v["results"]);
            if results.len() != 2
                || !results.iter().all(|r| positive(&r["completed"]) && r["failed"].as_u64() == Some(0))
            {
                return bad("usage_cost needs its metered and unmetered phases, each completing requests, none failed");
            }
        }
        "envoy_modes" => {
            let phases = items(&v["phases"]);
            if phases.len() != 2 || !phases.iter().all(|p| positive(&p["median_req_per_s"])) {
                return bad("envoy_modes needs its metered and plain phases, each with a positive req/s");
            }
        }
        "cluster" if !v["targets"].is_object() || !positive(&v["throughput"]["standalone_median_per_s"]) => {
            return bad("cluster needs its targets and a positive standalone throughput");
        }
        _ => {}
    }
    Ok(())
}

/// The array at `v` (empty if it is not one).
fn items(v: &serde_json::Value) -> &[serde_json::Value] {
    v.as_array().map_or(&[][..], Vec::as_slice)
}

/// Whether `v["svg"]` names a file holding an SVG plot.
fn has_svg(v: &serde_json::Value) -> bool {
    let svg = v["svg"].as_str().unwrap_or_default();
    std::fs::read_to_string(svg).is_ok_and(|s| s.contains("<svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `validate` of `body` written as `name.json` in a directory of its own.
    fn check(name: &str, body: &str) -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("flowgate-validate-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.json")), body).unwrap();
        let got = validate(&dir, name);
        std::fs::remove_dir_all(&dir).unwrap();
        got
    }

    #[test]
    fn the_cost_and_cluster_results_are_checked_for_their_runs() {
        let phase = |failed: u64| format!(r#"{{"completed": 10, "failed": {failed}}}"#);
        assert!(check("usage_cost", &format!(r#"{{"results": [{}, {}]}}"#, phase(0), phase(0))).is_ok());
        assert!(check("usage_cost", &format!(r#"{{"results": [{}, {}]}}"#, phase(0), phase(1))).is_err());
        assert!(check("usage_cost", &format!(r#"{{"results": [{}]}}"#, phase(0))).is_err());
        let modes = r#"{"phases": [{"median_req_per_s": 900.0}, {"median_req_per_s": 1200.0}]}"#;
        assert!(check("envoy_modes", modes).is_ok());
        assert!(check("envoy_modes", r#"{"phases": [{"median_req_per_s": 0.0}, {}]}"#).is_err());
        let cluster =
            r#"{"targets": {"throughput": true}, "throughput": {"standalone_median_per_s": 3000.0}}"#;
        assert!(check("cluster", cluster).is_ok());
        assert!(check("cluster", r#"{"targets": {}, "throughput": {}}"#).is_err());
        assert!(check("cluster", "not json").is_err());
    }
}
