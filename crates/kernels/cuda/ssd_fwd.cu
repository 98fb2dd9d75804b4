// Fused SSD (state-space dual) forward of the Mamba2 mixer.
//
// One CTA owns one (batch row, head) and walks the sequence in blocks of L = 64 positions, carrying the head's
// [P, N] state in registers (fp32). Per block it computes, on tensor cores (bf16 operands, fp32 accumulators):
//
//   dt_l  = clamp(softplus(dt_raw_l + dt_bias), lo, hi)  (0 past the end)     a_l = dt_l · A
//   s_l   = Σ_{i≤l} a_i                          (inclusive, in log2 units, one warp scan)
//   M     = (C · Bᵀ) ⊙ exp(s_l − s_j) ⊙ dt_j  for j ≤ l in one segment     [L, L]  (shared memory only)
//   y     = exp(s_l) · C · Hᵀ  +  M · x  +  D · x                            [L, P]  -> HBM (bf16)
//   H    ← exp(s_{L−1}) · H  +  (x ⊙ w)ᵀ · B,   w_j = dt_j · exp(s_{L−1} − s_j)   [P, N]  (registers)
//
// so no chunk state, C·Bᵀ block or decay matrix ever reaches HBM, and there is no separate state-passing pass.
// The block length is the kernel's own choice: the SSD is exact for any block length, so the model's
// chunk_size only changes rounding, never the function. Packed rows (`seq_idx`) become segment ids (a new
// segment wherever seq_idx changes): decays across a segment boundary are 0, and an initial state belongs to
// the row's first segment. Positions past the end have dt = 0 and zero x, B, C: exact no-ops.
//
// Warp roles (8 warps): for y and C·Bᵀ, warp w takes rows 16·(w%4).. and half of the columns (w/4); for the
// state, warp w takes p-rows 16·(w % (P/16)).. and its share of the N columns. Three barriers per block.

#include "ssd_common.cuh"

namespace {

// Per-thread cp.async plan for [L, W] bf16 tiles of one operand: the thread copies the 16-byte chunk at column
// `col` of rows row0, row0 + STEP, ... (STEP = THREADS / chunks per row), so its shared offsets are compile-time
// steps from one base and its source offsets steps of `STEP·ts` from one base: a block's copies cost a compare and
// an add each.
template <int W>
struct TileCopy {
  static constexpr int CPR = W / 8, STEP = THREADS / CPR, PER_THREAD = L / STEP;
  int row0, src0, src_step;  // first row; its element offset in the source tile; offset between its rows
  uint32_t dst0;             // shared byte offset of its first chunk
  __device__ __forceinline__ void init(long long ts) {
    row0 = threadIdx.x / CPR;
    const int col = (threadIdx.x % CPR) * 8;
    src0 = static_cast<int>(row0 * ts) + col;
    src_step = static_cast<int>(STEP * ts);
    dst0 = swz<W>(row0, col / 8);
  }
  // Rows t0 .. t0 + L of `block` (the source at row t0, row stride as in init) into the tile at shared address
  // `tile`; rows past `rows_left` read as zeros.
  __device__ __forceinline__ void issue(uint32_t tile, const bf16* block, int rows_left) const {
#pragma unroll
    for (int q = 0; q < PER_THREAD; ++q) {
      const bool ok = row0 + q * STEP < rows_left;
      cp_async16(tile + dst0 + q * STEP * W * 2, block + (ok ? src0 + q * src_step : 0), ok ? 16 : 0);
    }
  }
};

template <int P, int N>
struct Layout {
  static constexpr int X = 0;                         // [2][L·P] bf16 (byte offsets below)
  static constexpr int B = X + 2 * L * P * 2;         // [2][L·N]
  static constexpr int C = B + 2 * L * N * 2;         // [2][L·N]; C[cur] also stages y when P <= N
  static constexpr int M = C + 2 * L * N * 2;         // [L·L]
  static constexpr int S = M + L * L * 2;             // [P·N], the state entering the block, bf16
  static constexpr int Y = S + P * N * 2;             // [L·P] y staging, only when P > N
  static constexpr int F = Y + (P > N ? L * P * 2 : 0);  // [2][F_LEN] floats
  static constexpr int R = F + 2 * F_LEN * 4;         // [2][2·L] words: raw dt, then seq_idx
  static constexpr int BYTES = R + 2 * 2 * L * 4;     // src/ssd_fwd.rs `smem_bytes` mirrors this
  static_assert(BYTES <= 227 * 1024, "shared memory of one CTA on sm_90");
  static_assert(X % 128 == 0 && B % 128 == 0 && C % 128 == 0 && M % 128 == 0 && S % 128 == 0 && Y % 128 == 0,
                "swizzled tiles start 128-byte aligned");
};

// Lab-only stage switches for timing experiments (dev/ssd_lab.cu times the kernel with one stage left out);
// the product kernels use SKIP = 0.
enum Skip : int {
  SKIP_MMA1 = 1, SKIP_MEPI = 2, SKIP_BSCALE = 4, SKIP_YDIAG = 8, SKIP_STATE = 16, SKIP_SCALARS = 32,
  SKIP_LOADS = 64, SKIP_YSTORE = 128
};

template <int P, int N, int SKIP = 0>
__device__ __forceinline__ void ssd_fwd_body(const SsdFwdParams& p) {
  using Lay = Layout<P, N>;
  constexpr int YT = P / 16;           // y: n-tiles (8 wide) per warp
  constexpr int MB = P / 16;           // state: m-blocks of 16 p-rows
  constexpr int WPM = 8 / MB;          // state: warps per m-block
  constexpr int ST = (N / 8) / WPM;    // state: n-tiles per warp
  constexpr uint32_t XB = L * P * 2, BCB = L * N * 2;  // bytes of one X / B / C buffer
  constexpr int SCALAR_WARP = 4;       // the warp with the least matrix work computes the per-block scalars
  static_assert(P == 64 || P == 128, "head dim 64 or 128");
  static_assert(N == 64 || N == 128, "state 64 or 128");

  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sbase = smem_addr(smem);
  if (sbase & 127) __trap();  // the swizzle arithmetic below assumes 128-byte aligned tiles
  float* fsm = reinterpret_cast<float*>(smem + Lay::F);
  const uint32_t* rawsm = reinterpret_cast<const uint32_t*>(smem + Lay::R);

  const int h = blockIdx.x, bi = blockIdx.y;
  const int g = h / (p.heads / p.groups);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = lane >> 2, tig = lane & 3;
  const int nblk = (p.seqlen + L - 1) / L;

  const bf16* xg = p.x + bi * p.x_bs + h * P;
  const bf16* bg = p.b + bi * p.bc_bs + g * N;
  const bf16* cg = p.c + bi * p.bc_bs + g * N;
  bf16* yg = p.y + bi * p.y_bs + h * P;
  const long long dt_off = bi * p.dt_bs + h;
  const int* seq = p.seq_idx ? p.seq_idx + static_cast<long long>(bi) * p.seqlen : nullptr;
  const float a2 = p.a[h] * LOG2E;
  const float dtb = p.dt_bias ? p.dt_bias[h] : 0.f;
  const float dh = p.d ? p.d[h] : 0.f;

  // Tile ownership.
  const int my = warp & 3;                         // y and C·Bᵀ: rows 16·my ..
  const int yp0 = (warp >> 2) * (P / 2);           // y: first p column
  const int cb_half = warp >> 2;                   // C·Bᵀ: s-tiles 4·cb_half .. +4
  const int sm_blk = warp % MB;                    // state: p-rows 16·sm_blk ..
  const int sn0 = (warp / MB) * ST * 8;            // state: first n column

  // Lane fragment addresses (buffer 0; the other buffer is + one buffer's bytes).
  const uint32_t fa_c = sbase + Lay::C + frag_a<N>(my * 16, lane);            // C as A, rows l
  const uint32_t fb_s = sbase + Lay::S + frag_b_nk<N>(yp0, lane);             // state as B: Hᵀ (k = n)
  const uint32_t fb_b = sbase + Lay::B + frag_b_nk<N>(cb_half * 32, lane);    // B as B: Bᵀ (k = n)
  const uint32_t fa_m = sbase + Lay::M + frag_a<L>(my * 16, lane);            // M as A
  const uint32_t fb_x = sbase + Lay::X + frag_b_kn<P>(yp0, lane);             // x as B (k = s)
  const uint32_t fa_xt = sbase + Lay::X + frag_a_t<P>(sm_blk * 16, lane);     // xᵀ as A (k = s)
  const uint32_t fb_w = sbase + Lay::B + frag_b_kn<N>(sn0, lane);             // scaled B as B (k = s)
  // Epilogue element offsets: rows grp (+8) and the pair of columns 2·tig, 2·tig + 1 of chunk 0 of each tile run.
  const uint32_t em = Lay::M + swz<L>(my * 16 + grp, cb_half * 4) + 4 * tig;           // M stores
  const uint32_t ex = swz<P>(my * 16 + grp, yp0 / 8) + 4 * tig;                        // x reads / y staging
  const uint32_t es = Lay::S + swz<N>(sm_blk * 16 + grp, sn0 / 8) + 4 * tig;          // state (bf16) stores
  const uint32_t y_stage = P <= N ? Lay::C : Lay::Y;

  TileCopy<P> cx;
  TileCopy<N> cbc;
  cx.init(p.x_ts);
  cbc.init(p.bc_ts);
  auto issue_block = [&](int blk, int buf) {
    const long long t0 = static_cast<long long>(blk) * L;
    const int left = p.seqlen - blk * L;
    cx.issue(sbase + Lay::X + buf * XB, xg + t0 * p.x_ts, left);
    cbc.issue(sbase + Lay::B + buf * BCB, bg + t0 * p.bc_ts, left);
    cbc.issue(sbase + Lay::C + buf * BCB, cg + t0 * p.bc_ts, left);
  };

  // Prologue: block 0 in flight, its scalars, the initial state.
  issue_block(0, 0);
  cp_async_commit();
  // Raw dt / seq_idx travel two blocks ahead of their use (block k + 2's with block k + 1's tiles), so the
  // scalar warp computes block k + 1's scalars during block k from shared memory, never waiting on HBM.
  issue_raw(sbase + Lay::R, p, dt_off, seq, 0);
  if (nblk > 1) issue_raw(sbase + Lay::R + 2 * L * 4, p, dt_off, seq, L);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  int last_seq = seq ? seq[0] : 0, seg = 0;  // the scalar warp's carries
  if (warp == SCALAR_WARP) block_scalars(fsm, p, 0, rawsm, dt_off, a2, dtb, last_seq, seg, lane);
  float st[ST][4];
  const float* init = p.init_state ? p.init_state + (static_cast<long long>(bi) * p.heads + h) * P * N : nullptr;
#pragma unroll
  for (int j = 0; j < ST; ++j) {
    const int row = sm_blk * 16 + grp, cn = sn0 + j * 8 + 2 * tig;
    if (init) {
      const float2 lo = *reinterpret_cast<const float2*>(init + row * N + cn);
      const float2 hi = *reinterpret_cast<const float2*>(init + (row + 8) * N + cn);
      st[j][0] = lo.x, st[j][1] = lo.y, st[j][2] = hi.x, st[j][3] = hi.y;
    } else {
      st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.f;
    }
    *reinterpret_cast<uint32_t*>(smem + swz_moved<N>(es, 0, j)) = pack_bf16(st[j][0], st[j][1]);
    *reinterpret_cast<uint32_t*>(smem + swz_moved<N>(es, 8, j)) = pack_bf16(st[j][2], st[j][3]);
  }

  for (int k = 0; k < nblk; ++k) {
    const int cur = k & 1, nxt = cur ^ 1, t0 = k * L;
    cp_async_wait<0>();
    __syncthreads();  // block k's tiles and scalars, and the state entering it, are in shared memory
    if (!(SKIP & SKIP_LOADS) && k + 1 < nblk) issue_block(k + 1, nxt);
    if (k + 2 < nblk) issue_raw(sbase + Lay::R + cur * 2 * L * 4, p, dt_off, seq, t0 + 2 * L);
    cp_async_commit();

    const uint32_t xo = cur * XB, bco = cur * BCB;
    const float* f = fsm + cur * F_LEN;
    const int* sg = reinterpret_cast<const int*>(f + F_SEG);

    // (1) y_off = C · Hᵀ and C · Bᵀ share the A operand (C rows 16·my ..).
    float yacc[YT][4];
    float cacc[4][4];
#pragma unroll
    for (int j = 0; j < YT; ++j) yacc[j][0] = yacc[j][1] = yacc[j][2] = yacc[j][3] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) cacc[j][0] = cacc[j][1] = cacc[j][2] = cacc[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) {
      if (SKIP & SKIP_MMA1) break;
      uint32_t a[4], bb[4];
      ldsm_x4(a, swz_moved<N>(fa_c + bco, 0, 2 * kk));
#pragma unroll
      for (int j = 0; j < YT / 2; ++j) {
        ldsm_x4(bb, swz_moved<N>(fb_s, 16 * j, 2 * kk));
        mma_bf16(yacc[2 * j], a, bb[0], bb[1]);
        mma_bf16(yacc[2 * j + 1], a, bb[2], bb[3]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (cb_half * 4 + 2 * j <= 2 * my) {  // tiles ni, ni + 1 reach the diagonal
          ldsm_x4(bb, swz_moved<N>(fb_b + bco, 16 * j, 2 * kk));
          mma_bf16(cacc[2 * j], a, bb[0], bb[1]);
          mma_bf16(cacc[2 * j + 1], a, bb[2], bb[3]);
        }
      }
    }
    // M = C·Bᵀ ⊙ decay ⊙ dt_j on and below the diagonal, within one segment; bf16 into shared memory.
    {
      const int ra = my * 16 + grp, rb = ra + 8;
      const float acs_a = f[F_ACS + ra], acs_b = f[F_ACS + rb];
      const bool segs = seq != nullptr;
      const int sga = segs ? sg[ra] : 0, sgb = segs ? sg[rb] : 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int ni = cb_half * 4 + j;
        if (!(SKIP & SKIP_MEPI) && ni <= 2 * my + 1) {
          const int c0 = ni * 8 + 2 * tig;
          const float2 e = *reinterpret_cast<const float2*>(f + F_E + c0);
          float m00 = cacc[j][0] * fast_exp2(acs_a + e.x), m01 = cacc[j][1] * fast_exp2(acs_a + e.y);
          float m10 = cacc[j][2] * fast_exp2(acs_b + e.x), m11 = cacc[j][3] * fast_exp2(acs_b + e.y);
          if (ni >= 2 * my) {  // the diagonal 16 x 16 block: causal mask (the exps above may be inf there)
            m00 = c0 <= ra ? m00 : 0.f, m01 = c0 + 1 <= ra ? m01 : 0.f;
            m10 = c0 <= rb ? m10 : 0.f, m11 = c0 + 1 <= rb ? m11 : 0.f;
          }
          if (segs) {
            const int2 sc = *reinterpret_cast<const int2*>(sg + c0);
            m00 = sc.x == sga ? m00 : 0.f, m01 = sc.y == sga ? m01 : 0.f;
            m10 = sc.x == sgb ? m10 : 0.f, m11 = sc.y == sgb ? m11 : 0.f;
          }
          *reinterpret_cast<uint32_t*>(smem + swz_moved<L>(em, 0, j)) = pack_bf16(m00, m01);
          *reinterpret_cast<uint32_t*>(smem + swz_moved<L>(em, 8, j)) = pack_bf16(m10, m11);
        }
      }
      const float ysa = f[F_YS + ra], ysb = f[F_YS + rb];
#pragma unroll
      for (int j = 0; j < YT; ++j) {
        yacc[j][0] *= ysa, yacc[j][1] *= ysa, yacc[j][2] *= ysb, yacc[j][3] *= ysb;
      }
    }
    // The next block's scalars: this warp has no C·Bᵀ tiles, so it has time while the others finish theirs.
    if (!(SKIP & SKIP_SCALARS) && warp == SCALAR_WARP && k + 1 < nblk)
      block_scalars(fsm + nxt * F_LEN, p, t0 + L, rawsm + nxt * 2 * L, dt_off, a2, dtb, last_seq, seg, lane);
    __syncthreads();  // M complete; B no longer read as C·Bᵀ's operand; C free for y staging

    // (2) B rows scaled in place by w_j = dt_j · exp(s_last − s_j) (0 outside the last segment) for the state.
#pragma unroll
    for (int i = threadIdx.x; i < L * N / 8; i += THREADS) {
      if (SKIP & SKIP_BSCALE) break;
      const int r = i / (N / 8), ch = i % (N / 8);
      uint4* v = reinterpret_cast<uint4*>(smem + Lay::B + bco + swz<N>(r, ch));
      const float w = f[F_WF + r];
      uint4 u = *v;
      __nv_bfloat162* e = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 x2 = __bfloat1622float2(e[q]);
        e[q] = __floats2bfloat162_rn(x2.x * w, x2.y * w);
      }
      *v = u;
    }
    // (3) y += M · x (causal: k-steps up to the diagonal) + D·x, staged in shared memory as bf16.
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      if (!(SKIP & SKIP_YDIAG) && ks <= my) {
        uint32_t a[4], bb[4];
        ldsm_x4(a, swz_moved<L>(fa_m, 0, 2 * ks));
#pragma unroll
        for (int j = 0; j < YT / 2; ++j) {
          ldsm_x4_t(bb, swz_moved<P>(fb_x + xo, 16 * ks, 2 * j));
          mma_bf16(yacc[2 * j], a, bb[0], bb[1]);
          mma_bf16(yacc[2 * j + 1], a, bb[2], bb[3]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < YT; ++j) {
      const float2 xa = __bfloat1622float2(
          *reinterpret_cast<const __nv_bfloat162*>(smem + Lay::X + xo + swz_moved<P>(ex, 0, j)));
      const float2 xb = __bfloat1622float2(
          *reinterpret_cast<const __nv_bfloat162*>(smem + Lay::X + xo + swz_moved<P>(ex, 8, j)));
      const uint32_t ys = y_stage + (P <= N ? bco : 0);
      *reinterpret_cast<uint32_t*>(smem + ys + swz_moved<P>(ex, 0, j)) =
          pack_bf16(yacc[j][0] + dh * xa.x, yacc[j][1] + dh * xa.y);
      *reinterpret_cast<uint32_t*>(smem + ys + swz_moved<P>(ex, 8, j)) =
          pack_bf16(yacc[j][2] + dh * xb.x, yacc[j][3] + dh * xb.y);
    }
    __syncthreads();  // scaled B and staged y complete; every read of the entering state done

    // (4) y to HBM in 16-byte rows; H ← exp(s_last)·H + xᵀ · (w ⊙ B); its bf16 copy for the next block's y_off.
    if (!(SKIP & SKIP_YSTORE)) {
      const uint32_t ys = y_stage + (P <= N ? bco : 0);
#pragma unroll
      for (int q = 0; q < L * (P / 8) / THREADS; ++q) {
        const int i = threadIdx.x + q * THREADS, r = i / (P / 8), ch = i % (P / 8);
        if (t0 + r < p.seqlen)
          *reinterpret_cast<uint4*>(yg + (t0 + r) * p.y_ts + ch * 8) =
              *reinterpret_cast<const uint4*>(smem + ys + swz<P>(r, ch));
      }
    }
    {
      const float dec = f[F_DEC];
#pragma unroll
      for (int j = 0; j < ST; ++j) st[j][0] *= dec, st[j][1] *= dec, st[j][2] *= dec, st[j][3] *= dec;
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        if (SKIP & SKIP_STATE) break;
        uint32_t a[4], bb[4];
        ldsm_x4_t(a, swz_moved<P>(fa_xt + xo, 16 * ks, 0));
#pragma unroll
        for (int j = 0; j < ST / 2; ++j) {
          ldsm_x4_t(bb, swz_moved<N>(fb_w + bco, 16 * ks, 2 * j));
          mma_bf16(st[2 * j], a, bb[0], bb[1]);
          mma_bf16(st[2 * j + 1], a, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int j = 0; j < ST; ++j) {
        *reinterpret_cast<uint32_t*>(smem + swz_moved<N>(es, 0, j)) = pack_bf16(st[j][0], st[j][1]);
        *reinterpret_cast<uint32_t*>(smem + swz_moved<N>(es, 8, j)) = pack_bf16(st[j][2], st[j][3]);
      }
    }
  }

  if (p.final_state) {
    float* fin = p.final_state + (static_cast<long long>(bi) * p.heads + h) * P * N;
    const int row = sm_blk * 16 + grp;
#pragma unroll
    for (int j = 0; j < ST; ++j) {
      const int cn = sn0 + j * 8 + 2 * tig;
      *reinterpret_cast<float2*>(fin + row * N + cn) = make_float2(st[j][0], st[j][1]);
      *reinterpret_cast<float2*>(fin + (row + 8) * N + cn) = make_float2(st[j][2], st[j][3]);
    }
  }
}

}  // namespace

// Head dim 64 fits two CTAs per SM (106.5 KB of shared memory, <= 128 registers); head dim 128 one.
#define COIL_SSD_FWD(P, N, MINB)                                                                      \
  extern "C" __global__ void __launch_bounds__(THREADS, MINB) ssd_fwd_p##P##_n##N(const SsdFwdParams p) { \
    ssd_fwd_body<P, N>(p);                                                                            \
  }

COIL_SSD_FWD(64, 64, 2)
COIL_SSD_FWD(64, 128, 2)
COIL_SSD_FWD(128, 64, 1)
COIL_SSD_FWD(128, 128, 1)
