// Single-token attention decode for the attention layers of the hybrid models (Nemotron-H, Mamba2-Hybrid): per
// step, for each sequence b and query head h (heads = kv_heads·group, query head h reads kv head h / group):
//   append   k_cache[b, kvh, lens[b]] = k, v_cache[b, kvh, lens[b]] = v  (this token's k and v from its qkv row)
//   attend   s_t = (q_h · k_t)·scale, p = softmax_t(s) over t = 0 ..= lens[b], out[b, h] = Σ_t p_t·v_t
// then, once per step after every attention layer, lens[b] += 1 (`attn_advance_lens`). Everything is f32, as the
// CPU engine computes it (crates/infer/src/step.rs `fn attention`: same arithmetic, only the summation order
// differs). The kernels are replayed from a CUDA graph: what changes per step (lens) is read from device memory,
// never baked into the launch.
//
// Layout (floats):
//   qkv      [batch, ld_qkv]: q (heads·hd) | k (kv_heads·hd) | v (kv_heads·hd)
//   caches   [batch, kv_heads, max_len, hd] each, position-major inside a head
//   out      [batch, ld_out]: head h at h·hd
//   scratch  part_o [batch, heads, splits, hd] (unnormalised outputs), part_ml [batch, heads, splits, 2] (max, sum)
//
// Flash-decoding split over positions: grid (batch·kv_heads, splits), 128 threads. A CTA takes one (sequence, kv
// head) and one range of positions for all `group` query heads of that kv head, so each K/V row is read once for
// the group. The grid is fixed when the graph is captured; the ranges are not: with n = lens[b] + 1 positions, each
// split takes cs = ceil(n / splits) positions rounded up to a multiple of `min_chunk` (at most `chunk`, which the
// host picks so that splits·chunk ≥ max_len), so a short sequence is spread over a few splits and the rest find
// their range empty: they write an empty partial (max -inf, sum 0) and exit. Inside its range a CTA works in
// sub-chunks of SUB positions: (1) the scores of every group head into shared memory, each warp a share of the
// rows, K rows loaded by the lanes as 16-byte quads, UNROLL rows in flight per lane; (2) per head the running max,
// p = exp(s - max) in place and the running sum; (3) Σ p·v per head, the V rows loaded as the K rows, partial sums
// per warp added in warp order into the running output in shared memory (scaled by exp(old max - new max)).
// `attn_decode_combine` then merges the splits of each (sequence, head) in split order. No float atomics, fixed
// orders everywhere: the result is bitwise the same on every run.
//
// The new token's k and v are appended by split 0 of its (sequence, kv head); every CTA reads that row from qkv,
// never from the cache, so no CTA depends on another's write. With lens[b] ≥ max_len (the host never lets it
// happen) nothing is appended and the CTAs attend over the max_len cached positions: nothing outside the caches
// is touched.
//
// Overlap (sm_90): each kernel lets the next launch as soon as it starts (programmatic dependent launch) and waits
// for the earlier kernels before it reads anything (qkv, lens, the caches, the partials). Plain loads throughout:
// with PDL an earlier kernel may still be running when this one starts.

#include <stdint.h>

#include "warp.cuh"

namespace {

constexpr int THREADS = 128;  // threads of a split CTA (src/attn_decode.rs: ATTN_THREADS)
constexpr int WARPS = THREADS / 32;
constexpr int SUB = 256;    // positions whose scores a CTA holds in shared memory at once (src: ATTN_SUB)
constexpr int LOADS = 8;    // 16-byte loads in flight per lane (4: 10-25% slower, H100)

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
  return v;
}

__device__ __forceinline__ float dot4(const float4& a, const float4& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ void fma4(float p, const float4& v, float4& acc) {
  acc.x += p * v.x, acc.y += p * v.y, acc.z += p * v.z, acc.w += p * v.w;
}

// How the lanes of a warp cover rows of HD floats (Q 16-byte quads): when Q divides 32 (hd 16, 32, 64, 128) a load
// covers RPW = 32 / Q rows, lane l taking quad l % Q of row l / Q; otherwise one row per load, lane l taking quads
// l, l + 32 (NQ per lane; lanes past the row's end idle). A row's dot product is summed over the W lanes that hold
// it. Each lane has UNROLL rows (LOADS quads) in flight. Phase 3 keeps GT heads' sums per lane in registers (more heads:
// several passes over the sub-chunk's V rows).
template <int HD>
struct Rows {
  static_assert((HD == 16 || HD % 32 == 0) && HD <= 256, "head_dim: 16 or a multiple of 32 up to 256");
  static constexpr int Q = HD / 4;
  static constexpr int NQ = (Q + 31) / 32;
  static constexpr int RPW = Q < 32 && 32 % Q == 0 ? 32 / Q : 1;
  static constexpr int W = RPW > 1 ? Q : 32;
  static constexpr int GT = 8;
  static constexpr int UNROLL = LOADS / NQ;  // rows in flight per lane
};

// The NQ quads of a row this lane holds (zero for a null row or a quad past the row's end).
template <int HD>
__device__ __forceinline__ void load_row(const float* row, int ql, float4 (&v)[Rows<HD>::NQ]) {
#pragma unroll
  for (int j = 0; j < Rows<HD>::NQ; ++j) {
    const int c = ql + 32 * j;
    v[j] = row && c < Rows<HD>::Q ? reinterpret_cast<const float4*>(row)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

}  // namespace

// Arguments of the attention decode kernels (mirrored by `AttnArgs` in src/attn_decode.rs: keep the two in the same
// order).
struct AttnArgs {
  const float* qkv;       // [batch, ld_qkv]: q | k | v of this token, 16-byte aligned rows
  float* k_cache;         // [batch, kv_heads, max_len, head_dim]
  float* v_cache;         // [batch, kv_heads, max_len, head_dim]
  const unsigned* lens;   // [batch]: positions in the caches before this token
  float* out;             // [batch, ld_out]
  float* part_o;          // [batch, heads, splits, head_dim]: each split's unnormalised output
  float* part_ml;         // [batch, heads, splits, 2]: each split's max score and Σ exp(s - max)
  long long ld_qkv, ld_out;
  int heads, kv_heads, head_dim, max_len;
  int splits;     // CTAs per (sequence, kv head)
  int chunk;      // the most positions a split takes (splits·chunk ≥ max_len), a multiple of min_chunk
  int min_chunk;  // a split's positions are a multiple of this
  float scale;    // of the scores: 1/sqrt(head_dim)
};
static_assert(sizeof(AttnArgs) == 104, "AttnArgs: the layout src/attn_decode.rs mirrors");

// One split of one (sequence, kv head): blockIdx.x = b·kv_heads + kv head, blockIdx.y = split. Dynamic shared
// memory (floats): q [G][HD] | running output [G][HD] | warp sums [WARPS][min(G, GT)][HD] | scores [G][SUB] | running
// max, sum and rescale factor [G] each (src/attn_decode.rs `split_smem_bytes`).
template <int HD>
__device__ __forceinline__ void attn_split_body(const AttnArgs& a) {
  using R = Rows<HD>;
  constexpr int Q = R::Q, NQ = R::NQ, RPW = R::RPW, W = R::W, GT = R::GT, UNROLL = R::UNROLL;
  constexpr int STEP = RPW * UNROLL;  // rows of one warp iteration
  extern __shared__ __align__(16) float smem[];
  const int G = a.heads / a.kv_heads;
  const int gs = min(G, GT);
  float* q_s = smem;
  float* o_s = q_s + G * HD;
  float* red = o_s + G * HD;
  float* s_s = red + WARPS * gs * HD;
  float* m_s = s_s + G * SUB;
  float* l_s = m_s + G;
  float* f_s = l_s + G;
  const float4* q4 = reinterpret_cast<const float4*>(q_s);
  float4* o4 = reinterpret_cast<float4*>(o_s);
  float4* red4 = reinterpret_cast<float4*>(red);

  const int kvh = blockIdx.x % a.kv_heads, b = blockIdx.x / a.kv_heads, split = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = RPW > 1 ? lane / W : 0;  // which row of a load this lane's quads belong to
  const int ql = RPW > 1 ? lane % W : lane;  // this lane's first quad of that row
  const long long bh0 = static_cast<long long>(b) * a.heads + static_cast<long long>(kvh) * G;  // first (b, h)
  allow_next_kernel();
  wait_prev_kernels();

  const unsigned len = a.lens[b];
  const bool append = len < static_cast<unsigned>(a.max_len);
  const int n = append ? static_cast<int>(len) + 1 : a.max_len;  // positions attended
  const int per = (n + a.splits - 1) / a.splits;
  const int cs = min(a.chunk, (per + a.min_chunk - 1) / a.min_chunk * a.min_chunk);
  const int t0 = split * cs, t1 = min(n, t0 + cs);
  if (t0 >= n) {  // an empty range: the combine skips this partial
    for (int g = threadIdx.x; g < G; g += THREADS) {
      float* ml = a.part_ml + ((bh0 + g) * a.splits + split) * 2;
      ml[0] = -INFINITY, ml[1] = 0.f;
    }
    return;
  }

  const float* row = a.qkv + static_cast<long long>(b) * a.ld_qkv;
  const float* knew = row + static_cast<long long>(a.heads + kvh) * HD;
  const float* vnew = knew + static_cast<long long>(a.kv_heads) * HD;
  const long long head_off = (static_cast<long long>(b) * a.kv_heads + kvh) * a.max_len * HD;
  const float* kc = a.k_cache + head_off;
  const float* vc = a.v_cache + head_off;
  const int new_pos = append ? static_cast<int>(len) : -1;  // read from qkv, not from the cache

  if (split == 0 && append) {  // the append: this CTA's only write to the caches
    float4* kd = reinterpret_cast<float4*>(a.k_cache + head_off + static_cast<long long>(len) * HD);
    float4* vd = reinterpret_cast<float4*>(a.v_cache + head_off + static_cast<long long>(len) * HD);
    for (int i = threadIdx.x; i < Q; i += THREADS) {
      kd[i] = reinterpret_cast<const float4*>(knew)[i];
      vd[i] = reinterpret_cast<const float4*>(vnew)[i];
    }
  }
  {
    const float4* qsrc = reinterpret_cast<const float4*>(row + static_cast<long long>(kvh) * G * HD);
    for (int i = threadIdx.x; i < G * Q; i += THREADS) {
      reinterpret_cast<float4*>(q_s)[i] = qsrc[i];
      o4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    for (int g = threadIdx.x; g < G; g += THREADS) m_s[g] = -INFINITY, l_s[g] = 0.f;
  }
  __syncthreads();

  for (int u0 = t0; u0 < t1; u0 += SUB) {
    const int m = min(SUB, t1 - u0);  // rows of this sub-chunk
    // (1) s[g][r] = (q_g · k_{u0 + r})·scale.
    for (int base = warp * STEP; base < m; base += WARPS * STEP) {
      float4 k[UNROLL][NQ];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int r = base + u * RPW + sub, t = u0 + r;
        load_row<HD>(r >= m ? nullptr : t == new_pos ? knew : kc + static_cast<long long>(t) * HD, ql, k[u]);
      }
      // Per head, the UNROLL rows' dot products are summed over the lanes together: independent shuffle chains.
      for (int g = 0; g < G; ++g) {
        float4 qv[NQ];
#pragma unroll
        for (int j = 0; j < NQ; ++j)
          qv[j] = ql + 32 * j < Q ? q4[g * Q + ql + 32 * j] : make_float4(0.f, 0.f, 0.f, 0.f);
        float d[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
          d[u] = 0.f;
#pragma unroll
          for (int j = 0; j < NQ; ++j) d[u] += dot4(qv[j], k[u][j]);
        }
#pragma unroll
        for (int o = W / 2; o > 0; o >>= 1)
#pragma unroll
          for (int u = 0; u < UNROLL; ++u) d[u] += __shfl_xor_sync(FULL, d[u], o);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
          const int r = base + u * RPW + sub;
          if (ql == 0 && r < m) s_s[g * SUB + r] = d[u] * a.scale;
        }
      }
    }
    __syncthreads();
    // (2) Per head: the new running max, p = exp(s - max) in place, the running sum; f = the old sums' rescale.
    for (int g = warp; g < G; g += WARPS) {
      float* s = s_s + g * SUB;
      float mx = -INFINITY;
      for (int r = lane; r < m; r += 32) mx = fmaxf(mx, s[r]);
      mx = warp_max(mx);
      const float m_old = m_s[g], m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int r = lane; r < m; r += 32) {
        const float p = expf(s[r] - m_new);
        s[r] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      __syncwarp();  // every lane has read m_s[g] before lane 0 replaces it
      if (lane == 0) {
        const float f = expf(m_old - m_new);  // 0 on the first sub-chunk (m_old = -inf)
        f_s[g] = f;
        l_s[g] = l_s[g] * f + sum;
        m_s[g] = m_new;
      }
    }
    __syncthreads();
    // (3) o[g] = o[g]·f[g] + Σ_r p[g][r]·v_{u0 + r}, GT heads per pass.
    for (int h0 = 0; h0 < G; h0 += GT) {
      const int gn = min(GT, G - h0);
      float4 acc[GT][NQ];
#pragma unroll
      for (int gi = 0; gi < GT; ++gi)
#pragma unroll
        for (int j = 0; j < NQ; ++j) acc[gi][j] = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int base = warp * STEP; base < m; base += WARPS * STEP) {
        float4 v[UNROLL][NQ];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
          const int r = base + u * RPW + sub, t = u0 + r;
          load_row<HD>(r >= m ? nullptr : t == new_pos ? vnew : vc + static_cast<long long>(t) * HD, ql, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
          if (base + u * RPW >= m) break;
          const int r = base + u * RPW + sub;
          if (r >= m) continue;  // only for some sub-rows of the last load: the rest of the warp goes on
#pragma unroll
          for (int gi = 0; gi < GT; ++gi) {
            if (gi >= gn) break;
            const float p = s_s[(h0 + gi) * SUB + r];
#pragma unroll
            for (int j = 0; j < NQ; ++j) fma4(p, v[u][j], acc[gi][j]);
          }
        }
      }
      // The sub-rows of a load hold the same quads of different rows: add them (lanes W apart), then each warp's
      // sums go to shared memory and are added in warp order.
#pragma unroll
      for (int gi = 0; gi < GT; ++gi) {
        if (gi >= gn) break;
#pragma unroll
        for (int j = 0; j < NQ; ++j) {
#pragma unroll
          for (int o = W; o < 32; o <<= 1) {
            acc[gi][j].x += __shfl_xor_sync(FULL, acc[gi][j].x, o);
            acc[gi][j].y += __shfl_xor_sync(FULL, acc[gi][j].y, o);
            acc[gi][j].z += __shfl_xor_sync(FULL, acc[gi][j].z, o);
            acc[gi][j].w += __shfl_xor_sync(FULL, acc[gi][j].w, o);
          }
          if (sub == 0 && ql + 32 * j < Q) red4[(warp * gs + gi) * Q + ql + 32 * j] = acc[gi][j];
        }
      }
      __syncthreads();
      for (int i = threadIdx.x; i < gn * Q; i += THREADS) {
        const int gi = i / Q, c = i - gi * Q;
        float4 s = red4[gi * Q + c];
#pragma unroll
        for (int w = 1; w < WARPS; ++w) {
          const float4 t = red4[(w * gs + gi) * Q + c];
          s.x += t.x, s.y += t.y, s.z += t.z, s.w += t.w;
        }
        const float f = f_s[h0 + gi];
        float4& o = o4[(h0 + gi) * Q + c];
        o.x = o.x * f + s.x, o.y = o.y * f + s.y, o.z = o.z * f + s.z, o.w = o.w * f + s.w;
      }
      __syncthreads();  // the warp sums and the scores are free for the next pass / sub-chunk
    }
  }

  float4* po = reinterpret_cast<float4*>(a.part_o);
  for (int i = threadIdx.x; i < G * Q; i += THREADS) {
    const int g = i / Q, c = i - g * Q;
    po[((bh0 + g) * a.splits + split) * Q + c] = o4[i];
  }
  for (int g = threadIdx.x; g < G; g += THREADS) {
    float* ml = a.part_ml + ((bh0 + g) * a.splits + split) * 2;
    ml[0] = m_s[g], ml[1] = l_s[g];
  }
}

// On sm_80 ptxas holds the split kernels to 96-128 registers and spills a few bytes unless it may use more (102 at
// head_dim 128, 131 at 256, no spills); on sm_90 it fits them without spills at 96 (head_dim 128).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define COIL_ATTN_BOUNDS __launch_bounds__(THREADS, 1)
#else
#define COIL_ATTN_BOUNDS __launch_bounds__(THREADS)
#endif
#define COIL_ATTN_SPLIT(HD)                                                                                        \
  extern "C" __global__ void COIL_ATTN_BOUNDS attn_decode_split_hd##HD(const AttnArgs a) {                       \
    attn_split_body<HD>(a);                                                                                        \
  }
COIL_ATTN_SPLIT(16)
COIL_ATTN_SPLIT(32)
COIL_ATTN_SPLIT(64)
COIL_ATTN_SPLIT(96)
COIL_ATTN_SPLIT(128)
COIL_ATTN_SPLIT(160)
COIL_ATTN_SPLIT(192)
COIL_ATTN_SPLIT(224)
COIL_ATTN_SPLIT(256)

// out[b, h] = Σ_s e^(m_s - M)·o_s / Σ_s e^(m_s - M)·l_s over the splits s of (b, h) in split order (M the largest
// m_s; empty splits, m_s = -inf, skipped: their o_s was never written). Grid batch·heads (blockIdx.x = b·heads +
// h), head_dim threads, one output element each.
extern "C" __global__ void __launch_bounds__(256) attn_decode_combine(const AttnArgs a) {
  allow_next_kernel();
  wait_prev_kernels();
  const int h = blockIdx.x % a.heads, b = blockIdx.x / a.heads, e = threadIdx.x;
  if (e >= a.head_dim) return;
  const long long bh = static_cast<long long>(b) * a.heads + h;
  const float* ml = a.part_ml + bh * a.splits * 2;
  const float* po = a.part_o + bh * a.splits * a.head_dim + e;
  float mx = -INFINITY;
  for (int s = 0; s < a.splits; ++s) mx = fmaxf(mx, ml[2 * s]);
  float acc = 0.f, l = 0.f;
  for (int s = 0; s < a.splits; ++s) {
    const float ms = ml[2 * s];
    if (ms == -INFINITY) continue;
    const float f = expf(ms - mx);
    l += f * ml[2 * s + 1];
    acc += f * po[static_cast<long long>(s) * a.head_dim];
  }
  a.out[b * a.ld_out + static_cast<long long>(h) * a.head_dim + e] = acc / l;
}

// lens[b] += 1 for b < batch, never beyond max_len: once per step, after the step's last attention layer.
extern "C" __global__ void __launch_bounds__(256) attn_advance_lens(unsigned* lens, int batch, int max_len) {
  allow_next_kernel();
  wait_prev_kernels();
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const unsigned l = lens[b];
  if (l < static_cast<unsigned>(max_len)) lens[b] = l + 1;
}
