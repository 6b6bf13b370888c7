//! Which workload a request belongs to, from `x-workload-context` (JSON with `workload_id`) or
//! else `x-gateway-inference-fairness-id`, under the engine's id rules: non-empty, at most
//! [`MAX_WORKLOAD_ID_BYTES`] bytes, UTF-8 without control characters. Anything unusable is the
//! [`DEFAULT_WORKLOAD`]: a model server does not refuse requests for a bad header.

use axum::http::HeaderMap;

use crate::config::{DEFAULT_WORKLOAD, MAX_CONTEXT_HEADER_BYTES, MAX_WORKLOAD_ID_BYTES};

/// Name of the workload context header.
pub const CONTEXT_HEADER: &str = "x-workload-context";

/// Name of the Gateway API Inference Extension fairness header.
pub const FAIRNESS_ID_HEADER: &str = "x-gateway-inference-fairness-id";

fn usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_WORKLOAD_ID_BYTES && !id.chars().any(char::is_control)
}

fn from_context(value: &[u8]) -> Option<String> {
    if value.len() > MAX_CONTEXT_HEADER_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let id = v.get("workload_id")?.as_str()?;
    usable(id).then(|| id.to_string())
}

/// The workload id of a request with `headers`.
pub fn workload_id(headers: &HeaderMap) -> String {
    let id = if let Some(v) = headers.get(CONTEXT_HEADER) {
        from_context(v.as_bytes())
    } else if let Some(v) = headers.get(FAIRNESS_ID_HEADER) {
        std::str::from_utf8(v.as_bytes()).ok().filter(|s| usable(s)).map(str::to_string)
    } else {
        None
    };
    id.unwrap_or_else(|| DEFAULT_WORKLOAD.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn context_header_wins_and_bad_ids_are_default() {
        assert_eq!(workload_id(&headers(CONTEXT_HEADER, r#"{"workload_id":"chat"}"#)), "chat");
        assert_eq!(workload_id(&headers(FAIRNESS_ID_HEADER, "tenant-a")), "tenant-a");
        assert_eq!(workload_id(&headers(CONTEXT_HEADER, "not json")), DEFAULT_WORKLOAD);
        assert_eq!(workload_id(&headers(CONTEXT_HEADER, r#"{"workload_id":""}"#)), DEFAULT_WORKLOAD);
        let long = format!(r#"{{"workload_id":"{}"}}"#, "a".repeat(MAX_WORKLOAD_ID_BYTES + 1));
        assert_eq!(workload_id(&headers(CONTEXT_HEADER, &long)), DEFAULT_WORKLOAD);
        assert_eq!(workload_id(&HeaderMap::new()), DEFAULT_WORKLOAD);
    }
}
