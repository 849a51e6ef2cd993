//! A thin runner of the evaluation grid (the same harness `frugal eval` drives), so the
//! harness can be exercised without building the whole command-line tool. Default model and
//! corpus as `frugal eval`.

use anyhow::{bail, Result};
use clap::Parser;
use frugal_engine::fetch::{ensure_model, DEFAULT_MODEL};
use frugal_engine::model::llama::WeightFormat;
use frugal_eval::corpus::{ensure_corpus, load_speeches, SOTU};
use frugal_eval::harness::{run_plan, EvalPlan, EvalReport, Mode, Progress, RunInfo};
use frugal_eval::tasks::TaskKind;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    #[arg(long = "task", required = true, value_parser = TaskKind::from_name)]
    tasks: Vec<TaskKind>,
    #[arg(long = "policy")]
    policies: Vec<String>,
    #[arg(long = "length", required = true)]
    lengths: Vec<usize>,
    #[arg(long, default_value_t = 6)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.9")]
    depths: Vec<f64>,
    #[arg(long, default_value = "question-aware", value_parser = Mode::from_name)]
    mode: Mode,
    #[arg(long, default_value_t = 0)]
    prefill_chunk: usize,
    /// Write the prompts (token ids split at the question, expected answer) as JSON lines to
    /// this file and exit: a peer implementation runs on exactly these inputs.
    #[arg(long)]
    dump_prompts: Option<PathBuf>,
    #[arg(long, required_unless_present = "dump_prompts")]
    out: Option<PathBuf>,
}

struct Log;

impl Progress for Log {
    fn start(&mut self, total: u64) {
        eprintln!("{total} samples");
    }
    fn prompt_done(&mut self, label: &str) {
        eprintln!("done: {label}");
    }
    fn skip(&mut self, _samples: u64) {}
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut policies = Vec::new();
    for p in &a.policies {
        let spec: frugal_methods::PolicySpec = p.parse()?;
        frugal_methods::validate(&spec)?;
        policies.push(spec);
    }
    if policies.is_empty() && a.dump_prompts.is_none() {
        bail!("give at least one --policy");
    }
    let model = ensure_model(&DEFAULT_MODEL, &mut |m| eprintln!("{m}"))?;
    let lm = frugal_engine::model::load(&model, WeightFormat::Native)?;
    let speeches = load_speeches(&ensure_corpus(&SOTU, &mut |m| eprintln!("{m}"))?)?;
    let text = frugal_eval::load_task_text(&lm, &speeches)?;
    if let Some(path) = &a.dump_prompts {
        return dump_prompts(&lm, &text, &a, path);
    }
    let out = a
        .out
        .clone()
        .expect("clap requires --out without --dump-prompts");
    let plan = EvalPlan {
        tasks: a.tasks,
        policies,
        lengths: a.lengths,
        samples: a.samples,
        seed: a.seed,
        depths: a.depths,
        mode: a.mode,
        prefill_chunk: a.prefill_chunk,
    };
    let mut report = if out.exists() {
        EvalReport::load(&out)?
    } else {
        EvalReport {
            run: RunInfo {
                frugal_version: env!("CARGO_PKG_VERSION").into(),
                git_commit: "see the results page".into(),
                model: model.display().to_string(),
                model_sha256: frugal_engine::fetch::sha256_file(&model)
                    .unwrap_or_else(|_| "unknown".into()),
                seed: a.seed,
                samples: a.samples,
                machine: "shared 2-core build machine under load".into(),
                threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                date_utc: String::new(),
            },
            cells: Vec::new(),
        }
    };
    run_plan(&lm, &text, &plan, &mut report, &out, &mut Log, &|| false)?;
    report.save(&out)?;
    let md = frugal_eval::report::markdown(&report);
    std::fs::write(out.with_extension("md"), &md)?;
    println!("{md}");
    Ok(())
}

/// One JSON line per sample of every (task, length): the same inputs `run_plan` generates.
fn dump_prompts(
    lm: &frugal_engine::model::LoadedModel,
    text: &frugal_eval::tasks::TaskText,
    a: &Args,
    path: &std::path::Path,
) -> Result<()> {
    use frugal_eval::tasks::{generate_samples, Answer};
    use std::io::Write;
    let mut lines = Vec::new();
    for &task in &a.tasks {
        for &length in &a.lengths {
            let samples = generate_samples(task, lm, text, length, a.samples, a.seed, &a.depths)?;
            for (i, s) in samples.iter().enumerate() {
                let (expected, max_new_tokens) = match &s.answer {
                    Answer::Contains {
                        expected,
                        max_new_tokens,
                    }
                    | Answer::Digits {
                        expected,
                        max_new_tokens,
                    } => (expected.clone(), *max_new_tokens),
                    _ => bail!(
                        "--dump-prompts takes generating tasks only, not {}",
                        task.name()
                    ),
                };
                lines.push(serde_json::json!({
                    "task": task.name(),
                    "length": length,
                    "index": i,
                    "seed": a.seed,
                    "context_ids": &s.tokens[..s.context_end],
                    "question_ids": &s.tokens[s.context_end..],
                    "expected": expected,
                    "max_new_tokens": max_new_tokens,
                    "depth": s.depth,
                    "phrasing": s.phrasing,
                }));
            }
        }
    }
    let tmp = path.with_extension("partial");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for l in &lines {
        writeln!(f, "{l}")?;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    eprintln!("{} prompts written to {}", lines.len(), path.display());
    Ok(())
}
