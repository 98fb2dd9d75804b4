// Single-token decode kernels of a Mamba2 layer (issue 14): the weight-streaming matrix-vector product and the
// per-sequence state updates, each one memory-bound pass. Per layer and token the step is
//   add_rmsnorm      residual += x; h = RMSNorm(residual)·w                      (one CTA per sequence)
//   gemv_bf16        zxbcdt = W_in · h                                          (bf16 weights, f32 activations)
//   conv_step        window rolled to take the new input; xBC = SiLU(conv1d over the window + bias) (per channel)
//   ssm_step         dt = clamp(softplus(dt_raw + bias)); s ← exp(dt·A)·s + dt·x⊗B; y = s·C + D·x  (per head)
//   gated_rmsnorm    y = RMSNorm_group(y · SiLU(z))·w                           (per norm group)
//   gemv_bf16        out = W_out · y
// All activations are f32 and all states f32, as the CPU engine keeps them (crates/infer/src/step.rs), so the
// GPU step can match it to f32 rounding. Layouts are row-major: activations [batch, width] with a row stride.

#include <cuda_bf16.h>
#include <stdint.h>

namespace {

constexpr unsigned FULL = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

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

}  // namespace

// y[b, r] = Σ_c W[r, c] · x[b, c] (+ bias[r]) for BATCH sequences, W in bf16 or f32: each warp owns RPW
// consecutive rows, each lane streams 16-byte chunks of them (UNROLL chunks of every row in flight per lane before
// any is used), the activations read through L1. Rows of W and x start 16-byte aligned and C is a whole number of
// chunks (the launcher checks).
template <typename WT, int BATCH, int UNROLL = 4, int RPW = 1>
__device__ __forceinline__ void gemv_body(const WT* __restrict__ w, long long ldw, const float* __restrict__ bias,
                                          const float* __restrict__ x, long long ldx, float* __restrict__ y,
                                          long long ldy, int rows, int cols) {
  constexpr int E = 16 / sizeof(WT);  // weights per 16-byte chunk
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int chunks = cols / E;
  for (int r0 = (blockIdx.x * warps + (threadIdx.x >> 5)) * RPW; r0 < rows; r0 += gridDim.x * warps * RPW) {
    float acc[RPW][BATCH];
#pragma unroll
    for (int i = 0; i < RPW; ++i)
#pragma unroll
      for (int b = 0; b < BATCH; ++b) acc[i][b] = 0.f;
    for (int c0 = lane; c0 < chunks; c0 += 32 * UNROLL) {
      uint4 u[RPW][UNROLL];
#pragma unroll
      for (int i = 0; i < RPW; ++i)
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
          const int c = c0 + 32 * k;
          u[i][k] = c < chunks && r0 + i < rows ? ld_stream(w + (r0 + i) * ldw + E * c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        const int c = c0 + 32 * k;
        if (c >= chunks) break;
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
          float xv[E];
#pragma unroll
          for (int e = 0; e < E; e += 4) {
            const float4 x4 = __ldg(reinterpret_cast<const float4*>(x + b * ldx + E * c + e));
            xv[e] = x4.x, xv[e + 1] = x4.y, xv[e + 2] = x4.z, xv[e + 3] = x4.w;
          }
#pragma unroll
          for (int i = 0; i < RPW; ++i) {
            float wf[E];
            chunk_to_f32(u[i][k], wf);
#pragma unroll
            for (int e = 0; e < E; ++e) acc[i][b] += wf[e] * xv[e];
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < RPW; ++i)
#pragma unroll
      for (int b = 0; b < BATCH; ++b) {
        const float s = warp_sum(acc[i][b]);
        if (lane == 0 && r0 + i < rows) y[b * ldy + r0 + i] = bias ? s + bias[r0 + i] : s;
      }
  }
}

#define COIL_GEMV(NAME, WT, B)                                                                                  \
  extern "C" __global__ void __launch_bounds__(256) gemv_##NAME##_b##B(const WT* w, long long ldw,               \
                                                                         const float* bias, const float* x,      \
                                                                         long long ldx, float* y, long long ldy, \
                                                                         int rows, int cols) {                   \
    gemv_body<WT, B>(w, ldw, bias, x, ldx, y, ldy, rows, cols);                                                   \
  }
COIL_GEMV(bf16, __nv_bfloat16, 1)
COIL_GEMV(bf16, __nv_bfloat16, 2)
COIL_GEMV(bf16, __nv_bfloat16, 4)
COIL_GEMV(bf16, __nv_bfloat16, 8)
COIL_GEMV(f32, float, 1)
COIL_GEMV(f32, float, 2)
COIL_GEMV(f32, float, 4)
COIL_GEMV(f32, float, 8)

// residual[b] += x[b] (x may be null: the first layer's residual is the embedding); h[b] = RMSNorm(residual[b])·w.
// One CTA per sequence.
extern "C" __global__ void __launch_bounds__(256) add_rmsnorm(float* residual, const float* x, const float* w,
                                                              float* h, int width, long long ld, float eps) {
  __shared__ float red[32];
  float* r = residual + blockIdx.x * ld;
  const float* xi = x ? x + blockIdx.x * ld : nullptr;
  float ss = 0.f;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    const float v = xi ? r[i] + xi[i] : r[i];
    r[i] = v;
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, red) / width + eps);
  for (int i = threadIdx.x; i < width; i += blockDim.x) h[blockIdx.x * ld + i] = r[i] * inv * w[i];
}

// Causal conv1d step over `channels` channels of one token per sequence. The window holds the last K raw inputs
// of each channel, oldest first ([batch, channels, K], the model's conv state): it drops its oldest input and
// takes `in`, then out = SiLU(Σ_k w[c, k]·window[k] + bias[c]). grid (ceil(channels / 256), batch).
extern "C" __global__ void __launch_bounds__(256) conv_step(const float* in, long long ld_in, float* window,
                                                            const float* w, const float* bias, float* out,
                                                            long long ld_out, int channels, int k) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (c >= channels) return;
  float* win = window + (static_cast<long long>(b) * channels + c) * k;
  const float* wc = w + static_cast<long long>(c) * k;
  float acc = bias ? bias[c] : 0.f;
  for (int i = 0; i + 1 < k; ++i) {
    const float v = win[i + 1];
    win[i] = v;
    acc += wc[i] * v;
  }
  const float v = in[b * ld_in + c];
  win[k - 1] = v;
  acc += wc[k - 1] * v;
  out[b * ld_out + c] = silu(acc);
}

// The SSM update of one token for head h of sequence b (grid (heads, batch), P·4 threads: four per state row,
// each owning N/4 columns as float4s; N a multiple of 16, P at most 256). dt = clamp(softplus(dt_raw + dt_bias), lo, hi);
// s[p, n] ← exp(dt·A)·s[p, n] + dt·x[p]·B[n]; y[p] = Σ_n s[p, n]·C[n] + D·x[p].
// x, B and C are columns of the conv output `xbc` ([batch, ...]: x of head h at h·P, B of group g at x_width +
// g·N, C at x_width + G·N + g·N); dt_raw is column h of `dt` ([batch, ...]); state [batch, heads, P, N].
template <int N>
__device__ __forceinline__ void ssm_step_body(const float* __restrict__ xbc, long long ld_xbc,
                                              const float* __restrict__ dt_raw, long long ld_dt,
                                              const float* __restrict__ a, const float* __restrict__ dt_bias,
                                              const float* __restrict__ d, float* __restrict__ state,
                                              float* __restrict__ y, long long ld_y, int heads, int groups,
                                              int head_dim, float dt_lo, float dt_hi) {
  const int h = blockIdx.x, b = blockIdx.y;
  const int p = threadIdx.x >> 2, q = threadIdx.x & 3;
  const int g = h / (heads / groups);
  const int x_width = heads * head_dim;
  const float* row = xbc + b * ld_xbc;
  float v = dt_raw[b * ld_dt + h] + (dt_bias ? dt_bias[h] : 0.f);
  v = v > 20.f ? v : log1pf(__expf(v));
  const float dt = fminf(fmaxf(v, dt_lo), dt_hi);
  const float da = __expf(dt * a[h]);
  const float xp = row[h * head_dim + p];
  const float dx = dt * xp;
  const float* bm = row + x_width + g * N;
  const float* cm = row + x_width + groups * N + g * N;
  float4* s = reinterpret_cast<float4*>(state + ((static_cast<long long>(b) * heads + h) * head_dim + p) * N);
  // ptxas schedules each state load after the previous float4's store, one DRAM round trip at a time (ncu: DRAM
  // 13% busy at batch 64), so all of this thread's state lines are requested into L2 first.
#pragma unroll
  for (int j = 0; j < N / 16; ++j) asm volatile("prefetch.global.L2 [%0];" ::"l"(s + q + 4 * j));
  float4 sv[N / 16];
#pragma unroll
  for (int j = 0; j < N / 16; ++j) sv[j] = s[q + 4 * j];  // the four threads of a row interleave: loads coalesce
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < N / 16; ++j) {
    const int n4 = q + 4 * j;
    const float4 bv = __ldg(reinterpret_cast<const float4*>(bm) + n4);
    const float4 cv = __ldg(reinterpret_cast<const float4*>(cm) + n4);
    float4 v4 = sv[j];
    v4.x = v4.x * da + dx * bv.x, v4.y = v4.y * da + dx * bv.y;
    v4.z = v4.z * da + dx * bv.z, v4.w = v4.w * da + dx * bv.w;
    acc += v4.x * cv.x + v4.y * cv.y + v4.z * cv.z + v4.w * cv.w;
    s[n4] = v4;
  }
  acc += __shfl_xor_sync(FULL, acc, 1);
  acc += __shfl_xor_sync(FULL, acc, 2);
  if (q == 0) y[b * ld_y + h * head_dim + p] = acc + (d ? d[h] : 0.f) * xp;
}

#define COIL_SSM_STEP(N)                                                                                          \
  extern "C" __global__ void __launch_bounds__(512) ssm_step_n##N(                                                \
      const float* xbc, long long ld_xbc, const float* dt_raw, long long ld_dt, const float* a,                   \
      const float* dt_bias, const float* d, float* state, float* y, long long ld_y, int heads, int groups,        \
      int head_dim, float dt_lo, float dt_hi) {                                                                   \
    ssm_step_body<N>(xbc, ld_xbc, dt_raw, ld_dt, a, dt_bias, d, state, y, ld_y, heads, groups, head_dim, dt_lo,  \
                     dt_hi);                                                                                      \
  }
COIL_SSM_STEP(16)
COIL_SSM_STEP(32)
COIL_SSM_STEP(64)
COIL_SSM_STEP(128)

// Mamba2's gated RMSNorm (norm after the gate): out = RMSNorm(y · SiLU(z)) · w over groups of `group` channels.
// grid (width / group, batch); z is a column range of the in_proj output.
extern "C" __global__ void __launch_bounds__(256) gated_rmsnorm(const float* y, long long ld_y, const float* z,
                                                                long long ld_z, const float* w, float* out,
                                                                long long ld_out, int group, float eps) {
  __shared__ float red[32];
  const int b = blockIdx.y, c0 = blockIdx.x * group;
  float ss = 0.f;
  for (int i = threadIdx.x; i < group; i += blockDim.x) {
    const float v = y[b * ld_y + c0 + i] * silu(z[b * ld_z + c0 + i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, red) / group + eps);
  for (int i = threadIdx.x; i < group; i += blockDim.x) {
    const float v = y[b * ld_y + c0 + i] * silu(z[b * ld_z + c0 + i]);
    out[b * ld_out + c0 + i] = v * inv * w[c0 + i];
  }
}
