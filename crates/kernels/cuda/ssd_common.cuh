// Shared by the SSD forward kernels (`ssd_fwd.cu`: mma.sync for sm_80 and sm_90; `ssd_fwd_sm90.cu`: wgmma for
// sm_90a): the kernel parameters, the block length and the per-block scalars (dt, log2 cumulative decay, segment
// ids) computed by one warp from raw dt and seq_idx copied into shared memory two blocks ahead.
#pragma once
#include "mma.cuh"

namespace coil {
namespace ssd {

constexpr int L = 64;
constexpr int THREADS = 256;
constexpr unsigned FULL = 0xffffffffu;
constexpr float LOG2E = 1.4426950408889634f;

// Per-block scalars in shared memory (two buffers: the block in flight and the next one), per position l:
// E = log2(dt_l) − s_l (−inf where dt = 0, so M = C·Bᵀ · 2^(s_row + E_col) needs one add and one exp), the
// cumulative decay s_l, the state-input weight WF = dt_l · 2^(s_last − s_l), the carried-state weight
// YS = 2^(s_l), the segment id; and DEC = 2^(s_last), the block's decay of the carried state.
constexpr int F_E = 0, F_ACS = L, F_WF = 2 * L, F_YS = 3 * L, F_SEG = 4 * L, F_DEC = 5 * L;
constexpr int F_LEN = 5 * L + 4;

}  // namespace ssd
}  // namespace coil

using namespace coil;
using namespace coil::ssd;

// Kernel parameters; the Rust launcher mirrors this struct field for field (#[repr(C)]).
struct SsdFwdParams {
  const bf16* x;             // [B, T, H, P]: x + b·x_bs + t·x_ts + h·P
  const bf16* b;             // [B, T, G, N]: b + b·bc_bs + t·bc_ts + g·N
  const bf16* c;             // like b
  const void* dt;            // raw dt [B, T, H]: dt + b·dt_bs + t·dt_ts + h; bf16, or f32 if dt_is_f32
  const float* a;            // A [H] (negative)
  const float* dt_bias;      // [H] or null
  const float* d;            // [H] or null
  const float* init_state;   // [B, H, P, N] or null
  const int* seq_idx;        // [B, T] or null
  bf16* y;                   // [B, T, H, P]: y + b·y_bs + t·y_ts + h·P
  float* final_state;        // [B, H, P, N] or null
  long long x_bs, x_ts, bc_bs, bc_ts, dt_bs, dt_ts, y_bs, y_ts;
  int batch, seqlen, heads, groups;
  float dt_lo, dt_hi;
  int dt_is_f32, dt_softplus;
};

namespace {

// 2^x in one MUFU instruction (2 ulp; flushes denormals, fine for decay factors that multiply bf16 operands).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float dt_of(float v, const SsdFwdParams& p) {
  const float d = p.dt_softplus ? (v > 20.f ? v : log1pf(expf(v))) : v;
  return fminf(fmaxf(d, p.dt_lo), p.dt_hi);
}

// Raw dt and seq_idx of one block, copied into shared memory with the block before it (cp.async, 4-byte words):
// threads 0..63 copy the word holding dt of position t0 + tid (bf16 dt: the aligned word around it, the half is
// picked when read), threads 64..127 its seq_idx. Past the end the words read as zeros.
__device__ __forceinline__ void issue_raw(uint32_t dst, const SsdFwdParams& p, long long dt_off, const int* seq,
                                          int t0) {
  const int i = threadIdx.x, t = t0 + (i & (L - 1));
  const bool ok = t < p.seqlen;
  if (i < L) {
    const char* src = p.dt_is_f32 ? reinterpret_cast<const char*>(static_cast<const float*>(p.dt) + dt_off)
                                  : reinterpret_cast<const char*>(static_cast<const bf16*>(p.dt) + dt_off);
    const long long bytes = (ok ? t : 0) * p.dt_ts * (p.dt_is_f32 ? 4 : 2);
    const char* word = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(src + bytes) & ~uintptr_t(3));
    cp_async4(dst + 4 * i, word, ok ? 4 : 0);
  } else if (i < 2 * L && seq) {
    cp_async4(dst + 4 * i, seq + (ok ? t : 0), ok ? 4 : 0);
  }
}

// Position l's raw dt and seq_idx from the copied words (past the end: dt 0 and the last position's seq_idx, so
// padding opens no segment).
__device__ __forceinline__ void read_raw(const uint32_t* raw, const SsdFwdParams& p, long long dt_off, bool has_seq,
                                         int t0, int l, float& r, int& q) {
  const int t = t0 + l;
  r = 0.f;
  if (t < p.seqlen) {
    const uint32_t w = raw[l];
    if (p.dt_is_f32) {
      r = __uint_as_float(w);
    } else {
      const uintptr_t addr = reinterpret_cast<uintptr_t>(static_cast<const bf16*>(p.dt) + dt_off + t * p.dt_ts);
      r = __uint_as_float(((addr & 2) ? (w >> 16) : (w & 0xffffu)) << 16);
    }
  }
  q = has_seq ? static_cast<int>(raw[L + min(l, p.seqlen - 1 - t0)]) : 0;
}

// dt, the log2 cumulative decay and the per-position factors of one block (one warp). `last_seq` and `seg`
// carry the raw seq_idx value and the segment id of the last position before this block.
__device__ __forceinline__ void block_scalars(float* f, const SsdFwdParams& p, int t0, const uint32_t* raw,
                                              long long dt_off, float a2, float dtb, int& last_seq, int& seg,
                                              int lane) {
  const int l0 = 2 * lane, l1 = l0 + 1;
  float raw0, raw1;
  int q0, q1;
  read_raw(raw, p, dt_off, p.seq_idx != nullptr, t0, l0, raw0, q0);
  read_raw(raw, p, dt_off, p.seq_idx != nullptr, t0, l1, raw1, q1);
  const float dt0 = (t0 + l0 < p.seqlen) ? dt_of(raw0 + dtb, p) : 0.f;
  const float dt1 = (t0 + l1 < p.seqlen) ? dt_of(raw1 + dtb, p) : 0.f;
  int prev_q = __shfl_up_sync(FULL, q1, 1);
  if (lane == 0) prev_q = last_seq;
  const int f0 = (t0 + l0 == 0) ? 0 : (q0 != prev_q);
  const int f1 = (q1 != q0);
  const float a0 = dt0 * a2, a1 = dt1 * a2;
  int inc = f0 + f1;
  float acc = a0 + a1;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int vi = __shfl_up_sync(FULL, inc, o);
    const float va = __shfl_up_sync(FULL, acc, o);
    if (lane >= o) {
      inc += vi;
      acc += va;
    }
  }
  const int seg_prev = seg;
  const int seg1 = seg_prev + inc, seg0 = seg1 - f1;
  const float acs1 = acc, acs0 = acc - a1;
  const float last = __shfl_sync(FULL, acc, 31);
  const int seg_last = __shfl_sync(FULL, seg1, 31);
  const float e0 = dt0 > 0.f ? __log2f(dt0) - acs0 : -INFINITY;
  const float e1 = dt1 > 0.f ? __log2f(dt1) - acs1 : -INFINITY;
  f[F_E + l0] = e0;
  f[F_E + l1] = e1;
  f[F_ACS + l0] = acs0;
  f[F_ACS + l1] = acs1;
  f[F_WF + l0] = (seg0 == seg_last) ? fast_exp2(last + e0) : 0.f;
  f[F_WF + l1] = (seg1 == seg_last) ? fast_exp2(last + e1) : 0.f;
  f[F_YS + l0] = (seg0 == seg_prev) ? fast_exp2(acs0) : 0.f;
  f[F_YS + l1] = (seg1 == seg_prev) ? fast_exp2(acs1) : 0.f;
  int* sg = reinterpret_cast<int*>(f + F_SEG);
  sg[l0] = seg0;
  sg[l1] = seg1;
  if (lane == 0) f[F_DEC] = (seg_last == seg_prev) ? fast_exp2(last) : 0.f;
  last_seq = __shfl_sync(FULL, q1, 31);
  seg = seg_last;
}


}  // namespace
