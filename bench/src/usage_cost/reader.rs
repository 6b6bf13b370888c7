//! flowgate's usage meter alone, in this process, on the very chunks a request sends: the part of
//! the added CPU that is reading the body (not the charge, the quota or the answers), measured
//! without the noise of a loaded machine.

use super::probe::own_thread_cpu_ns;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use flowgate::usage::UsageSource;
use flowgate::usage_meter::UsageMeter;
use std::hint::black_box;
use std::io;

/// Responses metered per batch ...
const RESPONSES_PER_BATCH: usize = 2000;
/// ... and batches: the fastest is kept (the others were preempted more).
const BATCHES: usize = 5;

/// Meter one response (`messages`: the response headers and body chunks, as sent).
fn meter(messages: &[ProcessingRequest]) -> UsageSource {
    let mut m = UsageMeter::new(Some(850));
    for message in messages {
        match &message.request {
            Some(Msg::ResponseHeaders(_)) => m.headers(Some("text/event-stream")),
            Some(Msg::ResponseBody(b)) => m.body(black_box(&b.body)),
            _ => {}
        }
    }
    m.finish().source
}

/// CPU ns (this thread's) per response of [`UsageMeter`] over `messages` (the fastest batch),
/// and whether it found the reported usage.
pub fn ns_per_response(messages: &[ProcessingRequest]) -> io::Result<(f64, bool)> {
    let reported = meter(messages) == UsageSource::Reported;
    let mut best = f64::INFINITY;
    for _ in 0..BATCHES {
        let start = own_thread_cpu_ns()?;
        for _ in 0..RESPONSES_PER_BATCH {
            black_box(meter(black_box(messages)));
        }
        let used = own_thread_cpu_ns()?.saturating_sub(start);
        best = best.min(used as f64 / RESPONSES_PER_BATCH as f64);
    }
    Ok((best, reported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_metered_as_reported() {
        let (ns, reported) = ns_per_response(&super::super::script::response(64)).unwrap();
        assert!(reported);
        assert!(ns > 0.0 && ns.is_finite());
    }
}
