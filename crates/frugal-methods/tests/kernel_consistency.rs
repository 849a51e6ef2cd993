//! The kernel-consistency harness (`frugal_numerics::consistency`) over the attention paths
//! that live in this crate's caches: KIVI's dequantised reads and MiniCache's restored rows
//! (magnitude × shared direction read inside the score, retained rows as patches, layer a's
//! pending rows in the decode flow), each run through the engine's attention step on the
//! harness's grid and compared with the one naive f64 reference.
//!
//! These caches store every KV head's tokens together (one `store` per layer), so a head cannot
//! drop a token another head keeps: the grid's hole patterns do not apply and only its
//! hole-free cases run (prefill, chunked prefill, decode × shapes × GQA ratios).

use frugal_engine::attention::{attention_step, Dense, StepContext};
use frugal_engine::cache::{KvDtype, KvLayout};
use frugal_engine::sequence::Sequence;
use frugal_methods::build;
use frugal_numerics::consistency::{
    self, check_all, format_report, values, Case, Holes, KernelPath, RefHead, Reference,
};

/// The case's K/V of KV heads `0..n_kv` for positions `a..b` (token-major `[T, n_kv, d]`);
/// `layer` 1 gets rows near layer 0's (so MiniCache's merge is realistic: most directions close,
/// a few far apart), layer 0 the case's own.
fn token_major(c: &Case, layer: usize, a: usize, b: usize) -> (Vec<f32>, Vec<f32>) {
    let d = c.shape.head_dim;
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for p in a..b {
        for (g, h) in c.heads.iter().enumerate() {
            let row = |x: &[f32], salt: u64| -> Vec<f32> {
                let r = &x[p * d..(p + 1) * d];
                if layer == 0 {
                    return r.to_vec();
                }
                let noise = values(d, c.spec.seed * 1000 + salt + (p * 8 + g) as u64);
                let w = if p % 5 == 0 { 2.0 } else { 0.3 };
                r.iter().zip(noise).map(|(x, n)| x + w * n).collect()
            };
            k.extend(row(&h.keys, 1));
            v.extend(row(&h.values, 2));
        }
    }
    (k, v)
}

/// Where the store stops before attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// Layer `l` after both layers stored this call's tokens.
    Layer(usize),
    /// Layer 0 after it stored this call's tokens but before layer 1 did (MiniCache's pending
    /// rows: layer 0 reads its own exact new K/V).
    Pending,
}

/// A cache built from `spec` over 2 layers, fed the case's tokens as the engine feeds them (the
/// past in one call, this call's tokens in the next; layer 0 then layer 1), read at `read`.
struct CachePath {
    spec: String,
    read: Read,
    /// Compare with the case's original rows instead of the view's (exact settings only).
    against_originals: bool,
}

impl CachePath {
    fn sequence(&self, c: &Case) -> Sequence {
        let layout = KvLayout {
            n_layers: 2,
            n_kv_heads: c.shape.n_kv_heads,
            head_dim: c.shape.head_dim,
            // The exact store: unquantised rows follow it, so the exact settings can be
            // compared with the originals.
            dtype: KvDtype::F32,
        };
        let mut seq = build(&self.spec.parse().unwrap(), layout).unwrap();
        let (past, n) = (c.spec.past, c.spec.past + c.spec.t);
        let calls: Vec<(usize, usize)> = [(0, past), (past, n)]
            .into_iter()
            .filter(|(a, b)| a < b)
            .collect();
        for (i, &(a, b)) in calls.iter().enumerate() {
            let positions: Vec<u32> = (a as u32..b as u32).collect();
            for layer in 0..2 {
                if layer == 1 && self.read == Read::Pending && i + 1 == calls.len() {
                    break;
                }
                let (k, v) = token_major(c, layer, a, b);
                seq.cache.store(layer, &positions, &k, &v);
            }
        }
        seq
    }

    fn layer(&self) -> usize {
        match self.read {
            Read::Layer(l) => l,
            Read::Pending => 0,
        }
    }
}

impl KernelPath for CachePath {
    fn name(&self) -> String {
        let read = match self.read {
            Read::Layer(l) => format!("layer {l}"),
            Read::Pending => "layer 0 pending".into(),
        };
        let vs = if self.against_originals {
            " vs originals"
        } else {
            ""
        };
        format!("{} {read}{vs}", self.spec)
    }
    fn applies(&self, c: &Case) -> bool {
        c.spec.holes == Holes::None
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let seq = self.sequence(c);
        let ctx = StepContext {
            layer: self.layer(),
            n_layers: 2,
            structure: None,
            window: None,
            sequences_in_step: 1,
        };
        // The step takes the cache mutably (it may hand it the attention's findings); dense
        // attention finds nothing, so repeated calls read the same store.
        let seq = std::cell::RefCell::new(seq);
        Box::new(move || {
            let mut seq = seq.borrow_mut();
            attention_step(
                &ctx,
                &c.q,
                &c.q_positions,
                c.shape,
                &mut *seq.cache,
                &mut Dense,
            )
        })
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        let d = c.shape.head_dim;
        let heads = if self.against_originals {
            let n = c.spec.past + c.spec.t;
            let (k, v) = token_major(c, self.layer(), 0, n);
            let g_rows = |x: &[f32], g: usize| -> Vec<f32> {
                (0..n)
                    .flat_map(|p| x[(p * c.shape.n_kv_heads + g) * d..][..d].to_vec())
                    .collect()
            };
            (0..c.shape.n_kv_heads)
                .map(|g| RefHead::plain(&g_rows(&k, g), &g_rows(&v, g), &c.heads[g].positions))
                .collect()
        } else {
            let seq = self.sequence(c);
            (0..c.shape.n_kv_heads)
                .map(|g| RefHead::from_slices(&seq.cache.view(self.layer(), g).slices(), d))
                .collect()
        };
        Reference {
            heads,
            ..Reference::of_case(c)
        }
    }
}

fn cache_paths() -> Vec<Box<dyn KernelPath>> {
    let mut out: Vec<Box<dyn KernelPath>> = Vec::new();
    let path = |spec: &str, read, against_originals| -> Box<dyn KernelPath> {
        Box::new(CachePath {
            spec: spec.into(),
            read,
            against_originals,
        })
    };
    // KIVI: quantised rows dequantised into the view, recent rows in f32 or f16.
    for spec in [
        "kivi:bits=2,group=8,residual=16,fp=32",
        "kivi:bits=4,group=32,residual=40,fp=16",
    ] {
        out.push(path(spec, Read::Layer(0), false));
    }
    // Full precision KIVI is the plain store: its reads are the originals.
    out.push(path("kivi:residual=1048576,fp=32", Read::Layer(0), true));
    // MiniCache: both layers of the pair, the pending decode read, over f32 or KIVI rows.
    for spec in [
        "minicache:start=0",
        "minicache:start=0,gamma=0.3,t=0.3",
        "minicache:start=0+kivi:bits=4,group=8,residual=16",
        "mean-merge:start=0",
    ] {
        for read in [Read::Layer(0), Read::Layer(1), Read::Pending] {
            out.push(path(spec, read, false));
        }
    }
    // Every token retained: the restored rows are the originals exactly.
    for read in [Read::Layer(0), Read::Layer(1), Read::Pending] {
        out.push(path("minicache:start=0,gamma=1", read, true));
    }
    out
}

#[test]
fn cache_reads_match_the_naive_reference_on_the_grid() {
    let paths = cache_paths();
    let rows = check_all(&paths, &consistency::ci_grid());
    let report = format_report(&rows);
    println!("{report}");
    let failed = rows.iter().filter(|r| !r.pass).count();
    assert_eq!(failed, 0, "{failed} failures:\n{report}");
    for p in &paths {
        assert!(
            rows.iter().filter(|r| r.path == p.name()).count() >= 18,
            "{} ran on too few cases",
            p.name()
        );
    }
}

/// The dequantised read itself: every row KIVI hands attention is its original within half a
/// quantisation step of its group (keys: a channel over a block of `group` tokens; values:
/// `group` channels of a token), and the recent rows are the originals exactly (`fp=32`).
/// The step is `(hi − lo)/(2^bits − 1)` of the group's range; the bound allows 1 % on it for the
/// f16 scale rounded up, and `2⁻¹⁰·max(|lo|, |hi|)` for the f16 minimum.
#[test]
fn kivi_reads_are_within_half_a_step_of_the_originals() {
    let (bits, group, residual) = (2u32, 8usize, 16usize);
    let spec = format!("kivi:bits={bits},group={group},residual={residual},fp=32");
    for cs in consistency::ci_grid()
        .into_iter()
        .filter(|s| s.holes == Holes::None)
    {
        let c = Case::new(cs);
        let d = c.shape.head_dim;
        let n = cs.past + cs.t;
        let path = CachePath {
            spec: spec.clone(),
            read: Read::Layer(0),
            against_originals: false,
        };
        let seq = path.sequence(&c);
        let quantised = if n >= residual + group {
            (n - residual) / group * group
        } else {
            0
        };
        let levels = ((1u32 << bits) - 1) as f32;
        for (g, h) in c.heads.iter().enumerate() {
            let view = seq.cache.view(0, g);
            let (keys, vals) = (&view.keys[..], &view.values[..]);
            assert_eq!(keys.len(), n * d);
            assert_eq!(
                &keys[quantised * d..],
                &h.keys[quantised * d..],
                "recent keys exact"
            );
            assert_eq!(
                &vals[quantised * d..],
                &h.values[quantised * d..],
                "recent values exact"
            );
            let check = |got: &[f32], orig: &[f32], idx: &[usize], what: &str| {
                let (lo, hi) = idx
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &i| {
                        (a.min(orig[i]), b.max(orig[i]))
                    });
                let bound = 0.5 * (hi - lo) / levels * 1.01 + lo.abs().max(hi.abs()) / 1024.0;
                for &i in idx {
                    let e = (got[i] - orig[i]).abs();
                    assert!(
                        e <= bound,
                        "{}: {what} element {i}: |Δ| {e} > {bound}",
                        cs.label()
                    );
                }
            };
            for b in (0..quantised).step_by(group) {
                for ch in 0..d {
                    let idx: Vec<usize> = (b..b + group).map(|r| r * d + ch).collect();
                    check(keys, &h.keys, &idx, "key");
                }
                for r in b..b + group {
                    for c0 in (0..d).step_by(group) {
                        let idx: Vec<usize> =
                            (c0..(c0 + group).min(d)).map(|ch| r * d + ch).collect();
                        check(vals, &h.values, &idx, "value");
                    }
                }
            }
            assert!(quantised == 0 || keys[..quantised * d] != h.keys[..quantised * d]);
        }
    }
}
