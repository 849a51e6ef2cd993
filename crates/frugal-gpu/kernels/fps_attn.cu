// FPSAttention kernel family for Hopper (sm_90a): FlashAttention-2-style forward with online
// softmax, tiles in shared memory (cp.async, double-buffered K/V, XOR-swizzled rows),
// tensor-core MMA through mma.sync (m16n8k16 bf16, m16n8k32 e4m3), head dim 128.
// Four variants from two kernels: {bf16, fp8} x {dense, block-sparse}; "dense" is the same
// kernel fed the dense block list, so the ratios come from one code path.
//
// Layouts (one batch): q/k/v/o are [H][N][128] row-major. A block map is given as
// counts[H][n_qb] and idx[H][n_qb][n_kb] (ascending key-block lists, BM=128 queries x BN=64
// keys per block). causal=1 adds the element-wise j<=i mask.
//
// FP8 (docs/methods/fps.md): Q and K quantised to E4M3 per 64-token tile
// (scale = amax/448), V per channel (scale over the sequence), P = fp8(448 * p) with p the
// running-max probabilities in [0,1]; O = (sum P^ V^) * s_v / (448 * l). V^ is stored
// transposed ([H][128][Npad]) with keys permuted inside each 16-group so that the P
// accumulator fragment of QK^T can be reused as the A operand of the k32 MMA without
// shuffles (see perm16 below).
#include <cuda_bf16.h>
#include <stdint.h>
#include "wgmma_ops.cuh"

#define D 128
#define BM 128
#define BN 64
#define NWARPS 8
#define NTHREADS (NWARPS * 32)

// ---------------------------------------------------------------------------------------
// small PTX helpers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    int sz = valid ? 16 : 0;  // src-size 0 -> zero fill
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(sz));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void mma_bf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_e4m3(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low half)
    return *reinterpret_cast<uint32_t*>(&v);
}
// two floats -> two e4m3 bytes, saturating RNE; `lo` in the low byte.
__device__ __forceinline__ uint32_t cvt_e4m3x2(float lo, float hi) {
    uint16_t r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Byte offset of 16-byte chunk `c` of row `r` in a tile whose rows hold `CH` chunks.
// XOR swizzle over the low 3 bits (CH >= 8) keeps ldmatrix's 8 row reads conflict-free.
template <int CH>
__device__ __forceinline__ uint32_t swz(int r, int c) {
    if constexpr (CH >= 8) {
        return r * CH * 16 + ((c ^ (r & 7)) << 4);
    } else {  // CH == 4 (64-byte rows): two rows share a 128-byte line
        return r * CH * 16 + ((c ^ ((r >> 1) & 3)) << 4);
    }
}

// Copy `ROWS` rows of `CH` 16-byte chunks from global (row stride `gstride` bytes) into a
// swizzled smem tile; rows >= `valid_rows` are zero-filled.
template <int ROWS, int CH, int NT = NTHREADS>
__device__ __forceinline__ void load_tile(uint32_t sbase, const uint8_t* g, size_t gstride, int valid_rows) {
#pragma unroll
    for (int i = threadIdx.x; i < ROWS * CH; i += NT) {
        int r = i / CH, c = i % CH;
        bool ok = r < valid_rows;
        const uint8_t* src = g + (ok ? (size_t)r * gstride : 0) + c * 16;
        cp_async16(sbase + swz<CH>(r, c), src, ok);
    }
}

struct Params {
    const void* q;   // bf16 [H][N][D] or e4m3 [H][N][D]
    const void* k;   // same
    const void* v;   // bf16 [H][N][D] or e4m3 V^T [H][D][npad] (keys permuted in 16-groups)
    __nv_bfloat16* o;  // [H][N][D]
    const int* counts;  // [H][n_qb]
    const int* idx;     // [H][n_qb][n_kb]
    const float* sq;    // fp8: [H][ceil(N/64)]
    const float* sk;    // fp8: [H][ceil(N/64)]
    const float* sv;    // fp8: [H][D]
    int n, npad, n_qb, n_kb, causal;
    float scale_log2;   // log2(e) / sqrt(D)
};

// The dynamic shared-memory buffer of every attention kernel.
extern __shared__ __align__(128) uint8_t smem[];

// ---------------------------------------------------------------------------------------
// BF16 kernel. smem: Q 128x256B (32 KB) + 2 x (K 64x256B + V 64x256B) (64 KB) = 96 KB.
extern "C" __global__ void __launch_bounds__(NTHREADS, 1) fps_attn_bf16(const void* q, const void* k, const void* v, __nv_bfloat16* o_, const int* counts, const int* idx,
    const float* sq_, const float* sk_, const float* sv_, int n, int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    const Params p{q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2};
    const int h = blockIdx.y;
    const int qb = gridDim.x - 1 - blockIdx.x;  // heavy (late, causal) blocks first
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t sQ = smem_u32(smem);
    const uint32_t sK0 = sQ + BM * 256;
    const uint32_t sV0 = sK0 + 2 * BN * 256;
    const size_t hoff = (size_t)h * p.n * D;
    const uint8_t* gq = reinterpret_cast<const uint8_t*>(p.q) + hoff * 2;
    const uint8_t* gk = reinterpret_cast<const uint8_t*>(p.k) + hoff * 2;
    const uint8_t* gv = reinterpret_cast<const uint8_t*>(p.v) + hoff * 2;
    const int cnt = p.counts[h * p.n_qb + qb];
    const int* list = p.idx + (size_t)(h * p.n_qb + qb) * p.n_kb;
    const int q0 = qb * BM;

    load_tile<BM, 16>(sQ, gq + (size_t)q0 * 256, 256, p.n - q0);
    if (cnt > 0) {
        int kb = list[0];
        load_tile<BN, 16>(sK0, gk + (size_t)kb * BN * 256, 256, p.n - kb * BN);
        load_tile<BN, 16>(sV0, gv + (size_t)kb * BN * 256, 256, p.n - kb * BN);
    }
    cp_commit();

    float o[16][4];
#pragma unroll
    for (int i = 0; i < 16; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
    const int row_a = q0 + warp * 16 + (lane >> 2);  // rows row_a, row_a + 8

    for (int it = 0; it < cnt; it++) {
        const int kb = list[it];
        const int st = it & 1;
        if (it + 1 < cnt) {
            int nb = list[it + 1];
            load_tile<BN, 16>(sK0 + (st ^ 1) * BN * 256, gk + (size_t)nb * BN * 256, 256, p.n - nb * BN);
            load_tile<BN, 16>(sV0 + (st ^ 1) * BN * 256, gv + (size_t)nb * BN * 256, 256, p.n - nb * BN);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const uint32_t sK = sK0 + st * BN * 256, sV = sV0 + st * BN * 256;

        // S = Q K^T for this warp's 16 rows x 64 keys
        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            uint32_t a0, a1, a2, a3;
            ldsm_x4(sQ + swz<16>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(sK + swz<16>(j * 16 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_bf16(s[2 * j], a0, a1, a2, a3, b0, b1);
                mma_bf16(s[2 * j + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        // masks: sequence end and causality
        const int key0 = kb * BN;
        const bool need_mask = (key0 + BN > p.n) || (p.causal && key0 + BN - 1 > q0 + warp * 16);
#pragma unroll
        for (int t = 0; t < 8; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[t][e] * p.scale_log2;
                if (need_mask) {
                    int key = key0 + t * 8 + (lane & 3) * 2 + (e & 1);
                    int row = row_a + (e >> 1) * 8;
                    if (key >= p.n || (p.causal && key > row)) x = -INFINITY;
                }
                s[t][e] = x;
            }
        // online softmax (base 2)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int t = 0; t < 8; t++) mx = fmaxf(mx, fmaxf(s[t][2 * r], s[t][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            const float m_new = fmaxf(m_r[r], mx);
            const float m_use = (m_new == -INFINITY) ? 0.f : m_new;
            const float alpha = fast_exp2(m_r[r] - m_use);
            m_r[r] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                s[t][2 * r] = fast_exp2(s[t][2 * r] - m_use);
                s[t][2 * r + 1] = fast_exp2(s[t][2 * r + 1] - m_use);
                sum += s[t][2 * r] + s[t][2 * r + 1];
            }
            l_r[r] = l_r[r] * alpha + sum;  // per-thread partial; quad-reduced at the end
#pragma unroll
            for (int t = 0; t < 16; t++) {
                o[t][2 * r] *= alpha;
                o[t][2 * r + 1] *= alpha;
            }
        }
        // O += P V
#pragma unroll
        for (int j = 0; j < 4; j++) {  // 16 keys per step
            uint32_t a0 = pack_bf16(s[2 * j][0], s[2 * j][1]);
            uint32_t a1 = pack_bf16(s[2 * j][2], s[2 * j][3]);
            uint32_t a2 = pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]);
            uint32_t a3 = pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3]);
#pragma unroll
            for (int dp = 0; dp < 8; dp++) {  // 16 d per step
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(sV + swz<16>(j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 2 + (lane >> 4)), b0, b1, b2, b3);
                mma_bf16(o[2 * dp], a0, a1, a2, a3, b0, b1);
                mma_bf16(o[2 * dp + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        __syncthreads();
    }
    // epilogue
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_r[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int row = row_a + r * 8;
        if (row < p.n) {
            __nv_bfloat16* dst = p.o + hoff + (size_t)row * D + (lane & 3) * 2;
#pragma unroll
            for (int t = 0; t < 16; t++)
                *reinterpret_cast<__nv_bfloat162*>(dst + t * 8) =
                    __floats2bfloat162_rn(o[t][2 * r] * inv, o[t][2 * r + 1] * inv);
        }
    }
}

// ---------------------------------------------------------------------------------------
// FP8 kernel. smem: Q 128x128B (16 KB) + 2 x (K 64x128B + V^T 128x64B) (32 KB) = 48 KB.
extern "C" __global__ void __launch_bounds__(NTHREADS, 1) fps_attn_fp8(const void* q, const void* k, const void* v, __nv_bfloat16* o_, const int* counts, const int* idx,
    const float* sq_, const float* sk_, const float* sv_, int n, int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    const Params p{q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2};
    const int h = blockIdx.y;
    const int qb = gridDim.x - 1 - blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t sQ = smem_u32(smem);
    const uint32_t sK0 = sQ + BM * 128;
    const uint32_t sV0 = sK0 + 2 * BN * 128;
    const uint8_t* gq = reinterpret_cast<const uint8_t*>(p.q) + (size_t)h * p.n * D;
    const uint8_t* gk = reinterpret_cast<const uint8_t*>(p.k) + (size_t)h * p.n * D;
    const uint8_t* gvt = reinterpret_cast<const uint8_t*>(p.v) + (size_t)h * D * p.npad;
    const int cnt = p.counts[h * p.n_qb + qb];
    const int* list = p.idx + (size_t)(h * p.n_qb + qb) * p.n_kb;
    const int q0 = qb * BM;
    const int n_tiles = (p.n + 63) / 64;
    const float sq = p.sq[h * n_tiles + (q0 + warp * 16) / 64];
    const float* skh = p.sk + h * n_tiles;

    load_tile<BM, 8>(sQ, gq + (size_t)q0 * 128, 128, p.n - q0);
    if (cnt > 0) {
        int kb = list[0];
        load_tile<BN, 8>(sK0, gk + (size_t)kb * BN * 128, 128, p.n - kb * BN);
        load_tile<D, 4>(sV0, gvt + (size_t)kb * BN, p.npad, D);
    }
    cp_commit();

    float o[16][4];
#pragma unroll
    for (int i = 0; i < 16; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
    const int row_a = q0 + warp * 16 + (lane >> 2);

    for (int it = 0; it < cnt; it++) {
        const int kb = list[it];
        const int st = it & 1;
        if (it + 1 < cnt) {
            int nb = list[it + 1];
            load_tile<BN, 8>(sK0 + (st ^ 1) * BN * 128, gk + (size_t)nb * BN * 128, 128, p.n - nb * BN);
            load_tile<D, 4>(sV0 + (st ^ 1) * D * 64, gvt + (size_t)nb * BN, p.npad, D);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const uint32_t sK = sK0 + st * BN * 128, sV = sV0 + st * D * 64;

        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {  // 32 d per step
            uint32_t a0, a1, a2, a3;
            ldsm_x4(sQ + swz<8>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), a0, a1, a2, a3);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(sK + swz<8>(j * 16 + (lane & 7) + (lane >> 4) * 8, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_e4m3(s[2 * j], a0, a1, a2, a3, b0, b1);
                mma_e4m3(s[2 * j + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        const float f = sq * skh[kb] * p.scale_log2;
        const int key0 = kb * BN;
        const bool need_mask = (key0 + BN > p.n) || (p.causal && key0 + BN - 1 > q0 + warp * 16);
#pragma unroll
        for (int t = 0; t < 8; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[t][e] * f;
                if (need_mask) {
                    int key = key0 + t * 8 + (lane & 3) * 2 + (e & 1);
                    int row = row_a + (e >> 1) * 8;
                    if (key >= p.n || (p.causal && key > row)) x = -INFINITY;
                }
                s[t][e] = x;
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int t = 0; t < 8; t++) mx = fmaxf(mx, fmaxf(s[t][2 * r], s[t][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
            const float m_new = fmaxf(m_r[r], mx);
            const float m_use = (m_new == -INFINITY) ? 0.f : m_new;
            const float alpha = fast_exp2(m_r[r] - m_use);
            m_r[r] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                s[t][2 * r] = fast_exp2(s[t][2 * r] - m_use);
                s[t][2 * r + 1] = fast_exp2(s[t][2 * r + 1] - m_use);
                sum += s[t][2 * r] + s[t][2 * r + 1];
            }
            l_r[r] = l_r[r] * alpha + sum;
#pragma unroll
            for (int t = 0; t < 16; t++) {
                o[t][2 * r] *= alpha;
                o[t][2 * r + 1] *= alpha;
            }
        }
        // O += P^ V^ : P^ = fp8(448 p); the k32 A fragment takes logical keys
        // 4*tig..4*tig+3 = physical {2tig, 2tig+1, 8+2tig, 8+2tig+1} of each 16-group.
#pragma unroll
        for (int j = 0; j < 2; j++) {  // 32 keys per step
            uint32_t a[4];
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {  // 16-key half: n-tiles 4j+2hh, 4j+2hh+1
                const int t0 = 4 * j + 2 * hh;
                a[2 * hh + 0] = cvt_e4m3x2(s[t0][0] * 448.f, s[t0][1] * 448.f) |
                                (cvt_e4m3x2(s[t0 + 1][0] * 448.f, s[t0 + 1][1] * 448.f) << 16);
                a[2 * hh + 1] = cvt_e4m3x2(s[t0][2] * 448.f, s[t0][3] * 448.f) |
                                (cvt_e4m3x2(s[t0 + 1][2] * 448.f, s[t0 + 1][3] * 448.f) << 16);
            }
#pragma unroll
            for (int dp = 0; dp < 8; dp++) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(sV + swz<4>(dp * 16 + (lane & 7) + (lane >> 4) * 8, j * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_e4m3(o[2 * dp], a[0], a[1], a[2], a[3], b0, b1);
                mma_e4m3(o[2 * dp + 1], a[0], a[1], a[2], a[3], b2, b3);
            }
        }
        __syncthreads();
    }
    const float* svh = p.sv + h * D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_r[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const float inv = l > 0.f ? 1.f / (448.f * l) : 0.f;
        const int row = row_a + r * 8;
        if (row < p.n) {
            __nv_bfloat16* dst = p.o + (size_t)h * p.n * D + (size_t)row * D + (lane & 3) * 2;
#pragma unroll
            for (int t = 0; t < 16; t++) {
                const int c = t * 8 + (lane & 3) * 2;
                *reinterpret_cast<__nv_bfloat162*>(dst + t * 8) =
                    __floats2bfloat162_rn(o[t][2 * r] * inv * svh[c], o[t][2 * r + 1] * inv * svh[c + 1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Quantisation kernels (bf16 -> e4m3), bit-compatible with frugal_numerics::fp8.

// Per 64-token tile of [H][N][D]: one block (256 threads) per (tile, head).
extern "C" __global__ void quant_rows_e4m3(const __nv_bfloat16* x, uint8_t* y, float* scales, int n) {
    const int tile = blockIdx.x, h = blockIdx.y;
    const int n_tiles = gridDim.x;
    const int r0 = tile * 64;
    const int rows = min(64, n - r0);
    const __nv_bfloat16* xs = x + ((size_t)h * n + r0) * D;
    uint8_t* ys = y + ((size_t)h * n + r0) * D;
    __shared__ float red[NTHREADS / 32];
    float am = 0.f;
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) am = fmaxf(am, fabsf(__bfloat162float(xs[i])));
    for (int o = 16; o > 0; o >>= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffff, am, o));
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = am;
    __syncthreads();
    am = 0.f;
    for (int w = 0; w < (int)blockDim.x / 32; w++) am = fmaxf(am, red[w]);
    const float s = (am > 0.f && am < INFINITY) ? am / 448.f : 1.f;
    if (threadIdx.x == 0) scales[h * n_tiles + tile] = s;
    for (int i = threadIdx.x * 2; i < rows * D; i += blockDim.x * 2) {
        float a = __bfloat162float(xs[i]) / s, b = __bfloat162float(xs[i + 1]) / s;
        uint16_t v = (uint16_t)cvt_e4m3x2(a, b);
        *reinterpret_cast<uint16_t*>(ys + i) = v;
    }
}

// Per-channel amax of V [H][N][D] into amax_bits (zeroed before; non-negative floats order
// like their bit patterns, so atomicMax on the int view is a float max). Grid (ceil(n/256), H),
// block D threads (thread c = channel c).
extern "C" __global__ void v_channel_amax(const __nv_bfloat16* v, int* amax_bits, int n) {
    const int h = blockIdx.y, c = threadIdx.x;
    const int r0 = blockIdx.x * 256, r1 = min(n, r0 + 256);
    float am = 0.f;
    const __nv_bfloat16* vs = v + (size_t)h * n * D + c;
    for (int i = r0; i < r1; i++) am = fmaxf(am, fabsf(__bfloat162float(vs[(size_t)i * D])));
    atomicMax(amax_bits + h * D + c, __float_as_int(am));
}

// V^T[h][c][pos] = e4m3(V[h][key][c] / s_c) with pos the logical index of key inside its
// 16-group: physical key 16g + perm16(L) sits at position 16g + L,
// perm16(L) = 2*(L>>2) + (L&1) + ((L>>1)&1)*8. Positions >= n are zero. Grid: (npad/16, H),
// block: D threads. Also writes the per-channel scales (from amax_bits).
extern "C" __global__ void quant_v_t(const __nv_bfloat16* v, const int* amax_bits, float* scales, uint8_t* vt, int n, int npad) {
    const int g = blockIdx.x, h = blockIdx.y, c = threadIdx.x;
    const float am = __int_as_float(amax_bits[h * D + c]);
    const float s = (am > 0.f && am < INFINITY) ? am / 448.f : 1.f;
    if (g == 0) scales[h * D + c] = s;
    uint8_t out[16];
#pragma unroll
    for (int L = 0; L < 16; L++) {
        const int key = g * 16 + 2 * (L >> 2) + (L & 1) + ((L >> 1) & 1) * 8;
        float x = key < n ? __bfloat162float(v[((size_t)h * n + key) * D + c]) / s : 0.f;
        out[L] = (uint8_t)(cvt_e4m3x2(x, 0.f) & 0xFF);
    }
    uint4* dst = reinterpret_cast<uint4*>(vt + ((size_t)h * D + c) * npad + g * 16);
    *dst = *reinterpret_cast<uint4*>(out);
}

// =======================================================================================
// Hopper wgmma variants (sm_90a). Same math, same block lists, same quantised operands as the
// mma.sync kernels above; the MMAs are warpgroup MMAs (QGMMA for FP8, HGMMA for BF16) reading
// K/V (and Q) straight from swizzled shared memory through matrix descriptors, and P from
// registers. Two consumer warpgroups (128 query rows); all threads also issue the cp.async
// loads (no producer warp specialisation, no TMA yet: the next steps, see the results page).
// Shared tiles are laid out in the canonical K-major 128B-swizzle (rows of 128 bytes, 16-byte
// chunk c of row r at c ^ (r & 7)) or 64B-swizzle (rows of 64 bytes, c ^ ((r >> 1) & 3))
// forms; each tile base is 1024-byte aligned.

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void reg_fence(float* r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
// Matrix descriptor: start address, LBO (unused for swizzled K-major: 1), SBO, swizzle mode
// (1 = 128B, 2 = 64B).
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t sbo, uint64_t mode) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(sbo >> 4) << 32) | (mode << 62);
}

// Online-softmax update shared by both wgmma kernels. s: this thread's raw 64x64 S fragment
// (s[t*4+e]: n-tile t, rows g / g+8); f > 0: the factor to log2 units (softmax scale * log2 e,
// times the FP8 dequantisation scales); c: log2 of the fixed P scale (log2 448 for FP8, 0 for
// BF16), folded into the exponent so P comes out pre-scaled: s <- 2^(f*s - m + c).
// l accumulates the same pre-scaled values (the epilogue divides by it, so the scale cancels).
// O is rescaled only when some row max moved (warp vote), which is exact: alpha == 1 otherwise.
__device__ __forceinline__ void softmax_update(float* s, float* o, float* m_r, float* l_r, int key0, int row_a,
                                               bool need_mask, int n, int causal, float f, float c,
                                               float* o_alpha = nullptr) {
    if (need_mask) {
        const int lane = threadIdx.x % 32;
#pragma unroll
        for (int t = 0; t < 8; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = key0 + t * 8 + (lane & 3) * 2 + (e & 1);
                int row = row_a + (e >> 1) * 8;
                if (key >= n || (causal && key > row)) s[t * 4 + e] = -INFINITY;
            }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = -INFINITY;
#pragma unroll
        for (int t = 0; t < 8; t++) mx = fmaxf(mx, fmaxf(s[t * 4 + 2 * r], s[t * 4 + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
        const float m_new = fmaxf(m_r[r], mx * f);
        const float m_use = (m_new == -INFINITY) ? 0.f : m_new;
        alpha[r] = fast_exp2(m_r[r] - m_use);
        m_r[r] = m_new;
        const float off = c - m_use;
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < 8; t++) {
            s[t * 4 + 2 * r] = fast_exp2(fmaf(s[t * 4 + 2 * r], f, off));
            s[t * 4 + 2 * r + 1] = fast_exp2(fmaf(s[t * 4 + 2 * r + 1], f, off));
            sum += s[t * 4 + 2 * r] + s[t * 4 + 2 * r + 1];
        }
        l_r[r] = l_r[r] * alpha[r] + sum;
    }
    if (o == nullptr) {  // caller rescales O later (pipelined kernel)
        o_alpha[0] = alpha[0];
        o_alpha[1] = alpha[1];
        return;
    }
    if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int t = 0; t < 16; t++) {
            o[t * 4 + 0] *= alpha[0];
            o[t * 4 + 1] *= alpha[0];
            o[t * 4 + 2] *= alpha[1];
            o[t * 4 + 3] *= alpha[1];
        }
    }
}

__device__ __forceinline__ void store_o(const Params& p, const float* o, const float* l_r, int row_a, const float* colscale,
                                        float extra) {
    const int lane = threadIdx.x % 32;
    const int h = blockIdx.y;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_r[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const float inv = l > 0.f ? 1.f / (extra * l) : 0.f;
        const int row = row_a + r * 8;
        if (row < p.n) {
            __nv_bfloat16* dst = p.o + (size_t)h * p.n * D + (size_t)row * D + (lane & 3) * 2;
#pragma unroll
            for (int t = 0; t < 16; t++) {
                const int c = t * 8 + (lane & 3) * 2;
                const float s0 = colscale ? colscale[c] : 1.f, s1 = colscale ? colscale[c + 1] : 1.f;
                *reinterpret_cast<__nv_bfloat162*>(dst + t * 8) =
                    __floats2bfloat162_rn(o[t * 4 + 2 * r] * inv * s0, o[t * 4 + 2 * r + 1] * inv * s1);
            }
        }
    }
}

// FP8 wgmma kernel. Operands as for fps_attn_fp8 (q8, k8 [H][N][128], vt8 [H][128][npad]).
// WGS warpgroups (64 query rows each) per CTA; K/V in a ring of STAGES stages.
//  - cp.async issue without a generic tile loop: each thread's 16-byte chunks of the K tile
//    (64 rows x 128 B, 8 KB contiguous in global memory), the V^T tile (128 rows x 64 B, row
//    stride npad) and Q are at one per-thread smem offset and one global offset plus
//    compile-time strides (rows advance by multiples of 8, so the swizzle phase is the same for
//    all of a thread's chunks). The first version used load_tile's generic strided loop here:
//    ~350 of the loop's ~835 SASS instructions; now the loop has ~480.
//  - ONE CTA barrier per key block: the prefetch of block it+STAGES-1 is issued after the
//    barrier of iteration it, into the stage every warpgroup finished with in iteration it-1
//    (prefetch distance STAGES-1 blocks; the first version had two barriers per block).
// smem (after 1024-alignment): Q (WGS x 8 KB) | STAGES x K (8 KB) | STAGES x V^T (8 KB).
template <int WGS, int STAGES>
__device__ __forceinline__ void fps_attn_fp8_wgmma_body(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    const Params p{q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2};
    const int h = blockIdx.y;
    constexpr int NT = WGS * 128;
    constexpr int KCH = BN * 8 / NT;  // 16-byte chunks per thread of a K tile (and of a V^T tile)
    const int tid = threadIdx.x;
    const int cta = gridDim.x - 1 - blockIdx.x;
    const int q0 = cta * WGS * 64;
    const int qb = q0 / BM;
    const int warp = tid / 32, lane = tid % 32, wg = warp / 4, wq = warp % 4;
    const uint32_t base = (smem_u32(smem) + 1023) & ~1023u;
    const uint32_t sQ = base, sK0 = base + WGS * 8192, sV0 = sK0 + STAGES * 8192;
    const uint8_t* gq = reinterpret_cast<const uint8_t*>(p.q) + (size_t)h * p.n * D;
    const uint8_t* gk = reinterpret_cast<const uint8_t*>(p.k) + (size_t)h * p.n * D;
    const uint8_t* gvt = reinterpret_cast<const uint8_t*>(p.v) + (size_t)h * D * p.npad;
    const int cnt = p.counts[h * p.n_qb + qb];
    const int* list = p.idx + (size_t)(h * p.n_qb + qb) * p.n_kb;
    const int n_tiles = (p.n + 63) / 64;
    const float sq = p.sq[h * n_tiles + min((q0 + wg * 64) / 64, n_tiles - 1)];
    const float* skh = p.sk + h * n_tiles;

    // per-thread cp.async plan: 128-byte rows (Q, K): row tid/8 (+ j*NT/8), chunk tid%8;
    // 64-byte rows (V^T): row tid/4 (+ j*NT/4), chunk tid%4.
    const uint32_t soff128 = (tid >> 3) * 128 + (((tid & 7) ^ ((tid >> 3) & 7)) << 4);
    const uint32_t soff64 = (tid >> 2) * 64 + (((tid & 3) ^ ((tid >> 3) & 3)) << 4);
    const uint8_t* gk_t = gk + tid * 16;
    const uint8_t* gv_t = gvt + (size_t)(tid >> 2) * p.npad + (tid & 3) * 16;
    const size_t vstep = (size_t)(NT / 4) * p.npad;
    auto load_kv = [&](int kb, int stage) {
        const int valid = p.n - kb * BN;  // rows of this K tile inside the sequence
        const uint8_t* gkb = gk_t + (size_t)kb * (BN * 128);
        const uint8_t* gvb = gv_t + (size_t)kb * BN;
#pragma unroll
        for (int j = 0; j < KCH; j++) {
            const bool ok = (tid >> 3) + j * (NT / 8) < valid;
            cp_async16(sK0 + stage * 8192 + soff128 + j * NT * 16, ok ? gkb + j * NT * 16 : gk, ok);
        }
#pragma unroll
        for (int j = 0; j < KCH; j++) cp_async16(sV0 + stage * 8192 + soff64 + j * NT * 16, gvb + j * vstep, true);
    };
    {  // Q (WGS*64 rows: 4 chunks per thread)
        const uint8_t* gqb = gq + (size_t)q0 * 128 + tid * 16;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const bool ok = q0 + (tid >> 3) + j * (NT / 8) < p.n;
            cp_async16(sQ + soff128 + j * NT * 16, ok ? gqb + j * NT * 16 : gq, ok);
        }
    }
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < cnt) load_kv(list[s], s);
        cp_commit();
    }

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
    const int row_w = q0 + wg * 64 + wq * 16;  // first row of this warp
    const int row_a = row_w + (lane >> 2);
    const uint64_t dq = make_desc(sQ + wg * 64 * 128, 1024, 1);

    int st = 0, ld = STAGES - 1;  // stage of block it, stage of block it+STAGES-1
    for (int it = 0; it < cnt; it++) {
        const int kb = list[it];
        const float f = sq * skh[kb] * p.scale_log2;
        cp_wait<STAGES - 2>();  // this thread's copies of block it have landed
        fence_async_smem();
        __syncthreads();        // everyone's have; and everyone is done with iteration it-1
        if (it + STAGES - 1 < cnt) load_kv(list[it + STAGES - 1], ld);
        cp_commit();
        const uint32_t sK = sK0 + st * 8192, sV = sV0 + st * 8192;

        float s[32];
        const uint64_t dk = make_desc(sK, 1024, 1);
        reg_fence<32>(s);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wgmma_m64n64k32_e4m3_ss(s, dq + 2 * kk, dk + 2 * kk, kk > 0);
        wg_commit();
        wg_wait<0>();
        reg_fence<32>(s);

        const int key0 = kb * BN;
        const bool need_mask = (key0 + BN > p.n) || (p.causal && key0 + BN - 1 > row_w);
        softmax_update(s, o, m_r, l_r, key0, row_a, need_mask, p.n, p.causal, f, 8.807354922057604f /* log2 448 */);

        uint32_t a[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int t0 = 4 * j + 2 * hh;
                a[j][2 * hh + 0] = cvt_e4m3x2(s[t0 * 4 + 0], s[t0 * 4 + 1]) |
                                   (cvt_e4m3x2(s[(t0 + 1) * 4 + 0], s[(t0 + 1) * 4 + 1]) << 16);
                a[j][2 * hh + 1] = cvt_e4m3x2(s[t0 * 4 + 2], s[t0 * 4 + 3]) |
                                   (cvt_e4m3x2(s[(t0 + 1) * 4 + 2], s[(t0 + 1) * 4 + 3]) << 16);
            }
        const uint64_t dv = make_desc(sV, 512, 2);
        reg_fence<64>(o);
        wg_fence();
#pragma unroll
        for (int j = 0; j < 2; j++) wgmma_m64n128k32_e4m3_rs(o, a[j], dv + 2 * j, 1);
        wg_commit();
        wg_wait<0>();
        reg_fence<64>(o);
        st = (st + 1 == STAGES) ? 0 : st + 1;
        ld = (ld + 1 == STAGES) ? 0 : ld + 1;
    }
    cp_wait<0>();
    store_o(p, o, l_r, row_a, p.sv + h * D, 1.f);
}

// BF16 wgmma kernel. q, k: bf16 [H][N][128]; v: bf16 V^T [H][128][npad] (from transpose_v_bf16).
// smem (after 1024-alignment): Q [2][128][128B] (32 KB) | 2 x K [2][64][128B] (16 KB) |
// 2 x V^T [128][128B] (16 KB).
__device__ __forceinline__ void fps_attn_bf16_wgmma_body(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    const Params p{q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2};
    const int h = blockIdx.y;
    const int qb = gridDim.x - 1 - blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wg = warp / 4, wq = warp % 4;
    const uint32_t base = (smem_u32(smem) + 1023) & ~1023u;
    const uint32_t sQ = base, sK0 = base + 32768, sV0 = sK0 + 2 * 16384;
    const size_t hoff = (size_t)h * p.n * D;
    const uint8_t* gq = reinterpret_cast<const uint8_t*>(p.q) + hoff * 2;
    const uint8_t* gk = reinterpret_cast<const uint8_t*>(p.k) + hoff * 2;
    const uint8_t* gvt = reinterpret_cast<const uint8_t*>(p.v) + (size_t)h * D * p.npad * 2;
    const int cnt = p.counts[h * p.n_qb + qb];
    const int* list = p.idx + (size_t)(h * p.n_qb + qb) * p.n_kb;
    const int q0 = qb * BM;

    // per-thread cp.async plan (as in the FP8 kernel): Q/K halves [2][ROWS][128 B]: row tid/16
    // (+ 16 j), chunk tid%16 (half (tid%16)/8); V^T [128][128 B]: row tid/8 (+ 32 j), chunk tid%8.
    const int tid = threadIdx.x;
    const uint32_t sw = (((tid & 7) ^ ((tid >> 4) & 7)) << 4) + (tid >> 4) * 128;
    const uint32_t soffQ = ((tid >> 3) & 1) * BM * 128 + sw, soffK = ((tid >> 3) & 1) * BN * 128 + sw;
    const uint32_t soffV = (tid >> 3) * 128 + (((tid & 7) ^ ((tid >> 3) & 7)) << 4);
    const uint8_t* gk_t = gk + tid * 16;
    const uint8_t* gv_t = gvt + (size_t)(tid >> 3) * p.npad * 2 + (tid & 7) * 16;
    const size_t vstep = (size_t)32 * p.npad * 2;
    auto load_kv = [&](int kb, int stage) {
        const int valid = p.n - kb * BN;
        const uint8_t* gkb = gk_t + (size_t)kb * (BN * 256);
        const uint8_t* gvb = gv_t + (size_t)kb * BN * 2;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const bool ok = (tid >> 4) + 16 * j < valid;
            cp_async16(sK0 + stage * 16384 + soffK + j * 2048, ok ? gkb + j * 4096 : gk, ok);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) cp_async16(sV0 + stage * 16384 + soffV + j * 4096, gvb + j * vstep, true);
    };
    {
        const uint8_t* gqb = gq + (size_t)q0 * 256 + tid * 16;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const bool ok = q0 + (tid >> 4) + 16 * j < p.n;
            cp_async16(sQ + soffQ + j * 2048, ok ? gqb + j * 4096 : gq, ok);
        }
    }
    if (cnt > 0) load_kv(list[0], 0);
    cp_commit();

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
    const int row_w = q0 + wg * 64 + wq * 16;
    const int row_a = row_w + (lane >> 2);

    // two stages, one CTA barrier per key block (see the FP8 kernel)
    for (int it = 0; it < cnt; it++) {
        const int kb = list[it];
        const int st = it & 1;
        cp_wait<0>();
        fence_async_smem();
        __syncthreads();
        if (it + 1 < cnt) load_kv(list[it + 1], st ^ 1);
        cp_commit();
        const uint32_t sK = sK0 + st * 16384, sV = sV0 + st * 16384;

        float s[32];
        reg_fence<32>(s);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            const uint64_t dq = make_desc(sQ + (kk >> 2) * BM * 128 + wg * 64 * 128 + (kk & 3) * 32, 1024, 1);
            const uint64_t dk = make_desc(sK + (kk >> 2) * BN * 128 + (kk & 3) * 32, 1024, 1);
            wgmma_m64n64k16_bf16_ss(s, dq, dk, kk > 0);
        }
        wg_commit();
        wg_wait<0>();
        reg_fence<32>(s);
        const int key0 = kb * BN;
        const bool need_mask = (key0 + BN > p.n) || (p.causal && key0 + BN - 1 > row_w);
        softmax_update(s, o, m_r, l_r, key0, row_a, need_mask, p.n, p.causal, p.scale_log2, 0.f);

        uint32_t a[4][4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            a[j][0] = pack_bf16(s[(2 * j) * 4 + 0], s[(2 * j) * 4 + 1]);
            a[j][1] = pack_bf16(s[(2 * j) * 4 + 2], s[(2 * j) * 4 + 3]);
            a[j][2] = pack_bf16(s[(2 * j + 1) * 4 + 0], s[(2 * j + 1) * 4 + 1]);
            a[j][3] = pack_bf16(s[(2 * j + 1) * 4 + 2], s[(2 * j + 1) * 4 + 3]);
        }
        reg_fence<64>(o);
        wg_fence();
#pragma unroll
        for (int j = 0; j < 4; j++) wgmma_m64n128k16_bf16_rs(o, a[j], make_desc(sV + j * 32, 1024, 1), 1);
        wg_commit();
        wg_wait<0>();
        reg_fence<64>(o);
    }
    store_o(p, o, l_r, row_a, nullptr, 1.f);
}


// FP8 wgmma kernel, software-pipelined inside each warpgroup (FlashAttention-3's intra-warpgroup
// overlap): iteration j issues S_j = Q K_j^T and O += P_{j-1} V_{j-1} back to back, runs the
// softmax of S_j while the PV GEMM is in flight, then rescales O. K and V use separate
// double-buffered stages: iteration j reads K_j and V_{j-1} and prefetches K_{j+1} and V_j.
// Same operands, scales and results as fps_attn_fp8_wgmma.
__device__ __forceinline__ void fps_attn_fp8_wgmma_pipe_body(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    const Params p{q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2};
    const int h = blockIdx.y;
    const int qb = gridDim.x - 1 - blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wg = warp / 4, wq = warp % 4;
    const uint32_t base = (smem_u32(smem) + 1023) & ~1023u;
    const uint32_t sQ = base, sK0 = base + 16384, sV0 = sK0 + 2 * 8192;
    const uint8_t* gq = reinterpret_cast<const uint8_t*>(p.q) + (size_t)h * p.n * D;
    const uint8_t* gk = reinterpret_cast<const uint8_t*>(p.k) + (size_t)h * p.n * D;
    const uint8_t* gvt = reinterpret_cast<const uint8_t*>(p.v) + (size_t)h * D * p.npad;
    const int cnt = p.counts[h * p.n_qb + qb];
    const int* list = p.idx + (size_t)(h * p.n_qb + qb) * p.n_kb;
    const int q0 = qb * BM;
    const int n_tiles = (p.n + 63) / 64;
    const float sq = p.sq[h * n_tiles + min((q0 + wg * 64) / 64, n_tiles - 1)];
    const float* skh = p.sk + h * n_tiles;
    const int row_w = q0 + wg * 64 + wq * 16;
    const int row_a = row_w + (lane >> 2);

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
    if (cnt == 0) {
        store_o(p, o, l_r, row_a, p.sv + h * D, 1.f);
        return;
    }
    load_tile<BM, 8>(sQ, gq + (size_t)q0 * 128, 128, p.n - q0);
    load_tile<BN, 8>(sK0, gk + (size_t)list[0] * BN * 128, 128, p.n - list[0] * BN);
    cp_commit();

    uint32_t a[2][4];
    const uint64_t dq = make_desc(sQ + wg * 64 * 128, 1024, 1);
    for (int it = 0; it < cnt; it++) {
        const int kb = list[it];
        // prefetch K_{it+1} and V_it
        if (it + 1 < cnt) {
            const int nb = list[it + 1];
            load_tile<BN, 8>(sK0 + ((it + 1) & 1) * 8192, gk + (size_t)nb * BN * 128, 128, p.n - nb * BN);
        }
        load_tile<D, 4>(sV0 + (it & 1) * 8192, gvt + (size_t)kb * BN, p.npad, D);
        cp_commit();
        cp_wait<1>();  // K_it and V_{it-1} (and Q) have landed
        fence_async_smem();
        __syncthreads();

        float s[32];
        const uint64_t dk = make_desc(sK0 + (it & 1) * 8192, 1024, 1);
        reg_fence<32>(s);
        reg_fence<64>(o);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wgmma_m64n64k32_e4m3_ss(s, dq + 2 * kk, dk + 2 * kk, kk > 0);
        wg_commit();
        if (it > 0) {
            const uint64_t dv = make_desc(sV0 + ((it - 1) & 1) * 8192, 512, 2);
#pragma unroll
            for (int j = 0; j < 2; j++) wgmma_m64n128k32_e4m3_rs(o, a[j], dv + 2 * j, 1);
            wg_commit();
            wg_wait<1>();  // S_it done; PV_{it-1} may still run
        } else {
            wg_wait<0>();
        }
        reg_fence<32>(s);
        const float f = sq * skh[kb] * p.scale_log2;
        const int key0 = kb * BN;
        const bool need_mask = (key0 + BN > p.n) || (p.causal && key0 + BN - 1 > row_w);
        float alpha[2];
        softmax_update(s, nullptr, m_r, l_r, key0, row_a, need_mask, p.n, p.causal, f, 8.807354922057604f /* log2 448 */,
                       alpha);
        wg_wait<0>();
        reg_fence<64>(o);
        if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
            for (int t = 0; t < 16; t++) {
                o[t * 4 + 0] *= alpha[0];
                o[t * 4 + 1] *= alpha[0];
                o[t * 4 + 2] *= alpha[1];
                o[t * 4 + 3] *= alpha[1];
            }
        }
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int t0 = 4 * j + 2 * hh;
                a[j][2 * hh + 0] = cvt_e4m3x2(s[t0 * 4 + 0], s[t0 * 4 + 1]) | (cvt_e4m3x2(s[(t0 + 1) * 4 + 0], s[(t0 + 1) * 4 + 1]) << 16);
                a[j][2 * hh + 1] = cvt_e4m3x2(s[t0 * 4 + 2], s[t0 * 4 + 3]) | (cvt_e4m3x2(s[(t0 + 1) * 4 + 2], s[(t0 + 1) * 4 + 3]) << 16);
            }
        __syncthreads();  // the other warpgroup is done with K_it / V_{it-1} before they are overwritten
    }
    // last PV
    cp_wait<0>();
    fence_async_smem();
    __syncthreads();
    {
        const uint64_t dv = make_desc(sV0 + ((cnt - 1) & 1) * 8192, 512, 2);
        reg_fence<64>(o);
        wg_fence();
#pragma unroll
        for (int j = 0; j < 2; j++) wgmma_m64n128k32_e4m3_rs(o, a[j], dv + 2 * j, 1);
        wg_commit();
        wg_wait<0>();
        reg_fence<64>(o);
    }
    store_o(p, o, l_r, row_a, p.sv + h * D, 1.f);
}


// Entry points: 1 CTA/SM (no register cap) and 2 CTAs/SM (<= 128 registers; the other CTA's
// MMAs overlap this one's softmax). FP8: three K/V stages (2 x 65 KB of smem per SM).
extern "C" __global__ void __launch_bounds__(NTHREADS, 1) fps_attn_fp8_wgmma(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    fps_attn_fp8_wgmma_body<2, 3>(q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2);
}
extern "C" __global__ void __launch_bounds__(NTHREADS, 2) fps_attn_fp8_wgmma_2cta(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    fps_attn_fp8_wgmma_body<2, 3>(q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2);
}
extern "C" __global__ void __launch_bounds__(NTHREADS, 1) fps_attn_bf16_wgmma(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    fps_attn_bf16_wgmma_body(q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2);
}
extern "C" __global__ void __launch_bounds__(NTHREADS, 2) fps_attn_bf16_wgmma_2cta(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    fps_attn_bf16_wgmma_body(q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2);
}
extern "C" __global__ void __launch_bounds__(NTHREADS, 2) fps_attn_fp8_wgmma_pipe_2cta(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    fps_attn_fp8_wgmma_pipe_body(q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2);
}

// One warpgroup (64 query rows) per CTA, up to 4 CTAs/SM: warpgroups never wait for each other
// at a CTA barrier. Two K/V stages (4 x 41 KB of smem per SM; three would not fit). Grid x = 2 * n_qb.
extern "C" __global__ void __launch_bounds__(128, 4) fps_attn_fp8_wgmma_1wg(const void* q, const void* k, const void* v,
    __nv_bfloat16* o_, const int* counts, const int* idx, const float* sq_, const float* sk_, const float* sv_, int n,
    int npad, int n_qb, int n_kb, int causal, float scale_log2) {
    fps_attn_fp8_wgmma_body<1, 2>(q, k, v, o_, counts, idx, sq_, sk_, sv_, n, npad, n_qb, n_kb, causal, scale_log2);
}

// V [H][N][128] bf16 -> V^T [H][128][npad] bf16 (zero past N). Grid (npad/64, H), block D threads.
extern "C" __global__ void transpose_v_bf16(const __nv_bfloat16* v, __nv_bfloat16* vt, int n, int npad) {
    const int g = blockIdx.x, h = blockIdx.y, c = threadIdx.x;
    __align__(16) __nv_bfloat16 buf[64];
#pragma unroll
    for (int i = 0; i < 64; i++) {
        const int key = g * 64 + i;
        buf[i] = key < n ? v[((size_t)h * n + key) * D + c] : __float2bfloat16(0.f);
    }
    uint4* dst = reinterpret_cast<uint4*>(vt + ((size_t)h * D + c) * npad + g * 64);
#pragma unroll
    for (int i = 0; i < 8; i++) dst[i] = reinterpret_cast<uint4*>(buf)[i];
}
