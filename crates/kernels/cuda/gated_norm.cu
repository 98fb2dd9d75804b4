// Mamba2's gated RMSNorm over whole sequences (the prefill): per row (position) and group of `group` channels,
//   v = y·SiLU(z);  out = w·(v / sqrt(mean_group(v²) + eps)),
// the arithmetic of the CPU kernel. y and z rows are `ld_y` and `ld_z` apart (z read in the in_proj output's
// layout); out is [rows, width] contiguous. grid (rows, width / group), 256 threads.

__device__ __forceinline__ float silu_f(float v) { return v / (1.f + expf(-v)); }

extern "C" __global__ void __launch_bounds__(256) gated_rmsnorm_rows(const float* y, long long ld_y, const float* z,
                                                                     long long ld_z, const float* w, float* out,
                                                                     int width, int group, float eps) {
  __shared__ float red[32];
  const long long r = blockIdx.x;
  const int c0 = blockIdx.y * group;
  const float* yr = y + r * ld_y + c0;
  const float* zr = z + r * ld_z + c0;
  float ss = 0.f;
  for (int i = threadIdx.x; i < group; i += blockDim.x) {
    const float v = yr[i] * silu_f(zr[i]);
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
  float* o = out + r * width + c0;
  for (int i = threadIdx.x; i < group; i += blockDim.x) o[i] = w[c0 + i] * (yr[i] * silu_f(zr[i]) * inv);
}
