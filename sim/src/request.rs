//! Parsing `/v1/completions` and `/v1/chat/completions` bodies, and the deterministic token
//! counts the simulator charges for them.

use serde::Deserialize;

use crate::config::MAX_MAX_TOKENS;
use crate::error::ApiError;

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// What the simulator needs of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inference {
    /// Prompt tokens: `max(1, ceil(prompt bytes / 4))`.
    pub prompt_tokens: u32,
    /// Tokens to generate; `1..=MAX_MAX_TOKENS`.
    pub max_tokens: u32,
    /// Whether to answer as server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Prompt tokens charged for `bytes` bytes of prompt text: `max(1, ceil(bytes / 4))`.
pub fn prompt_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX).max(1)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    prompt: Option<serde_json::Value>,
    #[serde(default)]
    messages: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

fn field<T: for<'de> Deserialize<'de>>(value: serde_json::Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|_| ApiError::bad_request(format!("invalid {what}")))
}

fn max_tokens(value: Option<serde_json::Value>, default: u32) -> Result<u32, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(default) };
    match value.as_u64() {
        Some(n) if (1..=u64::from(MAX_MAX_TOKENS)).contains(&n) => Ok(n as u32),
        _ => Err(ApiError::bad_request(format!(
            "max_tokens must be an integer in 1..={MAX_MAX_TOKENS}, got {value}"
        ))),
    }
}

/// Parse a request body for `endpoint`; `default_max_tokens` applies when `max_tokens` is
/// absent. Every malformed input is a 400 naming the field.
pub fn parse(endpoint: Endpoint, body: &[u8], default_max_tokens: u32) -> Result<Inference, ApiError> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let (bytes, limit) = match endpoint {
        Endpoint::Completions => {
            let prompt = body.prompt.ok_or_else(|| ApiError::bad_request("missing field `prompt`"))?;
            let prompt: Prompt = field(prompt, "`prompt` (expected a string or a list of strings)")?;
            let bytes = match prompt {
                Prompt::One(s) => s.len(),
                Prompt::Many(v) => v.iter().map(String::len).sum(),
            };
            (bytes, body.max_tokens)
        }
        Endpoint::Chat => {
            let messages = body.messages.ok_or_else(|| ApiError::bad_request("missing field `messages`"))?;
            let messages: Vec<Message> =
                field(messages, "`messages` (expected a list of {role, content} objects)")?;
            if messages.is_empty() {
                return Err(ApiError::bad_request("`messages` must not be empty"));
            }
            let bytes = messages
                .iter()
                .map(|m| match &m.content {
                    None => 0,
                    Some(Content::Text(s)) => s.len(),
                    Some(Content::Parts(p)) => {
                        p.iter().filter_map(|p| p.text.as_ref()).map(String::len).sum()
                    }
                })
                .sum();
            (bytes, body.max_tokens.or(body.max_completion_tokens))
        }
    };
    Ok(Inference {
        prompt_tokens: prompt_tokens(bytes),
        max_tokens: max_tokens(limit, default_max_tokens)?,
        stream: body.stream.unwrap_or(false),
        include_usage: body.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_round_up_and_are_at_least_one() {
        assert_eq!(prompt_tokens(0), 1);
        assert_eq!(prompt_tokens(4), 1);
        assert_eq!(prompt_tokens(5), 2);
        assert_eq!(prompt_tokens(400), 100);
    }

    #[test]
    fn prompt_lists_are_summed() {
        let r = parse(Endpoint::Completions, br#"{"prompt": ["abcd", "efgh1"], "max_tokens": 3}"#, 16);
        assert_eq!(r.map(|r| (r.prompt_tokens, r.max_tokens)), Ok((3, 3)));
    }

    #[test]
    fn chat_counts_text_parts_and_max_completion_tokens() {
        let body = br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "12345678"}]},
            {"role": "assistant", "content": null}], "max_completion_tokens": 2}"#;
        let r = parse(Endpoint::Chat, body, 16);
        assert_eq!(r.map(|r| (r.prompt_tokens, r.max_tokens)), Ok((2, 2)));
    }

    #[test]
    fn bad_fields_are_400() {
        for body in [
            &br#"{"prompt": 5}"#[..],
            br#"{"max_tokens": 3}"#,
            br#"{"prompt": "x", "max_tokens": 0}"#,
            br#"{"prompt": "x", "max_tokens": -1}"#,
            br#"{"prompt": "x", "max_tokens": 1.5}"#,
            br#"{"prompt": "x", "max_tokens": 40000}"#,
            br#"{"prompt": "x", "stream": "yes"}"#,
            b"[1, 2",
        ] {
            let r = parse(Endpoint::Completions, body, 16);
            assert_eq!(r.map_err(|e| e.status.as_u16()), Err(400), "{}", String::from_utf8_lossy(body));
        }
        assert!(parse(Endpoint::Chat, br#"{"messages": []}"#, 16).is_err());
    }
}
