//! The commands end to end on the tiny model (no download): chat keeps and clears history,
//! ppl prints a perplexity, bench writes its JSON report.

use candle_core::quantized::GgmlDType;
use frugal_engine::testing::{write_tiny_gguf, TinyGgufOptions};
use std::io::Write;
use std::process::{Command, Stdio};

fn tiny(dir: &std::path::Path) -> String {
    let path = dir.join("tiny.gguf");
    write_tiny_gguf(&path, GgmlDType::Q8_0, 2, TinyGgufOptions::default()).unwrap();
    path.to_string_lossy().into_owned()
}

fn frugal(model: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["--threads", "1", "--model", model])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn chat_answers_each_turn_and_resets() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let args = ["chat", "--max-tokens", "6"];
    let (ok, once, stderr) = frugal(&model, &args, "Hello\n/exit\n");
    assert!(ok, "{stderr}");
    // After /reset the same message is answered as in a fresh chat (greedy: identically).
    let (ok, reset, stderr) = frugal(&model, &args, "Hello\n/reset\nHello\n/exit\n");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("(history cleared)"), "{stderr}");
    assert_eq!(reset, format!("{once}{once}"));
    // Without /reset the second turn sees the first in its prompt, so its answer differs.
    let (ok, kept, stderr) = frugal(&model, &args, "Hello\nHello\n/exit\n");
    assert!(ok, "{stderr}");
    assert!(
        kept.starts_with(&once) && kept != format!("{once}{once}"),
        "{kept:?}"
    );
}

#[test]
fn ppl_prints_perplexity_and_speed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "Hello world, the tiny model reads this text. ".repeat(40),
    )
    .unwrap();
    let (ok, stdout, stderr) = frugal(
        &model,
        &["ppl", text.to_str().unwrap(), "--context", "128"],
        "",
    );
    assert!(ok, "{stderr}");
    let ppl: f64 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    // A random model over a ~300-token vocabulary: finite and not better than a perfect model.
    assert!(ppl.is_finite() && ppl > 1.0, "{stdout}");
    assert!(stdout.contains("tokens/s"), "{stdout}");
}

#[test]
fn bench_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let json = dir.path().join("b.json");
    let (ok, _, stderr) = frugal(
        &model,
        &[
            "bench",
            "--prefill",
            "64,128",
            "--decode-depth",
            "32",
            "--decode-tokens",
            "8",
            "--repeats",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["prefill_tok_s"]["128"].as_f64().unwrap() > 0.0);
    assert!(report["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(
        report["peak_rss_bytes"].as_u64().unwrap()
            > report["rss_after_load_bytes"].as_u64().unwrap() / 2
    );
    assert_eq!(report["decode_tokens"], 8);
    // Over the context window (512 for the tiny model): refused before any work.
    let (ok, _, stderr) = frugal(&model, &["bench", "--prefill", "1000"], "");
    assert!(!ok && stderr.contains("context window of 512"), "{stderr}");
}
