//! OpenAI-compatible response bodies: whole responses, stream chunks and the usage chunk.

use serde_json::{json, Value};

use crate::request::Endpoint;

/// Filler words the simulated tokens spell, one per token, in turn.
const WORDS: [&str; 8] = [" sim", " token", " the", " model", " says", " hello", " world", " again"];

/// Text of tokens `from..to` (0-based).
pub fn text(from: u32, to: u32) -> String {
    (from..to).map(|i| WORDS[i as usize % WORDS.len()]).collect()
}

/// What every body of one request shares.
#[derive(Clone, Debug)]
pub struct Shape {
    /// The endpoint answered.
    pub endpoint: Endpoint,
    /// Response id (`cmpl-…` or `chatcmpl-…`), the same in every chunk.
    pub id: String,
    /// Unix seconds at arrival.
    pub created: u64,
    /// Model name echoed.
    pub model: String,
}

impl Shape {
    /// A shape for request number `n`.
    pub fn new(endpoint: Endpoint, n: u64, model: &str) -> Shape {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        let created =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Shape { endpoint, id: format!("{prefix}-sim-{n}"), created, model: model.to_string() }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The whole (non-streamed) response.
    pub fn full(&self, prompt_tokens: u32, completion_tokens: u32) -> Value {
        let text = text(0, completion_tokens);
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "length"})
            }
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": "length",
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }

    /// One stream chunk carrying tokens `from..to`; `last` sets `finish_reason`, `with_usage`
    /// adds `"usage": null` as OpenAI does when a usage chunk follows.
    pub fn chunk(&self, from: u32, to: u32, last: bool, with_usage: bool) -> Value {
        let finish = if last { json!("length") } else { Value::Null };
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text(from, to), "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Chat => {
                let delta = if from == 0 {
                    json!({"role": "assistant", "content": text(from, to)})
                } else {
                    json!({"content": text(from, to)})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The final usage chunk (`"choices": []`).
    pub fn usage_chunk(&self, prompt_tokens: u32, completion_tokens: u32) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(prompt_tokens, completion_tokens),
        })
    }
}

/// The `usage` object.
pub fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": u64::from(prompt_tokens) + u64::from(completion_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_completion_has_openai_fields() {
        let v = Shape::new(Endpoint::Completions, 1, "m").full(3, 2);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], " sim token");
        assert_eq!(v["usage"]["total_tokens"], 5);
    }

    #[test]
    fn first_chat_chunk_names_the_role() {
        let s = Shape::new(Endpoint::Chat, 1, "m");
        assert_eq!(s.chunk(0, 1, false, false)["choices"][0]["delta"]["role"], "assistant");
        assert!(s.chunk(1, 2, true, true)["choices"][0]["delta"].get("role").is_none());
        assert!(s.chunk(1, 2, true, true)["usage"].is_null());
    }
}
