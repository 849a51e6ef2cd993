//! Bad input through the real binary: each case must exit non-zero with an error that names
//! the problem, and never panic.

use candle_core::quantized::GgmlDType;
use frugal_engine::testing::{write_tiny_gguf, TinyGgufOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

fn frugal(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["--threads", "1"])
        .args(args)
        .env_remove("FRUGAL_MODEL")
        .output()
        .expect("run frugal");
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_clean_failure(o: &Outcome, must_contain: &[&str]) {
    assert!(!o.stderr.contains("panicked"), "panicked:\n{}", o.stderr);
    assert!(
        matches!(o.code, Some(c) if c != 0),
        "exit code {:?}\n{}",
        o.code,
        o.stderr
    );
    for s in must_contain {
        assert!(o.stderr.contains(s), "stderr lacks {s:?}:\n{}", o.stderr);
    }
}

fn tiny_gguf(dir: &Path, name: &str, opts: TinyGgufOptions) -> PathBuf {
    let path = dir.join(name);
    write_tiny_gguf(&path, GgmlDType::Q8_0, 1, opts).unwrap();
    path
}

#[test]
fn missing_model_file() {
    let o = frugal(&["--model", "/nonexistent/model.gguf", "generate", "hi"]);
    assert_clean_failure(&o, &["not found", "/nonexistent/model.gguf"]);
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let o = frugal(&["--model", cut.to_str().unwrap(), "generate", "hi"]);
    assert_clean_failure(&o, &["truncated", "cut.gguf"]);
    // Cut inside the header: not even the metadata parses.
    std::fs::write(&cut, &bytes[..100]).unwrap();
    let o = frugal(&["--model", cut.to_str().unwrap(), "generate", "hi"]);
    assert_clean_failure(&o, &["cut.gguf"]);
}

#[test]
fn corrupt_gguf_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.gguf");
    std::fs::write(&path, b"this is not a gguf file at all, just text").unwrap();
    let o = frugal(&["--model", path.to_str().unwrap(), "generate", "hi"]);
    assert_clean_failure(&o, &["garbage.gguf", "GGUF"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TinyGgufOptions {
        architecture: Some("mamba"),
        ..Default::default()
    };
    let path = tiny_gguf(dir.path(), "mamba.gguf", opts);
    let o = frugal(&["--model", path.to_str().unwrap(), "generate", "hi"]);
    assert_clean_failure(&o, &["unsupported architecture `mamba`", "llama"]);
}

#[test]
fn gguf_without_tokenizer_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TinyGgufOptions {
        without_tokenizer: true,
        ..Default::default()
    };
    let path = tiny_gguf(dir.path(), "notok.gguf", opts);
    let o = frugal(&["--model", path.to_str().unwrap(), "generate", "hi"]);
    assert_clean_failure(&o, &["notok.gguf", "tokenizer"]);
}

#[test]
fn prompt_longer_than_the_context_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    // The tiny model's window is 512 tokens; every byte of this prompt is at least one token.
    let prompt = "x".repeat(600);
    let o = frugal(&["--model", path.to_str().unwrap(), "generate", &prompt]);
    assert_clean_failure(&o, &["context window of 512"]);
}

#[test]
fn invalid_sampling_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    let model = path.to_str().unwrap();
    for (flag, value, named) in [
        ("--temperature", "-1", "temperature"),
        ("--top-p", "0", "top_p"),
        ("--top-p", "1.5", "top_p"),
        ("--max-tokens", "0", "max-tokens"),
        ("--top-k", "-3", "top-k"),
    ] {
        let arg = format!("{flag}={value}");
        let o = frugal(&["--model", model, "generate", "hi", &arg]);
        assert_clean_failure(&o, &[named]);
    }
}

#[test]
fn a_valid_tiny_model_generates() {
    // The counterpart of the failures above: the same file, unbroken, works end to end.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args([
            "--threads",
            "1",
            "--model",
            path.to_str().unwrap(),
            "generate",
            "Hello",
            "--max-tokens",
            "5",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt tokens"));
}

/// `frugal eval` rejects bad plans before any sample runs.
#[test]
fn eval_rejects_bad_plans_before_working() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::write(
        corpus.join("1900_someone_x.txt"),
        "Words of a speech. ".repeat(50),
    )
    .unwrap();
    let out = dir.path().join("r.json");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--model",
            model.to_str().unwrap(),
            "eval",
            "--corpus-dir",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for (extra, says) in [
        (
            vec!["--task", "nosuch", "--length", "256"],
            "unknown task `nosuch`",
        ),
        (
            vec!["--task", "passkey", "--length", "256", "--policy", "nosuch"],
            "unknown policy `nosuch`",
        ),
        (
            vec![
                "--task",
                "passkey",
                "--length",
                "256",
                "--policy",
                "streaming:foo=1",
            ],
            "unknown knob `foo`",
        ),
        (
            vec![
                "--task",
                "passkey",
                "--length",
                "256",
                "--policy",
                "streaming:window=0",
            ],
            "streaming:window",
        ),
        (
            vec!["--task", "passkey", "--length", "100000"],
            "context window of 512",
        ),
        (
            vec!["--task", "passkey", "--length", "256", "--depths", "1.5"],
            "depth 1.5",
        ),
    ] {
        let args = base(&extra.to_vec());
        let o = frugal(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_clean_failure(&o, &[says]);
        assert!(
            !out.exists(),
            "no report is written for a rejected plan ({says})"
        );
    }
    let o = frugal(&[
        "--model",
        model.to_str().unwrap(),
        "eval",
        "--task",
        "ppl",
        "--length",
        "256",
        "--corpus-dir",
        "/nonexistent/corpus",
    ]);
    assert_clean_failure(&o, &["/nonexistent/corpus", "does not exist"]);
}

#[test]
fn knockout_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{\"samples\": [").unwrap();
    let out = dir.path().join("k.json");
    let (m, o, b) = (
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        bad_json.to_str().unwrap(),
    );
    for (extra, says) in [
        (vec!["--frame-local", "3-x"], "invalid --frame-local `3-x`"),
        (vec!["--types", "lv,xx"], "unknown knockout type `xx`"),
        (
            vec!["--cutoffs", "0,99"],
            "cut-off layer 99 is past the model's",
        ),
        (vec!["--samples", "0"], "invalid --samples 0"),
        (
            vec!["--input", "/nonexistent/in.json"],
            "cannot read /nonexistent/in.json",
        ),
        (vec!["--input", b], "is not a knockout input file"),
        (vec!["--replot", b], "is not a knockout report"),
    ] {
        let mut args = vec!["--model", m, "knockout", "--out", o, "--window", "0"];
        args.extend(extra);
        assert_clean_failure(&frugal(&args), &[says]);
        assert!(
            !out.exists(),
            "no report is written for rejected input ({says})"
        );
    }
    let o = frugal(&["--model", m, "knockout", "--out", o, "--window", "9"]);
    assert_clean_failure(
        &o,
        &["window of 9 layers is wider than the model's 3 layers"],
    );
}

#[test]
fn device_flag_refuses_what_the_device_path_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), "tiny.gguf", TinyGgufOptions::default());
    let m = model.to_str().unwrap();
    // A host-only policy is refused by name before the model loads.
    let o = frugal(&[
        "--model",
        m,
        "--device",
        "cuda",
        "generate",
        "--policy",
        "streaming:window=8",
        "hi",
    ]);
    assert_clean_failure(&o, &["--device cuda", "streaming", "CPU only"]);
    // A command without a device path says which ones have one.
    let out = dir.path().join("kv-sim.json");
    let o = frugal(&[
        "--model",
        m,
        "--device",
        "cuda",
        "probe",
        "kv-similarity",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &o,
        &["--device cuda", "CPU only", "generate, chat, ppl and bench"],
    );
    // An unknown device is named.
    let o = frugal(&["--model", m, "--device", "tpu", "generate", "hi"]);
    assert_clean_failure(&o, &["--device tpu", "unknown device"]);
    // `full` on cuda: without the `cuda` feature (CI) the build says so; with it but no GPU,
    // opening the device fails; with a GPU this case is not bad input and is skipped.
    let o = frugal(&[
        "--model",
        m,
        "--device",
        "cuda",
        "generate",
        "--max-tokens",
        "2",
        "hi",
    ]);
    if o.code != Some(0) {
        assert_clean_failure(&o, &["--device cuda"]);
        assert!(
            o.stderr.contains("built without CUDA support")
                || o.stderr.contains("cannot open CUDA device"),
            "{}",
            o.stderr
        );
    }
}
