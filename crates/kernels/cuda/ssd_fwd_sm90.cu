// Fused SSD forward on Hopper warpgroup MMAs (sm_90a): the function of `ssd_fwd.cu` (see there for the math),
// for head dim 64 and state 128 (Nemotron-H, Mamba2 and Mamba2-Hybrid all use this pair).
//
// One CTA (two warpgroups) owns one (batch row, head) and walks the sequence in blocks of L = 64 positions with
// the [64, 128] fp32 state in registers, half of its columns in each warpgroup. All four products run as
// m64n64k16 wgmma with both operands read by the tensor cores straight from 128-byte-swizzled shared memory, so
// no ldmatrix and no per-warp operand copies:
//   phase 1  WG0: C · Sᵀ (y from the entering state)        WG1: C · Bᵀ           (K-major, k = n, 8 steps)
//            then WG0 scales its rows by 2^(s_l), WG1 writes M = C·Bᵀ ⊙ decay ⊙ dt_j (causal, one segment) as bf16
//   phase 2  WG0: y += M · x (x MN-major, 4 steps), + D·x, staged in C; everyone scales B rows by w_j in place
//   phase 3  each WG: H[:, its 64 columns] ← 2^(s_last)·H + xᵀ · (w ⊙ B) (both operands
//            MN-major, 4 steps) while y goes to HBM in 16-byte rows; the bf16 copy of H for the next C · Sᵀ
// Three barriers per block. Tiles arrive by cp.async one block ahead (raw dt and seq_idx two blocks ahead), and
// the next block's scalars are computed by warp 0 while phase 1's MMAs run.

#include "ssd_common.cuh"
#include "wgmma.cuh"

namespace {

// Shared memory (byte offsets from a 1024-byte aligned base); every tile is made of [64 rows][64] bf16 panels.
struct Sm90Layout {
  static constexpr int TILE = L * 128;              // one panel: 8 KB
  static constexpr int X = 0;                       // [2] x [l][p]: one panel each
  static constexpr int B = X + 2 * TILE;            // [2] B [l][n]: two panels each; scaled in place for the state
  static constexpr int C = B + 4 * TILE;            // [2] C [l][n]: two panels each; C[cur] stages y
  static constexpr int S = C + 4 * TILE;            // the state entering the block, bf16 [p][n]: two panels
  static constexpr int M = S + 2 * TILE;            // [l][j]: one panel
  static constexpr int F = M + TILE;                // [2][F_LEN] floats
  static constexpr int R = F + 2 * F_LEN * 4;       // [2][2·L] words: raw dt, then seq_idx
  static constexpr int BYTES = R + 2 * 2 * L * 4;   // src/ssd_fwd.rs `smem_bytes_sm90` mirrors this
  static constexpr int ALLOC = BYTES + 1024;        // + slack to align the base
  static_assert(2 * (ALLOC + 1024) <= 228 * 1024, "two CTAs per SM on sm_90");
};

// cp.async plan for [L, W] bf16 tiles stored as panels: the thread copies chunk `col/8` of rows row0, row0 + STEP,
// ...; STEP is a multiple of 8, so the swizzle is the same for all of them and shared offsets are constant steps.
template <int W>
struct PanelCopy {
  static constexpr int CPR = W / 8, STEP = THREADS / CPR, PER_THREAD = L / STEP;
  static_assert(STEP % 8 == 0, "rows a thread copies share one swizzle phase");
  int row0, src0, src_step;
  uint32_t dst0;
  __device__ __forceinline__ void init(long long ts) {
    row0 = threadIdx.x / CPR;
    const int col = (threadIdx.x % CPR) * 8;
    src0 = static_cast<int>(row0 * ts) + col;
    src_step = static_cast<int>(STEP * ts);
    dst0 = pan<L>(row0, col / 8);
  }
  __device__ __forceinline__ void issue(uint32_t tile, const bf16* block, int rows_left) const {
#pragma unroll
    for (int q = 0; q < PER_THREAD; ++q) {
      const bool ok = row0 + q * STEP < rows_left;
      cp_async16(tile + dst0 + q * STEP * 128, block + (ok ? src0 + q * src_step : 0), ok ? 16 : 0);
    }
  }
};

__device__ __forceinline__ void ssd_fwd_sm90_body(const SsdFwdParams& p) {
  constexpr int N = 128;
  using Lay = Sm90Layout;
  constexpr uint32_t TILE = Lay::TILE;
  constexpr int SCALAR_WARP = 0;  // WG0 has no M epilogue: its warp 0 computes the next block's scalars

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_base = smem_addr(smem_raw);
  const uint32_t pad = ((raw_base + 1023u) & ~1023u) - raw_base;
  unsigned char* smem = smem_raw + pad;
  const uint32_t sbase = raw_base + pad;
  float* fsm = reinterpret_cast<float*>(smem + Lay::F);
  const uint32_t* rawsm = reinterpret_cast<const uint32_t*>(smem + Lay::R);

  const int h = blockIdx.x, bi = blockIdx.y;
  const int g = h / (p.heads / p.groups);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wg = warp >> 2, wr = warp & 3;  // warpgroup; rows 16·wr .. of every accumulator
  const int grp = lane >> 2, tig = lane & 3;
  const int nblk = (p.seqlen + L - 1) / L;

  const bf16* xg = p.x + bi * p.x_bs + h * 64;
  const bf16* bg = p.b + bi * p.bc_bs + g * N;
  const bf16* cg = p.c + bi * p.bc_bs + g * N;
  bf16* yg = p.y + bi * p.y_bs + h * 64;
  const long long dt_off = bi * p.dt_bs + h;
  const int* seq = p.seq_idx ? p.seq_idx + static_cast<long long>(bi) * p.seqlen : nullptr;
  const float a2 = p.a[h] * LOG2E;
  const float dtb = p.dt_bias ? p.dt_bias[h] : 0.f;
  const float dh = p.d ? p.d[h] : 0.f;

  // Accumulator element (row ra or rb = ra + 8, columns 8i + 2tig, +1) of a [64][64] panel sits at
  // e ^ (i << 4) (+ 1024 for rb): rows ra and rb share the swizzle phase grp.
  const int ra = wr * 16 + grp, rb = ra + 8;
  const uint32_t e_row = ra * 128 + (grp << 4) + 4 * tig;

  PanelCopy<64> cx;
  PanelCopy<N> cbc;
  cx.init(p.x_ts);
  cbc.init(p.bc_ts);
  auto issue_block = [&](int blk, int buf) {
    const long long t0 = static_cast<long long>(blk) * L;
    const int left = p.seqlen - blk * L;
    cx.issue(sbase + Lay::X + buf * TILE, xg + t0 * p.x_ts, left);
    cbc.issue(sbase + Lay::B + buf * 2 * TILE, bg + t0 * p.bc_ts, left);
    cbc.issue(sbase + Lay::C + buf * 2 * TILE, cg + t0 * p.bc_ts, left);
  };

  issue_block(0, 0);
  cp_async_commit();
  issue_raw(sbase + Lay::R, p, dt_off, seq, 0);
  if (nblk > 1) issue_raw(sbase + Lay::R + 2 * L * 4, p, dt_off, seq, L);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  int last_seq = seq ? seq[0] : 0, seg = 0;
  if (warp == SCALAR_WARP) block_scalars(fsm, p, 0, rawsm, dt_off, a2, dtb, last_seq, seg, lane);

  // The state: this warpgroup's columns 64·wg .. (panel wg of S).
  float st[32];
  const float* init = p.init_state ? p.init_state + (static_cast<long long>(bi) * p.heads + h) * 64 * N : nullptr;
  const uint32_t es = Lay::S + wg * TILE + e_row;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int cn = 64 * wg + 8 * i + 2 * tig;
    if (init) {
      const float2 lo = *reinterpret_cast<const float2*>(init + ra * N + cn);
      const float2 hi = *reinterpret_cast<const float2*>(init + rb * N + cn);
      st[4 * i] = lo.x, st[4 * i + 1] = lo.y, st[4 * i + 2] = hi.x, st[4 * i + 3] = hi.y;
    } else {
      st[4 * i] = st[4 * i + 1] = st[4 * i + 2] = st[4 * i + 3] = 0.f;
    }
    *reinterpret_cast<uint32_t*>(smem + (es ^ (i << 4))) = pack_bf16(st[4 * i], st[4 * i + 1]);
    *reinterpret_cast<uint32_t*>(smem + (es ^ (i << 4)) + 1024) = pack_bf16(st[4 * i + 2], st[4 * i + 3]);
  }
  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.f;

  for (int k = 0; k < nblk; ++k) {
    const int cur = k & 1, nxt = cur ^ 1, t0 = k * L;
    cp_async_wait<0>();
    fence_proxy_async();  // this thread's cp.async and st.shared writes, visible to the tensor cores
    __syncthreads();      // block k's tiles and scalars, and the state entering it, are in shared memory
    if (k + 1 < nblk) issue_block(k + 1, nxt);
    if (k + 2 < nblk) issue_raw(sbase + Lay::R + cur * 2 * L * 4, p, dt_off, seq, t0 + 2 * L);
    cp_async_commit();

    const float* f = fsm + cur * F_LEN;
    const int* sg = reinterpret_cast<const int*>(f + F_SEG);
    const uint32_t xt = sbase + Lay::X + cur * TILE;
    const uint32_t bt = sbase + Lay::B + cur * 2 * TILE;
    const uint32_t ct = sbase + Lay::C + cur * 2 * TILE;

    // (1) WG0: C · Sᵀ; WG1: C · Bᵀ. The scalar warp works on the next block while the MMAs run.
    {
      const uint32_t bop = wg == 0 ? sbase + Lay::S : bt;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < N / 16; ++kk) {
        const uint32_t off = (kk >> 2) * TILE + (kk & 3) * 32;
        wgmma_m64n64k16<0, 0>(acc, gmma_desc(ct + off, 16, 1024), gmma_desc(bop + off, 16, 1024), kk > 0);
      }
      wgmma_commit();
      if (warp == SCALAR_WARP && k + 1 < nblk)
        block_scalars(fsm + nxt * F_LEN, p, t0 + L, rawsm + nxt * 2 * L, dt_off, a2, dtb, last_seq, seg, lane);
      wgmma_wait<0>();
      fence_regs(acc);
    }
    if (wg == 1) {
      // M = C·Bᵀ ⊙ 2^(s_l + E_j) on and below the diagonal within one segment, zero above; bf16.
      const float acs_a = f[F_ACS + ra], acs_b = f[F_ACS + rb];
      const bool segs = seq != nullptr;
      const int sga = segs ? sg[ra] : 0, sgb = segs ? sg[rb] : 0;
      const uint32_t em = Lay::M + e_row;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float m00 = 0.f, m01 = 0.f, m10 = 0.f, m11 = 0.f;
        if (i <= 2 * wr + 1) {
          const int c0 = i * 8 + 2 * tig;
          const float2 e = *reinterpret_cast<const float2*>(f + F_E + c0);
          m00 = acc[4 * i] * fast_exp2(acs_a + e.x), m01 = acc[4 * i + 1] * fast_exp2(acs_a + e.y);
          m10 = acc[4 * i + 2] * fast_exp2(acs_b + e.x), m11 = acc[4 * i + 3] * fast_exp2(acs_b + e.y);
          if (i >= 2 * wr) {  // the diagonal 16 x 16 block: causal mask (the exps may be inf above it)
            m00 = c0 <= ra ? m00 : 0.f, m01 = c0 + 1 <= ra ? m01 : 0.f;
            m10 = c0 <= rb ? m10 : 0.f, m11 = c0 + 1 <= rb ? m11 : 0.f;
          }
          if (segs) {
            const int2 sc = *reinterpret_cast<const int2*>(sg + c0);
            m00 = sc.x == sga ? m00 : 0.f, m01 = sc.y == sga ? m01 : 0.f;
            m10 = sc.x == sgb ? m10 : 0.f, m11 = sc.y == sgb ? m11 : 0.f;
          }
        }
        *reinterpret_cast<uint32_t*>(smem + (em ^ (i << 4))) = pack_bf16(m00, m01);
        *reinterpret_cast<uint32_t*>(smem + (em ^ (i << 4)) + 1024) = pack_bf16(m10, m11);
      }
    } else {
      const float ysa = f[F_YS + ra], ysb = f[F_YS + rb];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[4 * i] *= ysa, acc[4 * i + 1] *= ysa, acc[4 * i + 2] *= ysb, acc[4 * i + 3] *= ysb;
    }
    fence_proxy_async();
    __syncthreads();  // M complete; B and C no longer read by phase 1

    // (2) WG0: y += M · x on the tensor cores while everyone scales B rows by w_j for the state update.
    if (wg == 0) {
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_m64n64k16<0, 1>(acc, gmma_desc(sbase + Lay::M + ks * 32, 16, 1024),
                              gmma_desc(xt + ks * 2048, TILE, 1024), 1);
      wgmma_commit();
    }
    {
      const int r0 = threadIdx.x / 16, ch = threadIdx.x % 16;
      const uint32_t b0 = Lay::B + cur * 2 * TILE + pan<L>(r0, ch);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint4* v = reinterpret_cast<uint4*>(smem + b0 + q * 16 * 128);
        const float w = f[F_WF + r0 + 16 * q];
        uint4 u = *v;
        __nv_bfloat162* e = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 x2 = __bfloat1622float2(e[j]);
          e[j] = __floats2bfloat162_rn(x2.x * w, x2.y * w);
        }
        *v = u;
      }
    }
    if (wg == 0) {
      wgmma_wait<0>();
      fence_regs(acc);
      // + D·x; staged as bf16 in C (panel 0 of the current buffer) for 16-byte stores.
      const uint32_t ex = Lay::X + cur * TILE + e_row, ey = Lay::C + cur * 2 * TILE + e_row;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float2 xa = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(smem + (ex ^ (i << 4))));
        const float2 xb =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(smem + (ex ^ (i << 4)) + 1024));
        *reinterpret_cast<uint32_t*>(smem + (ey ^ (i << 4))) =
            pack_bf16(acc[4 * i] + dh * xa.x, acc[4 * i + 1] + dh * xa.y);
        *reinterpret_cast<uint32_t*>(smem + (ey ^ (i << 4)) + 1024) =
            pack_bf16(acc[4 * i + 2] + dh * xb.x, acc[4 * i + 3] + dh * xb.y);
      }
    }
    fence_proxy_async();
    __syncthreads();  // scaled B and staged y complete; the entering state's bf16 copy no longer read

    // (3) The state update of this warpgroup's 64 columns runs on the tensor cores while y goes to HBM in
    // 16-byte rows; then the state's bf16 copy for the next block.
    {
      const float dec = f[F_DEC];
#pragma unroll
      for (int i = 0; i < 32; ++i) st[i] *= dec;
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_m64n64k16<1, 1>(st, gmma_desc(xt + ks * 2048, TILE, 1024),
                              gmma_desc(bt + wg * TILE + ks * 2048, TILE, 1024), 1);
      wgmma_commit();
    }
    {
      const int r0 = threadIdx.x / 8, ch = threadIdx.x % 8;
      const uint32_t y0 = Lay::C + cur * 2 * TILE + pan<L>(r0, ch);
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int r = r0 + 32 * q;
        if (t0 + r < p.seqlen)
          *reinterpret_cast<uint4*>(yg + (t0 + r) * p.y_ts + ch * 8) =
              *reinterpret_cast<const uint4*>(smem + y0 + q * 32 * 128);
      }
    }
    wgmma_wait<0>();
    fence_regs(st);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      *reinterpret_cast<uint32_t*>(smem + (es ^ (i << 4))) = pack_bf16(st[4 * i], st[4 * i + 1]);
      *reinterpret_cast<uint32_t*>(smem + (es ^ (i << 4)) + 1024) = pack_bf16(st[4 * i + 2], st[4 * i + 3]);
    }
  }

  if (p.final_state) {
    float* fin = p.final_state + (static_cast<long long>(bi) * p.heads + h) * 64 * N;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int cn = 64 * wg + 8 * i + 2 * tig;
      *reinterpret_cast<float2*>(fin + ra * N + cn) = make_float2(st[4 * i], st[4 * i + 1]);
      *reinterpret_cast<float2*>(fin + rb * N + cn) = make_float2(st[4 * i + 2], st[4 * i + 3]);
    }
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(THREADS, 2) ssd_fwd_sm90_p64_n128(const SsdFwdParams p) {
  ssd_fwd_sm90_body(p);
}
