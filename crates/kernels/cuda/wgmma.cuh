// Hopper (sm_90a) warpgroup MMA building blocks: shared-memory matrix descriptors for 128-byte-swizzled tiles,
// the bf16 m64n64k16 wgmma with fp32 accumulators, and the fences and waits around it.
//
// Tiles: 64-element (128-byte) rows, 8-row atoms of 1024 bytes, 16-byte chunk c of row r stored at chunk
// c ^ (r % 8) (the hardware's 128-byte swizzle, applied to address bits 4-6 from bits 7-9, so every tile starts
// 1024-byte aligned). Wider operands are stored as panels of 64 columns, one [rows][64] tile after another.
//   K-major operand (k contiguous in a row): 8-row groups `sbo` = 1024 bytes apart; a k16 step inside a 64-wide
//     panel moves the start address by 32 bytes; the next panel starts a panel further.
//   MN-major operand (m or n contiguous in a row, one row per k): rows are k; k16 = two 8-row groups `sbo` = 1024
//     bytes apart, so a k16 step moves the start by 2048 bytes; 64-wide m/n groups are `lbo` bytes apart.
// Accumulators of m64nN: warp w of the warpgroup holds rows 16w + group (+8) of every 8-column tile i in
// d[4i .. 4i + 3], the layout of mma.sync's m16n8 C fragment (see mma.cuh).
#pragma once
#include <stdint.h>

namespace coil {

// Byte offset of chunk `chunk` (16 bytes, any column panel) of row `row` in a panel-major swizzled tile whose
// panels hold `rows` rows.
template <int ROWS>
__device__ __forceinline__ uint32_t pan(int row, int chunk) {
  return (chunk >> 3) * (ROWS * 128) + row * 128 + (((chunk ^ row) & 7) << 4);
}

// Descriptor of a 128-byte-swizzled operand at shared address `addr`.
__device__ __forceinline__ uint64_t gmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

// Generic-proxy writes to shared memory (st.shared, cp.async) made visible to wgmma's async proxy; each writing
// thread runs it before the barrier that publishes the writes.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of accumulators across a wgmma wait.
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (+)= A · B for a 64 x 64 x 16 step: A [64 x 16] and B [16 x 64] from descriptors; TA / TB = 1 when the operand
// is MN-major. `accumulate` = 0 overwrites d.
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
}

}  // namespace coil
