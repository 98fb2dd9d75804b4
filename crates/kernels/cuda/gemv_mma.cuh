// Tensor-core GEMV of the decode step for bf16 weights and 1..64 sequences (issue 14): the same products as
// decode.cu's `gemv_fused` (y[b, r] = Σ_c W[r, c]·x̂[b, c], x̂ formed as gemv_chunk forms it, then
// `finish_row<MODE>`), with the multiply-adds on the tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) so
// that the cost per weight byte hardly depends on the batch and the kernel can stream the weights at copy
// bandwidth whatever the batch. Included after decode.cu's definitions (GemvArgs, MODE_*, finish_row, ld_stream,
// allow_next_kernel, wait_prev_kernels, warp_sum, MAX_GROUPS); sm_80 and newer. No kernels here: the lab
// (dev/mma_lab.cu) and the product instantiate `gemv_mma<...>` in their own __global__ functions.
//
// Precision. x̂ is formed in f32 exactly as gemv_chunk forms it (x·inv·w; x as is in MODE_PLAIN) and split into P
// bf16 planes: hi = bf16(x̂), mid = bf16(x̂ - hi), lo = bf16(x̂ - hi - mid) (each difference is exact in f32), so
// hi + mid + lo is x̂ to about 2^-24 relative (P = 3; P = 2 keeps hi + mid, about 2^-17, the accuracy class of the
// cuBLAS path's two rows). The weights are bf16 already, so every product is exact; W·hi, W·mid and W·lo are
// summed by the tensor cores. Their f32 accumulation is not specified to round to nearest (published measurements
// of earlier chips found truncation), and a truncating chain of mma on one accumulator drifts with the running
// sum's sign; so each chain here is short: a stage's 2·P mma (two k-steps of 16 columns, lowest plane first, the
// first one from zero) go into a fresh accumulator, then added to the f32 sum with an ordinary round-to-nearest add.
//
// Operands. mma.m16n8k16 (lane = 4·g + t, g = lane / 4, t = lane % 4): A (16 x 16, row major) a0 = (row g, k 2t,
// 2t+1), a1 = (row g+8, k 2t, 2t+1), a2 = (row g, k 2t+8, 2t+9), a3 = (row g+8, k 2t+8, 2t+9); B (16 k x 8 n)
// b0 = (k 2t, 2t+1; n g), b1 = (k 2t+8, 2t+9; n g); D (16 x 8, f32) d0, d1 = (row g, n 2t, 2t+1), d2, d3 = (row
// g+8, n 2t, 2t+1). Here A is x̂ (M = 16 sequences, a "sequence tile"), B the weights (N = 8 weight rows, a "row
// tile"), K 16 columns: both of a lane's B registers come from one weight row, so a 16-byte load of that row is
// ready-made B operands (with the weights as A, a fragment interleaves rows g and g+8 and every mma needs four
// register moves first).
//
// k mapping. A dot product's terms may be summed in any order, so the 16 k of an mma may be any 16 columns, the
// same for A and B. One "block" of 32 columns [32·kb, 32·kb + 32) is two k-steps s = 0, 1: k-step s, k index 2t+e
// (e = 0, 1) <-> column 32·kb + 8t + 4s + e, k index 2t+8+e <-> column 32·kb + 8t + 4s + 2 + e. Then the lane's
// weights of a block and row tile are the 16 bytes of row g at columns 32·kb + 8t .. +8, one coalesced 16-byte
// load (8 rows x 64 contiguous bytes per warp instruction) straight from global memory into registers:
//   k-step 0: b0, b1 = words .x, .y      k-step 1: b0, b1 = words .z, .w.
// The lane's x̂ operand of k-step s is {x̂[g][8t+4s], x̂[g][+1]}, {x̂[g+8][8t+4s], +1}, {x̂[g][8t+4s+2], +3},
// {x̂[g+8][8t+4s+2], +3} (bf16 pairs, sequences of the tile), which shared memory keeps in that order: one 16-byte
// load per (block, plane, sequence tile, k-step), no register moves.
//
// Shared memory. x̂ of a block for all sequences and planes is BLK = P·ST·1024 bytes (ST sequence tiles, NS = 16·ST
// sequences): the 16 bytes at ((p·ST + st)·2 + s)·512 + 16·lane are the A operand of plane p, sequence tile st,
// k-step s for that lane. A warp's load of one operand reads 512 contiguous bytes: no bank conflicts; the forming
// threads (one per lane position, two sequences x 8 columns each) store 16 contiguous bytes each, consecutive
// threads consecutive addresses. Sequences from the real batch (GemvArgs::wide_batch) up to NS are zeros and are
// never finished. Dynamic shared memory holds first the reduction buffer (RED bytes, below), then either all of the
// CTA's K range of x̂ ("resident": formed once, kept over all the CTA's row blocks) or two chunks of cb blocks each
// (double-buffered, formed again for every row block): the kernel reads which from its dynamic shared memory size
// (%dynamic_smem_size), see gemv_mma below.
//
// Decomposition. A CTA is WM x WK warps; a "unit" of work is a row block of MR = 8·NR·WM rows and one of `ks`
// (GemvArgs::split) equal shares of the columns (kbs = ceil(cols / 32 / ks) blocks). Warp (wm, wk) owns row tiles
// [wm·NR, wm·NR + NR) of the row block (each x̂ operand serves all NR row tiles; each weight operand all ST
// sequence tiles and P planes: 2·P·ST mma per row tile per block) and every WK-th block of the share (block offset
// q·WK + wk at its stage q), so the WK warps of a warp-row split K. Each warp keeps KT stages of weights in flight
// (a register ring; a stage is a block: NR 16-byte loads per lane), the loads of the next row block issued while
// this one finishes, the first ones before waiting for the previous kernel. Rows past the end load the last row
// instead (their sums are dropped). At a unit's end the WK partial sums of a warp-row are added in warp order
// through shared memory (deterministic; a second barrier once the first warps have read them, so the other warps
// go on to the next unit without waiting for the rows to be finished), then
//   ks = 1: warp wk = 0 finishes its rows (finish_row for each row and real sequence);
//   ks > 1: the shares are added across CTAs: each CTA stores its sums into a workspace (GemvArgs::wide: u32
//           counters [GEMV_MMA_COUNTERS], zero before the first launch, then f32 partial sums [ks][batch][rows]),
//           counts itself in with an atomic on its row block's counter, and the CTA that comes last adds the ks
//           partial sums in share order and finishes the rows, then sets the counter back to zero
//           (deterministic: the order of the sum does not depend on which CTA came last). Every launch leaves
//           the counters zero, at the same place whatever the shape, so GEMVs of different shapes may share one
//           workspace (one at a time: stream order).
// Units are taken grid-stride (unit u = row block u / ks, share u % ks). Every value is summed over the same blocks
// in the same order whatever the grid and the chunk size (and KT, NR, WM): the result is bitwise the same for all
// of them (the lab checks grid and chunk size); it depends on WK, ks and P.
//
// Norm factors (MODE_IN, MODE_OUT): gemv_norms takes the batch as a template and reduces the MODE_IN rows one
// sequence at a time with two barriers each (64 dependent trips to L2 at batch 64), so `gemv_mma_norms` below
// computes the same factors for a runtime batch, one warp per sequence. MODE_IN with GemvArgs::part non-null: the
// sums of squares Σ_c x[b, c]² are given there ([batch]), computed once by whoever wrote x, instead of by every
// CTA (which reads all of x: at batch 64 that is 655 KB per CTA for a 2560-column in_proj).
//
// Limits: cols a multiple of 32 (otherwise unsupported: the launcher must not pick this kernel); any rows (the
// last row block is masked); ldw a multiple of 8, w 16-byte aligned; x, xw 16-byte aligned, ldx a multiple of 4;
// MODE_OUT with heads a multiple of groups; batch ≤ 16·ST. Non-finite x̂ gives NaN (inf - inf in the split).

#ifndef COIL_GEMV_MMA_CUH
#define COIL_GEMV_MMA_CUH

// Bytes of dynamic shared memory of one 32-column block of x̂ (all planes and sequences), and of the reduction
// buffer (the partial sums of the WK - 1 warps that are not first in their warp-row).
// The split-K workspace's counters (row blocks of one GEMV at most), before its partial sums.
constexpr int GEMV_MMA_COUNTERS = 8192;
__host__ __device__ constexpr long long gemv_mma_workspace_bytes(int ks, int batch, int rows) {
  return 4LL * GEMV_MMA_COUNTERS + 4LL * ks * batch * rows;
}
__host__ __device__ constexpr int gemv_mma_block_bytes(int st, int planes) { return planes * st * 1024; }
__host__ __device__ constexpr int gemv_mma_red_bytes(int st, int nr, int wm, int wk) {
  return wk > 1 ? (wk - 1) * wm * nr * st * 512 : 0;
}

namespace {

// d = a·b + d, one m16n8k16 bf16 product with f32 accumulators; `mma_zero`: d = a·b.
__device__ __forceinline__ void mma_acc(float (&d)[4], const uint4& a, uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}
__device__ __forceinline__ void mma_zero(float (&d)[4], const uint4& a, uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "f"(0.f));
#else
  __trap();
#endif
}

// Two floats rounded to nearest bf16, packed (lo in the low half, as the operands take consecutive k).
__device__ __forceinline__ uint32_t bf16x2_rn(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// The planes of two consecutive values: pl[0] = bf16(v), pl[1] = bf16(v - pl[0]), pl[2] = bf16(v - pl[0] - pl[1]).
template <int P>
__device__ __forceinline__ void split_planes(float v0, float v1, uint32_t (&pl)[P]) {
  pl[0] = bf16x2_rn(v0, v1);
#pragma unroll
  for (int p = 1; p < P; ++p) {
    v0 -= __uint_as_float(pl[p - 1] << 16);
    v1 -= __uint_as_float(pl[p - 1] & 0xffff0000u);
    pl[p] = bf16x2_rn(v0, v1);
  }
}

// 8 consecutive floats (16-byte aligned), plain loads (x may have been written by the previous kernel).
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// Waits for the `n` threads of named barrier 1 (the first warps of the warp-rows).
__device__ __forceinline__ void bar_first_warps(int n) { asm volatile("bar.sync 1, %0;" ::"r"(n) : "memory"); }

}  // namespace

// The norm factors of x̂ for `batch` sequences (after the earlier kernels finished), as gemv_norms computes them
// up to the summation order: MODE_IN inv[b][0] = 1/sqrt(mean(x[b]²) + eps), one warp per sequence (or from the given
// sums in GemvArgs::part); MODE_OUT inv[b][g] from the heads' sums of squares of group g.
template <int MODE, int NS>
__device__ __forceinline__ void gemv_mma_norms(const GemvArgs& a, int batch, float (&inv)[NS][MAX_GROUPS]) {
  if (MODE == MODE_IN) {
    if (a.part) {
      for (int b = threadIdx.x; b < batch; b += blockDim.x) inv[b][0] = rsqrtf(a.part[b] / a.cols + a.eps);
    } else {
      const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
      for (int b = threadIdx.x >> 5; b < batch; b += nw) {
        const float* xb = a.x + b * a.ldx;
        float ss = 0.f;
#pragma unroll 4
        for (int i = 4 * lane; i < a.cols; i += 128) {
          const float4 v = *reinterpret_cast<const float4*>(xb + i);
          ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        ss = warp_sum(ss);
        if (lane == 0) inv[b][0] = rsqrtf(ss / a.cols + a.eps);
      }
    }
  } else if (MODE == MODE_OUT) {
    const int hpg = a.heads / a.groups, group = a.cols / a.groups;
    for (int i = threadIdx.x; i < batch * a.groups; i += blockDim.x) {
      const int b = i / a.groups, g = i % a.groups;
      float s = 0.f;
      for (int h = 0; h < hpg; ++h) s += a.part[b * a.heads + g * hpg + h];
      inv[b][g] = rsqrtf(s / group + a.eps);
    }
  }
  __syncthreads();
}

// x̂ of 8 columns of sequence s (zeros past the batch), as gemv_chunk forms it.
template <int MODE, int NS>
__device__ __forceinline__ void gemv_mma_xhat(const GemvArgs& a, int batch, const float (&inv)[NS][MAX_GROUPS],
                                              int s, int c0, int group, float (&v)[8]) {
  if (s >= batch) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.f;
    return;
  }
  load8(a.x + s * a.ldx + c0, v);
  if (MODE == MODE_PLAIN) return;
  const float4 w0 = __ldg(reinterpret_cast<const float4*>(a.xw + c0));
  const float4 w1 = __ldg(reinterpret_cast<const float4*>(a.xw + c0 + 4));
  const float nv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
  const int g0 = MODE == MODE_OUT ? c0 / group : 0;
  if (MODE == MODE_OUT && (c0 + 7) / group != g0) {  // a group boundary inside the 8 columns
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = v[e] * inv[s][(c0 + e) / group] * nv[e];
  } else {
    const float iv = inv[s][g0];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = v[e] * iv * nv[e];
  }
}

// Forms x̂ of the blocks kb0 .. kb0 + nblk - 1 (those below kend) into `buf` in the layout above: block kb0 + i at
// buf + i·BLK. One item is the lane position l = 4g + t of a (block, sequence tile): sequences g and g+8 of the
// tile, columns 8t .. 8t+8 of the block (4 consecutive threads read 128 contiguous bytes of a sequence).
template <int MODE, int ST, int P>
__device__ __forceinline__ void gemv_mma_form(const GemvArgs& a, int batch, const float (&inv)[16 * ST][MAX_GROUPS],
                                              unsigned char* buf, int kb0, int nblk, int kend) {
  constexpr int BLK = P * ST * 1024;
  const int items = nblk * ST * 32;
  const int group = MODE == MODE_OUT ? a.cols / a.groups : a.cols;
  for (int it = threadIdx.x; it < items; it += blockDim.x) {
    const int blk = it / (ST * 32), st = (it >> 5) % ST, l = it & 31;
    if (kb0 + blk >= kend) continue;
    const int c0 = (kb0 + blk) * 32 + (l & 3) * 8, s0 = 16 * st + (l >> 2);
    float v0[8], v1[8];
    gemv_mma_xhat<MODE, 16 * ST>(a, batch, inv, s0, c0, group, v0);
    gemv_mma_xhat<MODE, 16 * ST>(a, batch, inv, s0 + 8, c0, group, v1);
    uint32_t p0[4][P], p1[4][P];  // [column pair][plane]
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      split_planes<P>(v0[2 * j], v0[2 * j + 1], p0[j]);
      split_planes<P>(v1[2 * j], v1[2 * j + 1], p1[j]);
    }
    unsigned char* dst = buf + blk * BLK + st * 1024 + 16 * l;
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
      for (int s = 0; s < 2; ++s)
        *reinterpret_cast<uint4*>(dst + p * ST * 1024 + s * 512) =
            make_uint4(p0[2 * s][p], p1[2 * s][p], p0[2 * s + 1][p], p1[2 * s + 1][p]);
  }
}

// y[b, r] = Σ_c W[r, c]·x̂[b, c] for bf16 W and up to 16·ST sequences (GemvArgs::wide_batch), then finish_row<MODE>
// (see the top of this file). CTA: 32·WM·WK threads. Template: ST sequence tiles of 16, NR row tiles of 8 per warp,
// WM x WK warps, KT blocks of 32 columns in flight per warp, P planes of x̂ (3; 2 for hi + mid only).
// Runtime: GemvArgs::split = ks, the CTAs that share a row block's columns (1: none; > 1: GemvArgs::wide is the
// workspace described above, gemv_mma_workspace_bytes(ks, batch, rows); ceil(rows / MR) ≤ GEMV_MMA_COUNTERS).
// Dynamic shared memory (gemv_mma_red_bytes + x̂): with RED + kbs·BLK bytes or more (kbs = ceil(cols/32/ks)) and
// ks = 1 or a grid that is a multiple of ks, x̂ of the CTA's share is formed once ("resident"); otherwise two chunks
// of cb = the largest multiple of WK with RED + 2·cb·BLK ≤ the size given (at least WK, else the kernel traps).
template <int MODE, int ST, int NR, int WM, int WK, int KT, int P = 3>
__device__ __forceinline__ void gemv_mma(const GemvArgs& a) {
  static_assert(ST >= 1 && ST <= 4 && NR >= 1 && WM >= 1 && WK >= 1 && KT >= 1, "gemv_mma: shape");
  static_assert(P == 2 || P == 3, "gemv_mma: 2 or 3 planes");
  constexpr int NS = 16 * ST, MR = 8 * NR * WM, BLK = gemv_mma_block_bytes(ST, P);
  constexpr int RED = gemv_mma_red_bytes(ST, NR, WM, WK);
  extern __shared__ __align__(16) unsigned char gmma_smem[];
  __shared__ float inv[NS][MAX_GROUPS];
  __shared__ int last_cta;
  const __nv_bfloat16* w = static_cast<const __nv_bfloat16*>(a.w);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp / WK, wk = warp - wm * WK;
  const int g = lane >> 2, t = lane & 3;
  const int batch = a.wide_batch, ks = a.split > 1 ? a.split : 1, rows = a.rows;
  const int nb = a.cols >> 5, kbs = (nb + ks - 1) / ks;  // blocks in all, per share
  const int spu = (kbs + WK * KT - 1) / (WK * KT) * KT;   // stages per unit and warp (a multiple of KT)
  const int units = (rows + MR - 1) / MR * ks;
  const int my_units = static_cast<int>(blockIdx.x) < units ? (units - 1 - blockIdx.x) / gridDim.x + 1 : 0;
  unsigned dyn;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
  const int avail = static_cast<int>(dyn) - RED;
  const bool resident = kbs * BLK <= avail && (ks == 1 || gridDim.x % ks == 0);
  const int cb = resident ? spu * WK : min(spu * WK, avail / (2 * BLK) / WK * WK);  // blocks per chunk
  if (cb < WK || batch > NS || (ks > 1 && units / ks > GEMV_MMA_COUNTERS)) __trap();  // launcher errors
  const int spc = cb / WK;                               // stages per chunk
  const int nch = resident ? 1 : (spu + spc - 1) / spc;  // chunks per unit
  unsigned char* xbuf = gmma_smem + RED;

  // The load cursor: unit li of this CTA, stage lq; per unit the block, the share's end, the row offsets.
  int li = 0, lq = 0, lkb = 0, lkend = 0;
  const __nv_bfloat16* lp = w;
  int loff[NR];  // row tile n: lp + loff[n] (rows past the end: the last row)
  auto start_unit = [&]() {
    const int u = blockIdx.x + li * gridDim.x, rb = u / ks, ksi = u - rb * ks;
    const int r = rb * MR + wm * 8 * NR + g;
    lkb = ksi * kbs + wk;
    lkend = min(nb, (ksi + 1) * kbs);
    lp = w + static_cast<long long>(min(r, rows - 1)) * a.ldw + lkb * 32 + t * 8;
#pragma unroll
    for (int n = 0; n < NR; ++n) loff[n] = (min(r + 8 * n, rows - 1) - min(r, rows - 1)) * static_cast<int>(a.ldw);
  };
  auto issue = [&](uint4 (&s)[NR]) {
    if (li >= my_units) return;
    if (lkb < lkend) {
#pragma unroll
      for (int n = 0; n < NR; ++n) s[n] = ld_stream(lp + loff[n]);
    }
    lkb += WK, lp += WK * 32;
    if (++lq == spu) {
      lq = 0, ++li;
      if (li < my_units) start_unit();
    }
  };

  allow_next_kernel();
  uint4 W[KT][NR];
  if (my_units > 0) start_unit();
  // The weights depend on nothing earlier: the first KT stages are requested before the wait.
#pragma unroll
  for (int k = 0; k < KT; ++k) issue(W[k]);
  wait_prev_kernels();
  gemv_mma_norms<MODE, NS>(a, batch, inv);
  if (my_units == 0) return;

  // Chunk J of the CTA's sequence (unit J / nch, chunk J % nch of its share) into buffer J & 1; resident: the share.
  auto form = [&](int J) {
    const int i = J / nch, j = J - i * nch;
    const int ksi = (blockIdx.x + i * gridDim.x) % ks, kend = min(nb, (ksi + 1) * kbs);
    if (resident)
      gemv_mma_form<MODE, ST, P>(a, batch, inv, xbuf, ksi * kbs, kbs, kend);
    else
      gemv_mma_form<MODE, ST, P>(a, batch, inv, xbuf + (J & 1) * cb * BLK, ksi * kbs + j * cb, cb, kend);
  };
  const int chunks = my_units * nch;
  form(0);
  __syncthreads();
  int J = 0;  // the chunk being consumed

  for (int i = 0; i < my_units; ++i) {
    const int u = blockIdx.x + i * gridDim.x, rb = u / ks, ksi = u - rb * ks;
    const int kend = min(nb, (ksi + 1) * kbs) - ksi * kbs;  // the share's blocks
    int cq = 0, cbase = 0;  // chunked: the stage within the chunk, the chunk's first block in the share
    float sum[NR][ST][4];
#pragma unroll
    for (int n = 0; n < NR; ++n)
#pragma unroll
      for (int m = 0; m < ST; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) sum[n][m][e] = 0.f;
    for (int q0 = 0; q0 < spu; q0 += KT) {
#pragma unroll
      for (int k = 0; k < KT; ++k) {
        const int q = q0 + k, kbo = q * WK + wk;  // the block's offset in the share
        if (!resident && cq == 0 && J + 1 < chunks) form(J + 1);  // a chunk starts: form the next one
        if (kbo < kend) {
          const unsigned char* xb = xbuf + (resident ? kbo : (J & 1) * cb + kbo - cbase) * BLK + 16 * lane;
#pragma unroll
          for (int m = 0; m < ST; ++m) {
            uint4 xa[P][2];  // x̂ operands [plane][k-step]
#pragma unroll
            for (int p = 0; p < P; ++p)
#pragma unroll
              for (int s = 0; s < 2; ++s)
                xa[p][s] = *reinterpret_cast<const uint4*>(xb + ((p * ST + m) * 2 + s) * 512);
#pragma unroll
            for (int n = 0; n < NR; ++n) {
              const uint4& wv = W[k][n];
              float c[4];
              mma_zero(c, xa[P - 1][0], wv.x, wv.y);
              mma_acc(c, xa[P - 1][1], wv.z, wv.w);
#pragma unroll
              for (int p = P - 2; p >= 0; --p) {
                mma_acc(c, xa[p][0], wv.x, wv.y);
                mma_acc(c, xa[p][1], wv.z, wv.w);
              }
#pragma unroll
              for (int e = 0; e < 4; ++e) sum[n][m][e] += c[e];
            }
          }
        }
        issue(W[k]);
        if (!resident && (++cq == spc || q + 1 == spu)) {  // a chunk ends
          __syncthreads();  // the next chunk is formed, this one's buffer is free
          ++J, cq = 0, cbase += cb;
        }
      }
    }

    // The warp-row's WK partial sums, added in warp order.
    if (WK > 1) {
      float4* red = reinterpret_cast<float4*>(gmma_smem);
      if (wk > 0) {
#pragma unroll
        for (int n = 0; n < NR; ++n)
#pragma unroll
          for (int m = 0; m < ST; ++m)
            red[((((wk - 1) * WM + wm) * NR + n) * ST + m) * 32 + lane] =
                make_float4(sum[n][m][0], sum[n][m][1], sum[n][m][2], sum[n][m][3]);
      }
      __syncthreads();
      if (wk == 0) {
        for (int v = 1; v < WK; ++v) {
#pragma unroll
          for (int n = 0; n < NR; ++n)
#pragma unroll
            for (int m = 0; m < ST; ++m) {
              const float4 o = red[((((v - 1) * WM + wm) * NR + n) * ST + m) * 32 + lane];
              sum[n][m][0] += o.x, sum[n][m][1] += o.y, sum[n][m][2] += o.z, sum[n][m][3] += o.w;
            }
        }
      }
      __syncthreads();  // read: `red` is free for the next unit
    }
    if (wk != 0) continue;
    // Lane (g, t) holds sequences 16m + g (e = 0, 1) and 16m + g + 8 (e = 2, 3), rows r0 + 8n + 2t + (e & 1).
    const int r0 = rb * MR + wm * 8 * NR + 2 * t;
    if (ks == 1) {
      // One sequence tile at a time, the tiles moved down after each (a loop, so that finish_row is inlined 4·NR
      // times only).
#pragma unroll 1
      for (int m = 0; m < ST; ++m) {
#pragma unroll
        for (int n = 0; n < NR; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = r0 + 8 * n + (e & 1), b = 16 * m + g + 4 * (e & 2);
            if (r < rows && b < batch) finish_row<MODE>(a, b, r, sum[n][0][e]);
          }
#pragma unroll
        for (int n = 0; n < NR; ++n)
#pragma unroll
          for (int m2 = 0; m2 + 1 < ST; ++m2)
#pragma unroll
            for (int e = 0; e < 4; ++e) sum[n][m2][e] = sum[n][m2 + 1][e];
      }
      continue;
    }
    // Across CTAs: this share's sums into the workspace, then the last CTA of the row block finishes it.
    unsigned* counters = static_cast<unsigned*>(a.wide);
    float* ws = reinterpret_cast<float*>(counters + GEMV_MMA_COUNTERS);
#pragma unroll
    for (int n = 0; n < NR; ++n)
#pragma unroll
      for (int m = 0; m < ST; ++m)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = r0 + 8 * n + (e & 1), b = 16 * m + g + 4 * (e & 2);
          if (r < rows && b < batch) ws[(static_cast<long long>(ksi) * batch + b) * rows + r] = sum[n][m][e];
        }
    __threadfence();
    bar_first_warps(32 * WM);
    if (warp == 0 && lane == 0) last_cta = atomicAdd(&counters[rb], 1u) == static_cast<unsigned>(ks - 1);
    bar_first_warps(32 * WM);
    if (!last_cta) continue;
    __threadfence();
    if (warp == 0 && lane == 0) counters[rb] = 0;  // every share has arrived: ready for the next launch
#pragma unroll 1
    for (int f = 0; f < NR * ST * 4; ++f) {
      const int n = f / (ST * 4), m = (f >> 2) % ST, e = f & 3;
      const int r = r0 + 8 * n + (e & 1), b = 16 * m + g + 4 * (e & 2);
      if (r >= rows || b >= batch) continue;
      float s = 0.f;
      for (int k2 = 0; k2 < ks; ++k2) s += __ldcg(ws + (static_cast<long long>(k2) * batch + b) * rows + r);
      finish_row<MODE>(a, b, r, s);
    }
  }
}

#endif  // COIL_GEMV_MMA_CUH
