// Causal depthwise conv1d + SiLU over a whole sequence (the prefill's xBC; issue 15 builds its backward here too):
//   out[b, t, c] = SiLU(Σ_j w[c, j]·x[b, t − (K−1) + j, c] + bias[c]),
// where positions before t = 0 read the carried-in history [B, C, K−1] (oldest first) or 0. x is read in the
// in_proj output's layout (row strides per sequence and per position, channels contiguous): no transpose copy.
// The sum runs over the taps in order and the bias comes last, as the composed op and the CPU kernel add them.
// grid (ceil(C / 128), B, ceil(T / T_TILE)), 128 threads: one channel per thread, T_TILE positions with the window
// in registers. x and out are f32 (`conv1d_silu_k*`) or bf16 (`conv1d_silu_bf16_k*`: a bf16 layer's in_proj output
// read as it is, the output rounded to nearest once, which is what the f32 kernel followed by a cast gives); the
// arithmetic is f32 either way, the history, weight and bias f32.

#include <cuda_bf16.h>

constexpr int T_TILE = 64;

__device__ __forceinline__ float act_load(float v) { return v; }
__device__ __forceinline__ float act_load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void act_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void act_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <int K, typename T>
__device__ __forceinline__ void conv1d_silu_body(const T* x, long long ld_b, long long ld_t, const float* hist,
                                                 const float* w, const float* bias, T* out, int T_len, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y, t0 = blockIdx.z * T_TILE;
  if (c >= C) return;
  const T* xb = x + b * ld_b + c;
  float wk[K], win[K];
#pragma unroll
  for (int j = 0; j < K; ++j) wk[j] = w[c * K + j];
#pragma unroll
  for (int j = 0; j + 1 < K; ++j) {
    const int s = t0 - (K - 1) + j;
    win[j] = s >= 0 ? act_load(xb[s * ld_t]) : hist ? hist[(static_cast<long long>(b) * C + c) * (K - 1) + (K - 1 + s)] : 0.f;
  }
  const float bc = bias ? bias[c] : 0.f;
  const int t1 = min(t0 + T_TILE, T_len);
  for (int t = t0; t < t1; ++t) {
    win[K - 1] = act_load(xb[t * ld_t]);
    float acc = win[0] * wk[0];
#pragma unroll
    for (int j = 1; j < K; ++j) acc += win[j] * wk[j];
    if (bias) acc += bc;
    act_store(out + (static_cast<long long>(b) * T_len + t) * C + c, acc / (1.f + expf(-acc)));
#pragma unroll
    for (int j = 0; j + 1 < K; ++j) win[j] = win[j + 1];
  }
}

#define COIL_CONV1D(K)                                                                                             \
  extern "C" __global__ void __launch_bounds__(128)                                                              \
      conv1d_silu_k##K(const float* x, long long ld_b, long long ld_t, const float* hist, const float* w,        \
                       const float* bias, float* out, int T, int C) {                                            \
    conv1d_silu_body<K>(x, ld_b, ld_t, hist, w, bias, out, T, C);                                                \
  }                                                                                                              \
  extern "C" __global__ void __launch_bounds__(128)                                                              \
      conv1d_silu_bf16_k##K(const __nv_bfloat16* x, long long ld_b, long long ld_t, const float* hist,           \
                            const float* w, const float* bias, __nv_bfloat16* out, int T, int C) {               \
    conv1d_silu_body<K>(x, ld_b, ld_t, hist, w, bias, out, T, C);                                                \
  }
COIL_CONV1D(1)
COIL_CONV1D(2)
COIL_CONV1D(3)
COIL_CONV1D(4)
