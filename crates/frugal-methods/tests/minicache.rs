//! MiniCache, mean-merge and KIVI on the tiny random llama: exactness with every token retained,
//! decode = prefill, composition with KIVI, and that the defaults really compress.

mod common;
use common::max_diff;

/// Logits of every position of 300 tokens: prefill of `split` tokens, then one token at a time;
/// and the bytes held at the end.
fn run(spec: &str, split: usize) -> (Vec<Vec<f32>>, usize) {
    common::run(spec, &common::ids(300), split)
}

#[test]
fn retaining_every_token_reproduces_full_attention() {
    let (dense, _) = run("full", 300);
    // (With kivi underneath, the unmerged layers are quantised, so only the f32 format is exact.)
    for spec in [
        "minicache:gamma=1",
        "minicache:gamma=1,start=0",
        "minicache:gamma=1,t=0.3",
    ] {
        for split in [300, 150, 0] {
            let (rows, _) = run(spec, split);
            let diff = max_diff(&dense, &rows);
            assert!(diff < 1e-4, "{spec} split {split}: max |Δlogit| = {diff}");
        }
    }
}

#[test]
fn decode_token_by_token_equals_prefill() {
    // Exact settings: every path (pending rows, patches, merged tails) must agree between one
    // prefill and token-by-token decode.
    for spec in [
        "minicache:gamma=1",
        "kivi:residual=1048576,fp=32",
        "mean-merge:start=1048576",
    ] {
        let (prefill, _) = run(spec, 300);
        let (decode, _) = run(spec, 0);
        let diff = max_diff(&prefill, &decode);
        assert!(diff < 1e-4, "{spec}: max |Δlogit| = {diff}");
    }
}

#[test]
fn defaults_compress_and_change_the_output() {
    let (dense, full_bytes) = run("full", 200);
    let mut seen = Vec::new();
    for spec in [
        "minicache",
        "mean-merge",
        "kivi:bits=4",
        "minicache+kivi:bits=4",
        "minicache:gamma=0",
        "minicache:gamma=0.5",
    ] {
        let (rows, bytes) = run(spec, 200);
        assert!(rows.iter().flatten().all(|x| x.is_finite()), "{spec}");
        // Retaining half the tokens (gamma=0.5) keeps two originals beside the shared row.
        assert!(
            spec.ends_with("0.5") || bytes < full_bytes,
            "{spec}: {bytes} >= {full_bytes}"
        );
        assert!(
            max_diff(&dense, &rows) > 1e-5,
            "{spec} must change the logits"
        );
        seen.push((spec, bytes));
    }
    // Retaining more tokens costs bytes; quantising the merged directions saves them.
    let b = |s: &str| seen.iter().find(|x| x.0 == s).unwrap().1;
    assert!(b("minicache:gamma=0") < b("minicache") && b("minicache") < b("minicache:gamma=0.5"));
    assert!(b("minicache+kivi:bits=4") < b("kivi:bits=4"));
}

#[test]
fn byte_accounting_matches_the_layout() {
    // Tiny model: 3 layers, 2 KV heads, head_dim 16; mean-merge from layer 1 pairs (1, 2):
    // layer 0 full (f32 K+V), pair (1, 2) one mean row per K and V; positions are one run
    // (8 bytes) per head of layer 0 and per head of the pair.
    let (_, bytes) = run("mean-merge", 300);
    assert_eq!(bytes, 300 * 2 * (2 * 16 * 4 + 2 * 16 * 4) + 2 * 8 + 2 * 8);
    // KIVI-4 with group 8 and residual 16 on 300 tokens: 280 quantised rows (35 blocks) and 20
    // f16 rows per (layer, head) and K|V; K has one f16 (scale, min) per channel per block, V
    // one per 8 channels per token.
    let (_, bytes) = run("kivi:bits=4,group=8,residual=16", 300);
    let codes = 35 * (8 * 16 / 2);
    let k = codes + 35 * 16 * 4 + 20 * 16 * 2;
    let v = codes + 35 * 8 * 2 * 4 + 20 * 16 * 2;
    assert_eq!(bytes, 3 * 2 * (k + v + 8));
}

#[test]
fn sliding_window_layers_free_what_they_pass_and_stay_exact() {
    // The tiny Gemma 3: layers 0 and 1 slide over a 16-token window, layer 2 is global. Start 0
    // pairs the two sliding layers; the default start 1 pairs a sliding layer with the global
    // one and leaves the sliding layer 0 alone. Forgetting must not change a logit.
    use frugal_engine::cache::FORGET_SLACK;
    use frugal_engine::testing::TINY_WINDOW;
    let ids = common::ids(300);
    let (dense, _) = common::run_on("gemma3", "full", &ids, 300);
    for spec in [
        "minicache:gamma=1",
        "minicache:gamma=1,start=0",
        "mean-merge:start=1048576",
    ] {
        for split in [300, 150, 0] {
            let (rows, _) = common::run_on("gemma3", spec, &ids, split);
            let diff = max_diff(&dense, &rows);
            assert!(diff < 1e-4, "{spec} split {split}: max |Δlogit| = {diff}");
        }
    }
    // Mean-merge of the two sliding layers: the shared rows go once both have passed them, so
    // the pair holds at most a window plus the slack; the global layer 2 holds all 300.
    let row = 2 * 16 * 4;
    for split in [300, 0] {
        let (_, bytes) = common::run_on("gemma3", "mean-merge:start=0", &ids, split);
        let bound = 2 * (300 * row + 8) + 2 * ((TINY_WINDOW + FORGET_SLACK) * row + 8);
        assert!(bytes <= bound, "split {split}: {bytes} > {bound}");
    }
}
