//! The simulator's configuration ([`SimConfig`]) and the fixed bounds it is checked against.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// Largest request body read, in bytes; a longer body is answered 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Largest `max_tokens` a request may ask for; more is answered 400.
pub const MAX_MAX_TOKENS: u32 = 32_768;

/// Most distinct workload ids kept in [`crate::SimStats::per_workload`]; requests of further ids
/// are counted under [`OTHER_WORKLOAD`].
pub const MAX_WORKLOADS: usize = 1024;

/// Key under which requests of workloads beyond [`MAX_WORKLOADS`] are counted.
pub const OTHER_WORKLOAD: &str = "__other__";

/// Key under which requests without a usable workload id are counted (the engine's default
/// workload).
pub const DEFAULT_WORKLOAD: &str = "default";

/// Longest workload id accepted, in bytes (the engine's limit); a longer id counts as
/// [`DEFAULT_WORKLOAD`].
pub const MAX_WORKLOAD_ID_BYTES: usize = 256;

/// Longest `x-workload-context` header value parsed, in bytes (the engine's limit).
pub const MAX_CONTEXT_HEADER_BYTES: usize = 8 * 1024;

/// Bounds checked by [`SimConfig::validate`]: `max_num_seqs` and `max_waiting` at most this.
pub const MAX_QUEUE_LIMIT: usize = 1 << 20;

/// Largest `tokens_per_chunk`.
pub const MAX_TOKENS_PER_CHUNK: usize = 4096;

/// Which inference server the simulator imitates: it decides the names on `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// vLLM (`vllm:*` metrics). CLI name `vllm`.
    Vllm,
    /// SGLang (`sglang:*` metrics). CLI name `sglang`.
    Sglang,
    /// TensorRT-LLM's `trtllm-serve` (`trtllm_*` metrics). CLI name `trtllm-serve`.
    TrtllmServe,
    /// Triton with the TensorRT-LLM backend (`nv_trt_llm_*` metrics). CLI name
    /// `triton-tensorrt-llm`.
    TritonTensorrtLlm,
}

impl EngineKind {
    /// The CLI name (`vllm`, `sglang`, `trtllm-serve`, `triton-tensorrt-llm`).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
            EngineKind::TrtllmServe => "trtllm-serve",
            EngineKind::TritonTensorrtLlm => "triton-tensorrt-llm",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vllm" => Ok(EngineKind::Vllm),
            "sglang" => Ok(EngineKind::Sglang),
            "trtllm-serve" => Ok(EngineKind::TrtllmServe),
            "triton-tensorrt-llm" => Ok(EngineKind::TritonTensorrtLlm),
            other => Err(format!(
                "unknown engine {other:?} (expected vllm, sglang, trtllm-serve or triton-tensorrt-llm)"
            )),
        }
    }
}

/// When a streamed response ends with a usage chunk (`"choices": []` and `usage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamUsage {
    /// Only when the request sets `stream_options.include_usage: true` (OpenAI and vLLM).
    Requested,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl StreamUsage {
    /// Whether a stream whose request said `include_usage` ends with the usage chunk.
    pub fn include(self, requested: bool) -> bool {
        match self {
            StreamUsage::Requested => requested,
            StreamUsage::Always => true,
            StreamUsage::Never => false,
        }
    }
}

impl FromStr for StreamUsage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "requested" => Ok(StreamUsage::Requested),
            "always" => Ok(StreamUsage::Always),
            "never" => Ok(StreamUsage::Never),
            other => Err(format!("unknown stream usage {other:?} (expected requested, always or never)")),
        }
    }
}

/// Everything the simulator is started with.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks a free port ([`crate::Sim::addr`] tells which).
    pub listen: SocketAddr,
    /// Server imitated on `/metrics`.
    pub engine: EngineKind,
    /// Model name: echoed in responses and used as the `model_name` (or `model`) label.
    pub model: String,
    /// Most sequences running at once; `1..=MAX_QUEUE_LIMIT`.
    pub max_num_seqs: usize,
    /// Most requests waiting for a seat; one more is answered 429. `0..=MAX_QUEUE_LIMIT`.
    pub max_waiting: usize,
    /// Prefill cost in microseconds per prompt token (before dividing by `speed`); finite, ≥ 0.
    pub prefill_us_per_token: f64,
    /// Cost of one decode step in milliseconds (before dividing by `speed`); finite, ≥ 0.
    pub decode_step_ms: f64,
    /// KV-cache budget in tokens; a running sequence holds prompt + completion tokens of it.
    /// At least 1.
    pub kv_tokens: u64,
    /// Time divisor: 2.0 runs twice as fast, 0.5 half as fast. Finite, > 0.
    pub speed: f64,
    /// Tokens per streamed chunk; `1..=MAX_TOKENS_PER_CHUNK`.
    pub tokens_per_chunk: usize,
    /// Completion length of a request without `max_tokens`; `1..=MAX_MAX_TOKENS`.
    pub default_max_tokens: u32,
    /// When streamed responses end with a usage chunk.
    pub stream_usage: StreamUsage,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8000)),
            engine: EngineKind::Vllm,
            model: "sim-model".to_string(),
            max_num_seqs: 16,
            max_waiting: 256,
            prefill_us_per_token: 50.0,
            decode_step_ms: 10.0,
            kv_tokens: 65_536,
            speed: 1.0,
            tokens_per_chunk: 1,
            default_max_tokens: 16,
            stream_usage: StreamUsage::Requested,
        }
    }
}

impl SimConfig {
    /// Check every field against its documented range; the message names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_QUEUE_LIMIT).contains(&self.max_num_seqs) {
            return Err(format!("max_num_seqs must be in 1..={MAX_QUEUE_LIMIT}, got {}", self.max_num_seqs));
        }
        if self.max_waiting > MAX_QUEUE_LIMIT {
            return Err(format!("max_waiting must be at most {MAX_QUEUE_LIMIT}, got {}", self.max_waiting));
        }
        if !(self.prefill_us_per_token.is_finite() && self.prefill_us_per_token >= 0.0) {
            return Err(format!(
                "prefill_us_per_token must be finite and >= 0, got {}",
                self.prefill_us_per_token
            ));
        }
        if !(self.decode_step_ms.is_finite() && self.decode_step_ms >= 0.0) {
            return Err(format!("decode_step_ms must be finite and >= 0, got {}", self.decode_step_ms));
        }
        if self.kv_tokens == 0 {
            return Err("kv_tokens must be at least 1".to_string());
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(format!("speed must be finite and > 0, got {}", self.speed));
        }
        if !(1..=MAX_TOKENS_PER_CHUNK).contains(&self.tokens_per_chunk) {
            return Err(format!(
                "tokens_per_chunk must be in 1..={MAX_TOKENS_PER_CHUNK}, got {}",
                self.tokens_per_chunk
            ));
        }
        if !(1..=MAX_MAX_TOKENS).contains(&self.default_max_tokens) {
            return Err(format!(
                "default_max_tokens must be in 1..={MAX_MAX_TOKENS}, got {}",
                self.default_max_tokens
            ));
        }
        Ok(())
    }
}
