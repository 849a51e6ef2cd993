//! `frugal knockout`: the attention-knockout bench and the efficiency policies built on it.

use crate::args::parse_task;
use crate::session::{interrupt_flag, progress_bar, Session};
use anyhow::{bail, Context, Result};
use clap::Args;
use frugal_eval::harness::{sibling_paths, RunInfo};
use frugal_eval::tasks::TaskKind;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Args)]
pub struct KnockoutArgs {
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

pub fn run(session: &Session, args: &KnockoutArgs) -> Result<()> {
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
    let lm = session.load_model()?;
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
            let speeches = session.speeches(args.corpus_dir.as_deref())?;
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
    let run = session.run_info(&lm, args.seed, samples.len());
    let stop = interrupt_flag()?;
    eprintln!("{} conditions × {} samples", settings.len(), samples.len());
    let bar = progress_bar("runs");
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
