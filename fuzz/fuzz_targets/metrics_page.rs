//! Fuzz the model-server metrics page reader: for arbitrary bytes and every model server,
//! `read_page` must never panic, an `Ok` reading must be finite, non-negative and (KV use) within
//! `MAX_KV_FRACTION`, and on UTF-8 input it must agree exactly with a slow reference written
//! here with `str` methods (split into lines, strip, find, char iteration).
//!
//! Run from the repository root: `bash scripts/fuzz.sh metrics_page 60`.
#![no_main]

use flowgate::metrics_page::{
    read_page, ModelServer, PageError, PageReading, MAX_KV_FRACTION, MAX_PAGE_BYTES,
};
use libfuzzer_sys::fuzz_target;

/// Token separators of the exposition formats.
const BLANKS: [char; 2] = [' ', '\t'];

/// One wanted series: error name, metric name, required label.
type Series = (&'static str, &'static str, Option<(&'static str, &'static str)>);

/// The reference's copy of the metric-name contract: waiting, running, KV use, KV fallback.
fn series(server: ModelServer) -> [Option<Series>; 4] {
    match server {
        ModelServer::Vllm => [
            Some(("vllm:num_requests_waiting", "vllm:num_requests_waiting", None)),
            Some(("vllm:num_requests_running", "vllm:num_requests_running", None)),
            Some(("vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc", None)),
            Some(("vllm:gpu_cache_usage_perc", "vllm:gpu_cache_usage_perc", None)),
        ],
        ModelServer::Sglang => [
            Some(("sglang:num_queue_reqs", "sglang:num_queue_reqs", None)),
            Some(("sglang:num_running_reqs", "sglang:num_running_reqs", None)),
            Some(("sglang:token_usage", "sglang:token_usage", None)),
            None,
        ],
        ModelServer::TrtllmServe => [
            Some(("trtllm_num_requests_waiting", "trtllm_num_requests_waiting", None)),
            Some(("trtllm_num_requests_running", "trtllm_num_requests_running", None)),
            Some(("trtllm_kv_cache_utilization", "trtllm_kv_cache_utilization", None)),
            None,
        ],
        ModelServer::TritonTensorrtLlm => [
            Some((
                "nv_trt_llm_request_metrics{request_type=\"waiting\"}",
                "nv_trt_llm_request_metrics",
                Some(("request_type", "waiting")),
            )),
            Some((
                "nv_trt_llm_request_metrics{request_type=\"scheduled\"}",
                "nv_trt_llm_request_metrics",
                Some(("request_type", "scheduled")),
            )),
            Some((
                "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"}",
                "nv_trt_llm_kv_cache_block_metrics",
                Some(("kv_cache_block_type", "fraction")),
            )),
            None,
        ],
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Parse the rest of a wanted line after its name: `None` for garbage, else whether it counts
/// and its value token.
fn ref_sample<'a>(mut s: &'a str, label: Option<(&str, &str)>) -> Option<(bool, Option<&'a str>)> {
    let mut matched = label.is_none();
    if let Some(r) = s.strip_prefix('{') {
        s = r;
        loop {
            s = s.trim_start_matches(BLANKS);
            if let Some(r) = s.strip_prefix('}') {
                s = r;
                break;
            }
            if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                return None;
            }
            let key_len = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
            let (key, r) = s.split_at(key_len);
            let r = r.trim_start_matches(BLANKS).strip_prefix('=')?;
            let r = r.trim_start_matches(BLANKS).strip_prefix('"')?;
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => {
                        chars.next()?;
                    }
                    _ => {}
                }
            };
            if label == Some((key, &r[..end])) {
                matched = true;
            }
            s = r[end + 1..].trim_start_matches(BLANKS);
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return None;
            }
        }
    } else if !(s.is_empty() || s.starts_with(BLANKS)) {
        return None;
    }
    let mut tokens = s.split(BLANKS).filter(|t| !t.is_empty());
    let value = tokens.next();
    match tokens.next() {
        None | Some("#") => {}
        Some(stamp) => {
            stamp.parse::<f64>().ok()?;
            if !matches!(tokens.next(), None | Some("#")) {
                return None;
            }
        }
    }
    Some((matched, value))
}

/// The slow reference reader.
fn reference(server: ModelServer, page: &str) -> Result<PageReading, PageError> {
    if page.len() > MAX_PAGE_BYTES {
        return Err(PageError::TooLarge(page.len()));
    }
    let wanted = series(server);
    // (seen, bad, value) per series.
    let mut accs = [(false, false, 0.0f64); 4];
    let mut any_sample = false;
    for line in page.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line).trim_start_matches(BLANKS);
        if line.is_empty() {
            continue;
        }
        if line == "# EOF" {
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_len = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
        let after = line[name_len..].chars().next();
        if name_len > 0
            && !line.starts_with(|c: char| c.is_ascii_digit())
            && matches!(after, Some('{' | ' ' | '\t'))
        {
            any_sample = true;
        }
        for (i, s) in wanted.iter().enumerate() {
            let Some((_, name, label)) = s else { continue };
            let Some(rest) = line.strip_prefix(name) else { continue };
            if rest.starts_with(is_name_char) {
                continue;
            }
            let (counts, value) = ref_sample(rest, *label).ok_or(PageError::Garbage)?;
            if !counts {
                continue;
            }
            let upper = if i >= 2 { MAX_KV_FRACTION } else { f64::INFINITY };
            let acc = &mut accs[i];
            let first = !acc.0;
            acc.0 = true;
            match value.and_then(|v| v.parse::<f64>().ok()) {
                Some(v) if v.is_finite() && v >= 0.0 && v <= upper => {
                    acc.2 = if i < 2 {
                        acc.2 + v
                    } else if first {
                        v
                    } else {
                        acc.2.max(v)
                    };
                }
                _ => acc.1 = true,
            }
        }
    }
    if !any_sample {
        return Err(PageError::Garbage);
    }
    let finish = |i: usize| -> Result<f64, PageError> {
        let display = wanted[i].map_or("", |s| s.0);
        let (seen, bad, value) = accs[i];
        if !seen {
            Err(PageError::Missing(display))
        } else if bad || !value.is_finite() {
            Err(PageError::BadValue(display))
        } else {
            Ok(value + 0.0)
        }
    };
    let waiting = finish(0)?;
    let running = finish(1)?;
    let kv_cache_usage = if wanted[3].is_some() && !accs[2].0 && accs[3].0 { finish(3)? } else { finish(2)? };
    Ok(PageReading { waiting, running, kv_cache_usage })
}

fuzz_target!(|data: &[u8]| {
    for server in ModelServer::ALL {
        let got = read_page(server, data);
        if let Ok(r) = got {
            for v in [r.waiting, r.running, r.kv_cache_usage] {
                assert!(v.is_finite() && v >= 0.0 && v.is_sign_positive(), "{server}: {r:?}");
            }
            assert!(r.kv_cache_usage <= MAX_KV_FRACTION, "{server}: {r:?}");
        }
        if let Ok(text) = std::str::from_utf8(data) {
            assert_eq!(got, reference(server, text), "{server} on {text:?}");
        }
    }
});
