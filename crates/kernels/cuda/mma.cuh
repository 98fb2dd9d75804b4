// Warp-level tensor-core building blocks shared by Coil's kernels (sm_80 and newer): 16-byte asynchronous
// copies into shared memory, ldmatrix fragment loads and the bf16 m16n8k16 mma with fp32 accumulators.
//
// Fragment layouts of mma.m16n8k16 (lane = 4·group + tig, group = lane / 4, tig = lane % 4):
//   A (16x16, row-major): a0 = (row group,   cols 2tig, 2tig+1)   a1 = (row group+8, cols 2tig, 2tig+1)
//                         a2 = (row group,   cols 2tig+8, +9)     a3 = (row group+8, cols 2tig+8, +9)
//   B (16x8, k x n):      b0 = (k 2tig, 2tig+1; n group)          b1 = (k 2tig+8, +9; n group)
//   C/D (16x8, fp32):     c0, c1 = (row group, cols 2tig, 2tig+1) c2, c3 = (row group+8, same cols)
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace coil {

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; `src_bytes` < 16 zero-fills the rest (0: the whole line).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
// 4 bytes global -> shared (through L1); `src_bytes` 0 zero-fills.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ldmatrix.x4 (optionally transposed) at a shared-window address.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a · b (bf16 operands, fp32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Shared tiles of W bf16 per row (W·2 bytes, a multiple of 128, tile start 128-byte aligned) keep their 16-byte
// chunks XOR-swizzled by the row: logical chunk c of row r sits at chunk ((c ^ r) & 7) | (c & ~7), so 8
// consecutive rows at one logical chunk hit 8 different bank groups (ldmatrix and cp.async conflict-free, no
// padding). Addresses are byte offsets from the start of dynamic shared memory.
template <int W>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return row * (W * 2) + ((((chunk ^ row) & 7) | (chunk & ~7)) << 4);
}
// `swz` moved by compile-time steps: `rows` a multiple of 8, `chunks` whose low 3 bits do not overlap those of the
// chunk already addressed (then XOR-ing the low bits is the same as adding): one XOR plus an add the compiler
// folds into the instruction's immediate offset, instead of recomputing the swizzle.
template <int W>
__device__ __forceinline__ uint32_t swz_moved(uint32_t off, int rows, int chunks) {
  return (off ^ ((chunks & 7) << 4)) + ((chunks >> 3) << 7) + rows * (W * 2);
}

// A lane's fragment address (m16n8k16 operands through ldmatrix.x4) at the origin (m0 | n0, k0 = 0) of a tile:
//   A from an [m][k] tile, A from a [k][m] tile (transposed load), and the B operands of two n-tiles (n0, n0 + 8)
//   from an [n][k] tile or a [k][n] tile (transposed load): b[0], b[1] = tile n0; b[2], b[3] = tile n0 + 8.
template <int W>
__device__ __forceinline__ uint32_t frag_a(int m0, int lane) { return swz<W>(m0 + (lane & 15), lane >> 4); }
template <int W>
__device__ __forceinline__ uint32_t frag_a_t(int m0, int lane) {
  return swz<W>((lane & 7) + ((lane >> 4) & 1) * 8, m0 / 8 + ((lane >> 3) & 1));
}
template <int W>
__device__ __forceinline__ uint32_t frag_b_nk(int n0, int lane) {
  return swz<W>(n0 + (lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
}
template <int W>
__device__ __forceinline__ uint32_t frag_b_kn(int n0, int lane) {
  return swz<W>((lane & 7) + ((lane >> 3) & 1) * 8, n0 / 8 + (lane >> 4));
}

}  // namespace coil
