// Helpers the decode kernels share (`decode.cu`, `attn_decode.cu`): warp sums and the programmatic-dependent-launch
// pair. Every kernel calls allow_next_kernel() as it starts and wait_prev_kernels() before it reads anything an
// earlier kernel of the stream wrote; launched without the PDL attribute (or on sm_80) both are no-ops and the
// kernels run in plain stream order.
#pragma once

namespace {

constexpr unsigned FULL = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
  return v;
}

// Lets the next kernel in the stream launch now (its griddepcontrol.wait still waits for this one to finish).
__device__ __forceinline__ void allow_next_kernel() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Waits until the kernels this one depends on have finished and their writes are visible.
__device__ __forceinline__ void wait_prev_kernels() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

}  // namespace
