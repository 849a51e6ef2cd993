//! Layer 7 of frugal (docs/design.md): CUDA kernels, behind the `cuda` feature.
//!
//! FPSAttention (docs/methods/fps.md): one FlashAttention-2-style kernel
//! family for Hopper in four variants — BF16 dense, FP8 dense, BF16 block-sparse, FP8
//! block-sparse — in `kernels/fps_attn.cu`, compiled to an sm_90a cubin by
//! `scripts/cuda/build_kernels.sh` (CUDA 13.0 nvcc from PyPI) and embedded in the binary.
//! The driver is loaded at run time (cudarc `dynamic-loading`), so building needs no CUDA and
//! the binary runs on any machine with an NVIDIA driver ≥ 13.0 and a Hopper GPU.
//! The CPU reference lives in `frugal_numerics::{fp8, block_sparse}`.
//!
//! Without the `cuda` feature this crate is empty (CPU builds and CI never touch CUDA).

#[cfg(feature = "cuda")]
pub mod fps;
