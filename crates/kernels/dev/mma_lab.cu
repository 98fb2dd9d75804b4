// Lab for the tensor-core decode GEMV (`cuda/gemv_mma.cuh`, issue 14). Not part of the build.
//   check: every variant against a float64 CPU product on random inputs, outputs NaN-poisoned beforehand:
//          MODE_IN in the in_proj layout (z rows, conv rows through their windows, dt rows; biases), MODE_IN with an
//          activation (squared ReLU / GELU, no conv or dt rows), MODE_OUT with the gated norm (groups 1, 2, 8, and
//          16 groups of 98 columns: groups that start inside a 16-byte chunk), MODE_PLAIN; batches 1, 2, 3, 8, 9,
//          16, 24, 33, 64; rows not a multiple of 8. Each line is one (case, batch, variant) over 11 launches:
//          ks 1 and ks 3 (split-K across CTAs), each with the default plan (x̂ resident when it fits 113 KB), one
//          CTA per unit, the smallest x̂ chunks, a grid of 3-7 CTAs (many units per CTA; once not a multiple of
//          ks), one launch with PDL, a repeat, and for MODE_IN one with the sums of squares given
//          (GemvArgs::part). It prints the largest L2-relative error against float64 over the launches and parts
//          (tolerance 2e-6 for 3 planes; 2e-5 for the 2-plane variant), the largest element error over the rms of
//          the reference ("max"), the difference to decode.cu's gemv_fused (batch ≤ 8, tolerance 2e-6), whether
//          the launches of one ks agree bitwise (they must: same sums in the same order for any grid and chunk
//          size), and guards (nothing written past the batch or the rows, the split-K counters back at zero), then
//          the plans it ran. Each line ends in ok or FAIL.
//   time:  2.7B shapes (in_proj 10576x2560 with the conv/dt epilogue, out_proj 2560x5120 MODE_OUT, LM head
//          50288x2560 MODE_IN) and 130M (in_proj 3352x768, out_proj 768x1536), batch 1, 2, 4, 8, 16, 32, 64; each
//          variant at ks 1, 2, 4, 8 (persistent grid: at most the CTAs that fit the SMs at once, units taken
//          grid-stride) and ks 1 with one CTA per unit ("np"); weights rotated through 4 copies, 8 launches per
//          CUDA graph (130M: as many copies as make 120 MB, one per launch; so L2 never holds them), median of 20
//          replays after 3 warm-up ones, µs per launch and TB/s of weight bytes. Each cell: "ks<n> µs TB/s" then
//          the plan: res (x̂ of the CTA's share formed once) or ch<cb> (two chunks of cb blocks, formed for every
//          row block), the grid, the CTAs per SM that fit, the dynamic shared memory. Then the best configuration
//          again with the sums of squares given (MODE_IN), gemv_fused (batch ≤ 8, as src/decode.rs launches it),
//          and cuBLAS (batch ≥ 16): cublasGemmEx alone (bf16 weights x bf16 activations [2·batch rows], f32 out,
//          CUBLAS_COMPUTE_32F) and the whole cuBLAS path of src/decode.rs (wide_split + GEMM + wide_finish).
// Build (the CUDA 13 toolchain; about 5 minutes on 2 cores):
//   source /work/shared/gpu/cuda-env.sh
//   nvcc -std=c++17 -O3 -lineinfo -gencode=arch=compute_90,code=sm_90 -Xptxas -v -o /tmp/mma_lab \
//     crates/kernels/dev/mma_lab.cu -lcublas
// (cuda-env.sh puts the toolchain's lib/ on LIBRARY_PATH, where libcublas.so is; elsewhere add -L<dir of
// libcublas.so>, and at run time LD_LIBRARY_PATH if it is not on the loader's path.)
// Run `/tmp/mma_lab [check|time|all]` (default all). The exit status is 1 when any check failed. `time` needs about
// 1.6 GB of GPU memory.
//
// Variants (template parameters of gemv_mma; name "s<ST> r<rows per CTA> <WM>x<WK> kt<KT> p<P>"): ST sequence
// tiles of 16 (1: batch ≤ 16, 2: ≤ 32, 4: ≤ 64), NR row tiles of 8 per warp (rows per CTA = 8·NR·WM), WM x WK warps
// (WK warps split each row block's columns), KT blocks of 32 columns in flight per warp, P planes of x̂.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../cuda/decode.cu"
#include "../cuda/gemv_mma.cuh"

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)
#define CB(x)                                                                      \
  do {                                                                             \
    cublasStatus_t s_ = (x);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                             \
      std::fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, \
                   int(s_));                                                       \
      std::exit(2);                                                                \
    }                                                                              \
  } while (0)

typedef __nv_bfloat16 bf16;
typedef void (*GemvK)(const GemvArgs);

// ---------------------------------------------------------------------------------------------------------------
// Variants

template <int MODE, int ST, int NR, int WM, int WK, int KT, int P>
__global__ void __launch_bounds__(32 * WM * WK) mma_kernel(const GemvArgs a) {
  gemv_mma<MODE, ST, NR, WM, WK, KT, P>(a);
}

struct Variant {
  int st, nr, wm, wk, kt, p;
  GemvK k[3];  // MODE_IN, MODE_OUT, MODE_PLAIN
  int threads() const { return 32 * wm * wk; }
  int rows_per_cta() const { return 8 * nr * wm; }
  std::string name() const {
    char s[64];
    std::snprintf(s, sizeof s, "s%d r%d %dx%d kt%d p%d", st, rows_per_cta(), wm, wk, kt, p);
    return s;
  }
};
#define MMA_VARIANT(ST, NR, WM, WK, KT, P)                                                           \
  Variant {                                                                                          \
    ST, NR, WM, WK, KT, P, {                                                                         \
      mma_kernel<MODE_IN, ST, NR, WM, WK, KT, P>, mma_kernel<MODE_OUT, ST, NR, WM, WK, KT, P>,       \
          mma_kernel<MODE_PLAIN, ST, NR, WM, WK, KT, P>                                              \
    }                                                                                                \
  }
// Small batches (ST 1): 16 rows per CTA split over 8 or 4 warps (KT 4 or 2), 32 rows (two row tiles per warp, or
// two warp-rows). Larger batches (ST 2, 4): more rows per warp and per CTA, so that an x̂ operand read from shared
// memory serves 4 row tiles (the bytes read from shared memory per weight byte are 2·P·ST / NR) and x̂ formed once
// serves 64-128 rows (its L2 reads per weight byte are 2·batch / rows per CTA), fewer warps along K (a chunk of x̂
// is at least WK blocks of P·ST KB, twice); and the 128-row one with 2 planes (a third fewer mma).
static const Variant VARIANTS[] = {
    MMA_VARIANT(1, 2, 1, 8, 4, 3), MMA_VARIANT(1, 2, 1, 8, 2, 3), MMA_VARIANT(1, 2, 1, 4, 4, 3),
    MMA_VARIANT(1, 4, 1, 8, 2, 3), MMA_VARIANT(1, 2, 2, 4, 4, 3),

    MMA_VARIANT(2, 4, 1, 4, 2, 3), MMA_VARIANT(2, 2, 2, 4, 4, 3), MMA_VARIANT(2, 4, 2, 2, 2, 3),
    MMA_VARIANT(2, 4, 4, 1, 2, 3), MMA_VARIANT(2, 4, 4, 1, 2, 2),

    MMA_VARIANT(4, 2, 4, 2, 2, 3), MMA_VARIANT(4, 4, 2, 2, 2, 3), MMA_VARIANT(4, 4, 4, 1, 2, 3),
    MMA_VARIANT(4, 4, 4, 1, 2, 2),
};
static int st_of(int batch) { return batch <= 16 ? 1 : batch <= 32 ? 2 : 4; }

// ---------------------------------------------------------------------------------------------------------------
// Helpers

static std::mt19937 rng(11);
static std::vector<float> randv(size_t n, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> nd(mean, scale);
  std::vector<float> v(n);
  for (auto& e : v) e = nd(rng);
  return v;
}
template <typename T>
static T* dalloc(size_t n) {
  T* d;
  CK(cudaMalloc(&d, std::max<size_t>(n, 1) * sizeof(T)));
  return d;
}
template <typename T>
static T* up(const std::vector<T>& v) {
  T* d = dalloc<T>(v.size());
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
static void upto(T* d, const std::vector<T>& v) {
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <typename T>
static std::vector<T> down(const T* d, size_t n) {
  std::vector<T> v(n);
  CK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
// bf16 weights on the device; `w` becomes the rounded values (what the kernels multiply).
static bf16* up_bf16(std::vector<float>& w) {
  std::vector<bf16> b(w.size());
  for (size_t i = 0; i < w.size(); ++i) b[i] = __float2bfloat16(w[i]), w[i] = __bfloat162float(b[i]);
  return up(b);
}

static int g_sms = 132, g_smem_optin = 227 * 1024;
static cudaStream_t g_st;
static size_t g_ws_bytes = 0;
static void* g_ws = nullptr;  // the split-K workspace (counters zero)
static void ensure_ws(long long bytes) {
  if (bytes <= (long long)g_ws_bytes) return;
  if (g_ws) CK(cudaFree(g_ws));
  g_ws_bytes = size_t(bytes);
  CK(cudaMalloc(&g_ws, g_ws_bytes));
  CK(cudaMemset(g_ws, 0, g_ws_bytes));
}

// Launch of `k` with or without programmatic dependent launch.
static void launch(GemvK k, dim3 grid, dim3 block, size_t smem, cudaStream_t st, const GemvArgs& a, bool pdl = false) {
  if (!pdl) {
    k<<<grid, block, smem, st>>>(a);
  } else {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = st;
    cfg.attrs = &attr, cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, k, a));
  }
  CK(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------------------------
// Launch plans

constexpr int RES_MAX = 113 * 1024;  // x̂ of the CTA's share kept whole up to this (two CTAs per SM)
constexpr int CH_MAX = 72 * 1024;    // otherwise two chunks in at most this (three CTAs per SM)
enum Chunks { CH_DEFAULT, CH_SMALLEST };
struct Plan {
  int grid = 0, threads = 0, ks = 1, cb = 0, fit = 0, units = 0;
  size_t smem = 0;
  bool resident = false, ok = true;  // ok: fits a CTA's shared memory
  std::string desc() const {
    char s[96];
    std::snprintf(s, sizeof s, "%s grid %d (%d/SM) %zuKB", resident ? "res" : ("ch" + std::to_string(cb)).c_str(),
                  grid, fit, smem / 1024);
    return s;
  }
};
// persistent: at most the CTAs that fit the SMs at once (else one per unit); cap: at most this many CTAs; a grid
// smaller than the units is a multiple of ks (so that the kernel may keep x̂ resident) unless !round.
static Plan plan_mma(const Variant& v, int mode, int rows, int cols, int ks, bool persistent, Chunks ch, int cap = 0,
                     bool round = true) {
  Plan P;
  P.threads = v.threads(), P.ks = ks;
  const int nb = cols / 32, kbs = (nb + ks - 1) / ks, BLK = gemv_mma_block_bytes(v.st, v.p);
  const int RED = gemv_mma_red_bytes(v.st, v.nr, v.wm, v.wk), spu = (kbs + v.wk * v.kt - 1) / (v.wk * v.kt) * v.kt;
  P.units = (rows + v.rows_per_cta() - 1) / v.rows_per_cta() * ks;
  if (ch == CH_DEFAULT && RED + kbs * BLK <= RES_MAX) {
    P.smem = RED + kbs * BLK, P.resident = true, P.cb = kbs;
  } else {
    int cb = ch == CH_SMALLEST ? v.wk : (CH_MAX - RED) / (2 * BLK) / v.wk * v.wk;
    cb = std::max(v.wk, std::min(cb, spu * v.wk));
    P.smem = RED + 2 * size_t(cb) * BLK, P.cb = cb;
    P.resident = RED + kbs * BLK <= int(P.smem);  // the kernel's own rule (its grid is a multiple of ks)
    if (P.resident) P.cb = kbs;
  }
  if (P.smem > size_t(g_smem_optin)) {
    P.ok = false;
    return P;
  }
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&P.fit, v.k[mode], P.threads, P.smem));
  P.grid = persistent ? std::min(P.units, g_sms * std::max(P.fit, 1)) : P.units;
  if (cap > 0) P.grid = std::min(P.grid, cap);
  if (P.grid < P.units && round) P.grid = std::max(ks, P.grid / ks * ks);
  if (P.grid % ks != 0) {  // the kernel forms x̂ per unit then (the CTA's units have different shares)
    P.resident = false;
    P.cb = std::min(spu * v.wk, int(P.smem - RED) / (2 * BLK) / v.wk * v.wk);
    if (P.cb < v.wk) P.ok = false;
  }
  return P;
}
static void run_mma(const Variant& v, int mode, const Plan& P, GemvArgs a, int batch, cudaStream_t st,
                    bool pdl = false) {
  a.wide_batch = batch, a.split = P.ks, a.prefetch_iters = 0;
  a.wide = P.ks > 1 ? g_ws : nullptr;
  if (P.ks > 1 && (long long)g_ws_bytes < gemv_mma_workspace_bytes(P.ks, batch, a.rows)) {
    std::fprintf(stderr, "workspace too small\n");
    std::exit(2);
  }
  launch(v.k[mode], dim3(P.grid), dim3(P.threads), P.smem, st, a, pdl);
}

// decode.cu's gemv_fused as src/decode.rs launches it: groups of 1, 2, 4 or 8 sequences, grid min(ceil(rows / 8),
// SMs x min(4, the CTAs that fit)), 256 threads, one warp per row.
static GemvK fused_kernel(int mode, int n) {
  static const GemvK t[3][4] = {{gemv_in_bf16_b1, gemv_in_bf16_b2, gemv_in_bf16_b4, gemv_in_bf16_b8},
                                {gemv_out_bf16_b1, gemv_out_bf16_b2, gemv_out_bf16_b4, gemv_out_bf16_b8},
                                {gemv_plain_bf16_b1, gemv_plain_bf16_b2, gemv_plain_bf16_b4, gemv_plain_bf16_b8}};
  return t[mode][n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : 3];
}
static int fused_fit(int mode, int n) {  // asked once per kernel, never while a graph is captured
  static int fit[3][9] = {};
  if (!fit[mode][n]) CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit[mode][n], fused_kernel(mode, n), 256, 0));
  return fit[mode][n];
}
static void run_fused(int mode, GemvArgs a, int batch, long long win_stride, cudaStream_t st) {
  for (int b0 = 0; b0 < batch;) {
    const int r = batch - b0, n = r == 1 ? 1 : r < 4 ? 2 : r < 8 ? 4 : 8;
    const int fit = fused_fit(mode, n);
    const int grid = std::max(1, std::min((a.rows + 7) / 8, g_sms * std::max(1, std::min(4, fit))));
    GemvArgs g = a;
    g.split = 1, g.prefetch_iters = 0, g.wide = nullptr, g.wide_batch = 0;
    g.x = a.x + b0 * a.ldx, g.y = a.y + b0 * a.ldy;
    if (a.window) g.window = a.window + b0 * win_stride;
    if (a.part && mode == MODE_OUT) g.part = a.part + b0 * a.heads;
    launch(fused_kernel(mode, n), dim3(grid), dim3(256), 0, st, g);
    b0 += n;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// check

static double rel_err(const std::vector<float>& got, const std::vector<double>& want, double* maxe = nullptr) {
  double num = 0, den = 0, mx = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      if (maxe) *maxe = INFINITY;
      return INFINITY;
    }
    const double d = got[i] - want[i];
    num += d * d, den += want[i] * want[i], mx = std::max(mx, std::fabs(d));
  }
  den = std::max(den, 1e-300);
  if (maxe) *maxe = mx / std::sqrt(den / std::max<size_t>(got.size(), 1));
  return std::sqrt(num / den);
}

enum CaseKind { IN_CONV, IN_ACT, OUT_G1, OUT_G2, OUT_G8, OUT_G16, PLAIN };
static const char* case_name(CaseKind k) {
  switch (k) {
    case IN_CONV: return "in  conv/dt";
    case IN_ACT: return "in  act";
    case OUT_G1: return "out g1";
    case OUT_G2: return "out g2";
    case OUT_G8: return "out g8";
    case OUT_G16: return "out g16/98";
    default: return "plain";
  }
}

// One case's inputs on the host and the device, and its float64 reference.
struct Case {
  CaseKind kind;
  int mode, batch, rows, cols, heads = 1, groups = 1, K = 4, C = 0, conv_lo, conv_hi, dt_lo, act = ACT_NONE;
  long long ldw, ldx, ldy, win_stride = 0;
  float eps = 1e-5f, dt_min = 0.f, dt_max = INFINITY;
  std::vector<float> w, bias, x, xw, win, cw, cb, dtb, part, y0, sumsq;
  std::vector<double> want, want_win;
  bf16* dw = nullptr;
  float *dbias, *dx, *dxw, *dwin, *dcw, *dcb, *ddtb, *dpart, *dy, *dsumsq;
  std::vector<std::pair<int, int>> parts;  // row ranges checked on their own

  void build(CaseKind k, int b) {
    kind = k, batch = b;
    mode = k == IN_CONV || k == IN_ACT ? MODE_IN : k == PLAIN ? MODE_PLAIN : MODE_OUT;
    const bool conv = k == IN_CONV;
    if (conv) {
      const int I = 512, G = 2, N = 64, H = 10;
      C = I + 2 * G * N, rows = I + C + H, cols = 1568, conv_lo = I, conv_hi = I + C, dt_lo = I + C;
      dt_min = 0.01f, dt_max = 0.5f;
      parts = {{0, conv_lo}, {conv_lo, conv_hi}, {dt_lo, rows}};
    } else {
      rows = k == IN_ACT ? 1003 : k == PLAIN ? 777 : 1100;
      cols = k == IN_ACT ? 1024 : k == PLAIN ? 1056 : k == OUT_G16 ? 1568 : 1536;
      conv_lo = conv_hi = dt_lo = rows;
      parts = {{0, rows}};
      if (k == IN_ACT) act = b % 2 ? ACT_GELU : ACT_RELU2;
      if (mode == MODE_OUT) {
        heads = k == OUT_G16 ? 16 : 64;
        groups = k == OUT_G1 ? 1 : k == OUT_G2 ? 2 : k == OUT_G8 ? 8 : 16;
      }
    }
    ldw = cols + 24, ldx = cols + 12, ldy = rows + 5;
    w = randv(size_t(rows) * ldw, 1.f / std::sqrt(float(cols)));
    bias = randv(rows, 0.5f), x = randv(size_t(batch + 1) * ldx, 2.f, 0.3f), xw = randv(cols, 0.5f, 1.f);
    dw = up_bf16(w);
    std::vector<double> inv(size_t(batch) * MAX_GROUPS, 1.0);
    sumsq.assign(batch, 0.f);
    const int group = cols / groups;
    if (mode == MODE_IN) {
      for (int s = 0; s < batch; ++s) {
        double ss = 0;
        for (int c = 0; c < cols; ++c) ss += double(x[s * ldx + c]) * x[s * ldx + c];
        sumsq[s] = float(ss);
        inv[s * MAX_GROUPS] = 1.0 / std::sqrt(ss / cols + eps);
      }
    } else if (mode == MODE_OUT) {
      const int P = cols / heads, hpg = heads / groups;
      part.assign(size_t(batch) * heads, 0.f);
      for (int s = 0; s < batch; ++s) {
        for (int c = 0; c < cols; ++c) x[s * ldx + c] *= 1.f + 0.5f * (c / group);  // groups of different sizes
        for (int h = 0; h < heads; ++h) {
          float ss = 0;
          for (int p = 0; p < P; ++p) ss += x[s * ldx + h * P + p] * x[s * ldx + h * P + p];
          part[s * heads + h] = ss;
        }
        for (int g = 0; g < groups; ++g) {
          double ss = 0;
          for (int h = 0; h < hpg; ++h) ss += part[s * heads + g * hpg + h];
          inv[s * MAX_GROUPS + g] = 1.0 / std::sqrt(ss / group + eps);
        }
      }
    }
    y0 = randv(size_t(batch + 1) * ldy);
    if (mode == MODE_IN) std::fill(y0.begin(), y0.end(), NAN);
    if (conv) {
      win_stride = (long long)C * K;
      win = randv(size_t(batch + 1) * C * K), cw = randv(size_t(C) * K, 0.5f), cb = randv(C, 0.5f);
      dtb = randv(rows - dt_lo, 0.5f, -1.f);
      want_win.assign(win.begin(), win.begin() + size_t(batch) * C * K);
    }
    // The float64 reference.
    want.assign(size_t(batch) * rows, 0.0);
    for (int s = 0; s < batch; ++s) {
      std::vector<double> xh(cols);
      for (int c = 0; c < cols; ++c)
        xh[c] = mode == MODE_PLAIN ? double(x[s * ldx + c])
                                   : double(x[s * ldx + c]) * inv[s * MAX_GROUPS + c / group] * xw[c];
      for (int r = 0; r < rows; ++r) {
        const float* wr = &w[size_t(r) * ldw];
        double v = bias[r];
        for (int c = 0; c < cols; ++c) v += double(wr[c]) * xh[c];
        if (mode != MODE_IN) {
          v += y0[s * ldy + r];
        } else if (r >= conv_lo && r < conv_hi) {
          const int ch = r - conv_lo;
          double* wn = &want_win[(size_t(s) * C + ch) * K];
          double cv = cb[ch];
          for (int i = 0; i + 1 < K; ++i) wn[i] = wn[i + 1], cv += double(cw[ch * K + i]) * wn[i];
          wn[K - 1] = v;
          cv += double(cw[ch * K + K - 1]) * v;
          v = cv / (1.0 + std::exp(-cv));
        } else if (r >= dt_lo) {
          double t = v + dtb[r - dt_lo];
          t = t > 20 ? t : std::log1p(std::exp(t));
          v = std::min(std::max(t, double(dt_min)), double(dt_max));
        } else if (act == ACT_RELU2) {
          v = v > 0 ? v * v : 0;
        } else if (act == ACT_GELU) {
          v = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
        }
        want[size_t(s) * rows + r] = v;
      }
    }
    dbias = up(bias), dx = up(x), dxw = up(xw), dy = up(y0), dsumsq = up(sumsq);
    dpart = part.empty() ? nullptr : up(part);
    dwin = conv ? up(win) : nullptr, dcw = conv ? up(cw) : nullptr, dcb = conv ? up(cb) : nullptr;
    ddtb = conv ? up(dtb) : nullptr;
  }
  GemvArgs args() const {
    GemvArgs a;
    std::memset(&a, 0, sizeof a);
    a.w = dw, a.bias = dbias, a.x = dx, a.xw = dxw, a.part = mode == MODE_OUT ? dpart : nullptr, a.y = dy;
    a.window = dwin, a.conv_w = dcw, a.conv_b = dcb, a.dt_bias = ddtb;
    a.ldw = ldw, a.ldx = ldx, a.ldy = ldy, a.rows = rows, a.cols = cols;
    a.conv_lo = conv_lo, a.conv_hi = conv_hi, a.k = K, a.dt_lo = dt_lo, a.heads = heads, a.groups = groups;
    a.act = act, a.eps = eps, a.dt_min = dt_min, a.dt_max = dt_max;
    return a;
  }
  void reset() const {  // the state the kernels change: y (poisoned for MODE_IN), the conv windows
    upto(dy, y0);
    if (dwin) upto(dwin, win);
  }
  struct Out {
    std::vector<float> y, win;
  };
  Out result() const {
    Out o;
    o.y = down(dy, y0.size());
    if (dwin) o.win = down(dwin, win.size());
    return o;
  }
  // The largest L2-relative error over the parts (rows of the batch) and the windows; `mx`: the largest element
  // error over the part's rms.
  double err(const Out& o, double* mx) const {
    double e = 0, m = 0, mi;
    for (auto [r0, r1] : parts) {
      std::vector<float> g;
      std::vector<double> wv;
      for (int s = 0; s < batch; ++s)
        for (int r = r0; r < r1; ++r) g.push_back(o.y[s * ldy + r]), wv.push_back(want[size_t(s) * rows + r]);
      e = std::max(e, rel_err(g, wv, &mi)), m = std::max(m, mi);
    }
    if (dwin) {
      std::vector<float> g(o.win.begin(), o.win.begin() + want_win.size());
      e = std::max(e, rel_err(g, want_win, &mi)), m = std::max(m, mi);
    }
    *mx = m;
    return e;
  }
  // Nothing written outside the batch's rows: the padding of y's rows, the extra sequence, its window.
  bool guards(const Out& o) const {
    for (int s = 0; s <= batch; ++s)
      for (long long r = s < batch ? rows : 0; r < ldy; ++r) {
        const float a = o.y[s * ldy + r], b = y0[s * ldy + r];
        if (std::memcmp(&a, &b, 4) != 0) return false;
      }
    if (dwin && std::memcmp(&o.win[size_t(batch) * C * K], &win[size_t(batch) * C * K], size_t(C) * K * 4) != 0)
      return false;
    return true;
  }
  void free_all() {
    for (void* p : {(void*)dw, (void*)dbias, (void*)dx, (void*)dxw, (void*)dwin, (void*)dcw, (void*)dcb,
                    (void*)ddtb, (void*)dpart, (void*)dy, (void*)dsumsq})
      if (p) CK(cudaFree(p));
  }
};
static bool same_bits(const Case::Out& a, const Case::Out& b) {
  return a.y.size() == b.y.size() && std::memcmp(a.y.data(), b.y.data(), a.y.size() * 4) == 0 &&
         a.win.size() == b.win.size() &&
         (a.win.empty() || std::memcmp(a.win.data(), b.win.data(), a.win.size() * 4) == 0);
}
static bool counters_zero() {
  const std::vector<unsigned> c = down(static_cast<const unsigned*>(g_ws), GEMV_MMA_COUNTERS);
  return std::all_of(c.begin(), c.end(), [](unsigned v) { return v == 0; });
}
// The difference between two outputs (rows of the batch and windows), L2-relative to `ref`.
static double diff(const Case& k, const Case::Out& a, const Case::Out& ref) {
  std::vector<float> g;
  std::vector<double> r;
  for (int s = 0; s < k.batch; ++s)
    for (int row = 0; row < k.rows; ++row) g.push_back(a.y[s * k.ldy + row]), r.push_back(ref.y[s * k.ldy + row]);
  double e = rel_err(g, r);
  if (k.dwin) {
    std::vector<float> ga(a.win.begin(), a.win.begin() + size_t(k.batch) * k.C * k.K);
    std::vector<double> ra(ref.win.begin(), ref.win.begin() + size_t(k.batch) * k.C * k.K);
    e = std::max(e, rel_err(ga, ra));
  }
  return e;
}

static int check_case(CaseKind kind, int batch) {
  Case k;
  k.build(kind, batch);
  ensure_ws(gemv_mma_workspace_bytes(8, 64, 4096));
  const GemvArgs a = k.args();
  // gemv_fused (batch ≤ 8; its groups of columns must be whole 16-byte chunks).
  bool have_fused = batch <= 8 && kind != OUT_G16;
  Case::Out fused;
  double fused_err = 0, fused_mx = 0;
  if (have_fused) {
    k.reset();
    run_fused(k.mode, a, batch, k.win_stride, 0);
    CK(cudaDeviceSynchronize());
    fused = k.result();
    fused_err = k.err(fused, &fused_mx);
  }
  int fails = 0;
  for (const Variant& v : VARIANTS) {
    if (v.st != st_of(batch)) continue;
    // ks, persistent grid (else one CTA per unit), x̂ chunks, PDL launch, sums of squares given, grid cap (several
    // units per CTA), grid rounded to a multiple of ks (else x̂ can't stay resident).
    struct Run {
      int ks;
      bool persistent;
      Chunks ch;
      bool pdl, given;
      int cap;
      bool round;
    };
    const Run runs[] = {{1, true, CH_DEFAULT, false, false, 0, true},     {1, false, CH_DEFAULT, false, false, 0, true},
                        {1, true, CH_SMALLEST, true, false, 0, true},     {1, true, CH_DEFAULT, false, false, 5, true},
                        {1, true, CH_SMALLEST, false, false, 3, true},    {3, true, CH_DEFAULT, false, false, 0, true},
                        {3, false, CH_SMALLEST, false, false, 0, true},   {3, true, CH_DEFAULT, false, false, 6, true},
                        {3, true, CH_SMALLEST, false, false, 7, false},   {1, true, CH_DEFAULT, false, false, 0, true},
                        {1, true, CH_DEFAULT, false, true, 0, true}};
    double err = 0, mx = 0, vs_fused = 0;
    bool bits = true, guards = true, zero = true;
    Case::Out first[2];
    bool have_first[2] = {false, false};
    std::string modes;
    for (const Run& R : runs) {
      if (R.given && k.mode != MODE_IN) continue;
      const Plan P = plan_mma(v, k.mode, k.rows, k.cols, R.ks, R.persistent, R.ch, R.cap, R.round);
      if (!P.ok) {
        modes += " SHARED MEMORY";
        guards = false;
        continue;
      }
      GemvArgs g = a;
      if (R.given) g.part = k.dsumsq;
      k.reset();
      run_mma(v, k.mode, P, g, batch, 0, R.pdl);
      CK(cudaDeviceSynchronize());
      const Case::Out o = k.result();
      double m;
      err = std::max(err, k.err(o, &m)), mx = std::max(mx, m);
      guards = guards && k.guards(o);
      zero = zero && counters_zero();
      if (have_fused) vs_fused = std::max(vs_fused, diff(k, o, fused));
      if (R.given) continue;  // other factors (the sums rounded once): not bitwise the same
      const int i = R.ks == 1 ? 0 : 1;
      if (!have_first[i]) {
        first[i] = o, have_first[i] = true;
      } else {
        bits = bits && same_bits(o, first[i]);
      }
      const std::string d = (R.persistent ? "" : "np ") + P.desc();
      if (modes.find(d) == std::string::npos) modes += (modes.empty() ? "" : ", ") + d;
    }
    const double tol = v.p == 3 ? 2e-6 : 2e-5;
    const bool ok = err <= tol && (!have_fused || vs_fused <= 2e-6) && bits && guards && zero;
    char line[512];
    std::snprintf(line, sizeof line, "check %-11s b%-2d %dx%d  %-22s rel %.2e max %.2e (tol %.0e)", case_name(kind),
                  batch, k.rows, k.cols, v.name().c_str(), err, mx, tol);
    std::string s = line;
    if (have_fused) {
      std::snprintf(line, sizeof line, "  fused rel %.2e, mma-fused %.2e", fused_err, vs_fused);
      s += line;
    }
    s += bits ? "  bitwise ok" : "  bitwise DIFF";
    if (!guards) s += "  WRITES OUTSIDE OR NOT RUN";
    if (!zero) s += "  COUNTERS LEFT";
    std::printf("%s  [%s]  %s\n", s.c_str(), modes.c_str(), ok ? "ok" : "FAIL");
    fails += !ok;
  }
  k.free_all();
  return fails;
}

static int check_all() {
  int fails = 0;
  const int batches[] = {1, 2, 3, 8, 9, 16, 24, 33, 64};
  for (CaseKind kind : {IN_CONV, IN_ACT, OUT_G1, OUT_G2, OUT_G8, OUT_G16, PLAIN})
    for (int b : batches) fails += check_case(kind, b);
  std::printf("checks done: %d failed\n", fails);
  return fails;
}

// ---------------------------------------------------------------------------------------------------------------
// time

template <typename T>
__global__ void fill_kernel(T* p, size_t n, unsigned seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) ^ (unsigned(i >> 32) * 0x9e3779b9u) ^ (seed * 0x85ebca6bu);
    h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
    p[i] = T(lo + (hi - lo) * float(h >> 8) * (1.f / 16777216.f));
  }
}
template <typename T>
static void fill(T* p, size_t n, unsigned seed, float lo, float hi) {
  fill_kernel<<<2048, 256>>>(p, n, seed, lo, hi);
  CK(cudaGetLastError());
}
// Σ_c x[b, c]² per sequence (the sums a producer would hand over in GemvArgs::part for MODE_IN).
__global__ void sumsq_kernel(const float* x, long long ldx, int cols, float* out) {
  __shared__ float red[32];
  float s = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) s += x[blockIdx.x * ldx + i] * x[blockIdx.x * ldx + i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// µs per launch: `f(stream, copy)` `launches` times in a graph (weight copy i % copies), median of 20 replays
// after 3.
static int g_copies = 4, g_launches = 8;
static double time_graph(const std::function<void(cudaStream_t, int)>& f) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(g_st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < g_launches; ++i) f(g_st, i % g_copies);
  CK(cudaStreamEndCapture(g_st, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, g_st));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms(20);
  for (auto& m : ms) {
    CK(cudaEventRecord(e0, g_st));
    CK(cudaGraphLaunch(exec, g_st));
    CK(cudaEventRecord(e1, g_st));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&m, e0, e1));
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return 0.5 * (ms[9] + ms[10]) * 1000.0 / g_launches;
}

struct Shape {
  const char* name;
  int mode, rows, cols;
  int conv_lo, conv_hi, dt_lo, heads;  // in_proj: conv rows and dt rows; out_proj: heads (one group)
};

static cublasHandle_t g_blas;

static void time_shape(const Shape& S) {
  const long long ldw = S.cols, ldx = S.cols, ldy = S.rows;
  const double wbytes = 2.0 * S.rows * S.cols;
  // 4 copies and 8 launches per graph (2.7B); smaller matrices: as many copies as make 120 MB, one per launch, so
  // that L2 (50 MB) never holds the weights of a launch.
  g_copies = std::max(4, int(std::ceil(120e6 / wbytes)));
  g_launches = g_copies > 4 ? g_copies : 8;
  std::vector<bf16*> w(g_copies);
  for (int i = 0; i < g_copies; ++i) {
    w[i] = dalloc<bf16>(size_t(S.rows) * ldw);
    fill(w[i], size_t(S.rows) * ldw, 100 + i, -0.03f, 0.03f);
  }
  const int C = S.conv_hi - S.conv_lo, K = 4, B = 64;
  float* x = dalloc<float>(size_t(B) * ldx);
  float* xw = dalloc<float>(S.cols);
  float* y = dalloc<float>(size_t(B) * ldy);
  float* bias = dalloc<float>(S.rows);
  float* win = dalloc<float>(std::max<size_t>(1, size_t(B) * C * K));
  float* cw = dalloc<float>(std::max<size_t>(1, size_t(C) * K));
  float* cb = dalloc<float>(std::max(1, C));
  float* dtb = dalloc<float>(std::max(1, S.rows - S.dt_lo));
  float* part = dalloc<float>(size_t(B) * std::max(1, S.heads));
  float* sums = dalloc<float>(B);
  bf16* wide16 = dalloc<bf16>(size_t(2) * B * S.cols);
  float* wide32 = dalloc<float>(size_t(2) * B * S.rows);
  fill(x, size_t(B) * ldx, 1, -1.f, 1.f), fill(xw, S.cols, 2, 0.5f, 1.5f), fill(y, size_t(B) * ldy, 3, -1.f, 1.f);
  fill(bias, S.rows, 4, -0.1f, 0.1f), fill(win, std::max<size_t>(1, size_t(B) * C * K), 5, -1.f, 1.f);
  fill(cw, std::max<size_t>(1, size_t(C) * K), 6, -0.5f, 0.5f), fill(cb, std::max(1, C), 7, -0.1f, 0.1f);
  fill(dtb, std::max(1, S.rows - S.dt_lo), 8, -2.f, 0.f), fill(part, size_t(B) * std::max(1, S.heads), 9, 1.f, 50.f);
  sumsq_kernel<<<B, 256>>>(x, ldx, S.cols, sums);
  CK(cudaGetLastError());
  ensure_ws(gemv_mma_workspace_bytes(8, B, S.rows));
  CK(cudaDeviceSynchronize());
  GemvArgs a;
  std::memset(&a, 0, sizeof a);
  a.bias = S.mode == MODE_IN ? nullptr : bias, a.x = x, a.xw = xw, a.y = y;
  a.part = S.mode == MODE_OUT ? part : nullptr;
  a.window = C > 0 ? win : nullptr, a.conv_w = cw, a.conv_b = cb, a.dt_bias = S.dt_lo < S.rows ? dtb : nullptr;
  a.ldw = ldw, a.ldx = ldx, a.ldy = ldy, a.rows = S.rows, a.cols = S.cols;
  a.conv_lo = S.conv_lo, a.conv_hi = S.conv_hi, a.k = K, a.dt_lo = S.dt_lo;
  a.heads = std::max(1, S.heads), a.groups = 1, a.eps = 1e-5f, a.dt_min = 0.001f, a.dt_max = 0.1f;
  auto tbs = [&](double us) { return wbytes / (us * 1e-6) / 1e12; };
  for (int n : {1, 2, 4, 8}) fused_fit(S.mode, n);  // the occupancy queries before any capture
  std::printf("\ntime %s %dx%d (%.1f MB of bf16 weights; %d copies, %d launches per graph)\n", S.name, S.rows,
              S.cols, wbytes / 1e6, g_copies, g_launches);
  for (int batch : {1, 2, 4, 8, 16, 32, 64}) {
    double best = 1e30;
    const Variant* bv = nullptr;
    Plan bp;
    for (const Variant& v : VARIANTS) {
      if (v.st != st_of(batch)) continue;
      std::string line;
      char s[160];
      std::snprintf(s, sizeof s, "  b%-2d %-22s", batch, v.name().c_str());
      line = s;
      for (int c = 0; c < 5; ++c) {
        const int ks = c < 4 ? 1 << c : 1;
        const bool persistent = c < 4;
        if (ks > S.cols / 32) continue;
        const Plan P = plan_mma(v, S.mode, S.rows, S.cols, ks, persistent, CH_DEFAULT);
        if (!P.ok) continue;
        const double us = time_graph([&](cudaStream_t st, int i) {
          GemvArgs g = a;
          g.w = w[i];
          run_mma(v, S.mode, P, g, batch, st);
        });
        std::snprintf(s, sizeof s, " | %sks%d %6.1fus %4.2fTB/s %s", persistent ? "" : "np ", ks, us, tbs(us),
                      P.desc().c_str());
        line += s;
        if (us < best) best = us, bv = &v, bp = P;
      }
      std::printf("%s\n", line.c_str());
    }
    if (!bv) continue;
    std::printf("  b%-2d best: %s ks%d %s: %.1f us, %.2f TB/s", batch, bv->name().c_str(), bp.ks, bp.desc().c_str(),
                best, tbs(best));
    if (S.mode == MODE_IN) {
      const double us = time_graph([&](cudaStream_t st, int i) {
        GemvArgs g = a;
        g.w = w[i], g.part = sums;
        run_mma(*bv, S.mode, bp, g, batch, st);
      });
      std::printf("; with the sums of squares given: %.1f us, %.2f TB/s", us, tbs(us));
    }
    std::printf("\n");
    if (batch <= 8) {
      const double us = time_graph([&](cudaStream_t st, int i) {
        GemvArgs g = a;
        g.w = w[i];
        run_fused(S.mode, g, batch, (long long)C * K, st);
      });
      std::printf("  b%-2d gemv_fused: %.1f us, %.2f TB/s\n", batch, us, tbs(us));
    } else {
      // cuBLAS: C[2·batch, rows] (column major [rows, 2·batch]) = W [rows, cols] · X̂ᵀ, X̂ bf16 [2·batch, cols].
      const float one = 1.f, zero = 0.f;
      auto gemm = [&](cudaStream_t st, int i) {
        CB(cublasSetStream(g_blas, st));
        CB(cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, S.rows, 2 * batch, S.cols, &one, w[i], CUDA_R_16BF, int(ldw),
                        wide16, CUDA_R_16BF, S.cols, &zero, wide32, CUDA_R_32F, S.rows, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT));
      };
      const double g_us = time_graph(gemm);
      const double p_us = time_graph([&](cudaStream_t st, int i) {
        GemvArgs g = a;
        g.w = w[i], g.wide_batch = batch;
        g.wide = wide16;
        launch(S.mode == MODE_IN ? wide_split_in : wide_split_out, dim3(batch), dim3(256), 0, st, g);
        gemm(st, i);
        g.wide = wide32;
        launch(S.mode == MODE_IN ? wide_finish_in : wide_finish_plain, dim3((S.rows + 255) / 256, batch), dim3(256), 0,
               st, g);
      });
      std::printf("  b%-2d cublas: GEMM alone %.1f us (%.2f TB/s); split + GEMM + finish %.1f us (%.2f TB/s)\n",
                  batch, g_us, tbs(g_us), p_us, tbs(p_us));
    }
    std::fflush(stdout);
  }
  for (bf16* p : w) CK(cudaFree(p));
  for (void* p : {(void*)x, (void*)xw, (void*)y, (void*)bias, (void*)win, (void*)cw, (void*)cb, (void*)dtb,
                  (void*)part, (void*)sums, (void*)wide16, (void*)wide32})
    CK(cudaFree(p));
}

static void time_all() {
  CB(cublasCreate(&g_blas));
  void* blas_ws;
  CK(cudaMalloc(&blas_ws, 32 << 20));
  CB(cublasSetWorkspace(g_blas, blas_ws, 32 << 20));
  // name, mode, rows, cols, conv_lo, conv_hi, dt_lo, heads
  const Shape shapes[] = {
      {"2.7B in_proj (conv/dt)", MODE_IN, 10576, 2560, 5120, 10496, 10496, 80},
      {"2.7B out_proj (gated norm)", MODE_OUT, 2560, 5120, 2560, 2560, 2560, 80},
      {"2.7B LM head (final norm)", MODE_IN, 50288, 2560, 50288, 50288, 50288, 1},
      {"130M in_proj (conv/dt)", MODE_IN, 3352, 768, 1536, 3328, 3328, 24},
      {"130M out_proj (gated norm)", MODE_OUT, 768, 1536, 768, 768, 768, 24},
  };
  for (const Shape& S : shapes) time_shape(S);
  CB(cublasDestroy(g_blas));
  CK(cudaFree(blas_ws));
}

// ---------------------------------------------------------------------------------------------------------------

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  if (what != "check" && what != "time" && what != "all") {
    std::fprintf(stderr, "usage: %s [check|time|all]\n", argv[0]);
    return 2;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount, g_smem_optin = int(prop.sharedMemPerBlockOptin);
  std::printf("device %s, %d SMs, L2 %d MB, %zu KB shared memory per CTA at most\n", prop.name, g_sms,
              prop.l2CacheSize >> 20, prop.sharedMemPerBlockOptin / 1024);
  CK(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
  // The dynamic shared memory a CTA may take is the opt-in limit less the kernel's static shared memory: the
  // largest static size of any variant comes off the limit every plan is sized against.
  size_t static_max = 0;
  for (const Variant& v : VARIANTS)
    for (int m = 0; m < 3; ++m) {
      cudaFuncAttributes fa;
      CK(cudaFuncGetAttributes(&fa, v.k[m]));
      static_max = std::max(static_max, fa.sharedSizeBytes);
    }
  g_smem_optin -= int((static_max + 1023) / 1024 * 1024);
  std::printf("dynamic shared memory per CTA at most %d KB (static up to %zu B)\n", g_smem_optin / 1024, static_max);
  for (const Variant& v : VARIANTS) {
    int regs[3];
    bool local = false;
    for (int m = 0; m < 3; ++m) {
      CK(cudaFuncSetAttribute(v.k[m], cudaFuncAttributeMaxDynamicSharedMemorySize, g_smem_optin));
      cudaFuncAttributes fa;
      CK(cudaFuncGetAttributes(&fa, v.k[m]));
      regs[m] = fa.numRegs, local = local || fa.localSizeBytes;
    }
    std::printf("variant %-22s %3d threads, registers in/out/plain %d/%d/%d%s\n", v.name().c_str(), v.threads(),
                regs[0], regs[1], regs[2], local ? ", LOCAL MEMORY" : "");
  }
  int fails = 0;
  if (what != "time") fails = check_all();
  if (what != "check") time_all();
  CK(cudaDeviceSynchronize());
  return fails ? 1 : 0;
}
