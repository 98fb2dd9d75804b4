// Mamba2's gated RMSNorm over whole sequences (the prefill): per row (position) and group of `group` channels,
//   v = y·SiLU(z);  out = w·(v / sqrt(mean_group(v²) + eps)),
// the arithmetic of the CPU kernel. y and z rows are `ld_y` and `ld_z` apart (z read in the in_proj output's
// layout); out is [rows, width] contiguous. grid (rows, width / group), 256 threads. y, z and out are f32
// (`gated_rmsnorm_rows`) or bf16 (`gated_rmsnorm_rows_bf16`: a bf16 layer's SSD output and in_proj output read as
// they are, the output rounded to nearest once, which is what the f32 kernel followed by a cast gives); the
// arithmetic is f32 either way.

#include <cuda_bf16.h>

__device__ __forceinline__ float silu_f(float v) { return v / (1.f + expf(-v)); }
__device__ __forceinline__ float act_load(float v) { return v; }
__device__ __forceinline__ float act_load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void act_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void act_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ void gated_rmsnorm_body(const T* y, long long ld_y, const T* z, long long ld_z,
                                                   const float* w, T* out, int width, int group, float eps) {
  __shared__ float red[32];
  const long long r = blockIdx.x;
  const int c0 = blockIdx.y * group;
  const T* yr = y + r * ld_y + c0;
  const T* zr = z + r * ld_z + c0;
  float ss = 0.f;
  for (int i = threadIdx.x; i < group; i += blockDim.x) {
    const float v = act_load(yr[i]) * silu_f(act_load(zr[i]));
    ss += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) red[0] = ss;
  }
  __syncthreads();
  const float inv = 1.f / sqrtf(red[0] / group + eps);
  T* o = out + r * width + c0;
  for (int i = threadIdx.x; i < group; i += blockDim.x)
    act_store(o + i, w[c0 + i] * (act_load(yr[i]) * silu_f(act_load(zr[i])) * inv));
}

extern "C" __global__ void __launch_bounds__(256) gated_rmsnorm_rows(const float* y, long long ld_y, const float* z,
                                                                     long long ld_z, const float* w, float* out,
                                                                     int width, int group, float eps) {
  gated_rmsnorm_body(y, ld_y, z, ld_z, w, out, width, group, eps);
}

extern "C" __global__ void __launch_bounds__(256)
    gated_rmsnorm_rows_bf16(const __nv_bfloat16* y, long long ld_y, const __nv_bfloat16* z, long long ld_z,
                            const float* w, __nv_bfloat16* out, int width, int group, float eps) {
  gated_rmsnorm_body(y, ld_y, z, ld_z, w, out, width, group, eps);
}
