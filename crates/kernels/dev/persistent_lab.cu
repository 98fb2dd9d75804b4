// Lab: the whole decode step of a pure-Mamba2 model (batch 1, 2, 4 or 8, bf16 weights) as ONE persistent kernel,
// `step_persistent`, against the multi-kernel step of `cuda/decode.cu` (three launches per layer).
//
// Phases of one launch, separated by grid-wide barriers (1 + 3·L of them):
//   embed | per layer: in_proj (RMSNorm prologue, GEMV, conv/dt epilogue) | SSM update + gate | out_proj (gated
//   norm prologue, GEMV, residual add) | final norm + LM head;  then `argmax_rows` as a separate kernel.
// The arithmetic mirrors gemv_fused (split 1: whole rows per warp, 8 rows per CTA step, no TMA, no L2 prefetch of
// its own) and ssm_gate_body element by element and in the same summation orders, over virtual blocks
// (`for (vb = blockIdx.x; vb < n; vb += gridDim.x)`), so the results equal the multi-kernel step bit for bit.
//
// Grid: exactly the CTAs that are co-resident (occupancy x SMs, 256 threads), launched cooperatively
// (cudaLaunchKernelEx + cudaLaunchAttributeCooperative, also inside graph capture) or, if that fails, with a normal
// launch of the same grid (printed). `time` also runs 1 and 2 CTAs per SM (any grid up to that works).
// Barrier k of a launch (k = 1, 2, ...): __syncthreads; thread 0: red.release.gpu (+1) on a counter that a
// cudaMemsetAsync zeroes right before the kernel (in the same graph), then spins with ld.acquire.gpu until the
// counter >= k·gridDim.x; __syncthreads. The spin gives up after SPIN_LIMIT_NS (or MAX_SPINS) and sets an error
// flag (sticky: later barriers give up within 256 polls); every CTA runs every barrier (no early return).
// Coherence: activations written in one phase and read by other CTAs in a later one (residual, in_proj output,
// yg, part; also conv windows, SSM state, the residual's read-modify-write) are read with ld.global.cg (L2) and
// written with st.global.cg, except the x operand of the GEMV inner loop (residual / yg), which takes plain loads
// so that L1 serves its ~8-64x reuse per weight chunk (as in decode.cu): the acquire load of the barrier
// compiles to LDG.E.STRONG.GPU + CCTL.IVALL, i.e. it invalidates the SM's L1 after the barrier and before any
// load of the next phase (the PTX memory model's guarantee for weak loads after acquire + bar.sync; it is also
// what cooperative groups' grid.sync relies on). Template XCG = true makes those loads .cg too (measured as a
// variant; `check` compares both with the multi-kernel step). Weights use the read-only (.nc) path: never written.
// Overlap across barriers: a CTA arrives, then (before it waits) every warp issues the loads of its first UNROLL
// chunks of the NEXT GEMV (held in registers across the wait, as gemv_fused does before griddepcontrol.wait);
// before the in_proj -> SSM wait the CTAs with an SSM block start the copy of that block's state into shared
// memory instead (cp.async, completed in the SSM phase). Optional L2 prefetches (StepArgs::flags, all variants
// timed): PF_SSM_IDLE: CTAs without SSM work request this layer's out_proj matrix into L2 (split between them)
// before the in_proj -> SSM wait; PF_OUT_IDLE: CTAs without out_proj rows request the next GEMV's first
// gridDim.x·8 rows (the first step of every CTA) into L2 at the start of the out_proj phase.
// Registers (no spills; see MinBlocks): arguments that are the same in every layer come from the kernel parameter
// (constant-bank operands), per-layer pointers from __constant__ c_layers; thread/CTA indices, sizes and the layer
// index are re-read per phase (volatile asm / shared memory) so nothing derived from them stays live across the
// whole kernel.
//
// Not part of the build:
//   source /work/shared/gpu/cuda-env.sh
//   nvcc -std=c++17 -O3 -lineinfo -gencode=arch=compute_90,code=sm_90 -Xptxas -v -o /tmp/persistent_lab \
//        crates/kernels/dev/persistent_lab.cu
//   /tmp/persistent_lab [check|time|all]      (default all; exit status 1 when a check failed)

#define main decode_lab_main
#include "decode_lab.cu"
#undef main

namespace plab {

constexpr int THREADS = 256, WARPS = THREADS / 32, UNROLL = 4;
constexpr int PF_SSM_IDLE = 1, PF_OUT_IDLE = 2;
constexpr unsigned ERR_DEADLOCK = 1;
constexpr unsigned MAX_SPINS = 1u << 24;               // backstop if %globaltimer misbehaves
constexpr unsigned long long SPIN_LIMIT_NS = 1000000000;  // 1 s in one barrier: deadlock
constexpr unsigned PF_PIECE = 65536;                   // bytes per cp.async.bulk.prefetch.L2

struct LayerArgs {
  GemvArgs in;
  SsmArgs ssm;
  GemvArgs out;
};

// The layers' arguments (as decode.cu's launches take them), in constant memory: set by cudaMemcpyToSymbol before
// a configuration's launches or graph capture (a graph reads c_layers when it runs). The kernel takes only the
// fields that differ between layers from here (layer_gemv / layer_ssm: weights, norm and conv weights, biases, A,
// D, windows, states; one uniform LDC each per phase); shapes and the activation buffers, the same in every layer
// (the host checks), come from the kernel parameter's copies of layer 0's structs, which ptxas reads as
// constant-bank operands: fewer registers (the whole-struct-from-c_layers version spilled at 128 registers).
constexpr int MAX_LAYERS = 128;
__constant__ LayerArgs c_layers[MAX_LAYERS];

struct StepArgs {
  GemvArgs in, out, head;  // layer 0's in_proj / out_proj (the per-layer fields replaced), the LM head
  SsmArgs ssm;             // layer 0's
  const __nv_bfloat16* emb;  // [V, ld_emb]
  const unsigned* ids;       // ids[b·ids_stride]
  float* resid;              // [batch, ld_resid]
  unsigned* bar;             // barrier counter, zero at launch
  unsigned* err;             // sticky error flags (ERR_DEADLOCK)
  long long ld_emb, ld_resid;
  int L, D, ids_stride, flags;
};

// ---- thread / CTA indices ----------------------------------------------------------------------------------------
// Read through volatile asm so that ptxas recomputes what derives from them in every phase instead of keeping
// those values (lane masks, first rows, ...) live across the whole kernel: register pressure.
__device__ __forceinline__ int tid_() {
  int v;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(v));
  return v;
}
__device__ __forceinline__ int cta_() {
  int v;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(v));
  return v;
}
__device__ __forceinline__ int ncta_() {
  int v;
  asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(v));
  return v;
}
// The same for a GEMV's sizes (kernel parameters): what derives from them is recomputed per phase, not hoisted.
__device__ __forceinline__ int opaque(int x) {
  int v;
  asm volatile("mov.b32 %0, %1;" : "=r"(v) : "r"(x));
  return v;
}

// ---- memory access helpers ------------------------------------------------------------------------------------
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned ld_relaxed_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release_gpu(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// E consecutive floats of the GEMV's x operand: plain weak loads (ld.global, L1-cached), or .cg (L2) loads when
// XCG. Both through volatile asm (as __ldcg is): the compiler keeps them in program order instead of hoisting the
// loads of later chunks and sequences, which made the batch-8 GEMV spill at 128 registers.
template <int E, bool XCG>
__device__ __forceinline__ void load_x(const float* p, float (&v)[E]) {
#pragma unroll
  for (int e = 0; e < E; e += 4) {
    if (XCG)
      asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];"
                   : "=f"(v[e]), "=f"(v[e + 1]), "=f"(v[e + 2]), "=f"(v[e + 3])
                   : "l"(p + e));
    else
      asm volatile("ld.global.v4.f32 {%0,%1,%2,%3}, [%4];"
                   : "=f"(v[e]), "=f"(v[e + 1]), "=f"(v[e + 2]), "=f"(v[e + 3])
                   : "l"(p + e));
  }
}

// ---- grid barrier ---------------------------------------------------------------------------------------------
// Barrier number k (1, 2, ...) of this launch: every CTA adds 1 to the counter at each barrier, so all CTAs have
// arrived at barrier k exactly when the counter reaches k·gridDim.x. `between` runs in every thread after the CTA
// arrived and before it waits: loads and L2 prefetches of the next phase only (no global writes: they would not be
// covered by the release). If `set` is given, thread 0 stores `value` there after the first __syncthreads (all
// earlier reads of it are done; the final __syncthreads publishes it to the CTA).
template <typename F>
__device__ __forceinline__ void grid_barrier(const StepArgs& p, unsigned k, F&& between, int* set = nullptr,
                                             int value = 0) {
  const unsigned target = k * ncta_();
  __syncthreads();  // the CTA's writes of this phase are done (and ordered before ...)
  if (tid_() == 0) {
    red_release_gpu(p.bar, 1u);  // ... this release: MEMBAR.ALL.GPU, then the add
    if (set) *set = value;
  }
  between();
  if (tid_() == 0) {
    const unsigned long long t0 = global_ns();
    for (unsigned spins = 1; ld_acquire_gpu(p.bar) < target; ++spins) {
      if ((spins & 255u) == 0 &&
          (ld_relaxed_gpu(p.err) != 0 || global_ns() - t0 > SPIN_LIMIT_NS || spins >= MAX_SPINS)) {
        atomicOr(p.err, ERR_DEADLOCK);
        break;
      }
    }
  }
  __syncthreads();
}

// Share j of n of `bytes` bytes at `base` (16-byte aligned, bytes a multiple of 16) requested into L2.
__device__ __forceinline__ void prefetch_share(const void* base, long long bytes, int j, int n) {
  if (tid_() != 0 || n <= 0 || bytes <= 0) return;
  const long long units = bytes / 16;
  const long long lo = units * j / n * 16, hi = units * (j + 1) / n * 16;
  for (long long o = lo; o < hi; o += PF_PIECE)
    prefetch_l2(static_cast<const char*>(base) + o,
                static_cast<unsigned>(min(static_cast<long long>(PF_PIECE), hi - o)));
}

// Bytes of the first `rows` rows of a GEMV's weights (from the row start to the last row's last used column).
template <typename WT>
__device__ __forceinline__ long long gemv_bytes(const GemvArgs& g, int rows) {
  return rows <= 0 ? 0 : ((rows - 1) * g.ldw + g.cols) * static_cast<long long>(sizeof(WT));
}

// ---- GEMV phase (mirrors gemv_fused with split 1) ---------------------------------------------------------------
// The warp's first UNROLL chunks of the GEMV `g`: row cta_()·8 + warp, chunks lane + 32·k (gemv_fused's `load`
// before wait_prev_kernels).
template <typename WT>
__device__ __forceinline__ void gemv_preload(const GemvArgs& g, uint4 (&u)[UNROLL]) {
  constexpr int E = 16 / sizeof(WT);
  const WT* w = static_cast<const WT*>(g.w);
  const int rows = opaque(g.rows), chunks = opaque(g.cols) / E;
  const long long ldw = g.ldw;
  const int lane = tid_() & 31, r = cta_() * WARPS + (tid_() >> 5);
#pragma unroll
  for (int k = 0; k < UNROLL; ++k) {
    const int c = lane + 32 * k;
    u[k] = c < chunks && r < rows ? ld_stream(w + r * ldw + E * c) : make_uint4(0, 0, 0, 0);
  }
}

// gemv_norms with L2 loads of x (MODE_IN) and part (MODE_OUT).
template <int BATCH, int MODE>
__device__ __forceinline__ void p_norms(const GemvArgs& a, float (&inv)[BATCH][MAX_GROUPS], float* red) {
  if (MODE == MODE_IN) {
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      float ss = 0.f;
      for (int i = tid_(); i < a.cols; i += THREADS) {
        const float v = __ldcg(a.x + b * a.ldx + i);
        ss += v * v;
      }
      const float s = block_sum(ss, red);
      if (tid_() == 0) inv[b][0] = rsqrtf(s / a.cols + a.eps);
    }
  } else {
    const int groups = opaque(a.groups), hpg = a.heads / groups, group = a.cols / groups;
    for (int i = tid_(); i < BATCH * groups; i += THREADS) {
      const int b = i / groups, g = i % groups;
      float s = 0.f;
      for (int h = 0; h < hpg; ++h) s += __ldcg(a.part + b * a.heads + g * hpg + h);
      inv[b][g] = rsqrtf(s / group + a.eps);
    }
  }
  __syncthreads();
}

// gemv_chunk: acc[b] += Σ_e w[e]·x̂[b, c·E + e].
template <typename WT, int BATCH, int MODE, bool XCG>
__device__ __forceinline__ void p_chunk(const GemvArgs& a, const uint4& u, int c, int group_chunks,
                                        const float (&inv)[BATCH][MAX_GROUPS], float (&acc)[BATCH]) {
  constexpr int E = 16 / sizeof(WT);
  float wf[E], nv[E];
  chunk_to_f32(u, wf);
  load_f32<E>(a.xw + E * c, nv);
  const int g = MODE == MODE_OUT ? c / group_chunks : 0;
#pragma unroll
  for (int b = 0; b < BATCH; ++b) {
    float xv[E];
    load_x<E, XCG>(a.x + b * a.ldx + E * c, xv);
    const float iv = inv[b][g];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[b] += wf[e] * (xv[e] * iv * nv[e]);
  }
}

// The epilogue's per-layer pointers, staged in shared memory at the start of a GEMV phase: read there per row,
// they are not hoisted out of the row loop into registers (which made the batch-8 GEMV spill).
struct GemvEpi {
  const float* bias;
  float* window;
  const float* conv_w;
  const float* conv_b;
  const float* dt_bias;
};

// finish_row with L2 loads and stores of what other phases (or CTAs) read or wrote. An in_proj row: conv rows
// through their window, dt rows through clamp(softplus(v + dt_bias)), z rows as they are.
__device__ __forceinline__ void p_finish_in(const GemvArgs& a, const GemvEpi& ep, int b, int r, float v,
                                            float* out) {
  if (r >= a.conv_lo && r < a.conv_hi) {
    const int c = r - a.conv_lo;
    float* win = ep.window + (static_cast<long long>(b) * (a.conv_hi - a.conv_lo) + c) * a.k;
    const float* wc = ep.conv_w + static_cast<long long>(c) * a.k;
    float cv = ep.conv_b ? ep.conv_b[c] : 0.f;
    for (int i = 0; i + 1 < a.k; ++i) {
      const float o = __ldcg(win + i + 1);
      __stcg(win + i, o);
      cv += wc[i] * o;
    }
    __stcg(win + a.k - 1, v);
    cv += wc[a.k - 1] * v;
    v = silu(cv);
  } else if (r >= a.dt_lo) {
    float t = v + (ep.dt_bias ? ep.dt_bias[r - a.dt_lo] : 0.f);
    t = t > 20.f ? t : log1pf(__expf(t));
    v = fminf(fmaxf(t, a.dt_min), a.dt_max);
  }
  __stcg(out, v);
}

// Row r of sequence b once its dot product s is known (out_proj: added into the residual).
template <int MODE>
__device__ __forceinline__ void p_finish_row(const GemvArgs& a, const GemvEpi& ep, int b, int r, float s) {
  float v = ep.bias ? s + ep.bias[r] : s;
  float* out = a.y + b * a.ldy + r;
  if (MODE == MODE_OUT) {
    __stcg(out, __ldcg(out) + v);
  } else {
    p_finish_in(a, ep, b, r, v, out);
  }
}

// The GEMV over the CTA steps cta_(), cta_() + ncta_(), ... (8 rows each, one per warp); u holds the
// warp's first chunks (gemv_preload). A CTA without rows skips the norm prologue (uniform in the CTA).
template <typename WT, int BATCH, int MODE, bool XCG>
__device__ __forceinline__ void gemv_phase(const GemvArgs& a, uint4 (&u)[UNROLL], float (&inv)[BATCH][MAX_GROUPS],
                                           float* red, GemvEpi& ep) {
  constexpr int E = 16 / sizeof(WT);
  const WT* w = static_cast<const WT*>(a.w);
  const int lane = tid_() & 31, warp = tid_() >> 5;
  const int chunks = opaque(a.cols) / E;
  const int steps = (opaque(a.rows) + WARPS - 1) / WARPS;
  if (cta_() >= steps) return;  // no rows in this CTA (the caller runs the barriers)
  if (tid_() == 0) ep = GemvEpi{a.bias, a.window, a.conv_w, a.conv_b, a.dt_bias};
  p_norms<BATCH, MODE>(a, inv, red);  // (ends with __syncthreads: ep visible)
  const int group_chunks = MODE == MODE_OUT ? chunks / a.groups : chunks;
  bool loaded = true;
  for (int g = cta_(); g < steps; g += ncta_()) {
    const int r = g * WARPS + warp;
    float acc[BATCH];
#pragma unroll
    for (int b = 0; b < BATCH; ++b) acc[b] = 0.f;
    for (int c0 = lane; c0 < chunks; c0 += 32 * UNROLL) {
      if (!loaded) {
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
          const int c = c0 + 32 * k;
          u[k] = c < chunks && r < a.rows ? ld_stream(w + r * a.ldw + E * c) : make_uint4(0, 0, 0, 0);
        }
      }
      loaded = false;
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        const int c = c0 + 32 * k;
        if (c >= chunks || r >= a.rows) break;
        p_chunk<WT, BATCH, MODE, XCG>(a, u[k], c, group_chunks, inv, acc);
      }
    }
    loaded = false;
    if (r < a.rows) {
#pragma unroll
      for (int b = 0; b < BATCH; ++b) {
        const float s = warp_sum(acc[b]);
        if (lane == 0) p_finish_row<MODE>(a, ep, b, r, s);
      }
    }
  }
}

// ---- SSM phase (mirrors ssm_gate_body; virtual block vb = b·heads + h, thread (p, q) = (tid / 4, tid % 4)) ----
// The block's state goes global -> shared with cp.async (no registers held: the version that kept it in registers
// across the barrier spilled at 64-80 registers for N = 128); each thread copies, and later reads, exactly its own
// float4s (row p, columns q + 4j), so cp.async.wait_all alone makes them visible to it. Rows padded to ROW float4s
// (ROW % 8 == 4: the 8 threads of a quarter warp hit distinct 16-byte bank groups).
constexpr int MAX_P = 64;  // head_dim limit (4·P threads <= 256)
template <int N>
struct StateTile {
  static constexpr int ROW = N / 4 + ((4 - (N / 4) % 8) + 8) % 8;
  static constexpr int FLOAT4S = MAX_P * ROW;
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(smem))),
               "l"(gmem)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// Starts the copy of block vb's state into st (completes at cp_async_wait_all).
template <int N>
__device__ __forceinline__ void ssm_fetch_state(const SsmArgs& a, int vb, float4* st) {
  const int heads = a.heads, P = a.head_dim;
  const int b = vb / heads, h = vb % heads, p = tid_() >> 2, q = tid_() & 3;
  if (p < P) {
    const float4* s = reinterpret_cast<const float4*>(static_cast<float*>(a.state) +
                                                      ((static_cast<long long>(b) * heads + h) * P + p) * N);
#pragma unroll
    for (int j = 0; j < N / 16; ++j)  // a row's four threads interleave: coalesced
      cp_async16(st + p * StateTile<N>::ROW + q + 4 * j, s + q + 4 * j);
  }
}

// B and C of the block's group go through shared memory too (bc: 2N floats, one coalesced load per thread).
template <int BATCH, int N>
__device__ __forceinline__ void ssm_phase(const SsmArgs& a, float4* st, float* red, float* bc) {
  const int heads = opaque(a.heads), nvb = BATCH * heads, P = a.head_dim;
  const int p = tid_() >> 2, q = tid_() & 3;
  for (int vb = cta_(); vb < nvb; vb += ncta_()) {
    const int b = vb / heads, h = vb % heads;
    __syncthreads();  // the previous block's readers are done with bc (and st)
    if (vb != cta_()) ssm_fetch_state<N>(a, vb, st);  // (the first block's state was requested before the barrier)
    {
      const int g = h / (heads / a.groups);
      const float* row = a.proj + b * a.ld_proj + a.xbc_off + heads * P;  // B of group 0
      for (int i = tid_(); i < 2 * N; i += THREADS)
        bc[i] = __ldcg(row + (i < N ? g * N + i : a.groups * N + g * N + (i - N)));
    }
    cp_async_wait_all();
    __syncthreads();  // bc
    float sq = 0.f;
    if (p < P) {  // P % 8 == 0: whole warps in or out (the shuffles below)
      float4* s = reinterpret_cast<float4*>(static_cast<float*>(a.state) +
                                            ((static_cast<long long>(b) * a.heads + h) * P + p) * N);
      const float4* sv = st + p * StateTile<N>::ROW + q;
      const float* row = a.proj + b * a.ld_proj;
      const float dt = __ldcg(row + a.dt_off + h);
      const float da = __expf(dt * a.a[h]);
      const float xp = __ldcg(row + a.xbc_off + h * P + p);
      const float dx = dt * xp;
      float acc = 0.f;
#pragma unroll 2  // (the state is in shared memory: no register array to index; fewer values in flight)
      for (int j = 0; j < N / 16; ++j) {
        const int n4 = q + 4 * j;
        const float4 bv = reinterpret_cast<const float4*>(bc)[n4];
        const float4 cv = reinterpret_cast<const float4*>(bc + N)[n4];
        float4 v4 = sv[4 * j];
        v4.x = v4.x * da + dx * bv.x, v4.y = v4.y * da + dx * bv.y;
        v4.z = v4.z * da + dx * bv.z, v4.w = v4.w * da + dx * bv.w;
        acc += v4.x * cv.x + v4.y * cv.y + v4.z * cv.z + v4.w * cv.w;
        __stcg(s + n4, v4);
      }
      acc += __shfl_xor_sync(FULL, acc, 1);
      acc += __shfl_xor_sync(FULL, acc, 2);
      if (q == 0) {
        const float y = acc + (a.d ? a.d[h] : 0.f) * xp;
        const float v = y * silu(__ldcg(row + h * P + p));
        __stcg(a.yg + b * a.ld_yg + h * P + p, v);
        sq = v * v;
      }
    }
    const float total = block_sum(sq, red);
    if (tid_() == 0) __stcg(a.part + b * a.heads + h, total);
  }
}

// ---- embedding phase: residual[b, c] = E[ids[b], c] over all CTAs ------------------------------------------------
template <int BATCH>
__device__ __forceinline__ void embed_phase(const StepArgs& p) {
  const int total = BATCH * p.D;
  for (int i = cta_() * THREADS + tid_(); i < total; i += ncta_() * THREADS) {
    const int b = i / p.D, c = i - b * p.D;
    const __nv_bfloat16* src = p.emb + static_cast<long long>(p.ids[b * p.ids_stride]) * p.ld_emb;
    __stcg(p.resid + b * p.ld_resid + c, static_cast<float>(src[c]));
  }
}

template <int BATCH>
struct MinBlocks {  // CTAs of 256 per SM the register limit must allow (4: 64 registers, 2: 128), no spills
  static constexpr int value = BATCH <= 2 ? 4 : 2;
};

// Layer l's in_proj / out_proj / SSM arguments: the shape copy from the kernel parameter with the fields that differ
// between layers from c_layers[l].
__device__ __forceinline__ GemvArgs layer_gemv(const GemvArgs& shape, const GemvArgs& lay) {
  GemvArgs a = shape;
  a.w = lay.w, a.bias = lay.bias, a.xw = lay.xw, a.window = lay.window;
  a.conv_w = lay.conv_w, a.conv_b = lay.conv_b, a.dt_bias = lay.dt_bias;
  return a;
}
__device__ __forceinline__ SsmArgs layer_ssm(const SsmArgs& shape, const SsmArgs& lay) {
  SsmArgs a = shape;
  a.a = lay.a, a.d = lay.d, a.state = lay.state;
  return a;
}

// The whole step. Barriers: #1 after the embedding, then 3 per layer: layer l's in -> SSM is #2 + 3l, SSM -> out
// #3 + 3l, out -> (next in_proj or the head) #4 + 3l; 1 + 3·L in all, the same sequence in every CTA (no phase
// returns early from the kernel).
template <int BATCH, int N, bool XCG>
__global__ void __launch_bounds__(THREADS, MinBlocks<BATCH>::value)
    step_persistent(const __grid_constant__ StepArgs p) {
  typedef __nv_bfloat16 WT;
  __shared__ float inv[BATCH][MAX_GROUPS];
  __shared__ float red[32];
  __shared__ __align__(16) float bc[2 * N];
  __shared__ GemvEpi ep;
  __shared__ float4 st[StateTile<N>::FLOAT4S];  // the SSM block's state
  // The layer index lives in shared memory and is re-read where it is used: as a register it was live across every
  // phase and made the GEMVs spill. Thread 0 advances it inside the layer's last barrier.
  __shared__ int s_layer;
  const volatile int& layer = s_layer;
  uint4 u[UNROLL];

  if (tid_() == 0) s_layer = 0;  // (published by barrier #1's __syncthreads)
  embed_phase<BATCH>(p);
  grid_barrier(p, 1, [&] { gemv_preload<WT>(layer_gemv(p.in, c_layers[0].in), u); });
  while (layer < p.L) {  // the same value in every thread of every CTA
    // in_proj (RMSNorm prologue, conv / dt epilogue)
    gemv_phase<WT, BATCH, MODE_IN, XCG>(layer_gemv(p.in, c_layers[layer].in), u, inv, red, ep);
    grid_barrier(p, 2 + 3 * layer, [&] {
      const int nvb = BATCH * opaque(p.ssm.heads);
      if (cta_() < nvb)  // the state was written by the previous step only: it loads while others finish
        ssm_fetch_state<N>(layer_ssm(p.ssm, c_layers[layer].ssm), cta_(), st);
      else if (p.flags & PF_SSM_IDLE)
        prefetch_share(c_layers[layer].out.w, gemv_bytes<WT>(p.out, p.out.rows), cta_() - nvb, ncta_() - nvb);
    });
    // SSM update + gate
    ssm_phase<BATCH, N>(layer_ssm(p.ssm, c_layers[layer].ssm), st, red, bc);
    grid_barrier(p, 3 + 3 * layer, [&] { gemv_preload<WT>(layer_gemv(p.out, c_layers[layer].out), u); });
    // out_proj (gated-norm prologue, residual add epilogue)
    const int out_steps = (opaque(p.out.rows) + WARPS - 1) / WARPS;
    if ((p.flags & PF_OUT_IDLE) && cta_() >= out_steps) {  // no out_proj rows here: the next GEMV's first rows to L2
      const int j = cta_() - out_steps, n = ncta_() - out_steps;
      if (layer + 1 < p.L)
        prefetch_share(c_layers[layer + 1].in.w, gemv_bytes<WT>(p.in, min(p.in.rows, ncta_() * WARPS)), j, n);
      else
        prefetch_share(p.head.w, gemv_bytes<WT>(p.head, min(p.head.rows, ncta_() * WARPS)), j, n);
    }
    gemv_phase<WT, BATCH, MODE_OUT, XCG>(layer_gemv(p.out, c_layers[layer].out), u, inv, red, ep);
    const int next = layer + 1;  // read before the barrier that stores it
    grid_barrier(
        p, 4 + 3 * (next - 1),
        [&] {
          if (next < p.L) gemv_preload<WT>(layer_gemv(p.in, c_layers[next].in), u);
          else gemv_preload<WT>(p.head, u);
        },
        &s_layer, next);
  }
  // final norm + LM head
  gemv_phase<WT, BATCH, MODE_IN, XCG>(p.head, u, inv, red, ep);
}

}  // namespace plab

// ==== host ==========================================================================================================
using plab::LayerArgs;
using plab::StepArgs;

typedef void (*PK)(StepArgs);
template <int N, bool XCG>
static PK pkernel_n(int batch) {
  switch (batch) {
    case 1: return plab::step_persistent<1, N, XCG>;
    case 2: return plab::step_persistent<2, N, XCG>;
    case 4: return plab::step_persistent<4, N, XCG>;
    default: return plab::step_persistent<8, N, XCG>;
  }
}
// Instantiated: N = 16 (the small check model) and 128 (Mamba2-130M / 2.7B); XCG only for N = 128.
static PK pkernel(int batch, int N, bool xcg) {
  if (N == 16 && !xcg) return pkernel_n<16, false>(batch);
  if (N == 128) return xcg ? pkernel_n<128, true>(batch) : pkernel_n<128, false>(batch);
  std::fprintf(stderr, "no persistent kernel for N=%d xcg=%d\n", N, int(xcg));
  std::exit(2);
}

// One persistent configuration (model, batch, variant): the kernel, its grid and its device-side arguments.
struct Persistent {
  PK k = nullptr;
  int batch = 0, grid = 0, occ = 0, ctas = 0, regs = 0, flags = 0;
  size_t local = 0;
  bool xcg = false, coop = true;  // coop: cooperative launches still believed to work
  std::vector<LayerArgs> layers;  // [L], copied to c_layers by bind()
  unsigned* d_sync = nullptr;  // [0]: barrier counter, [1]: error flags
  StepArgs args{};
  int barriers = 0;
};

static bool g_coop_supported = true;

// ctas: CTAs per SM of the grid, 0 = all that fit (occupancy); fewer (a timed variant) also works: every phase
// loops over virtual blocks.
static Persistent make_persistent(const Model& m, int batch, bool xcg, int flags, int ctas = 0) {
  const Dims& d = m.d;
  if (batch != 1 && batch != 2 && batch != 4 && batch != 8) {
    std::fprintf(stderr, "persistent step: batch %d not in {1, 2, 4, 8}\n", batch);
    std::exit(2);
  }
  if (d.P % 8 != 0 || 4 * d.P > plab::THREADS || d.L < 1 || d.L > plab::MAX_LAYERS) {
    std::fprintf(stderr, "persistent step: head_dim %d (needs P %% 8 == 0, 4P <= 256), layers %d\n", d.P, d.L);
    std::exit(2);
  }
  Persistent P;
  P.k = pkernel(batch, d.N, xcg), P.batch = batch, P.xcg = xcg, P.flags = flags, P.coop = g_coop_supported;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&P.occ, P.k, plab::THREADS, 0));
  if (P.occ < 1) {
    std::fprintf(stderr, "persistent step: occupancy 0\n");
    std::exit(2);
  }
  P.ctas = ctas > 0 ? std::min(ctas, P.occ) : P.occ;
  P.grid = P.ctas * g_sms;
  cudaFuncAttributes fa;
  CK(cudaFuncGetAttributes(&fa, P.k));
  P.regs = fa.numRegs, P.local = fa.localSizeBytes;
  std::vector<LayerArgs>& la = P.layers;
  la.assign(d.L, LayerArgs{});
  for (int l = 0; l < d.L; ++l) {
    la[l].in = in_proj_args(m, l), la[l].ssm = ssm_args(m, l), la[l].out = out_proj_args(m, l);
    la[l].in.split = la[l].out.split = 1;
  }
  GemvArgs h{};  // as step() builds the LM head's arguments
  h.w = m.emb, h.x = m.resid, h.xw = m.norm_f, h.y = m.logits;
  h.ldw = d.D, h.ldx = d.D, h.ldy = d.V, h.rows = d.V, h.cols = d.D;
  h.conv_lo = d.V, h.conv_hi = d.V, h.k = 1, h.dt_lo = d.V, h.heads = 1, h.groups = 1, h.eps = 1e-5f, h.split = 1;
  // The kernel takes shapes and activation buffers from layer 0's structs: they must be the same in every layer.
  for (int l = 1; l < d.L; ++l) {
    GemvArgs gi = la[l].in, go = la[l].out;
    SsmArgs ss = la[l].ssm;
    for (GemvArgs* g : {&gi, &go}) {
      const GemvArgs& r = g == &gi ? la[0].in : la[0].out;
      g->w = r.w, g->bias = r.bias, g->xw = r.xw, g->window = r.window;
      g->conv_w = r.conv_w, g->conv_b = r.conv_b, g->dt_bias = r.dt_bias;
    }
    ss.a = la[0].ssm.a, ss.d = la[0].ssm.d, ss.state = la[0].ssm.state;
    if (std::memcmp(&gi, &la[0].in, sizeof gi) || std::memcmp(&go, &la[0].out, sizeof go) ||
        std::memcmp(&ss, &la[0].ssm, sizeof ss)) {
      std::fprintf(stderr, "persistent step: layer %d differs from layer 0 in more than its own weights\n", l);
      std::exit(2);
    }
  }
  P.d_sync = dalloc<unsigned>(2);
  CK(cudaMemset(P.d_sync, 0, 8));
  StepArgs& a = P.args;
  a.in = la[0].in, a.out = la[0].out, a.head = h, a.ssm = la[0].ssm;
  a.emb = m.emb, a.ids = m.ids, a.resid = m.resid;
  a.bar = P.d_sync, a.err = P.d_sync + 1, a.ld_emb = d.D, a.ld_resid = d.D;
  a.L = d.L, a.D = d.D, a.ids_stride = 1, a.flags = flags;
  P.barriers = 1 + 3 * d.L;
  return P;
}
static void free_persistent(Persistent& P) {
  CK(cudaFree(P.d_sync));
}
// The configuration's layer arguments into constant memory (before its launches / its graph's replays; the
// graphs read c_layers when they run).
static void bind(const Persistent& P) {
  CK(cudaMemcpyToSymbol(plab::c_layers, P.layers.data(), P.layers.size() * sizeof(LayerArgs)));
}
static void print_persistent(const char* model, const Persistent& P, const char* launch) {
  std::printf("persistent %s b%d x=%s pf=%d: %d registers, %zu B local, occupancy %d CTAs/SM, grid %d x %d SMs = "
              "%d CTAs, %d barriers, launch %s\n", model, P.batch, P.xcg ? "cg" : "l1", P.flags, P.regs, P.local,
              P.occ, P.ctas, g_sms, P.grid, P.barriers, launch);
}

// The step's launches on `st`: counter reset, the persistent kernel (cooperative or not), argmax. Returns the
// kernel launch's error instead of exiting (the caller may fall back).
static cudaError_t record_persistent(const Persistent& P, const Model& m, cudaStream_t st, bool coop) {
  cudaError_t e = cudaMemsetAsync(P.d_sync, 0, sizeof(unsigned), st);  // the counter only; errors stay sticky
  if (e != cudaSuccess) return e;
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(P.grid), cfg.blockDim = dim3(plab::THREADS), cfg.dynamicSmemBytes = 0, cfg.stream = st;
  cfg.attrs = coop ? &attr : nullptr, cfg.numAttrs = coop ? 1 : 0;
  e = cudaLaunchKernelEx(&cfg, P.k, P.args);
  if (e != cudaSuccess) return e;
  argmax_rows<<<P.batch, 1024, 0, st>>>(m.logits, (long long)m.d.V, m.d.V, m.picked);
  return cudaGetLastError();
}

// One step launched directly on g_st (cooperative if it works, else normal: printed once per configuration).
static void launch_persistent(Persistent& P, const Model& m) {
  cudaError_t e = record_persistent(P, m, g_st, P.coop);
  if (e != cudaSuccess && P.coop) {
    (void)cudaGetLastError();
    std::printf("note: cooperative launch failed (%s): normal launch of the same grid\n", cudaGetErrorString(e));
    P.coop = false;
    e = record_persistent(P, m, g_st, false);
  }
  CK(e);
}

// A graph of one step (counter memset, kernel, argmax), cooperative if capture, instantiation and a first replay
// work, else with a normal launch. Runs one step (the trial replay). `coop_used` tells which one.
static cudaGraphExec_t capture_persistent(Persistent& P, const Model& m, bool& coop_used) {
  for (int coop = P.coop ? 1 : 0; coop >= 0; --coop) {
    cudaGraph_t g = nullptr;
    cudaGraphExec_t ex = nullptr;
    CK(cudaStreamBeginCapture(g_st, cudaStreamCaptureModeThreadLocal));
    cudaError_t e = record_persistent(P, m, g_st, coop != 0);
    const cudaError_t e2 = cudaStreamEndCapture(g_st, &g);
    if (e == cudaSuccess) e = e2;
    if (e == cudaSuccess) e = cudaGraphInstantiate(&ex, g, 0);
    if (g) (void)cudaGraphDestroy(g);
    if (e == cudaSuccess) e = cudaGraphLaunch(ex, g_st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(g_st);
    if (e == cudaSuccess) {
      coop_used = coop != 0;
      return ex;
    }
    std::printf("note: %s launch in a CUDA graph failed (%s)%s\n", coop ? "cooperative" : "normal",
                cudaGetErrorString(e), coop ? ": capturing a normal launch of the same grid" : "");
    if (ex) (void)cudaGraphExecDestroy(ex);
    (void)cudaGetLastError();
    cudaStreamCaptureStatus cs;
    if (cudaStreamIsCapturing(g_st, &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone) {
      cudaGraph_t dummy = nullptr;
      (void)cudaStreamEndCapture(g_st, &dummy);
      if (dummy) (void)cudaGraphDestroy(dummy);
      (void)cudaGetLastError();
    }
  }
  std::fprintf(stderr, "persistent step: no launch works in a CUDA graph\n");
  std::exit(2);
}

// Error flags and barrier counter after a synchronised launch: 0 when fine (prints FAIL lines otherwise).
static int sync_status(const Persistent& P, const char* what, bool check_count) {
  CK(cudaStreamSynchronize(g_st));
  unsigned s[2];
  CK(cudaMemcpy(s, P.d_sync, 8, cudaMemcpyDeviceToHost));
  int fails = 0;
  if (s[1] & plab::ERR_DEADLOCK) {
    std::printf("FAIL deadlock guard (%s: a barrier waited over %.1f s)\n", what, plab::SPIN_LIMIT_NS * 1e-9);
    CK(cudaMemset(P.d_sync + 1, 0, 4));
    fails = 1;
  }
  const unsigned want = unsigned(P.barriers) * unsigned(P.grid);
  if (check_count && s[0] != want) {
    std::printf("FAIL barrier count (%s): counter %u, want %u\n", what, s[0], want);
    fails = 1;
  }
  return fails;
}

// ---- check ------------------------------------------------------------------------------------------------------
struct Snap {
  std::vector<std::vector<float>> bufs;  // logits, residual, per layer: state, window
  std::vector<unsigned> picks;
};
static Snap snapshot(const Model& m, int batch) {
  const Dims& d = m.d;
  Snap s;
  s.bufs.push_back(down(m.logits, size_t(batch) * d.V));
  s.bufs.push_back(down(m.resid, size_t(batch) * d.D));
  for (int l = 0; l < d.L; ++l) {
    s.bufs.push_back(down(static_cast<const float*>(m.st[l]), size_t(batch) * d.H * d.P * d.N));
    s.bufs.push_back(down(static_cast<const float*>(m.win[l]), size_t(batch) * m.C * d.K));
  }
  s.picks = down(m.picked, 2 * size_t(batch));
  return s;
}
// Largest |got - ref| over the buffer's largest |ref|, the maximum over the buffers; inf when anything is not finite.
static double max_rel(const Snap& got, const Snap& ref, bool& bitwise) {
  double worst = 0;
  bitwise = got.picks == ref.picks;
  for (size_t i = 0; i < ref.bufs.size(); ++i) {
    const std::vector<float>&g = got.bufs[i], &r = ref.bufs[i];
    bitwise = bitwise && std::memcmp(g.data(), r.data(), r.size() * 4) == 0;
    double scale = 0, diff = 0;
    for (size_t j = 0; j < r.size(); ++j) {
      if (!std::isfinite(g[j]) || !std::isfinite(r[j])) return INFINITY;
      scale = std::max(scale, std::fabs(double(r[j])));
      diff = std::max(diff, std::fabs(double(g[j]) - double(r[j])));
    }
    worst = std::max(worst, scale > 0 ? diff / scale : diff);
  }
  return worst;
}

constexpr int CHECK_STEPS = 3;
static std::vector<unsigned> step_ids(int t, int batch, int V) {
  std::vector<unsigned> ids(batch);
  for (int b = 0; b < batch; ++b) ids[b] = unsigned((t * 7919 + b * 104729 + 13) % V);
  return ids;
}
// CHECK_STEPS steps from init_state with NaN-poisoned activations and outputs.
static Snap run_steps(Model& m, int batch, const std::function<void()>& one_step) {
  const Dims& d = m.d;
  init_state(m);
  CK(cudaMemset(m.resid, 0xff, size_t(m.bmax) * d.D * 4));
  CK(cudaMemset(m.proj, 0xff, size_t(m.bmax) * m.ldp * 4));
  CK(cudaMemset(m.yg, 0xff, size_t(m.bmax) * d.I * 4));
  CK(cudaMemset(m.part, 0xff, size_t(m.bmax) * d.H * 4));
  CK(cudaMemset(m.logits, 0xff, size_t(m.bmax) * d.V * 4));
  CK(cudaMemset(m.picked, 0xff, size_t(m.bmax) * 8));
  CK(cudaDeviceSynchronize());
  std::vector<std::vector<unsigned>> ids;
  for (int t = 0; t < CHECK_STEPS; ++t) ids.push_back(step_ids(t, batch, d.V));
  for (int t = 0; t < CHECK_STEPS; ++t) {
    CK(cudaMemcpyAsync(m.ids, ids[t].data(), batch * 4, cudaMemcpyHostToDevice, g_st));
    one_step();
  }
  CK(cudaStreamSynchronize(g_st));
  return snapshot(m, batch);
}
static int report_p(const char* what, const char* model, int batch, const Snap& got, const Snap& ref) {
  bool bitwise = false;
  const double r = max_rel(got, ref, bitwise);
  const bool ok = r <= 1e-5;
  std::printf("check %s %s b%d max_rel=%.3e bitwise=%s picks=%s %s\n", what, model, batch, r, bitwise ? "yes" : "no",
              got.picks == ref.picks ? "same" : "differ", ok ? "ok" : "FAIL");
  return !ok;
}

static int check_model(const Dims& d) {
  int fails = 0;
  Model m = make_model(d, 8);
  for (int batch : {1, 2, 4, 8}) {
    Launch L;
    L.st = g_st, L.ctas = 4, L.prefetch = 0, L.split = 1;
    const Snap multi = run_steps(m, batch, [&] { step(m, L, batch); });
    // Direct launches (every prefetch on: they must not change anything).
    Persistent P = make_persistent(m, batch, false, plab::PF_SSM_IDLE | plab::PF_OUT_IDLE);
    bind(P);
    int f = 0;
    const Snap direct = run_steps(m, batch, [&] {
      launch_persistent(P, m);
      f += sync_status(P, "direct", true);
    });
    print_persistent(d.name, P, P.coop ? "cooperative" : "normal");
    fails += f + report_p("persistent", d.name, batch, direct, multi);
    // From a CUDA graph (counter reset inside the graph), no prefetch: bitwise against the direct launches.
    Persistent G = make_persistent(m, batch, false, 0);
    bind(G);
    bool coop_used = false;
    cudaGraphExec_t ex = capture_persistent(G, m, coop_used);
    f = 0;
    const Snap graph = run_steps(m, batch, [&] {
      CK(cudaGraphLaunch(ex, g_st));
      f += sync_status(G, "graph", true);
    });
    CK(cudaGraphExecDestroy(ex));
    print_persistent(d.name, G, coop_used ? "cooperative (graph)" : "normal (graph)");
    fails += f + report_p("persistent-graph-vs-direct", d.name, batch, graph, direct);
    free_persistent(G);
    {  // one CTA per SM: several virtual blocks per CTA in every phase (e.g. the SSM state fetch after the first)
      Persistent S = make_persistent(m, batch, false, plab::PF_SSM_IDLE | plab::PF_OUT_IDLE, 1);
      bind(S);
      f = 0;
      const Snap one = run_steps(m, batch, [&] {
        launch_persistent(S, m);
        f += sync_status(S, "ctas 1", true);
      });
      fails += f + report_p("persistent-ctas1", d.name, batch, one, multi);
      free_persistent(S);
    }
    if (d.N == 128) {  // the variant with .cg loads of the GEMV's x operand
      Persistent X = make_persistent(m, batch, true, plab::PF_SSM_IDLE | plab::PF_OUT_IDLE);
      bind(X);
      f = 0;
      const Snap xcg = run_steps(m, batch, [&] {
        launch_persistent(X, m);
        f += sync_status(X, "xcg", true);
      });
      fails += f + report_p("persistent-xcg", d.name, batch, xcg, multi);
      free_persistent(X);
    }
    free_persistent(P);
  }
  free_model(m);
  return fails;
}

static int check_all_persistent() {
  // The lab's small check model (2 layers, hidden 64, 8 heads of 16, state 16, 2 groups, vocab 256), then
  // Mamba2-130M's dims (24 layers, pseudo-random weights).
  const Dims small{"small", 64, 128, 8, 16, 16, 2, 4, 2, 256};
  int fails = check_model(small);
  fails += check_model(M130);
  return fails;
}

// ---- time -------------------------------------------------------------------------------------------------------
static int time_model(const Dims& d, const std::vector<int>& batches) {
  int fails = 0;
  Model m = make_model(d, *std::max_element(batches.begin(), batches.end()));
  init_state(m);
  for (int batch : batches) {
    Launch L;
    L.st = g_st, L.ctas = 4, L.prefetch = 0, L.split = 1;  // plain launches, no PDL
    const float multi = graph_ms([&] { step(m, L, batch); });
    const double bytes = m.weight_bytes() + 2 * m.state_bytes(batch);
    // Variants: L2 prefetch flags 3 (both; the first line), 0, 1, 2; x operand through L2 (.cg); smaller grids.
    struct V {
      bool xcg;
      int flags, ctas;
    };
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, pkernel(batch, d.N, false), plab::THREADS, 0));
    for (const V v : {V{false, 3, 0}, V{false, 0, 0}, V{false, 1, 0}, V{false, 2, 0}, V{true, 3, 0}, V{false, 3, 2},
                      V{false, 3, 1}}) {
      if (v.ctas >= occ) continue;  // the same as the full grid
      Persistent P = make_persistent(m, batch, v.xcg, v.flags, v.ctas);
      bind(P);
      bool coop_used = false;
      cudaGraphExec_t ex = capture_persistent(P, m, coop_used);
      const float ms = median_ms([&] { CK(cudaGraphLaunch(ex, g_st)); }, g_st);
      CK(cudaGraphExecDestroy(ex));
      char what[64];
      std::snprintf(what, sizeof what, "time %s b%d", d.name, batch);
      fails += sync_status(P, what, true);
      if (v.flags == 3 && !v.xcg && v.ctas == 0)
        print_persistent(d.name, P, coop_used ? "cooperative (graph)" : "normal (graph)");
      std::printf("time %s b%d multi=%.4f persistent=%.4f speedup=%.3f x=%s pf=%d ctas=%d (%.2f vs %.2f TB/s)\n",
                  d.name, batch, multi, ms, multi / ms, v.xcg ? "cg" : "l1", v.flags, P.ctas,
                  bytes / (ms * 1e-3) / 1e12, bytes / (multi * 1e-3) / 1e12);
      free_persistent(P);
    }
  }
  free_model(m);
  return fails;
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode != "check" && mode != "time" && mode != "all") {
    std::fprintf(stderr, "usage: %s [check|time|all]\n", argv[0]);
    return 2;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  int coop = 0;
  CK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0));
  g_coop_supported = coop != 0;
  std::printf("device %s sm_%d%d, %d SMs, L2 %d MB, cooperative launch %s\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, coop ? "supported" : "NOT supported");
  if (prop.major < 9) {
    std::fprintf(stderr, "needs sm_90 (cp.async.bulk.prefetch)\n");
    return 2;
  }
  CK(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
  int fails = 0;
  if (mode == "check" || mode == "all") fails += check_all_persistent();
  if (mode == "time" || mode == "all") {
    fails += time_model(M27, {1, 2, 4, 8});
    fails += time_model(M130, {1, 8});
  }
  std::printf("%s: %d check failures\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
