//! The changing-backend-set comparison of the throughput run: `flowgate-churn-Nsh` (the set
//! changes every [`CHURN_INTERVAL`](crate::baseline::CHURN_INTERVAL)) against `flowgate-Nsh`
//! (fixed) and `flowgate-steady-Nsh` (the same controller calls, nothing changed), same run.

use serde::Serialize;

use crate::baseline::{Kind, Queue};
use crate::measurement::{req_per_s_of, Measurement, SetChanges};

/// What `q`'s backend-set controller did since it reported `before`; panics if it made no call,
/// or one that did not do what was meant (the measurement would not be of what it says).
pub(crate) fn set_changes_since(q: &dyn Queue, before: Option<SetChanges>) -> Option<SetChanges> {
    let changes = q.set_changes()?.since(before.unwrap_or_default());
    assert!(changes.calls > 0, "{}: no set_backends call while measuring", q.name());
    assert_eq!(changes.unexpected, 0, "{}: set_backends did something else", q.name());
    Some(changes)
}

/// One mode of flowgate with a changing backend set ([`Kind::FlowgateChurn`]) against the same
/// shards with a fixed one ([`Kind::Flowgate`]) and with the same controller calls that change
/// nothing ([`Kind::FlowgateSteady`]), measured in the same run.
#[derive(Debug, Serialize)]
pub struct ChurnRow {
    /// Mode.
    pub mode: String,
    /// The fixed set's implementation.
    pub fixed: String,
    /// The control's implementation (same calls, unchanged set).
    pub steady: String,
    /// The changing set's implementation.
    pub churn: String,
    /// Fixed set, req/s.
    pub fixed_req_per_s: f64,
    /// Control, req/s.
    pub steady_req_per_s: f64,
    /// Changing set, req/s.
    pub churn_req_per_s: f64,
    /// Changing / fixed (the measure).
    pub ratio: f64,
    /// Changing / control (the change alone, the controller's calls netted out).
    pub vs_steady: f64,
    /// What the changing set's controller did while measuring (all rounds).
    pub set_changes: SetChanges,
    /// Its set changes per second measured.
    pub set_changes_per_s: f64,
}

pub(crate) fn churn_rows(results: &[Measurement], shards: usize) -> Vec<ChurnRow> {
    let fixed = Kind::Flowgate(shards).label();
    let steady = Kind::FlowgateSteady(shards).label();
    let churn = Kind::FlowgateChurn(shards).label();
    ["low_load", "saturation"]
        .iter()
        .filter_map(|&mode| {
            let m = results.iter().find(|m| m.mode == mode && m.implementation == churn)?;
            let (base, control) = (req_per_s_of(results, mode, &fixed), req_per_s_of(results, mode, &steady));
            let set_changes = m.set_changes.unwrap_or_default();
            Some(ChurnRow {
                mode: mode.into(),
                fixed: fixed.clone(),
                steady: steady.clone(),
                churn: churn.clone(),
                fixed_req_per_s: base,
                steady_req_per_s: control,
                churn_req_per_s: m.req_per_s,
                ratio: m.req_per_s / base.max(f64::MIN_POSITIVE),
                vs_steady: m.req_per_s / control.max(f64::MIN_POSITIVE),
                set_changes,
                set_changes_per_s: set_changes.calls as f64 / m.seconds.max(f64::MIN_POSITIVE),
            })
        })
        .collect()
}
