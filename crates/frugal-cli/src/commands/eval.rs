//! `frugal eval`: policies against full attention on long-context tasks, on identical inputs.

use crate::session::{interrupt_flag, progress_bar, Session};
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_eval::harness::{run_plan, sibling_paths, EvalPlan, EvalReport, Mode, Progress};
use frugal_eval::tasks::TaskKind;
use frugal_methods::spec::expand_sweep;
use frugal_methods::PolicySpec;
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Args)]
pub struct EvalArgs {
    /// Task(s) to run: ppl, passkey, kv-retrieval, chunk-qa (the reply's opening written for
    /// the model), passkey-user, kv-retrieval-user, chunk-qa-user (the user's format: question
    /// last, the model writes its whole answer) (repeatable).
    #[arg(long = "task", required = true, value_parser = TaskKind::from_name)]
    tasks: Vec<TaskKind>,
    /// question-aware (one prompt) or question-agnostic (the context is prefilled and
    /// compressed before the question is appended).
    #[arg(long, default_value = "question-aware", value_parser = Mode::from_name)]
    mode: Mode,
    /// Prefill in calls of at most this many tokens (0: one call); evicting policies compress
    /// after each, so their peak KV bytes fall with the budget.
    #[arg(long, default_value_t = 0)]
    prefill_chunk: usize,
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

/// Progress bar over every sample of the grid, with ETA.
struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn start(&mut self, total: u64) {
        self.0.set_length(total);
    }
    fn prompt_done(&mut self, label: &str) {
        self.0.set_message(label.to_string());
        self.0.inc(1);
    }
    fn skip(&mut self, samples: u64) {
        self.0.inc(samples);
    }
}

pub fn run(session: &Session, args: &EvalArgs) -> Result<()> {
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
    let speeches = session.speeches(args.corpus_dir.as_deref())?;
    let lm = session.load_model()?;
    let limit = lm.model.config().context_length;
    if let Some(l) = args.lengths.iter().find(|&&l| l > limit) {
        bail!("--length {l} is over the model's context window of {limit} tokens");
    }
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());
    let run = session.run_info(&lm, args.seed, args.samples);
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
        mode: args.mode,
        prefill_chunk: args.prefill_chunk,
    };
    let stop = interrupt_flag()?;
    let mut progress = BarProgress(progress_bar("samples"));
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
