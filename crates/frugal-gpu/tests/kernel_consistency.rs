//! The CUDA FPSAttention kernels in the kernel-consistency harness
//! (`frugal_numerics::consistency`): BF16 and FP8, `mma.sync` and wgmma builds, dense causal
//! and causal block-window maps, against the one naive f64 reference. Compiled only with the
//! `cuda` feature; it needs a Hopper GPU and fails (naming the problem) without one.
//!
//! The kernels take `[heads][n][128]` tensors, one KV head per query head and no positions
//! (token `i` is position `i`), so the cases are prefills of head dim 128 without holes; GQA is
//! run by giving each query head its group's K/V. Inputs are rounded to bf16 first (what the
//! kernels read), and the reference reads the same rounded values (quantised to E4M3 the way the
//! FP8 path quantises them, for the FP8 builds).
//!
//! Tolerances, on top of the f32 bound (`consistency::f32_bound`):
//! - BF16: the kernel rounds P to bf16 before the PV product (relative 2⁻⁹ per probability, so
//!   ≤ 2⁻⁹·V on the output) and the output to bf16 (2⁻⁹·|o| ≤ 2⁻⁹·V): `+ 2⁻⁸·V`; relative L2
//!   1e-2 (independent roundings average down to ~3e-3).
//! - FP8: P quantised as in the CPU path (`paths::fp8_p_tolerance`) plus the bf16 output,
//!   `+ 2⁻⁹·V`.
#![cfg(feature = "cuda")]

use cudarc::driver::CudaSlice;
use frugal_gpu::fps::{Fps, Mma, BM, BN, HEAD_DIM};
use frugal_numerics::block_sparse::{BlockMap, Fp8Opts};
use frugal_numerics::consistency::{
    compare, f32_bound, format_report, paths, Case, CaseSpec, Holes, KernelPath, Phase, RefStats,
    Reference, Tolerance,
};
use half::bf16;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    Bf16,
    Bf16Wgmma,
    Fp8(Mma),
}

struct GpuPath {
    fps: Arc<Fps>,
    build: Build,
    /// Key blocks up to the diagonal (0 = dense causal), plus one sink block.
    window: usize,
}

impl GpuPath {
    fn map(&self, c: &Case) -> BlockMap {
        let (h, n) = (c.shape.n_heads, c.q_positions.len());
        if self.window == 0 {
            BlockMap::dense(h, n, BM, BN, true)
        } else {
            BlockMap::causal_window(h, n, BM, BN, self.window, 1)
        }
    }

    fn fp8(&self) -> Option<Fp8Opts> {
        matches!(self.build, Build::Fp8(_)).then(|| Fp8Opts::full(64))
    }

    /// The case's queries and each query head's K/V, as `[heads][n][d]` bf16 bits.
    fn device_layout(c: &Case) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
        let (h, d, n, group) = (
            c.shape.n_heads,
            c.shape.head_dim,
            c.q_positions.len(),
            c.shape.group(),
        );
        let bits = |x: f32| bf16::from_f32(x).to_bits();
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for head in 0..h {
            let kv = &c.heads[head / group];
            for i in 0..n {
                q.extend(c.q[(i * h + head) * d..][..d].iter().map(|&x| bits(x)));
                k.extend(kv.keys[i * d..][..d].iter().map(|&x| bits(x)));
                v.extend(kv.values[i * d..][..d].iter().map(|&x| bits(x)));
            }
        }
        (q, k, v)
    }

    fn run(
        &self,
        c: &Case,
        map: &BlockMap,
        (q, k, v): (&[u16], &[u16], &[u16]),
    ) -> anyhow::Result<Vec<f32>> {
        let fps = &self.fps;
        let (h, n, d) = (c.shape.n_heads, c.q_positions.len(), HEAD_DIM);
        let dm = fps.upload_map(map)?;
        let (dq, dk, dv) = (
            fps.stream.clone_htod(q)?,
            fps.stream.clone_htod(k)?,
            fps.stream.clone_htod(v)?,
        );
        let dummy: CudaSlice<f32> = fps.stream.alloc_zeros(1)?;
        let mut o: CudaSlice<u16> = fps.stream.alloc_zeros(h * n * d)?;
        match self.build {
            Build::Bf16 => fps.attn_bf16(&dq, &dk, &dv, &mut o, &dm, &dummy)?,
            Build::Bf16Wgmma => {
                let mut vt: CudaSlice<u16> = fps.stream.alloc_zeros(h * d * n.div_ceil(BN) * BN)?;
                fps.transpose_v(&dv, &mut vt, h, n)?;
                fps.attn_bf16_wgmma(&dq, &dk, &vt, &mut o, &dm, &dummy)?
            }
            Build::Fp8(mma) => {
                let mut buf = fps.alloc_fp8(h, n)?;
                fps.quantize(&dq, &dk, &dv, &mut buf)?;
                fps.attn_fp8_with(mma, &buf, &mut o, &dm)?
            }
        }
        let out: Vec<u16> = fps.stream.clone_dtoh(&o)?;
        // [heads][n][d] → [n][heads][d]
        let mut res = vec![0f32; h * n * d];
        for head in 0..h {
            for i in 0..n {
                for x in 0..d {
                    res[(i * h + head) * d + x] =
                        bf16::from_bits(out[(head * n + i) * d + x]).to_f32();
                }
            }
        }
        Ok(res)
    }
}

impl KernelPath for GpuPath {
    fn name(&self) -> String {
        let map = if self.window == 0 { "dense" } else { "window" };
        format!("cuda:{:?} {map}", self.build)
    }
    fn applies(&self, c: &Case) -> bool {
        c.shape.head_dim == HEAD_DIM && c.spec.past == 0 && c.spec.holes == Holes::None
    }
    fn kernel<'c>(&'c self, c: &'c Case) -> Box<dyn Fn() -> Vec<f32> + 'c> {
        let map = self.map(c);
        let (q, k, v) = Self::device_layout(c);
        Box::new(move || self.run(c, &map, (&q, &k, &v)).expect("CUDA launch"))
    }
    fn reference<'c>(&'c self, c: &'c Case) -> Reference<'c> {
        let (q, heads) = paths::quantised_inputs(c, self.fp8().as_ref());
        let map = self.map(c);
        Reference {
            q,
            heads,
            visible: Some(Box::new(move |h, i, j| map.allows(h, i, j))),
            ..Reference::of_case(c)
        }
    }
    fn tolerance(&self, c: &Case, stats: &RefStats) -> Tolerance {
        let v = stats.max_abs_value;
        match self.build {
            Build::Fp8(_) => {
                let t = paths::fp8_p_tolerance(c.shape, stats);
                Tolerance {
                    max_abs: t.max_abs + v / 512.0,
                    rel_l2: t.rel_l2,
                }
            }
            _ => Tolerance {
                max_abs: f32_bound(c.shape, stats) + v / 256.0,
                rel_l2: 1e-2,
            },
        }
    }
}

/// Prefills of 256 (whole blocks) and 300 (a partial last block) tokens at head dim 128, GQA
/// ratios 1, 3 and 8.
fn gpu_cases() -> Vec<CaseSpec> {
    let mut out = Vec::new();
    for (n_heads, n_kv_heads) in [(4, 4), (6, 2), (8, 1)] {
        for t in [256, 300] {
            out.push(CaseSpec {
                n_heads,
                n_kv_heads,
                head_dim: HEAD_DIM,
                phase: Phase::Prefill,
                past: 0,
                t,
                holes: Holes::None,
                seed: (n_heads * 1000 + t) as u64,
            });
        }
    }
    out
}

#[test]
fn cuda_kernels_match_the_naive_reference() {
    let fps = Arc::new(Fps::new(0).expect("this test needs a Hopper GPU and its driver"));
    let mut gpu: Vec<Box<dyn KernelPath>> = Vec::new();
    for build in [
        Build::Bf16,
        Build::Bf16Wgmma,
        Build::Fp8(Mma::Sync),
        Build::Fp8(Mma::Wgmma),
        Build::Fp8(Mma::Wgmma1Wg),
    ] {
        for window in [0, 3] {
            gpu.push(Box::new(GpuPath {
                fps: fps.clone(),
                build,
                window,
            }));
        }
    }
    let mut rows = Vec::new();
    for spec in gpu_cases() {
        // The kernels read bf16: round the case's inputs so kernel and reference see the same
        // values.
        let mut c = Case::new(spec);
        let round = |x: &mut Vec<f32>| x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
        round(&mut c.q);
        for h in &mut c.heads {
            round(&mut h.keys);
            round(&mut h.values);
        }
        for p in &gpu {
            if p.applies(&c) {
                rows.push(compare(p.as_ref(), &c));
            }
        }
    }
    let report = format_report(&rows);
    println!("{report}");
    let failed = rows.iter().filter(|r| !r.pass).count();
    assert_eq!(failed, 0, "{failed} failures:\n{report}");
    assert_eq!(rows.len(), gpu.len() * gpu_cases().len());
}
