//! Host side of the FPSAttention kernels: module loading, block-map upload, launches.
//!
//! Tensors live on the device as `[heads][n][128]` row-major (bf16 as `u16` bits). The FP8
//! path first quantises Q/K per 64-token tile, V per channel (transposed, keys permuted inside
//! 16-groups, see the kernel file), then runs the FP8 kernel.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use frugal_numerics::block_sparse::BlockMap;

/// The kernels, compiled by `scripts/cuda/build_kernels.sh` (sm_90a).
pub static CUBIN: &[u8] = include_bytes!("../kernels/out/fps_attn.sm_90a.cubin");

pub const HEAD_DIM: usize = 128;
/// Query rows per CTA.
pub const BM: usize = 128;
/// Keys per block (and the FP8 Q/K scale tile).
pub const BN: usize = 64;
const THREADS: u32 = 256;
const SMEM_BF16: u32 = (BM * 256 + 2 * 2 * BN * 256) as u32; // 96 KB
const SMEM_FP8: u32 = (BM * 128 + 2 * (BN * 128 + HEAD_DIM * BN)) as u32; // 48 KB
/// K + V^T tile of one FP8 key block (8 KB + 8 KB).
const KV_FP8: usize = BN * 128 + HEAD_DIM * BN;
// wgmma kernels align their tiles to 1024 bytes inside the dynamic buffer: +1 KB slack.
/// FP8 wgmma, 2 warpgroups: Q + 3 K/V stages (65 KB).
const SMEM_FP8_WG: u32 = (BM * 128 + 3 * KV_FP8) as u32 + 1024;
/// FP8 wgmma, 1 warpgroup: Q (64 rows) + 2 K/V stages (41 KB, four CTAs per SM).
const SMEM_FP8_1WG: u32 = (64 * 128 + 2 * KV_FP8) as u32 + 1024;
/// FP8 wgmma, pipelined build: Q + 2 K/V stages (49 KB).
const SMEM_FP8_PIPE: u32 = SMEM_FP8 + 1024;
const SMEM_BF16_WG: u32 = (BM * 256 + 2 * (BN * 256 + HEAD_DIM * BN * 2)) as u32 + 1024; // 97 KB

/// Which MMA path a kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mma {
    /// `mma.sync` (Ampere-style; on sm_90 the FP8 form is emulated with FP16 HMMA).
    Sync,
    /// Hopper warpgroup MMA (`wgmma.mma_async`: HGMMA / QGMMA), one CTA per SM.
    Wgmma,
    /// The same kernel built for two CTAs per SM (≤ 128 registers per thread).
    Wgmma2,
    /// FP8 only: wgmma with FlashAttention-3-style intra-warpgroup pipelining (softmax of
    /// block j overlaps the PV GEMM of block j−1), two CTAs per SM.
    WgmmaPipe2,
    /// FP8 only: wgmma, one warpgroup (64 query rows) per CTA, up to four CTAs per SM.
    Wgmma1Wg,
}

pub struct Fps {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    bf16: CudaFunction,
    fp8: CudaFunction,
    bf16_wg: CudaFunction,
    fp8_wg: CudaFunction,
    bf16_wg2: CudaFunction,
    fp8_wg2: CudaFunction,
    fp8_pipe2: CudaFunction,
    fp8_1wg: CudaFunction,
    transpose_v: CudaFunction,
    quant_rows: CudaFunction,
    v_amax: CudaFunction,
    quant_vt: CudaFunction,
}

/// A block map on the device.
pub struct DevMap {
    pub counts: CudaSlice<i32>,
    pub idx: CudaSlice<i32>,
    pub heads: usize,
    pub n: usize,
    pub n_qb: usize,
    pub n_kb: usize,
    pub causal: bool,
}

/// Quantised FP8 operands and their scales.
pub struct Fp8Buffers {
    pub q8: CudaSlice<u8>,
    pub k8: CudaSlice<u8>,
    /// `[heads][128][npad]`, keys permuted inside 16-groups.
    pub vt8: CudaSlice<u8>,
    pub sq: CudaSlice<f32>,
    pub sk: CudaSlice<f32>,
    pub sv: CudaSlice<f32>,
    amax: CudaSlice<i32>,
    pub heads: usize,
    pub n: usize,
    pub npad: usize,
}

impl Fps {
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc panics when libcuda is missing; turn that into an error that names the problem.
        ensure!(unsafe { cudarc::driver::sys::is_culib_present() }, "no NVIDIA driver library (libcuda.so.1) found: this needs a machine with an NVIDIA GPU and driver >= 13.0");
        let ctx =
            CudaContext::new(ordinal).context("CUDA context (is an NVIDIA driver present?)")?;
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(Ptx::from_binary(CUBIN.to_vec()))
            .context("loading the sm_90a cubin (needs a Hopper GPU)")?;
        let f = |name: &str| {
            module
                .load_function(name)
                .with_context(|| format!("kernel {name}"))
        };
        let bf16 = f("fps_attn_bf16")?;
        let fp8 = f("fps_attn_fp8")?;
        bf16.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_BF16 as i32,
        )?;
        fp8.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_FP8 as i32,
        )?;
        let bf16_wg = f("fps_attn_bf16_wgmma")?;
        let fp8_wg = f("fps_attn_fp8_wgmma")?;
        bf16_wg.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_BF16_WG as i32,
        )?;
        fp8_wg.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_FP8_WG as i32,
        )?;
        let bf16_wg2 = f("fps_attn_bf16_wgmma_2cta")?;
        let fp8_wg2 = f("fps_attn_fp8_wgmma_2cta")?;
        bf16_wg2.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_BF16_WG as i32,
        )?;
        fp8_wg2.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_FP8_WG as i32,
        )?;
        let fp8_pipe2 = f("fps_attn_fp8_wgmma_pipe_2cta")?;
        fp8_pipe2.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_FP8_WG as i32,
        )?;
        let fp8_1wg = f("fps_attn_fp8_wgmma_1wg")?;
        fp8_1wg.set_attribute(
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            SMEM_FP8_1WG as i32,
        )?;
        Ok(Fps {
            quant_rows: f("quant_rows_e4m3")?,
            v_amax: f("v_channel_amax")?,
            quant_vt: f("quant_v_t")?,
            transpose_v: f("transpose_v_bf16")?,
            ctx,
            stream,
            bf16,
            fp8,
            bf16_wg,
            fp8_wg,
            bf16_wg2,
            fp8_wg2,
            fp8_pipe2,
            fp8_1wg,
        })
    }

    pub fn upload_map(&self, map: &BlockMap) -> Result<DevMap> {
        ensure!(
            map.bm == BM && map.bn == BN,
            "kernel needs blocks of {BM}x{BN}"
        );
        let (counts, idx) = map.to_padded();
        Ok(DevMap {
            counts: self.stream.clone_htod(&counts)?,
            idx: self.stream.clone_htod(&idx)?,
            heads: map.heads,
            n: map.n_tokens,
            n_qb: map.n_qb,
            n_kb: map.n_kb,
            causal: map.causal,
        })
    }

    fn grid(map: &DevMap, smem: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (map.n_qb as u32, map.heads as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: smem,
        }
    }

    fn scale_log2() -> f32 {
        (std::f64::consts::LOG2_E / (HEAD_DIM as f64).sqrt()) as f32
    }

    /// Launches one attention build with the argument list every build shares: Q, K, V (or
    /// V̂ᵀ), O, the block lists, the three FP8 scale arrays (a dummy for BF16 builds), then the
    /// token count, the padded key count, the block counts, the causal flag and the score scale.
    #[allow(clippy::too_many_arguments)]
    fn launch_attention<A: DeviceRepr, B: DeviceRepr>(
        &self,
        func: &CudaFunction,
        cfg: LaunchConfig,
        (q, k, v): (&CudaSlice<A>, &CudaSlice<A>, &CudaSlice<B>),
        o: &mut CudaSlice<u16>,
        map: &DevMap,
        scales: [&CudaSlice<f32>; 3],
        npad: usize,
    ) -> Result<()> {
        let (n, npad, nqb, nkb, causal, sl) = (
            map.n as i32,
            npad as i32,
            map.n_qb as i32,
            map.n_kb as i32,
            map.causal as i32,
            Self::scale_log2(),
        );
        let mut b = self.stream.launch_builder(func);
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(o)
            .arg(&map.counts)
            .arg(&map.idx)
            .arg(scales[0])
            .arg(scales[1])
            .arg(scales[2]);
        b.arg(&n)
            .arg(&npad)
            .arg(&nqb)
            .arg(&nkb)
            .arg(&causal)
            .arg(&sl);
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// BF16 attention: `o = attention(q, k, v)` under `map`.
    pub fn attn_bf16(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        o: &mut CudaSlice<u16>,
        map: &DevMap,
        dummy: &CudaSlice<f32>,
    ) -> Result<()> {
        let len = map.heads * map.n * HEAD_DIM;
        ensure!(
            q.len() == len && k.len() == len && v.len() == len && o.len() == len,
            "tensor sizes"
        );
        self.launch_attention(
            &self.bf16,
            Self::grid(map, SMEM_BF16),
            (q, k, v),
            o,
            map,
            [dummy; 3],
            map.n,
        )
    }

    pub fn alloc_fp8(&self, heads: usize, n: usize) -> Result<Fp8Buffers> {
        let npad = n.div_ceil(BN) * BN;
        let tiles = n.div_ceil(64);
        Ok(Fp8Buffers {
            q8: self.stream.alloc_zeros(heads * n * HEAD_DIM)?,
            k8: self.stream.alloc_zeros(heads * n * HEAD_DIM)?,
            vt8: self.stream.alloc_zeros(heads * HEAD_DIM * npad)?,
            sq: self.stream.alloc_zeros(heads * tiles)?,
            sk: self.stream.alloc_zeros(heads * tiles)?,
            sv: self.stream.alloc_zeros(heads * HEAD_DIM)?,
            amax: self.stream.alloc_zeros(heads * HEAD_DIM)?,
            heads,
            n,
            npad,
        })
    }

    /// Quantise bf16 Q, K, V into `buf` (per-tile Q/K scales, per-channel V scales).
    pub fn quantize(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        buf: &mut Fp8Buffers,
    ) -> Result<()> {
        let (h, n) = (buf.heads, buf.n);
        let n_i = n as i32;
        let npad_i = buf.npad as i32;
        let tiles = n.div_ceil(64) as u32;
        let cfg_rows = LaunchConfig {
            grid_dim: (tiles, h as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        for (x, y, s) in [(q, &mut buf.q8, &mut buf.sq), (k, &mut buf.k8, &mut buf.sk)] {
            let mut b = self.stream.launch_builder(&self.quant_rows);
            b.arg(x).arg(y).arg(s).arg(&n_i);
            unsafe { b.launch(cfg_rows) }?;
        }
        self.stream.memset_zeros(&mut buf.amax)?;
        let mut b = self.stream.launch_builder(&self.v_amax);
        b.arg(v).arg(&mut buf.amax).arg(&n_i);
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: (n.div_ceil(256) as u32, h as u32, 1),
                block_dim: (HEAD_DIM as u32, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        let mut b = self.stream.launch_builder(&self.quant_vt);
        b.arg(v)
            .arg(&buf.amax)
            .arg(&mut buf.sv)
            .arg(&mut buf.vt8)
            .arg(&n_i)
            .arg(&npad_i);
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: ((buf.npad / 16) as u32, h as u32, 1),
                block_dim: (HEAD_DIM as u32, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        Ok(())
    }

    /// FP8 attention over already quantised operands.
    pub fn attn_fp8(&self, buf: &Fp8Buffers, o: &mut CudaSlice<u16>, map: &DevMap) -> Result<()> {
        self.attn_fp8_with(Mma::Sync, buf, o, map)
    }

    /// FP8 attention with the chosen MMA path.
    pub fn attn_fp8_with(
        &self,
        mma: Mma,
        buf: &Fp8Buffers,
        o: &mut CudaSlice<u16>,
        map: &DevMap,
    ) -> Result<()> {
        ensure!(
            buf.heads == map.heads && buf.n == map.n,
            "fp8 buffers do not match the map"
        );
        ensure!(o.len() == map.heads * map.n * HEAD_DIM, "output size");
        let (func, smem) = match mma {
            Mma::Sync => (&self.fp8, SMEM_FP8),
            Mma::Wgmma => (&self.fp8_wg, SMEM_FP8_WG),
            Mma::Wgmma2 => (&self.fp8_wg2, SMEM_FP8_WG),
            Mma::WgmmaPipe2 => (&self.fp8_pipe2, SMEM_FP8_PIPE),
            Mma::Wgmma1Wg => (&self.fp8_1wg, SMEM_FP8_1WG),
        };
        let cfg = if mma == Mma::Wgmma1Wg {
            LaunchConfig {
                grid_dim: (2 * map.n_qb as u32, map.heads as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: smem,
            }
        } else {
            Self::grid(map, smem)
        };
        self.launch_attention(
            func,
            cfg,
            (&buf.q8, &buf.k8, &buf.vt8),
            o,
            map,
            [&buf.sq, &buf.sk, &buf.sv],
            buf.npad,
        )
    }

    /// V `[heads][n][128]` → V^T `[heads][128][npad]` (bf16, zero past n) for the BF16 wgmma kernel.
    pub fn transpose_v(
        &self,
        v: &CudaSlice<u16>,
        vt: &mut CudaSlice<u16>,
        heads: usize,
        n: usize,
    ) -> Result<()> {
        let npad = n.div_ceil(BN) * BN;
        ensure!(
            v.len() == heads * n * HEAD_DIM && vt.len() == heads * HEAD_DIM * npad,
            "transpose sizes"
        );
        let (n_i, npad_i) = (n as i32, npad as i32);
        let mut b = self.stream.launch_builder(&self.transpose_v);
        b.arg(v).arg(vt).arg(&n_i).arg(&npad_i);
        unsafe {
            b.launch(LaunchConfig {
                grid_dim: ((npad / BN) as u32, heads as u32, 1),
                block_dim: (HEAD_DIM as u32, 1, 1),
                shared_mem_bytes: 0,
            })
        }?;
        Ok(())
    }

    /// BF16 attention through wgmma; `vt` from [`Fps::transpose_v`].
    pub fn attn_bf16_wgmma(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        vt: &CudaSlice<u16>,
        o: &mut CudaSlice<u16>,
        map: &DevMap,
        dummy: &CudaSlice<f32>,
    ) -> Result<()> {
        self.attn_bf16_wgmma_with(false, q, k, vt, o, map, dummy)
    }

    /// As [`Fps::attn_bf16_wgmma`]; `two_ctas` picks the build for two CTAs per SM.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_bf16_wgmma_with(
        &self,
        two_ctas: bool,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        vt: &CudaSlice<u16>,
        o: &mut CudaSlice<u16>,
        map: &DevMap,
        dummy: &CudaSlice<f32>,
    ) -> Result<()> {
        let npad = map.n.div_ceil(BN) * BN;
        ensure!(
            vt.len() == map.heads * HEAD_DIM * npad && o.len() == map.heads * map.n * HEAD_DIM,
            "tensor sizes"
        );
        let func = if two_ctas {
            &self.bf16_wg2
        } else {
            &self.bf16_wg
        };
        self.launch_attention(
            func,
            Self::grid(map, SMEM_BF16_WG),
            (q, k, vt),
            o,
            map,
            [dummy; 3],
            npad,
        )
    }
}
