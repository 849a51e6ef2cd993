//! OmniSparse-specific checks (docs/methods/omnisparse.md): τ=1 with every query kept is the dense path; the
//! sparse path really skips keys and queries; decode slimming really frees the span's KV.

use candle_core::quantized::GgmlDType;
use frugal_engine::attention::{AttentionPlan, AttentionPolicy, Findings, StepContext};
use frugal_engine::model::llama::{LlamaConfig, LogitRows};
use frugal_engine::structure::{TokenKind, TokenStructure};
use frugal_engine::testing::tiny_model;
use frugal_methods::build;
use frugal_numerics::attention::{AttentionShape, KeyMask, KvSlices};
use frugal_numerics::sparse_attention::{BlockPlan, KeySet, LazyFill, SparsePlan};
use std::sync::{Arc, Mutex};

mod common;
use common::{decode_each, ids, max_diff};

/// Logits of one prefill of `ids`, with the attention policy's report (which `common::run`
/// does not return).
fn prefill(spec: &str, ids: &[u32]) -> (Vec<Vec<f32>>, Option<String>) {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let mut seq = build(&spec.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    let rows = lm
        .model
        .forward(ids, &mut seq, LogitRows::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (rows, seq.report())
}

/// What a policy's planner emitted in one attention step.
#[derive(Clone, Debug, PartialEq)]
enum Emitted {
    /// The dense kernel, every causal path.
    Dense,
    /// The dense kernel under a mask.
    Masked,
    /// The sparse kernel: per query block, per KV head, `None` for [`KeySet::All`] or the
    /// number of listed rows.
    Sparse(Vec<Vec<Option<usize>>>),
    BlockWindow,
}

/// Wraps a built attention policy: records what its planner emits in every step and, with
/// `force_lists`, runs every prefill step through the sparse kernel with every row listed
/// explicitly (a dense plan becomes one full index list per (query block, KV head); a sparse
/// plan's `All` sets become full lists), so the sparse kernel's gather path carries the whole
/// forward pass.
struct Recording {
    inner: Box<dyn AttentionPolicy>,
    force_lists: bool,
    emitted: Arc<Mutex<Vec<(usize, Emitted)>>>,
}

fn full_lists(kv: &[KvSlices<'_>]) -> Vec<KeySet> {
    kv.iter()
        .map(|h| KeySet::Rows((0..h.positions.len() as u32).collect()))
        .collect()
}

impl AttentionPolicy for Recording {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn mask<'a>(&'a self, ctx: &StepContext<'a>) -> Option<Box<dyn KeyMask + 'a>> {
        self.inner.mask(ctx)
    }
    fn plan<'a>(
        &'a mut self,
        ctx: &StepContext<'a>,
        q: &[f32],
        positions: &[u32],
        shape: AttentionShape,
        kv: &[KvSlices<'_>],
    ) -> AttentionPlan<'a> {
        let plan = self.inner.plan(ctx, q, positions, shape, kv);
        let what = match &plan {
            AttentionPlan::Mask(None) => Emitted::Dense,
            AttentionPlan::Mask(Some(_)) => Emitted::Masked,
            AttentionPlan::Sparse(p) => Emitted::Sparse(
                p.blocks
                    .iter()
                    .map(|b| {
                        b.keys
                            .iter()
                            .map(|k| match k {
                                KeySet::All => None,
                                KeySet::Rows(r) => Some(r.len()),
                            })
                            .collect()
                    })
                    .collect(),
            ),
            AttentionPlan::BlockWindow { .. } => Emitted::BlockWindow,
        };
        self.emitted.lock().unwrap().push((ctx.layer, what));
        if !self.force_lists || positions.len() < 2 {
            return plan;
        }
        match plan {
            AttentionPlan::Mask(None) => AttentionPlan::Sparse(SparsePlan {
                block: 64,
                blocks: (0..positions.len().div_ceil(64))
                    .map(|_| BlockPlan {
                        keys: full_lists(kv),
                        computed: None,
                    })
                    .collect(),
                fill: LazyFill::Copy,
            }),
            AttentionPlan::Sparse(mut p) => {
                for b in &mut p.blocks {
                    for (g, k) in b.keys.iter_mut().enumerate() {
                        if *k == KeySet::All {
                            *k = full_lists(&kv[g..g + 1]).remove(0);
                        }
                    }
                }
                AttentionPlan::Sparse(p)
            }
            other => other,
        }
    }
    fn report(&self) -> Option<String> {
        self.inner.report()
    }
    fn computed_rows(&self, ctx: &StepContext<'_>, positions: &[u32]) -> Option<Vec<bool>> {
        self.inner.computed_rows(ctx, positions)
    }
    fn take_findings(&mut self) -> Option<Findings> {
        self.inner.take_findings()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

/// Logits of one prefill of `ids` under `spec` with its attention policy wrapped in
/// [`Recording`]; the report and what the planner emitted per step.
fn prefill_recorded(
    spec: &str,
    ids: &[u32],
    force_lists: bool,
) -> (Vec<Vec<f32>>, serde_json::Value, Vec<(usize, Emitted)>) {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let seq = build(&spec.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    let emitted = Arc::new(Mutex::new(Vec::new()));
    let rec = Recording {
        inner: seq.attention,
        force_lists,
        emitted: emitted.clone(),
    };
    let mut seq = frugal_engine::sequence::Sequence::new(seq.cache, Box::new(rec));
    let rows = lm
        .model
        .forward(ids, &mut seq, LogitRows::All)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let report = report_json(seq.report());
    let emitted = emitted.lock().unwrap().clone();
    (rows, report, emitted)
}

/// Every layer of `report` ran the planner (probe + selection) on at least one query block, and
/// the selection kept every visible key.
fn planned_every_key(report: &serde_json::Value) {
    for l in report["layers"].as_array().unwrap() {
        assert!(
            l["blocks"].as_u64().unwrap() > 0,
            "layer not planned: {report}"
        );
        assert_eq!(
            l["mean_selected_per_head"], l["mean_visible_per_head"],
            "{report}"
        );
    }
    assert_eq!(
        report["key_kept_fraction"].as_f64().unwrap(),
        1.0,
        "{report}"
    );
}

#[test]
fn tau_one_and_every_query_is_dense_bit_for_bit() {
    let ids = ids(300);
    let (dense, _) = prefill("full", &ids);
    // τ=1 with every query computed is the dense kernel itself (the planner is skipped).
    let (omni, _) = prefill("omnisparse:tau=1,lazy=none", &ids);
    assert_eq!(dense, omni);
    // A budget that covers every key (but is not the keep-everything setting, which skips the
    // planner) goes through the sparse planner: every layer probes and selects, the selection
    // holds every visible key, the planner turns that into the dense plan, and the logits are
    // dense bit for bit.
    let (uni, report, emitted) = prefill_recorded("uniform-budget:keys=100000", &ids, false);
    planned_every_key(&report);
    assert!(!emitted.is_empty() && emitted.iter().all(|(_, e)| *e == Emitted::Dense));
    assert_eq!(dense, uni);
}

/// The sparse kernel over full index lists carries the whole forward pass: every prefill step
/// of the planner above is run by the sparse kernel with every row gathered explicitly, and the
/// logits equal dense to f32 rounding. The sparse kernel then does the dense kernel's GEMMs on
/// gathered copies of the same rows in the same query blocks (64), so the attention outputs agree
/// to a few ulp (the harness bounds the kernel by its f32 error bound); three layers of the tiny
/// model carry that into logits of magnitude ~10 at ~1e-6, and 1e-4 is the bound the other
/// exact-setting tests of this crate use for logits.
#[test]
fn full_index_lists_through_the_sparse_kernel_equal_dense() {
    let ids = ids(300);
    let (dense, _) = prefill("full", &ids);
    let (forced, report, emitted) = prefill_recorded("uniform-budget:keys=100000", &ids, true);
    planned_every_key(&report);
    assert!(emitted.iter().all(|(_, e)| *e == Emitted::Dense));
    let d = max_diff(&dense, &forced);
    assert!(
        d < 1e-4,
        "full lists through the sparse kernel: max |Δlogit| = {d}"
    );
}

#[test]
fn sparse_path_skips_keys_and_queries_and_stays_close() {
    let ids = ids(400);
    let (dense, _) = prefill("full", &ids);
    // Every query of a block probes (probe=64), so recall τ holds on average over its rows.
    let (near, report) = prefill(
        "omnisparse:tau=0.999,lazy=none,window=16,sink=1,probe=64",
        &ids,
    );
    let report = report.unwrap();
    assert!(!report.contains("\"key_kept_fraction\":1.0000"), "{report}");
    let (far, _) = prefill("topk:ratio=0.05,window=16,sink=1,probe=64", &ids);
    let (d_near, d_far) = (max_diff(&dense, &near), max_diff(&dense, &far));
    assert!(
        d_near > 0.0 && d_near < d_far,
        "τ=0.999 ({d_near}) must be closer to dense than 5% of keys ({d_far})"
    );
    // Every query scoring chunk means of 8 keys: also sparse, also closer than 5 % of keys.
    let (chunked, report) = prefill(
        "omnisparse:tau=0.95,lazy=none,window=16,sink=1,chunk=8",
        &ids,
    );
    assert!(!report.unwrap().contains("\"key_kept_fraction\":1.0000"));
    let d_chunk = max_diff(&dense, &chunked);
    assert!(
        d_chunk > 0.0 && d_chunk < d_far,
        "chunk=8: {d_chunk} vs 5% of keys {d_far}"
    );
    // chunk_mix=1 weighs the probes alone: the probe path's plan, bit for bit.
    let probe_only = "omnisparse:tau=0.9,lazy=none,window=16,sink=1";
    let (mixed, _) = prefill(&format!("{probe_only},chunk=8,chunk_mix=1"), &ids);
    assert_eq!(prefill(probe_only, &ids).0, mixed);
    // Lazy queries: θ=-1 makes every query lazy; keep_every=4 computes ~1/4 (+ block starts).
    let (_, report) = prefill(
        "omnisparse:tau=1,lazy=cos,theta=-1,keep_every=4,tail=0",
        &ids,
    );
    let report = report.unwrap();
    let kept: f64 = report
        .split("\"query_kept_fraction\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept > 0.2 && kept < 0.35, "{report}");
    let (top, _) = prefill("topk:ratio=0.2,window=8", &ids);
    assert!(top.iter().flatten().all(|x| x.is_finite()));
}

/// What a decode-slimming test sees of one run of `spec` on the tiny model: 250 prompt tokens
/// (10 prefix, 200 context = the slimmable span, 40 question) in one prefill, then 10 decode
/// steps. Returns the decode steps' logits, the bytes held after the prefill and at the end,
/// and the policy's report.
struct SlimRun {
    decoded: Vec<Vec<f32>>,
    after_prefill: usize,
    end: usize,
    report: String,
}

/// The tiny model's config, the bytes one stored row costs (f32 K and V plus its position),
/// and the number of (layer, KV head) stores.
fn store_geometry() -> (LlamaConfig, usize, usize) {
    let cfg = tiny_model(GgmlDType::F32, 5)
        .unwrap()
        .model
        .config()
        .clone();
    let per_row = 2 * cfg.head_dim * 4 + 4;
    let heads = cfg.n_layers * cfg.n_kv_heads;
    (cfg, per_row, heads)
}

/// One [`SlimRun`] of `spec`.
fn slim_run(spec: &str) -> SlimRun {
    let lm = tiny_model(GgmlDType::F32, 5).unwrap();
    let ids = ids(260);
    let mut seq = build(&spec.parse().unwrap(), lm.model.config().kv_layout()).unwrap();
    let mut s = TokenStructure::default();
    s.push(TokenKind::Prefix, 0, 10);
    s.push(TokenKind::Context, 0, 200);
    s.push(TokenKind::Question, 0, 40);
    seq.structure = Some(Arc::new(s));
    lm.model
        .forward(&ids[..250], &mut seq, LogitRows::Last)
        .unwrap();
    let after_prefill = seq.cache.resident_bytes();
    let decoded = decode_each(&lm, &mut seq, &ids[250..]);
    SlimRun {
        decoded,
        after_prefill,
        end: seq.cache.resident_bytes(),
        report: seq.report().unwrap(),
    }
}

#[test]
fn decode_slimming_frees_the_span_of_quiet_heads() {
    let (_, per_row, heads) = store_geometry();
    let run = |spec: &str| {
        let r = slim_run(spec);
        (r.after_prefill, r.end, r.report)
    };
    // eps = 1: every head's span mass is below 1, so every head drops the 200 context rows.
    let (full, end, report) = run("omnisparse:tau=1,lazy=none,eps=1,recheck=3,span_recent=0");
    assert_eq!(full, 250 * heads * per_row);
    assert_eq!(end, (260 - 200) * heads * per_row, "{report}");
    assert!(report.contains(&format!("\"slimmed_heads\":{heads}")));
    // span_recent=64: the context rows among the prefill's last 64 positions (186..210)
    // stay for every head, so 176 of the 200 context rows are freed.
    let (_, end, report) = run("omnisparse:tau=1,lazy=none,eps=1,recheck=3,span_recent=64");
    assert_eq!(end, (260 - 176) * heads * per_row, "{report}");
    // eps = 0: nothing is dropped.
    let (_, end, _) = run("omnisparse:tau=1,lazy=none,eps=0");
    assert_eq!(end, 260 * heads * per_row);
}

fn report_json(report: Option<String>) -> serde_json::Value {
    serde_json::from_str(&report.expect("omnisparse reports")).expect("report is JSON")
}

/// When every query of a planning group is a probe, the recall rule is a guarantee on the
/// group's true attention: averaged over its (query, query head) rows, the kept keys hold at
/// least τ of the dense mass (sum aggregation; B ≥ every head's k_g). The audit measures that
/// mass with an independent dense pass, so a probe/kernel mismatch (positions, causality, the
/// final short block, the shared-group path) fails here.
#[test]
fn every_query_probing_keeps_recall_tau_on_average() {
    let ids = ids(400);
    for (spec, tau) in [
        (
            "omnisparse:tau=0.9,lazy=none,probe=64,audit=1,tail=0,window=16,sink=1",
            0.9,
        ),
        (
            "omnisparse:tau=0.8,lazy=none,probe=192,share=3,audit=1,tail=0,window=8,sink=1",
            0.8,
        ),
    ] {
        let r = report_json(prefill(spec, &ids).1);
        let mut audited = 0;
        for l in r["layers"].as_array().unwrap() {
            if l["blocks"].as_u64().unwrap() == 0 {
                continue;
            }
            audited += 1;
            let mean = l["recall_mean"].as_f64().unwrap();
            assert!(
                mean >= tau - 1e-4,
                "{spec}: layer {l} recall {mean} < {tau}"
            );
            assert!(l["recall_min"].as_f64().unwrap() <= mean);
        }
        assert!(audited > 0, "{spec}: nothing was sparse: {r}");
        assert!(
            r["key_kept_fraction"].as_f64().unwrap() < 1.0,
            "{spec}: {r}"
        );
    }
    // The same recall target probed by 2 queries per block holds only for the probes: the
    // audit still runs and reports a recall no larger than 1 (a sanity bound, not a target).
    let r = report_json(
        prefill(
            "omnisparse:tau=0.9,lazy=none,probe=2,audit=1,tail=0,window=16,sink=1",
            &ids,
        )
        .1,
    );
    for l in r["layers"].as_array().unwrap() {
        if let Some(m) = l["recall_mean"].as_f64() {
            assert!((0.0..=1.0 + 1e-5).contains(&m), "{l}");
        }
    }
}

/// `tail` makes the call's last tokens attend to every key: a tail covering the whole call is
/// the dense path bit for bit even with an aggressive budget and lazy queries, and with the
/// default tail the last token's block is never audited (it is not sparse).
#[test]
fn tail_blocks_are_dense() {
    let ids = ids(300);
    let (dense, _) = prefill("full", &ids);
    let aggressive = "omnisparse:tau=0.5,lazy=cos,theta=-1,window=8,sink=1";
    let (covered, _) = prefill(&format!("{aggressive},tail=300"), &ids);
    assert_eq!(dense, covered);
    let (sparse, _) = prefill(&format!("{aggressive},tail=0"), &ids);
    assert_ne!(dense, sparse);
    let last_audited = |tail: usize| {
        let r = report_json(prefill(&format!("{aggressive},tail={tail},audit=1"), &ids).1);
        r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["last_token_recall_min"].is_number())
    };
    assert!(last_audited(0));
    assert!(!last_audited(64));
}

/// A probe shared over several blocks still plans every block: a budget that keeps every key
/// goes through the planner (every layer probes and selects, the selection holds every key) and
/// gives dense logits, also when the sparse kernel runs the planned steps over full index
/// lists; a small budget gives index lists to every block of a planning group that has
/// candidates, not only to the block the probe came from.
#[test]
fn shared_probe_plans_every_block() {
    let ids = ids(400);
    let (dense, _) = prefill("full", &ids);
    // ratio just under 1 (ratio=1 is the keep-everything setting, which skips the planner):
    // ⌈0.99999·n⌉ = n for every n the 400 tokens give.
    let every = "topk:ratio=0.99999,share=4,window=8,sink=1";
    let (top, report, emitted) = prefill_recorded(every, &ids, false);
    planned_every_key(&report);
    assert!(emitted.iter().all(|(_, e)| *e == Emitted::Dense));
    assert_eq!(dense, top);
    let (forced, _, _) = prefill_recorded(every, &ids, true);
    assert!(max_diff(&dense, &forced) < 1e-4);
    let (shared, r, emitted) =
        prefill_recorded("topk:ratio=0.1,share=4,window=8,sink=1,tail=0", &ids, false);
    assert!(r["key_kept_fraction"].as_f64().unwrap() < 0.9, "{r}");
    // 400 tokens = 7 blocks of 64 in planning groups of 4: blocks 0..3 (positions 0..255) have
    // no candidate before their window and stay `All`; blocks 4, 5 and 6 share one probe and
    // each gets its own index lists.
    let n_layers = r["layers"].as_array().unwrap().len();
    assert_eq!(emitted.len(), n_layers);
    for (layer, e) in &emitted {
        let Emitted::Sparse(blocks) = e else {
            panic!("layer {layer}: the planner emitted {e:?}, not index lists");
        };
        assert_eq!(blocks.len(), 7, "layer {layer}");
        for (b, heads) in blocks.iter().enumerate() {
            for h in heads {
                match b {
                    0..=3 => assert_eq!(*h, None, "layer {layer} block {b}"),
                    _ => assert!(h.is_some_and(|n| n > 0), "layer {layer} block {b}: {h:?}"),
                }
            }
        }
    }
    assert!(max_diff(&dense, &shared) > 0.0);
    assert!(shared.iter().flatten().all(|x| x.is_finite()));
}

/// Token-level decode slimming: after the prefill each KV head keeps only the span rows its
/// recall needs; every row outside the span stays; the bytes freed are the rows the report
/// says were dropped; a higher recall keeps more and stays closer to dense; the shared
/// (flattest-head) count keeps at least as much as each head's own, the mean count as much.
#[test]
fn token_slimming_keeps_recall_rows_and_frees_the_rest() {
    let (cfg, per_row, heads) = store_geometry();
    let run = |spec: &str| {
        let r = slim_run(spec);
        (r.decoded, r.end, report_json(Some(r.report)))
    };
    let (dense, full_bytes, _) = run("omnisparse:tau=1,eps=0");
    assert_eq!(full_bytes, 260 * heads * per_row);
    let slim = |tau: f64, budget: &str| {
        run(&format!(
            "omnisparse:tau=1,eps=0,span_recent=0,slim_tau={tau},slim_budget={budget}"
        ))
    };
    let mut last_bytes = 0;
    let mut last_diff = f32::INFINITY;
    for tau in [0.3, 0.7, 0.999] {
        let (rows, bytes, r) = slim(tau, "own");
        // Rebuild the kept row count from the per-layer fractions of the 200 span rows.
        let kept_span: usize = r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let span_rows = (200 * cfg.n_kv_heads) as f64;
                (l["slim_span_kept"].as_f64().unwrap() * span_rows).round() as usize
            })
            .sum();
        assert_eq!(bytes, (60 * heads + kept_span) * per_row, "τ={tau}: {r}");
        assert!(bytes < full_bytes && bytes > last_bytes, "τ={tau}: {bytes}");
        let d = max_diff(&dense, &rows);
        assert!(
            d < last_diff,
            "τ={tau}: {d} not closer to dense than {last_diff}"
        );
        last_bytes = bytes;
        last_diff = d;
        let (_, shared_bytes, _) = slim(tau, "shared");
        assert!(
            shared_bytes >= bytes,
            "τ={tau}: shared {shared_bytes} < own {bytes}"
        );
        // The mean budget spreads the same rows evenly: per layer it rounds the mean count.
        let (_, mean_bytes, _) = slim(tau, "mean");
        let slack = (heads / 2 * per_row) as i64;
        assert!(
            (mean_bytes as i64 - bytes as i64).abs() <= slack,
            "τ={tau}: mean {mean_bytes} vs own {bytes}"
        );
    }
}
