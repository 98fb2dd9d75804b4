// Single-token decode kernels of a Mamba2 model (issue 14): three launches per layer, each one memory-bound pass,
// plus the embedding gather at the start of the step and the greedy argmax at its end:
//   embed       residual[b] = E[id[b]]                                                      (f32 residual stream)
//   gemv_in     zxbcdt = W_in · RMSNorm(residual)·w; epilogue per row: the conv window of an xBC channel takes the
//               new value and the channel becomes SiLU(conv1d over the window + bias); a dt row becomes
//               clamp(softplus(dt + dt_bias)); z rows are stored as they are
//   ssm_gate    per (sequence, head): s ← exp(dt·A)·s + dt·x⊗B, y = s·C + D·x, yg = y·SiLU(z), and the head's
//               Σ yg² for the gated norm
//   gemv_out    residual += W_out · (RMSNorm_group(yg)·w), the group norms from the heads' sums
//   (gemv_in once more as the final norm + LM head, no epilogue), then argmax per sequence.
// All activations and states are f32, as the CPU engine keeps them (crates/infer/src/step.rs), with its arithmetic
// per element (h = r·inv·w, v = y·SiLU(z), out = v·inv·w), so the GPU step matches it up to summation order. The
// SSM state may instead be stored in bf16 (an option: half the bytes of a large batch's step, as mamba_ssm does).
//
// Overlap (sm_90): every kernel lets the next one launch as soon as it starts (programmatic dependent launch,
// `griddepcontrol`), and before waiting for the kernels it depends on, a kernel fetches what does not depend on
// them: the GEMVs request their first rows of weights into L2, the SSM update loads its state (last written by the
// previous step). Launched without the PDL attribute (or on sm_80) the same code runs in plain stream order.
// Activations written by an earlier kernel of the step are read with plain loads, never through the read-only
// (.nc) path: with PDL that kernel may still be running while this one starts.

#include <cuda_bf16.h>
#include <stdint.h>

#include "warp.cuh"

namespace {

constexpr int MAX_GROUPS = 16;  // norm groups of the gated RMSNorm

// Sum over the CTA (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // `red` free from any previous use
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ float silu(float v) { return v / (1.f + __expf(-v)); }

// The gated norm's factor for group g of sequence b: 1/sqrt(mean over its `group` columns of yg² + eps), from the
// sums of squares of its hpg heads (`part`, [batch, heads], written by the SSM update: read through L2).
__device__ __forceinline__ float group_inv(const float* part, int heads, int b, int g, int hpg, int group,
                                           float eps) {
  float s = 0.f;
  for (int h = 0; h < hpg; ++h) s += __ldcg(part + b * heads + g * hpg + h);
  return rsqrtf(s / group + eps);
}

// Element i of x̂ as the batched path's two GEMM input rows: hi = bf16(v), lo = bf16(v − hi).
__device__ __forceinline__ void store_split(__nv_bfloat16* hi, __nv_bfloat16* lo, int i, float v) {
  const __nv_bfloat16 h = __float2bfloat16(v);
  hi[i] = h;
  lo[i] = __float2bfloat16(v - __bfloat162float(h));
}

// Requests `bytes` (a multiple of 16, 16-byte aligned start) into L2 without waiting for them.
__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// 16 bytes of weights that are read once: no L1 allocation.
__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// The 16 bytes of one chunk as floats: 8 bf16 or 4 f32 weights.
__device__ __forceinline__ void chunk_to_f32(const uint4& u, float (&w)[4]) {
  w[0] = __uint_as_float(u.x), w[1] = __uint_as_float(u.y), w[2] = __uint_as_float(u.z), w[3] = __uint_as_float(u.w);
}
__device__ __forceinline__ void chunk_to_f32(const uint4& u, float (&w)[8]) {
  const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[2 * i] = __uint_as_float(v[i] << 16);
    w[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
  }
}

// E consecutive floats (E = 4 or 8, 16-byte aligned), plain loads.
template <int E>
__device__ __forceinline__ void load_f32(const float* p, float (&v)[E]) {
#pragma unroll
  for (int e = 0; e < E; e += 4) {
    const float4 f = *reinterpret_cast<const float4*>(p + e);
    v[e] = f.x, v[e + 1] = f.y, v[e + 2] = f.z, v[e + 3] = f.w;
  }
}

// Four consecutive state values as floats (16-byte aligned f32, 8-byte aligned bf16) and back; bf16 rounds to
// nearest.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ void store4(float* p, const float4& v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, const float4& v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}

}  // namespace

// Arguments of the fused GEMVs (mirrored by `GemvArgs` in src/decode.rs: keep the two in the same order).
struct GemvArgs {
  const void* w;         // [rows, ldw] bf16 or f32, rows 16-byte aligned
  const float* bias;     // [rows] or null
  const float* x;        // [batch, ldx]: the residual stream (in) or the gated SSM output (out)
  const float* xw;       // [cols]: the norm's weight
  const float* part;     // out: Σ x² per (sequence, head), [batch, heads]
  float* y;              // [batch, ldy]: the projection (in) or the residual stream it adds to (out)
  float* window;         // in: conv windows [batch, conv_hi - conv_lo, k], oldest first; null: no conv rows
  const float* conv_w;   // [conv channels, k]
  const float* conv_b;   // [conv channels] or null
  const float* dt_bias;  // [rows - dt_lo] or null
  void* wide;            // the batched path: bf16 [2·wide_batch, cols] (split) or f32 [2·wide_batch, rows] (finish)
  long long ldw, ldx, ldy;
  int rows, cols;
  int conv_lo, conv_hi, k;  // rows [conv_lo, conv_hi) are conv channels
  int dt_lo;                // rows [dt_lo, rows) are dt
  int heads, groups;        // out: the gated norm's groups of cols / groups columns, heads / groups heads each
  int prefetch_iters;       // L2 prefetch of each CTA's rows of its first iterations, before the wait
  int wide_batch;           // the batched path: sequences (the low halves start at row wide_batch)
  int split;                // warps per row (1, 2, 4 or 8) of the lane-streaming GEMV
  int act;                  // in: the activation of the rows outside the conv and dt rows (an MLP's up_proj)
  float eps, dt_min, dt_max;
};
static_assert(sizeof(GemvArgs) == 176, "GemvArgs: the layout src/decode.rs mirrors");

// MODE_IN: x̂ = RMSNorm(x)·w, y = the product through the row epilogues; MODE_OUT: x̂ = the gated norm of the SSM
// output, y += the product; MODE_PLAIN: x̂ = x as it is, y += the product (an MLP's down_proj, attention's o_proj).
enum { MODE_IN = 0, MODE_OUT = 1, MODE_PLAIN = 2 };
// GemvArgs::act.
enum { ACT_NONE = 0, ACT_RELU2 = 1, ACT_GELU = 2 };

// The normalisation factors of x̂ (after the earlier kernels finished): MODE_IN: inv[b][0] = 1/sqrt(mean(x[b]²) +
// eps), each CTA reducing the row itself; MODE_OUT: inv[b][g] from the heads' sums of squares of group g.
template <int BATCH, int MODE>
__device__ __forceinline__ void gemv_norms(const GemvArgs& a, float (&inv)[BATCH][MAX_GROUPS], float* red) {
  if (MODE == MODE_IN) {
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      float ss = 0.f;
      for (int i = threadIdx.x; i < a.cols; i += blockDim.x) {
        const float v = a.x[b * a.ldx + i];
        ss += v * v;
      }
      const float s = block_sum(ss, red);
      if (threadIdx.x == 0) inv[b][0] = rsqrtf(s / a.cols + a.eps);
    }
  } else if (MODE == MODE_OUT) {
    const int hpg = a.heads / a.groups, group = a.cols / a.groups;
    for (int i = threadIdx.x; i < BATCH * a.groups; i += blockDim.x) {
      const int b = i / a.groups, g = i % a.groups;
      inv[b][g] = group_inv(a.part, a.heads, b, g, hpg, group, a.eps);
    }
  }
  __syncthreads();
}

// acc[b] += Σ_e w[e]·x̂[b, c·E + e] for the 16-byte chunk c of a row.
template <typename WT, int BATCH, int MODE>
__device__ __forceinline__ void gemv_chunk(const GemvArgs& a, const uint4& u, int c, int group_chunks,
                                           const float (&inv)[BATCH][MAX_GROUPS], float (&acc)[BATCH]) {
  constexpr int E = 16 / sizeof(WT);
  float wf[E], nv[E];
  chunk_to_f32(u, wf);
  if (MODE != MODE_PLAIN) load_f32<E>(a.xw + E * c, nv);
  const int g = MODE == MODE_OUT ? c / group_chunks : 0;
#pragma unroll
  for (int b = 0; b < BATCH; ++b) {
    float xv[E];
    load_f32<E>(a.x + b * a.ldx + E * c, xv);
    if (MODE == MODE_PLAIN) {
#pragma unroll
      for (int e = 0; e < E; ++e) acc[b] += wf[e] * xv[e];
      continue;
    }
    const float iv = inv[b][g];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[b] += wf[e] * (xv[e] * iv * nv[e]);
  }
}

// Row r of sequence b once its dot product s is known: MODE_OUT and MODE_PLAIN add s (+ bias) into y; MODE_IN
// stores it, a conv row through its window (the window drops its oldest input and takes the value; then
// SiLU(Σ_k w·window + bias)), a dt row through clamp(softplus(v + dt_bias)), any other row through `act` (squared
// ReLU, or GELU with erf, as the CPU engine computes them).
template <int MODE>
__device__ __forceinline__ void finish_row(const GemvArgs& a, int b, int r, float s) {
  float v = a.bias ? s + a.bias[r] : s;
  float* out = a.y + b * a.ldy + r;
  if (MODE != MODE_IN) {
    *out = *out + v;
    return;
  }
  if (r >= a.conv_lo && r < a.conv_hi) {
    const int c = r - a.conv_lo;
    float* win = a.window + (static_cast<long long>(b) * (a.conv_hi - a.conv_lo) + c) * a.k;
    const float* wc = a.conv_w + static_cast<long long>(c) * a.k;
    float cv = a.conv_b ? a.conv_b[c] : 0.f;
    for (int i = 0; i + 1 < a.k; ++i) {
      const float o = win[i + 1];
      win[i] = o;
      cv += wc[i] * o;
    }
    win[a.k - 1] = v;
    cv += wc[a.k - 1] * v;
    v = silu(cv);
  } else if (r >= a.dt_lo) {
    float t = v + (a.dt_bias ? a.dt_bias[r - a.dt_lo] : 0.f);
    t = t > 20.f ? t : log1pf(__expf(t));
    v = fminf(fmaxf(t, a.dt_min), a.dt_max);
  } else if (a.act == ACT_RELU2) {
    const float p = fmaxf(v, 0.f);
    v = p * p;
  } else if (a.act == ACT_GELU) {
    v = (erff(v * 0.707106781186547524f) + 1.f) * 0.5f * v;
  }
  *out = v;
}

// Row r's results, reduced over the warp (lane 0 finishes them).
template <int BATCH, int MODE>
__device__ __forceinline__ void gemv_epilogue(const GemvArgs& a, int r, const float (&acc)[BATCH]) {
#pragma unroll
  for (int b = 0; b < BATCH; ++b) {
    const float s = warp_sum(acc[b]);
    if ((threadIdx.x & 31) == 0) finish_row<MODE>(a, b, r, s);
  }
}

// y[b, r] = Σ_c W[r, c]·x̂[b, c] (+ bias[r]) for BATCH sequences, x̂ normalised as `gemv_norms` says, weights
// streamed with loads from every lane. A CTA's 8 warps take 8 / split rows at a time, `split` warps per row, each
// warp a contiguous share of the row's 16-byte chunks, its lanes UNROLL chunks in flight before any is used; the
// shares are added in warp order through shared memory (deterministic). The split evens out the work of the grid's
// warps (the launcher picks it from the sizes). A warp's first loads go out before the wait and the norm prologue.
template <typename WT, int BATCH, int MODE>
__device__ __forceinline__ void gemv_fused(const GemvArgs& a) {
  constexpr int E = 16 / sizeof(WT);  // weights per 16-byte chunk
  constexpr int UNROLL = 4;
  __shared__ float inv[BATCH][MAX_GROUPS];
  __shared__ float red[32];
  __shared__ float partial[8][BATCH];
  const WT* w = static_cast<const WT*>(a.w);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int split = a.split, per_step = warps / split;  // rows per CTA step
  const int wr = warp / split, ws = warp % split;
  const int chunks = a.cols / E;
  const int share = (chunks + split - 1) / split;
  const int cb = ws * share, ce = min(chunks, cb + share);
  const int steps = (a.rows + per_step - 1) / per_step;
  allow_next_kernel();
  if (threadIdx.x == 0) {
    // The weights depend on nothing earlier: this CTA's first rows go to L2 while earlier kernels finish.
    const long long row_bytes = a.ldw * static_cast<long long>(sizeof(WT));
    for (int it = 0; it < a.prefetch_iters; ++it) {
      const int r0 = (blockIdx.x + it * gridDim.x) * per_step;
      if (r0 >= a.rows) break;
      const int n = min(per_step, a.rows - r0);
      prefetch_l2(w + r0 * a.ldw, static_cast<unsigned>((n - 1) * row_bytes + a.cols * sizeof(WT)));
    }
  }
  uint4 u[UNROLL];
  auto load = [&](int r, int c0) {
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int c = c0 + 32 * k;
      u[k] = c < ce && r < a.rows ? ld_stream(w + r * a.ldw + E * c) : make_uint4(0, 0, 0, 0);
    }
  };
  load(blockIdx.x * per_step + wr, cb + lane);
  wait_prev_kernels();
  gemv_norms<BATCH, MODE>(a, inv, red);
  const int group_chunks = MODE == MODE_OUT ? chunks / a.groups : chunks;
  bool loaded = true;
  for (int g = blockIdx.x; g < steps; g += gridDim.x) {
    const int r = g * per_step + wr;
    float acc[BATCH];
#pragma unroll
    for (int b = 0; b < BATCH; ++b) acc[b] = 0.f;
    for (int c0 = cb + lane; c0 < ce; c0 += 32 * UNROLL) {
      if (!loaded) load(r, c0);
      loaded = false;
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        const int c = c0 + 32 * k;
        if (c >= ce || r >= a.rows) break;
        gemv_chunk<WT, BATCH, MODE>(a, u[k], c, group_chunks, inv, acc);
      }
    }
    loaded = false;
    if (split == 1) {
      if (r < a.rows) gemv_epilogue<BATCH, MODE>(a, r, acc);
      continue;
    }
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      const float s = warp_sum(acc[b]);
      if (lane == 0) partial[warp][b] = s;
    }
    __syncthreads();
    if (ws == 0 && lane < BATCH && r < a.rows) {
      float s = 0.f;
      for (int j = 0; j < split; ++j) s += partial[warp + j][lane];
      finish_row<MODE>(a, lane, r, s);
    }
    __syncthreads();  // `partial` is free for the next step
  }
}

// The same product with the weights moved by the copy engine (sm_90 bulk copies): the CTA's work is a sequence of
// tiles of 8 rows (one per warp) x up to TILE_BYTES of each row; one thread keeps STAGES tiles in flight into
// shared memory (the first ones requested before waiting on earlier kernels), the warps consume them in order.
// Dynamic shared memory: STAGES x 8 x TILE_BYTES.
constexpr int TILE_BYTES = 4096;
constexpr int STAGES = 3;

__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(bar))),
               "r"(count)
               : "memory");
#endif
}

__device__ __forceinline__ void mbar_expect(uint64_t* bar, unsigned bytes) {
#if __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(bar))),
               "r"(bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#if __CUDA_ARCH__ >= 900
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(bar));
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(addr),
      "r"(parity)
      : "memory");
#endif
}

// Makes barrier initialisation (init) or this thread's shared-memory accesses visible to the copy engine.
__device__ __forceinline__ void fence_async(bool init) {
#if __CUDA_ARCH__ >= 900
  if (init)
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  else
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Copies `bytes` (a multiple of 16, both ends 16-byte aligned) from global to shared memory, completing on `bar`.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          static_cast<unsigned>(__cvta_generic_to_shared(dst))),
      "l"(src), "r"(bytes), "r"(static_cast<unsigned>(__cvta_generic_to_shared(bar)))
      : "memory");
#endif
}

template <typename WT, int BATCH, int MODE>
__device__ __forceinline__ void gemv_tma(const GemvArgs& a) {
#if __CUDA_ARCH__ < 900
  __trap();  // no bulk copies before sm_90: the launcher never picks this kernel there
#endif
  constexpr int E = 16 / sizeof(WT);
  constexpr int TILE_CHUNKS = TILE_BYTES / 16;
  extern __shared__ __align__(128) unsigned char tiles[];
  __shared__ __align__(8) uint64_t full[STAGES];
  __shared__ float inv[BATCH][MAX_GROUPS];
  __shared__ float red[32];
  const WT* w = static_cast<const WT*>(a.w);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int chunks = a.cols / E;  // 16-byte chunks per row
  const int kt = (chunks + TILE_CHUNKS - 1) / TILE_CHUNKS;  // tiles per row block
  const int blocks = (a.rows + 7) / 8;
  const int my_blocks = blockIdx.x < blocks ? (blocks - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int items = my_blocks * kt;
  // Item i: row block blockIdx.x + (i / kt)·gridDim.x, columns chunks [(i % kt)·TILE_CHUNKS, ...).
  auto issue = [&](int i) {
    const int r0 = (blockIdx.x + (i / kt) * gridDim.x) * 8, c0 = (i % kt) * TILE_CHUNKS;
    const int nr = min(8, a.rows - r0);
    const unsigned bytes = 16u * min(TILE_CHUNKS, chunks - c0);
    uint64_t* bar = &full[i % STAGES];
    mbar_expect(bar, bytes * nr);
    unsigned char* dst = tiles + (i % STAGES) * 8 * TILE_BYTES;
    for (int j = 0; j < nr; ++j) bulk_copy(dst + j * TILE_BYTES, w + (r0 + j) * a.ldw + E * c0, bytes, bar);
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) mbar_init(&full[s], 1);
    fence_async(true);
    // The weights depend on nothing earlier: the first tiles are requested before the wait.
    for (int i = 0; i < min(STAGES, items); ++i) issue(i);
  }
  __syncthreads();
  allow_next_kernel();
  wait_prev_kernels();
  gemv_norms<BATCH, MODE>(a, inv, red);
  const int group_chunks = MODE == MODE_OUT ? chunks / a.groups : chunks;
  float acc[BATCH];
  for (int i = 0; i < items; ++i) {
    const int r = (blockIdx.x + (i / kt) * gridDim.x) * 8 + warp, c0 = (i % kt) * TILE_CHUNKS;
    if (i % kt == 0) {
#pragma unroll
      for (int b = 0; b < BATCH; ++b) acc[b] = 0.f;
    }
    mbar_wait(&full[i % STAGES], (i / STAGES) & 1);
    if (r < a.rows) {
      const uint4* tile = reinterpret_cast<const uint4*>(tiles + ((i % STAGES) * 8 + warp) * TILE_BYTES);
      const int n = min(TILE_CHUNKS, chunks - c0);
#pragma unroll 4
      for (int c = lane; c < n; c += 32) gemv_chunk<WT, BATCH, MODE>(a, tile[c], c0 + c, group_chunks, inv, acc);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    if (threadIdx.x == 0 && i + STAGES < items) {
      fence_async(false);
      issue(i + STAGES);
    }
    if (i % kt == kt - 1 && r < a.rows) gemv_epilogue<BATCH, MODE>(a, r, acc);
  }
}

#define COIL_GEMV(NAME, WT, B)                                                                                      \
  extern "C" __global__ void __launch_bounds__(256) gemv_in_##NAME##_b##B(const GemvArgs a) {                     \
    gemv_fused<WT, B, MODE_IN>(a);                                                                                  \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(256) gemv_out_##NAME##_b##B(const GemvArgs a) {                    \
    gemv_fused<WT, B, MODE_OUT>(a);                                                                                 \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(256) gemv_plain_##NAME##_b##B(const GemvArgs a) {                  \
    gemv_fused<WT, B, MODE_PLAIN>(a);                                                                               \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(256) gemv_in_tma_##NAME##_b##B(const GemvArgs a) {                 \
    gemv_tma<WT, B, MODE_IN>(a);                                                                                    \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(256) gemv_out_tma_##NAME##_b##B(const GemvArgs a) {                \
    gemv_tma<WT, B, MODE_OUT>(a);                                                                                   \
  }
COIL_GEMV(bf16, __nv_bfloat16, 1)
COIL_GEMV(bf16, __nv_bfloat16, 2)
COIL_GEMV(bf16, __nv_bfloat16, 4)
COIL_GEMV(bf16, __nv_bfloat16, 8)
COIL_GEMV(f32, float, 1)
COIL_GEMV(f32, float, 2)
COIL_GEMV(f32, float, 4)
COIL_GEMV(f32, float, 8)

// The batched path (many sequences): the products run as one tensor-core GEMM (cuBLAS) per matrix over bf16
// activations. To keep f32 accuracy, x̂ is split into two bf16 rows, hi = bf16(x̂) and lo = bf16(x̂ - hi) (x̂ - hi -
// lo is below 2^-16·|x̂|), stacked as rows b and wide_batch + b of the GEMM's input; the GEMM's f32 outputs of the
// two rows are added back in `wide_finish`.
// wide_split: x̂ of sequence blockIdx.x normalised as `gemv_norms` says (MODE_IN: RMSNorm; MODE_OUT: the gated
// norm), split into `wide` (bf16 [2·wide_batch, cols]).
template <int MODE>
__device__ __forceinline__ void wide_split_body(const GemvArgs& a) {
  __shared__ float inv[MAX_GROUPS];
  __shared__ float red[32];
  const int b = blockIdx.x;
  allow_next_kernel();
  wait_prev_kernels();
  const float* x = a.x + b * a.ldx;
  if (MODE == MODE_IN) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < a.cols; i += blockDim.x) ss += x[i] * x[i];
    const float s = block_sum(ss, red);
    if (threadIdx.x == 0) inv[0] = rsqrtf(s / a.cols + a.eps);
  } else if (MODE == MODE_OUT && threadIdx.x < a.groups) {
    inv[threadIdx.x] = group_inv(a.part, a.heads, b, threadIdx.x, a.heads / a.groups, a.cols / a.groups, a.eps);
  }
  __syncthreads();
  const int group = MODE == MODE_OUT ? a.cols / a.groups : a.cols;
  __nv_bfloat16* hi = static_cast<__nv_bfloat16*>(a.wide) + static_cast<long long>(b) * a.cols;
  __nv_bfloat16* lo = hi + static_cast<long long>(a.wide_batch) * a.cols;
  for (int i = threadIdx.x; i < a.cols; i += blockDim.x)
    store_split(hi, lo, i, MODE == MODE_PLAIN ? x[i] : x[i] * inv[i / group] * a.xw[i]);
}

// wide_finish: row r of sequence b from the GEMM's two halves (f32 [2·wide_batch, rows] in `wide`), then as
// `finish_row`. grid (ceil(rows / 256), batch).
template <int MODE>
__device__ __forceinline__ void wide_finish_body(const GemvArgs& a) {
  allow_next_kernel();
  wait_prev_kernels();
  const int r = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (r >= a.rows) return;
  const float* p = static_cast<const float*>(a.wide);
  finish_row<MODE>(a, b, r, p[static_cast<long long>(b) * a.rows + r] +
                                p[static_cast<long long>(a.wide_batch + b) * a.rows + r]);
}

// wide_add_split_in: `prev`'s finish (an out or plain GEMM adding into the residual stream: y += its two halves +
// bias) and then `a`'s split (MODE_IN: the RMSNorm of that residual row) in one launch, grid batch: the same
// arithmetic in the same order as wide_finish_plain followed by wide_split_in (bitwise equal
// results), one kernel boundary fewer. The launcher checks that a.x is prev.y (same row stride) and that
// a.cols == prev.rows. Each thread reads back only the residual elements it wrote.
extern "C" __global__ void __launch_bounds__(256) wide_add_split_in(const GemvArgs prev, const GemvArgs a) {
  __shared__ float inv;
  __shared__ float red[32];
  const int b = blockIdx.x;
  allow_next_kernel();
  wait_prev_kernels();
  const float* p = static_cast<const float*>(prev.wide);
  float* x = prev.y + b * prev.ldy;
  float ss = 0.f;
  for (int r = threadIdx.x; r < prev.rows; r += blockDim.x) {
    const float s = p[static_cast<long long>(b) * prev.rows + r] + p[static_cast<long long>(prev.wide_batch + b) * prev.rows + r];
    const float v = prev.bias ? s + prev.bias[r] : s;
    const float nx = x[r] + v;
    x[r] = nx;
    ss += nx * nx;
  }
  const float t = block_sum(ss, red);
  if (threadIdx.x == 0) inv = rsqrtf(t / a.cols + a.eps);
  __syncthreads();
  __nv_bfloat16* hi = static_cast<__nv_bfloat16*>(a.wide) + static_cast<long long>(b) * a.cols;
  __nv_bfloat16* lo = hi + static_cast<long long>(a.wide_batch) * a.cols;
  for (int i = threadIdx.x; i < a.cols; i += blockDim.x) store_split(hi, lo, i, x[i] * inv * a.xw[i]);
}

extern "C" __global__ void __launch_bounds__(256) wide_split_in(const GemvArgs a) { wide_split_body<MODE_IN>(a); }
extern "C" __global__ void __launch_bounds__(256) wide_split_out(const GemvArgs a) { wide_split_body<MODE_OUT>(a); }
extern "C" __global__ void __launch_bounds__(256) wide_finish_in(const GemvArgs a) { wide_finish_body<MODE_IN>(a); }
extern "C" __global__ void __launch_bounds__(256) wide_split_plain(const GemvArgs a) {
  wide_split_body<MODE_PLAIN>(a);
}
// Also the finish of out_proj's GEMM (MODE_OUT finishes a row as MODE_PLAIN does: y += the sum + bias).
extern "C" __global__ void __launch_bounds__(256) wide_finish_plain(const GemvArgs a) {
  wide_finish_body<MODE_PLAIN>(a);
}

// Arguments of the SSM update (mirrored by `SsmArgs` in src/decode.rs).
struct SsmArgs {
  const float* proj;  // [batch, ld_proj]: z at column 0, x|B|C at xbc_off, dt (softplus'd, clamped) at dt_off
  const float* a;     // [heads]: A = -exp(A_log)
  const float* d;     // [heads] or null
  void* state;        // [batch, heads, head_dim, N], f32 or bf16 (the kernel's name says which)
  float* yg;          // [batch, ld_yg]: y·SiLU(z)
  float* part;        // [batch, heads]: Σ_p yg²
  long long ld_proj, ld_yg;
  int xbc_off, dt_off, heads, groups, head_dim;
};
static_assert(sizeof(SsmArgs) == 88, "SsmArgs: the layout src/decode.rs mirrors");

// The SSM update of one token for head h of sequence b (grid (heads, batch), head_dim·4 threads: four per state
// row, each owning N/4 columns as float4s). s[p, n] ← exp(dt·A)·s[p, n] + dt·x[p]·B[n]; y[p] = Σ_n s[p, n]·C[n] +
// D·x[p]; yg[p] = y[p]·SiLU(z[p]). x of head h is at h·P in x|B|C, B of group g at x_width + g·N, C at x_width +
// G·N + g·N. The state is stored as S (f32, or bf16 as mamba_ssm keeps it for a bf16 model: half the bytes, the
// update still computed in f32 and rounded to nearest when stored).
template <int N, typename S>
__device__ __forceinline__ void ssm_gate_body(const SsmArgs& a) {
  __shared__ float red[32];
  const int h = blockIdx.x, b = blockIdx.y;
  const int p = threadIdx.x >> 2, q = threadIdx.x & 3;
  const int P = a.head_dim;
  S* s = static_cast<S*>(a.state) + ((static_cast<long long>(b) * a.heads + h) * P + p) * N;
  allow_next_kernel();
  // The state was last written by the previous step: it loads while the in_proj GEMV finishes.
  float4 sv[N / 16];
#pragma unroll
  for (int j = 0; j < N / 16; ++j) sv[j] = load4(s + 4 * (q + 4 * j));  // a row's four threads interleave: coalesced
  wait_prev_kernels();
  const int g = h / (a.heads / a.groups);
  const int x_width = a.heads * P;
  const float* row = a.proj + b * a.ld_proj;
  const float dt = row[a.dt_off + h];
  const float da = __expf(dt * a.a[h]);
  const float xp = row[a.xbc_off + h * P + p];
  const float dx = dt * xp;
  const float* bm = row + a.xbc_off + x_width + g * N;
  const float* cm = row + a.xbc_off + x_width + a.groups * N + g * N;
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < N / 16; ++j) {
    const int n4 = q + 4 * j;
    const float4 bv = reinterpret_cast<const float4*>(bm)[n4];
    const float4 cv = reinterpret_cast<const float4*>(cm)[n4];
    float4 v4 = sv[j];
    v4.x = v4.x * da + dx * bv.x, v4.y = v4.y * da + dx * bv.y;
    v4.z = v4.z * da + dx * bv.z, v4.w = v4.w * da + dx * bv.w;
    acc += v4.x * cv.x + v4.y * cv.y + v4.z * cv.z + v4.w * cv.w;
    store4(s + 4 * n4, v4);
  }
  acc += __shfl_xor_sync(FULL, acc, 1);
  acc += __shfl_xor_sync(FULL, acc, 2);
  float sq = 0.f;
  if (q == 0) {
    const float y = acc + (a.d ? a.d[h] : 0.f) * xp;
    const float v = y * silu(row[h * P + p]);
    a.yg[b * a.ld_yg + h * P + p] = v;
    sq = v * v;
  }
  const float total = block_sum(sq, red);
  if (threadIdx.x == 0) a.part[b * a.heads + h] = total;
}

// The batched path's Mamba layer between its two GEMMs (mirrored by `SsmWide` in src/decode.rs): in_proj's raw
// products (the GEMM's two f32 halves) in, out_proj's bf16 input halves out.
struct SsmWide {
  const float* p2;       // [2·batch, rows]: in_proj's GEMM output (low halves from row batch)
  const float* bias;     // [rows]: in_proj's bias, or null
  float* window;         // [batch, conv, k]: conv windows, oldest first
  const float* conv_w;   // [conv, k]
  const float* conv_b;   // [conv] or null
  const float* dt_bias;  // [heads] or null
  unsigned* count;       // [batch]: CTAs of the sequence done; zero before and after every launch
  __nv_bfloat16* x2;     // [2·batch, heads·P]: out_proj's GEMM input (hi rows, then lo rows)
  const float* norm_w;   // [heads·P]: the gated norm's weight
  long long rows;        // in_proj rows (the row stride of p2)
  int batch, k, conv;
  float dt_min, dt_max, eps;
};
static_assert(sizeof(SsmWide) == 104, "SsmWide: the layout src/decode.rs mirrors");

// One (head, sequence) of the batched path (grid (heads, batch), 4·head_dim threads): what wide_finish_in would
// have done for the rows it needs, the SSM update and gate of ssm_gate_body, and, in the sequence's last CTA,
// what wide_split_out would have done; three launches become one, with the same arithmetic in the same order.
//  - prologue (shared memory): the head's x channels through their conv windows (written back: no other CTA
//    reads them), its z rows, its dt, and the B and C channels of its group through their windows, read only
//    (the group's other heads read them too);
//  - the update of ssm_gate_body, x, B, C, z and dt from shared memory;
//  - the sequence's last CTA (a counter per sequence, release/acquire through fences) shifts the B and C windows
//    of every group, forms out_proj's x̂ (the gated norm from the heads' sums) and splits it into x2, and zeroes
//    the counter for the next launch.
template <int N, typename S>
__device__ __forceinline__ void ssm_wide_body(const SsmArgs& a, const SsmWide& w) {
  __shared__ float red[32];
  __shared__ __align__(16) float bcs[2 * N];
  __shared__ float xs[128], zs[128];
  __shared__ float dts;
  __shared__ float invs[MAX_GROUPS];
  __shared__ bool last;
  const int h = blockIdx.x, b = blockIdx.y;
  const int p = threadIdx.x >> 2, q = threadIdx.x & 3;
  const int P = a.head_dim;
  S* s = static_cast<S*>(a.state) + ((static_cast<long long>(b) * a.heads + h) * P + p) * N;
  allow_next_kernel();
  float4 sv[N / 16];
#pragma unroll
  for (int j = 0; j < N / 16; ++j) sv[j] = load4(s + 4 * (q + 4 * j));
  wait_prev_kernels();
  const int hpg = a.heads / a.groups, g = h / hpg;
  const int x_width = a.heads * P;
  // Row r of in_proj for this sequence, as wide_finish_body adds the halves and finish_row the bias.
  auto raw = [&](int r) {
    const float v = w.p2[static_cast<long long>(b) * w.rows + r] + w.p2[static_cast<long long>(w.batch + b) * w.rows + r];
    return w.bias ? v + w.bias[r] : v;
  };
  // Conv channel c's output for the new value v (finish_row's arithmetic); the window shifted when `write`.
  auto conv_silu = [&](int c, float v, bool write) {
    float* win = w.window + (static_cast<long long>(b) * w.conv + c) * w.k;
    const float* wc = w.conv_w + static_cast<long long>(c) * w.k;
    float cv = w.conv_b ? w.conv_b[c] : 0.f;
    for (int i = 0; i + 1 < w.k; ++i) {
      const float o = win[i + 1];
      if (write) win[i] = o;
      cv += wc[i] * o;
    }
    if (write) win[w.k - 1] = v;
    cv += wc[w.k - 1] * v;
    return silu(cv);
  };
  for (int t = threadIdx.x; t <= P + 2 * N; t += blockDim.x) {
    if (t < P) {
      const int c = h * P + t;
      xs[t] = conv_silu(c, raw(a.xbc_off + c), true);
      zs[t] = raw(h * P + t);
    } else if (t < P + 2 * N) {
      const int j = t - P;  // B of group g for j < N, then its C
      const int c = x_width + (j < N ? g * N + j : a.groups * N + g * N + (j - N));
      bcs[j] = conv_silu(c, raw(a.xbc_off + c), false);
    } else {
      float v = raw(a.dt_off + h) + (w.dt_bias ? w.dt_bias[h] : 0.f);
      v = v > 20.f ? v : log1pf(__expf(v));
      dts = fminf(fmaxf(v, w.dt_min), w.dt_max);
    }
  }
  __syncthreads();
  // From here the update of ssm_gate_body, as its own copy: sharing one helper between the two raised
  // ssm_gate_bf16_n128 from 40 to 45 registers (ptxas, sm_90: one CTA per SM fewer) and ssm_gate_bf16_n64 from 32
  // to 38.
  const float dt = dts;
  const float da = __expf(dt * a.a[h]);
  const float xp = xs[p];
  const float dx = dt * xp;
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < N / 16; ++j) {
    const int n4 = q + 4 * j;
    const float4 bv = reinterpret_cast<const float4*>(bcs)[n4];
    const float4 cv = reinterpret_cast<const float4*>(bcs + N)[n4];
    float4 v4 = sv[j];
    v4.x = v4.x * da + dx * bv.x, v4.y = v4.y * da + dx * bv.y;
    v4.z = v4.z * da + dx * bv.z, v4.w = v4.w * da + dx * bv.w;
    acc += v4.x * cv.x + v4.y * cv.y + v4.z * cv.z + v4.w * cv.w;
    store4(s + 4 * n4, v4);
  }
  acc += __shfl_xor_sync(FULL, acc, 1);
  acc += __shfl_xor_sync(FULL, acc, 2);
  float sq = 0.f;
  if (q == 0) {
    const float y = acc + (a.d ? a.d[h] : 0.f) * xp;
    const float v = y * silu(zs[p]);
    a.yg[b * a.ld_yg + h * P + p] = v;
    sq = v * v;
  }
  const float total = block_sum(sq, red);
  if (threadIdx.x == 0) {
    a.part[b * a.heads + h] = total;
    __threadfence();  // this CTA's yg, part and window reads are done before it counts itself
    last = atomicAdd(w.count + b, 1u) == static_cast<unsigned>(a.heads - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();  // the other CTAs' yg and part are visible to this one
  for (int c = x_width + threadIdx.x; c < w.conv; c += blockDim.x) {
    float* win = w.window + (static_cast<long long>(b) * w.conv + c) * w.k;
    for (int i = 0; i + 1 < w.k; ++i) win[i] = win[i + 1];
    win[w.k - 1] = raw(a.xbc_off + c);
  }
  const int group = x_width / a.groups;
  if (threadIdx.x < a.groups) invs[threadIdx.x] = group_inv(a.part, a.heads, b, threadIdx.x, hpg, group, w.eps);
  __syncthreads();
  __nv_bfloat16* hi = w.x2 + static_cast<long long>(b) * x_width;
  __nv_bfloat16* lo = hi + static_cast<long long>(w.batch) * x_width;
  for (int i = threadIdx.x; i < x_width; i += blockDim.x)
    store_split(hi, lo, i, __ldcg(a.yg + b * a.ld_yg + i) * invs[i / group] * w.norm_w[i]);
  if (threadIdx.x == 0) w.count[b] = 0;
}

#define COIL_SSM(N)                                                                                                 \
  extern "C" __global__ void __launch_bounds__(512) ssm_gate_n##N(const SsmArgs a) { ssm_gate_body<N, float>(a); } \
  extern "C" __global__ void __launch_bounds__(512) ssm_gate_bf16_n##N(const SsmArgs a) {                         \
    ssm_gate_body<N, __nv_bfloat16>(a);                                                                             \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(512, 2) ssm_wide_n##N(const SsmArgs a, const SsmWide w) {          \
    ssm_wide_body<N, float>(a, w);                                                                                  \
  }                                                                                                                 \
  extern "C" __global__ void __launch_bounds__(512, 2) ssm_wide_bf16_n##N(const SsmArgs a, const SsmWide w) {     \
    ssm_wide_body<N, __nv_bfloat16>(a, w);                                                                          \
  }
COIL_SSM(16)
COIL_SSM(32)
COIL_SSM(64)
COIL_SSM(128)

// residual[b, :] = table[ids[b·ids_stride], :] as f32 (grid batch). The ids come from the host (stride 1) or from
// the previous step's argmax output (stride 2: id, flag).
template <typename T>
__device__ __forceinline__ void embed_body(const T* table, long long ld_table, const unsigned* ids, int ids_stride,
                                           float* resid, long long ld_resid, int cols) {
  allow_next_kernel();
  wait_prev_kernels();
  const T* src = table + static_cast<long long>(ids[blockIdx.x * ids_stride]) * ld_table;
  float* dst = resid + blockIdx.x * ld_resid;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = static_cast<float>(src[i]);
}
extern "C" __global__ void __launch_bounds__(256) embed_bf16(const __nv_bfloat16* table, long long ld_table,
                                                             const unsigned* ids, int ids_stride, float* resid,
                                                             long long ld_resid, int cols) {
  embed_body(table, ld_table, ids, ids_stride, resid, ld_resid, cols);
}
extern "C" __global__ void __launch_bounds__(256) embed_f32(const float* table, long long ld_table,
                                                            const unsigned* ids, int ids_stride, float* resid,
                                                            long long ld_resid, int cols) {
  embed_body(table, ld_table, ids, ids_stride, resid, ld_resid, cols);
}

// Greedy choice per sequence (grid batch, 1024 threads): out[2b] = the first index of the largest logit (NaN never
// wins; 0 when none is above -inf, as the CPU's argmax), out[2b + 1] = 1 when a logit is NaN or infinite.
extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* logits, long long ld, int n,
                                                               unsigned* out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ int sbad[32];
  allow_next_kernel();
  wait_prev_kernels();
  const float* row = logits + blockIdx.x * ld;
  float bv = -INFINITY;
  int bi = n;
  int bad = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = row[i];
    bad |= !isfinite(v);
    if (v > bv) bv = v, bi = i;  // i grows: a later equal value never replaces
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // The warp's best (value, index): the larger value, the smaller index among equal values.
  auto warp_best = [](float& bv, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(FULL, bv, o);
      const int i = __shfl_xor_sync(FULL, bi, o);
      if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
    }
  };
  warp_best(bv, bi);
  bad = __any_sync(FULL, bad);
  if (lane == 0) sv[warp] = bv, si[warp] = bi, sbad[warp] = bad;
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : n;
    bad = lane < nw ? sbad[lane] : 0;
    warp_best(bv, bi);
    bad = __any_sync(FULL, bad);
    if (lane == 0) {
      out[2 * blockIdx.x] = bi < n ? static_cast<unsigned>(bi) : 0u;
      out[2 * blockIdx.x + 1] = bad ? 1u : 0u;
    }
  }
}
