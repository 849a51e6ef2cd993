//! `frugal knockout`'s user input file and sweep runner on the tiny random model: a valid file
//! becomes structured samples; each malformed file gets an error naming the problem; a small
//! sweep runs end to end with finite scores and early exit holding less KV than dense.

use candle_core::quantized::GgmlDType;
use frugal_engine::structure::TokenKind;
use frugal_engine::testing::tiny_model;
use frugal_eval::knockout::{load_input, markdown, run_sweeps, Setting, SweepPlan};

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("in.json");
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"{"samples": [{"segments": [
  {"kind": "prefix", "text": "Read the notes."},
  {"kind": "context", "chunk": 0, "text": " Anna lives in Paris."},
  {"kind": "context", "chunk": 1, "text": " Ben lives in Rome."},
  {"kind": "question", "text": " Where does Ben live? In"}],
  "candidates": ["Paris", "Rome"], "gold": 1}]}"#;

#[test]
fn a_valid_file_becomes_structured_samples() {
    let lm = tiny_model(GgmlDType::F32, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let samples = load_input(&lm, &write(&dir, GOOD)).unwrap();
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!(s.structure.len(), s.tokens.len());
    let kinds: Vec<TokenKind> = s.structure.segments.iter().map(|g| g.kind).collect();
    assert_eq!(
        kinds,
        [
            TokenKind::Prefix,
            TokenKind::Context,
            TokenKind::Context,
            TokenKind::Question
        ]
    );
    assert_eq!(s.structure.segments[2].chunk, 1);
}

#[test]
fn malformed_files_are_named() {
    let lm = tiny_model(GgmlDType::F32, 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = |text: &str| {
        load_input(&lm, &write(&dir, text))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(err("{").contains("is not a knockout input file"));
    assert!(err(r#"{"samples": []}"#).contains("has no samples"));
    let no_question = GOOD.replace(r#""kind": "question""#, r#""kind": "context""#);
    assert!(err(&no_question).contains("must end with a `question` segment"));
    assert!(err(&GOOD.replace(r#""gold": 1"#, r#""gold": 5"#)).contains("`gold` < 2"));
    let mismatch = r#"{"samples": [{"tokens": [3, 4, 5], "structure": {"segments": [{"kind": "question", "len": 2}]},
        "candidates": [" a", " b"], "gold": 0}]}"#;
    assert!(err(mismatch).contains("structure covers 2 tokens"));
    let both = r#"{"samples": [{"tokens": [3], "segments": [{"kind": "question", "text": "x"}], "candidates": [" a", " b"], "gold": 0}]}"#;
    assert!(err(both).contains("give either `segments`"));
}

#[test]
fn a_small_sweep_runs_end_to_end() {
    let lm = tiny_model(GgmlDType::F32, 3).unwrap();
    let n_layers = lm.model.config().n_layers;
    let dir = tempfile::tempdir().unwrap();
    let samples = load_input(&lm, &write(&dir, GOOD)).unwrap();
    let plan = SweepPlan {
        paths: vec!["lv".into(), "vt".into(), "vs".into()],
        cutoffs: vec![0, n_layers],
        window: 1,
        window_step: 1,
        early_exit: vec![1],
        frame_local: vec![(0, n_layers - 1)],
    };
    let settings = plan.settings(n_layers).unwrap();
    let mut calls = 0;
    let results = run_sweeps(&lm, &samples, &settings, &mut |_, _, _| calls += 1, &|| {
        false
    })
    .unwrap();
    assert_eq!(calls, settings.len());
    assert!(results
        .iter()
        .all(|r| r.gold_logprob.is_finite() && r.samples == 1));
    let by = |s: &Setting| results.iter().find(|r| &r.setting == s).unwrap();
    // No knockout (cut-off at the last layer) picks dense's answer; early exit holds less KV.
    assert_eq!(
        by(&Setting::Cutoff {
            path: "vt".into(),
            from: n_layers
        })
        .agreement_with_dense,
        1.0
    );
    assert!(
        by(&Setting::EarlyExit { layer: 1 })
            .kv_fraction_of_dense
            .unwrap()
            < 1.0
    );
    assert_eq!(by(&Setting::Dense).kv_fraction_of_dense, Some(1.0));
}

#[test]
fn plan_rejects_bad_settings() {
    let plan = |cutoffs: Vec<usize>, fl: Vec<(usize, usize)>| SweepPlan {
        paths: vec!["lv".into()],
        cutoffs,
        window: 0,
        window_step: 1,
        early_exit: vec![],
        frame_local: fl,
    };
    assert!(plan(vec![4], vec![])
        .settings(3)
        .unwrap_err()
        .to_string()
        .contains("past the model's 3 layers"));
    assert!(plan(vec![0], vec![(2, 1)])
        .settings(3)
        .unwrap_err()
        .to_string()
        .contains("is empty"));
    let _ = markdown; // the Markdown writer is exercised by the CLI runs in docs/results
}
