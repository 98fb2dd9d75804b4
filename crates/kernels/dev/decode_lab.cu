// Lab harness for the fused decode kernels (`cuda/decode.cu`).
//   check: each kernel against a plain float64 CPU version on random inputs, outputs NaN-poisoned beforehand
//          (gemv_in with conv/dt epilogue and as LM head, ssm_gate, gemv_out with the gated norm and residual add,
//          embed, argmax, an MLP's up_proj with squared ReLU / GELU and down_proj as gemv_plain), launched plainly, each GEMV case also with the `_tma` kernels (bulk copies into shared
//          memory); then two steps of a small whole model launched plainly, with PDL (cudaLaunchKernelEx +
//          programmatic stream serialization) and with PDL from a CUDA graph, compared bitwise, and with the tma
//          GEMVs plainly and with PDL from a graph (bitwise against each other, within 1e-5 of the plain step).
//   time:  gemv_in (in_proj) and gemv_out (out_proj) alone on Mamba2-2.7B's matrices with the weights rotated
//          through 4 copies (so L2 never holds them), ssm_gate alone at batch 1 and 64, and whole decode steps
//          (Mamba2-2.7B at batch 1 and 8, Mamba2-130M at batch 1, pseudo-random weights) replayed from CUDA graphs:
//          PDL off/on x (plain GEMVs, prefetch_iters 0 (steps) or 0/1 (alone), ctas_per_sm 2/4 | tma, ctas 1/2).
// Not part of the build:
//   source /work/shared/gpu/cuda-env.sh
//   nvcc -std=c++17 -O3 -lineinfo -gencode=arch=compute_90,code=sm_90 -o /tmp/decode_lab crates/kernels/dev/decode_lab.cu
// and run `/tmp/decode_lab [check|time|all]` (default all; `time` needs about 7 GB of GPU memory: the 2.7B
// weights and batch-8 states). Each `check` line ends in ok or FAIL; the exit status is 1 when any check failed.

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

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)

typedef __nv_bfloat16 bf16;

static std::mt19937 rng(7);
static std::vector<float> randv(size_t n, float scale = 1.f, float mean = 0.f) {
  std::normal_distribution<float> nd(mean, scale);
  std::vector<float> v(n);
  for (auto& e : v) e = nd(rng);
  return v;
}
static float bfr(float v) { return __bfloat162float(__float2bfloat16(v)); }
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
static std::vector<T> down(const T* d, size_t n) {
  std::vector<T> v(n);
  CK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
static float* poisoned(size_t n) {
  float* d = dalloc<float>(n);
  CK(cudaMemset(d, 0xff, n * 4));
  return d;
}
static double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
static int report(const char* what, double err, double tol) {
  const bool ok = err <= tol;
  std::printf("check %-58s rel %.2e (tol %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
  return !ok;
}

// Deterministic pseudo-random values in [lo, hi) on the GPU (the model steps' weights and states).
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

// How kernels are launched: plainly (<<<>>>), or through cudaLaunchKernelEx with programmatic dependent launch.
static int g_sms = 132;
static cudaStream_t g_st;  // non-blocking: the model steps and timings (set up on stream 0, then synchronised)
struct Launch {
  bool pdl = false, tma = false;  // tma: the GEMVs are the `_tma` kernels (at most 2 CTAs per SM)
  int ctas = 4, prefetch = 1;     // GEMV CTAs per SM, GemvArgs::prefetch_iters (ignored by the tma kernels)
  int split = 1;                  // warps per row of the plain GEMVs (src/decode.rs: 1 unless COIL_DECODE_SPLIT)
  cudaStream_t st = 0;
  size_t smem = 0;  // dynamic shared memory of the launch (run_gemv sets it for the tma kernels)
};
constexpr size_t TMA_SMEM = size_t(STAGES) * 8 * TILE_BYTES;
static_assert(TMA_SMEM == 98304, "the tma GEMVs' dynamic shared memory, as src/decode.rs launches them");
template <typename... P, typename... A>
static void launch(const Launch& L, void (*k)(P...), dim3 grid, dim3 block, A... args) {
  if (!L.pdl) {
    k<<<grid, block, L.smem, L.st>>>(args...);
  } else {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = L.smem, cfg.stream = L.st;
    cfg.attrs = &attr, cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, k, args...));
  }
  CK(cudaGetLastError());
}

typedef void (*GemvK)(const GemvArgs);
// out: MODE_IN (false), MODE_OUT (true) or MODE_PLAIN.
static GemvK gemv_kernel(int out, bool f32, int n, bool tma = false) {
  if (out == MODE_PLAIN) {
    static const GemvK p[2][4] = {{gemv_plain_bf16_b1, gemv_plain_bf16_b2, gemv_plain_bf16_b4, gemv_plain_bf16_b8},
                                  {gemv_plain_f32_b1, gemv_plain_f32_b2, gemv_plain_f32_b4, gemv_plain_f32_b8}};
    return p[f32][n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : 3];
  }
  static const GemvK t[2][2][2][4] = {
      {{{gemv_in_bf16_b1, gemv_in_bf16_b2, gemv_in_bf16_b4, gemv_in_bf16_b8},
        {gemv_in_f32_b1, gemv_in_f32_b2, gemv_in_f32_b4, gemv_in_f32_b8}},
       {{gemv_out_bf16_b1, gemv_out_bf16_b2, gemv_out_bf16_b4, gemv_out_bf16_b8},
        {gemv_out_f32_b1, gemv_out_f32_b2, gemv_out_f32_b4, gemv_out_f32_b8}}},
      {{{gemv_in_tma_bf16_b1, gemv_in_tma_bf16_b2, gemv_in_tma_bf16_b4, gemv_in_tma_bf16_b8},
        {gemv_in_tma_f32_b1, gemv_in_tma_f32_b2, gemv_in_tma_f32_b4, gemv_in_tma_f32_b8}},
       {{gemv_out_tma_bf16_b1, gemv_out_tma_bf16_b2, gemv_out_tma_bf16_b4, gemv_out_tma_bf16_b8},
        {gemv_out_tma_f32_b1, gemv_out_tma_f32_b2, gemv_out_tma_f32_b4, gemv_out_tma_f32_b8}}}};
  return t[tma][out][f32][n == 1 ? 0 : n == 2 ? 1 : n == 4 ? 2 : 3];
}
// The tma kernels' dynamic shared memory limit, once before any launch (as src/decode.rs does at load).
static void init_tma_kernels() {
  for (int out : {0, 1})
    for (int f32 : {0, 1})
      for (int n : {1, 2, 4, 8})
        CK(cudaFuncSetAttribute(gemv_kernel(out, f32, n, true), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                int(TMA_SMEM)));
}
static int gemv_ctas(const Launch& L) { return L.tma ? std::min(L.ctas, 2) : L.ctas; }
typedef void (*SsmK)(const SsmArgs);
static SsmK ssm_kernel(int n, bool bf16_state = false) {
  if (bf16_state)
    return n == 16 ? ssm_gate_bf16_n16 : n == 32 ? ssm_gate_bf16_n32 : n == 64 ? ssm_gate_bf16_n64 : ssm_gate_bf16_n128;
  return n == 16 ? ssm_gate_n16 : n == 32 ? ssm_gate_n32 : n == 64 ? ssm_gate_n64 : ssm_gate_n128;
}

// A GEMV over `batch` sequences as src/decode.rs launches it: grid min(ceil(rows/8), SMs x ctas), groups of at
// most 8 sequences, each group's x, y, conv windows (win_stride floats per sequence) and head sums shifted to it.
// The tma kernels: at most 2 CTAs per SM, TMA_SMEM bytes of dynamic shared memory.
static void run_gemv(const Launch& L0, int out, bool f32, GemvArgs a, int batch, long long win_stride) {
  Launch L = L0;
  L.smem = L.tma ? TMA_SMEM : 0;
  a.prefetch_iters = L.prefetch;
  for (int b0 = 0; b0 < batch;) {
    const int r = batch - b0, n = r == 1 ? 1 : r < 4 ? 2 : r < 8 ? 4 : 8;
    int grid = std::max(1, std::min((a.rows + 7) / 8, g_sms * gemv_ctas(L)));
    a.split = 1;
    if (!L.tma) {
      // As Sched::split_grid: one wave of the CTAs that fit an SM, 8 / split rows per CTA step.
      int fit = 0;
      CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, gemv_kernel(out, f32, n, false), 256, 0));
      const long long max_grid = (long long)g_sms * std::max(1, std::min(L.ctas, fit));
      const long long steps = (a.rows + 8 / L.split - 1) / (8 / L.split);
      a.split = L.split, grid = int(std::max(1LL, std::min(steps, max_grid)));
    }
    GemvArgs g = a;
    g.x = a.x + b0 * a.ldx;
    g.y = a.y + b0 * a.ldy;
    if (a.window) g.window = a.window + b0 * win_stride;
    if (a.part) g.part = a.part + b0 * a.heads;
    launch(L, gemv_kernel(out, f32, n, L.tma), dim3(grid), dim3(256), g);
    b0 += n;
  }
}

// Weights as the kernel reads them: f32, or bf16 (the returned floats rounded to bf16, as the reference uses them).
static void* up_weights(std::vector<float>& w, bool f32) {
  if (f32) return up(w);
  std::vector<bf16> b(w.size());
  for (size_t i = 0; i < w.size(); ++i) b[i] = __float2bfloat16(w[i]), w[i] = bfr(w[i]);
  return up(b);
}

// gemv_in in the in_proj form (z rows [0, I), conv rows [I, I + C), dt rows [I + C, rows)) or the LM-head form.
// biases: the in_proj, conv and dt biases; narrow_dt: the dt limit (0.01, 0.5), else (0, inf).
struct InCase {
  bool f32;
  int batch, cols;
  bool biases, narrow_dt, head;
  int ctas;
};
static int check_gemv_in(const InCase& k) {
  const int E = k.f32 ? 4 : 8, I = 512, G = 2, N = 64, H = 10, K = 4, C = I + 2 * G * N;
  const int rows = k.head ? 4100 : I + C + H, cols = k.cols, batch = k.batch;  // neither a multiple of 8
  const int conv_lo = k.head ? rows : I, conv_hi = k.head ? rows : I + C, dt_lo = k.head ? rows : I + C;
  const long long ldw = cols + E, ldx = cols + 8, ldy = rows + 2;
  const float eps = 1e-5f, lo = k.narrow_dt ? 0.01f : 0.f, hi = k.narrow_dt ? 0.5f : INFINITY;
  std::vector<float> w = randv(rows * ldw, 1.f / std::sqrt(float(cols))), bias = randv(rows, 0.5f);
  std::vector<float> x = randv(batch * ldx, 2.f, 0.3f), xw = randv(cols, 0.5f, 1.f);
  std::vector<float> win = randv(size_t(batch) * C * K), cw = randv(size_t(C) * K, 0.5f), cb = randv(C, 0.5f);
  std::vector<float> dtb = randv(H, 0.5f, -1.f);
  void* dw = up_weights(w, k.f32);
  // float64 reference, the windows updated in wwin.
  std::vector<double> want(size_t(batch) * rows), wwin(win.begin(), win.end());
  for (int b = 0; b < batch; ++b) {
    const float* xb = &x[b * ldx];
    double ss = 0;
    for (int c = 0; c < cols; ++c) ss += double(xb[c]) * xb[c];
    const double inv = 1.0 / std::sqrt(ss / cols + eps);
    for (int r = 0; r < rows; ++r) {
      double s = k.biases ? bias[r] : 0.0;
      for (int c = 0; c < cols; ++c) s += double(w[r * ldw + c]) * (xb[c] * inv * xw[c]);
      if (r >= conv_lo && r < conv_hi) {
        const int ch = r - conv_lo;
        double* wn = &wwin[(size_t(b) * C + ch) * K];
        double cv = k.biases ? cb[ch] : 0.0;
        for (int i = 0; i + 1 < K; ++i) wn[i] = wn[i + 1], cv += double(cw[ch * K + i]) * wn[i];
        wn[K - 1] = s;
        cv += double(cw[ch * K + K - 1]) * s;
        s = cv / (1.0 + std::exp(-cv));
      } else if (r >= dt_lo) {
        double t = s + (k.biases ? dtb[r - dt_lo] : 0.0);
        t = t > 20 ? t : std::log1p(std::exp(t));
        s = std::min(std::max(t, double(lo)), double(hi));
      }
      want[size_t(b) * rows + r] = s;
    }
  }
  float *dbias = up(bias), *dx = up(x), *dxw = up(xw), *dwin = up(win), *dcw = up(cw), *dcb = up(cb),
        *ddtb = up(dtb), *dy = poisoned(batch * ldy);
  GemvArgs a{};
  a.w = dw, a.bias = k.biases ? dbias : nullptr, a.x = dx, a.xw = dxw, a.y = dy;
  a.window = k.head ? nullptr : dwin, a.conv_w = dcw, a.conv_b = k.biases ? dcb : nullptr;
  a.dt_bias = k.biases ? ddtb : nullptr;
  a.ldw = ldw, a.ldx = ldx, a.ldy = ldy, a.rows = rows, a.cols = cols;
  a.conv_lo = conv_lo, a.conv_hi = conv_hi, a.k = K, a.dt_lo = dt_lo, a.heads = 1, a.groups = 1;
  a.eps = eps, a.dt_min = lo, a.dt_max = hi;
  int fails = 0;
  for (int v = 0; v < 4; ++v) {  // plain (split auto, 2, 8), tma: the same inputs; windows restored, output poisoned
    const bool tma = v == 3;
    if (v > 0) {
      CK(cudaMemcpy(dwin, win.data(), win.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemset(dy, 0xff, size_t(batch) * ldy * 4));
    }
    Launch L;
    L.tma = tma, L.ctas = k.ctas, L.prefetch = 2;  // prefetch without PDL: a no-op for the result, bounds exercised
    L.split = v == 1 ? 2 : v == 2 ? 8 : 1;
    run_gemv(L, false, k.f32, a, batch, (long long)C * K);
    CK(cudaDeviceSynchronize());
    const std::vector<float> got = down(dy, batch * ldy);
    // Each part of the rows on its own, so the large z rows do not hide an error in the small dt rows.
    auto part = [&](int r0, int r1) {
      std::vector<float> g;
      std::vector<double> wv;
      for (int b = 0; b < batch; ++b)
        for (int r = r0; r < r1; ++r) g.push_back(got[b * ldy + r]), wv.push_back(want[size_t(b) * rows + r]);
      return rel_err(g, wv);
    };
    double err = part(0, conv_lo);
    if (!k.head)
      err = std::max({err, part(conv_lo, conv_hi), part(dt_lo, rows), rel_err(down(dwin, win.size()), wwin)});
    char name[128], dt[32];
    std::snprintf(dt, sizeof dt, k.head ? " LM head" : " dt(%g,%g)", lo, hi);
    std::snprintf(name, sizeof name, "gemv_in%s %s b%d %dx%d%s%s ctas %d split %d", tma ? "_tma" : "",
                  k.f32 ? "f32" : "bf16", batch, rows, cols, k.biases ? " +biases" : "", dt, gemv_ctas(L), L.split);
    fails += report(name, err, 1e-5);
  }
  cudaFree(dw), cudaFree(dbias), cudaFree(dx), cudaFree(dxw), cudaFree(dwin), cudaFree(dcw), cudaFree(dcb);
  cudaFree(ddtb), cudaFree(dy);
  return fails;
}

// ssm_gate on an in_proj output row layout z | x B C | dt with a padded row stride; state, yg and the head sums.
// bf16_state: the state is stored in bf16 (the reference starts from the rounded state; y and the head sums are
// computed from the f32 update, so they keep the f32 tolerance; the stored state is within bf16 rounding).
static int check_ssm(int N, int P, int G, int batch, bool bf16_state = false) {
  const int H = 6, I = H * P, C = I + 2 * G * N, ld = (2 * I + 2 * G * N + H + 3) / 4 * 4, ld_yg = I + 4;
  const int dt_off = I + C;
  const bool use_d = !(G == 2 && batch == 1);
  std::vector<float> proj = randv(size_t(batch) * ld), a(H), d = randv(H), st = randv(size_t(batch) * I * N, 0.5f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < H; ++h) proj[b * ld + dt_off + h] = 0.01f + u(rng);
  for (auto& e : a) e = -std::exp(std::normal_distribution<float>(0.f, 0.5f)(rng));
  if (bf16_state)
    for (auto& e : st) e = bfr(e);
  std::vector<double> wst(st.begin(), st.end()), wy(size_t(batch) * I), wp(size_t(batch) * H);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / G);
      const float* row = &proj[b * ld];
      const double dt = row[dt_off + h], da = std::exp(dt * a[h]);
      double sq = 0;
      for (int p = 0; p < P; ++p) {
        const double xp = row[I + h * P + p];
        double acc = 0;
        for (int n = 0; n < N; ++n) {
          double& s = wst[((size_t(b) * H + h) * P + p) * N + n];
          s = s * da + dt * xp * row[2 * I + g * N + n];
          acc += s * row[2 * I + G * N + g * N + n];
        }
        const double y = acc + (use_d ? d[h] : 0.0) * xp, z = row[h * P + p], v = y * z / (1.0 + std::exp(-z));
        wy[size_t(b) * I + h * P + p] = v;
        sq += v * v;
      }
      wp[size_t(b) * H + h] = sq;
    }
  std::vector<bf16> st16(st.size());
  for (size_t i = 0; i < st.size(); ++i) st16[i] = __float2bfloat16(st[i]);
  float *dproj = up(proj), *da = up(a), *dd = up(d), *dst = up(st), *dy = poisoned(size_t(batch) * ld_yg),
        *dp = poisoned(size_t(batch) * H);
  bf16* dst16 = up(st16);
  SsmArgs s{};
  s.proj = dproj, s.a = da, s.d = use_d ? dd : nullptr, s.yg = dy, s.part = dp;
  s.state = bf16_state ? static_cast<void*>(dst16) : static_cast<void*>(dst);
  s.ld_proj = ld, s.ld_yg = ld_yg, s.xbc_off = I, s.dt_off = dt_off, s.heads = H, s.groups = G, s.head_dim = P;
  launch(Launch(), ssm_kernel(N, bf16_state), dim3(H, batch), dim3(4 * P), s);
  CK(cudaDeviceSynchronize());
  const std::vector<float> gy = down(dy, size_t(batch) * ld_yg);
  std::vector<float> y;
  for (int b = 0; b < batch; ++b) y.insert(y.end(), gy.begin() + size_t(b) * ld_yg, gy.begin() + size_t(b) * ld_yg + I);
  std::vector<float> got_st;
  if (bf16_state) {
    for (bf16 v : down(dst16, st.size())) got_st.push_back(__bfloat162float(v));
  } else {
    got_st = down(dst, st.size());
  }
  const double st_err = rel_err(got_st, wst);
  const double err = std::max(rel_err(y, wy), rel_err(down(dp, wp.size()), wp));
  char name[128];
  std::snprintf(name, sizeof name, "ssm_gate n%d p%d h%d g%d b%d%s%s (yg, part)", N, P, H, G, batch,
                use_d ? "" : " no D", bf16_state ? " bf16 state" : "");
  char st_name[160];
  std::snprintf(st_name, sizeof st_name, "%s: its state", name);
  cudaFree(dproj), cudaFree(da), cudaFree(dd), cudaFree(dst), cudaFree(dy), cudaFree(dp), cudaFree(dst16);
  // A bf16 state is within its rounding (2^-9 relative per element) of the exact update.
  return report(name, err, 1e-5) + report(st_name, st_err, bf16_state ? 4e-3 : 1e-5);
}

// gemv_out: residual += W·(RMSNorm_group(yg)·w) (+ bias), the group norms from the heads' sums of squares.
static int check_gemv_out(bool f32, int G, int batch, int ctas, int P = 64) {
  const int E = f32 ? 4 : 8, H = 24, cols = H * P, rows = 1100, hpg = H / G, group = cols / G;
  const long long ldw = cols + E, ldx = cols + 8, ldy = rows + 3;
  const float eps = 1e-5f;
  const bool with_bias = G != 2;
  std::vector<float> w = randv(rows * ldw, 1.f / std::sqrt(float(cols))), bias = randv(rows, 0.5f);
  std::vector<float> x = randv(batch * ldx), xw = randv(cols, 0.5f, 1.f), y0 = randv(batch * ldy);
  std::vector<float> part(size_t(batch) * H);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < H; ++h) {
      float s = 0;
      for (int p = 0; p < P; ++p) {
        float& e = x[b * ldx + h * P + p];
        e *= 1.f + (h * P + p) / group;  // groups of different sizes
        s += e * e;
      }
      part[b * H + h] = s;
    }
  void* dw = up_weights(w, f32);
  std::vector<double> want(size_t(batch) * rows);
  for (int b = 0; b < batch; ++b) {
    double inv[MAX_GROUPS];
    for (int g = 0; g < G; ++g) {
      double s = 0;
      for (int h = 0; h < hpg; ++h) s += part[b * H + g * hpg + h];
      inv[g] = 1.0 / std::sqrt(s / group + eps);
    }
    for (int r = 0; r < rows; ++r) {
      double s = double(y0[b * ldy + r]) + (with_bias ? bias[r] : 0.0);
      for (int c = 0; c < cols; ++c) s += double(w[r * ldw + c]) * (x[b * ldx + c] * inv[c / group] * xw[c]);
      want[size_t(b) * rows + r] = s;
    }
  }
  float *dbias = up(bias), *dx = up(x), *dxw = up(xw), *dy = up(y0), *dp = up(part);
  GemvArgs a{};
  a.w = dw, a.bias = with_bias ? dbias : nullptr, a.x = dx, a.xw = dxw, a.part = dp, a.y = dy;
  a.ldw = ldw, a.ldx = ldx, a.ldy = ldy, a.rows = rows, a.cols = cols;
  a.conv_lo = rows, a.conv_hi = rows, a.k = 1, a.dt_lo = rows, a.heads = H, a.groups = G, a.eps = eps;
  int fails = 0;
  for (int v = 0; v < 4; ++v) {  // plain (split auto, 2, 8), tma; the residual restored in between
    const bool tma = v == 3;
    if (v > 0) CK(cudaMemcpy(dy, y0.data(), y0.size() * 4, cudaMemcpyHostToDevice));
    Launch L;
    L.tma = tma, L.ctas = ctas, L.prefetch = 2;
    L.split = v == 1 ? 2 : v == 2 ? 8 : 1;
    run_gemv(L, true, f32, a, batch, 0);
    CK(cudaDeviceSynchronize());
    const std::vector<float> gy = down(dy, batch * ldy);
    std::vector<float> got;
    for (int b = 0; b < batch; ++b) got.insert(got.end(), gy.begin() + b * ldy, gy.begin() + b * ldy + rows);
    char name[128];
    std::snprintf(name, sizeof name, "gemv_out%s %s b%d %dx%d groups %d (%d heads)%s ctas %d split %d", tma ? "_tma" : "",
                  f32 ? "f32" : "bf16", batch, rows, cols, G, H, with_bias ? " +bias" : "", gemv_ctas(L), L.split);
    fails += report(name, rel_err(got, want), 1e-5);
  }
  cudaFree(dw), cudaFree(dbias), cudaFree(dx), cudaFree(dxw), cudaFree(dy), cudaFree(dp);
  return fails;
}

// An MLP layer's two GEMVs: h = act(W_up·(RMSNorm(x)·w) + b_up) (gemv_in with an activation), then
// residual += W_down·h + b_down (gemv_plain), with whole rows per warp and rows split over 2 warps.
static int check_mlp(bool f32, int batch, int act) {
  const int E = f32 ? 4 : 8, D = f32 ? 196 : 264, F = 1000;
  const long long ldx = D + 4, ldh = F + 8, ldu = D + E, ldd = F + E;
  const float eps = 1e-5f;
  std::vector<float> wu = randv(F * ldu, 1.f / std::sqrt(float(D))), bu = randv(F, 0.5f);
  std::vector<float> wd = randv(D * ldd, 1.f / std::sqrt(float(F))), bd = randv(D, 0.5f);
  std::vector<float> x = randv(batch * ldx, 2.f, 0.3f), xw = randv(D, 0.5f, 1.f);
  void* dwu = up_weights(wu, f32);
  void* dwd = up_weights(wd, f32);
  std::vector<double> want_h(size_t(batch) * F), want_r(size_t(batch) * D);
  std::vector<float> hf(size_t(batch) * F);
  for (int b = 0; b < batch; ++b) {
    const float* xb = &x[b * ldx];
    double ss = 0;
    for (int c = 0; c < D; ++c) ss += double(xb[c]) * xb[c];
    const double inv = 1.0 / std::sqrt(ss / D + eps);
    for (int r = 0; r < F; ++r) {
      double s = bu[r];
      for (int c = 0; c < D; ++c) s += double(wu[r * ldu + c]) * (xb[c] * inv * xw[c]);
      if (act == ACT_RELU2) s = s > 0 ? s * s : 0;
      if (act == ACT_GELU) s = 0.5 * s * (1 + std::erf(s / std::sqrt(2.0)));
      want_h[size_t(b) * F + r] = s;
    }
  }
  int fails = 0;
  for (int v = 1; v <= 2; ++v) {  // v: warps per row
    float *dbu = up(bu), *dbd = up(bd), *dx = up(x), *dxw = up(xw), *dh = poisoned(batch * ldh);
    GemvArgs a{};
    a.w = dwu, a.bias = dbu, a.x = dx, a.xw = dxw, a.y = dh;
    a.ldw = ldu, a.ldx = ldx, a.ldy = ldh, a.rows = F, a.cols = D;
    a.conv_lo = F, a.conv_hi = F, a.k = 1, a.dt_lo = F, a.heads = 1, a.groups = 1, a.act = act, a.eps = eps;
    Launch L;
    L.split = v, L.prefetch = 0;
    run_gemv(L, MODE_IN, f32, a, batch, 0);
    CK(cudaDeviceSynchronize());
    const std::vector<float> gh = down(dh, batch * ldh);
    std::vector<float> got_h;
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < F; ++r) got_h.push_back(gh[b * ldh + r]), hf[size_t(b) * F + r] = gh[b * ldh + r];
    // The down projection's reference starts from the kernel's h, so the two checks are independent.
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < D; ++r) {
        double s = double(x[b * ldx + r]) + bd[r];
        for (int c = 0; c < F; ++c) s += double(wd[r * ldd + c]) * hf[size_t(b) * F + c];
        want_r[size_t(b) * D + r] = s;
      }
    GemvArgs p{};
    p.w = dwd, p.bias = dbd, p.x = dh, p.y = dx;
    p.ldw = ldd, p.ldx = ldh, p.ldy = ldx, p.rows = D, p.cols = F;
    p.conv_lo = D, p.conv_hi = D, p.k = 1, p.dt_lo = D, p.heads = 1, p.groups = 1;
    run_gemv(L, MODE_PLAIN, f32, p, batch, 0);
    CK(cudaDeviceSynchronize());
    const std::vector<float> gr = down(dx, batch * ldx);
    std::vector<float> got_r;
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < D; ++r) got_r.push_back(gr[b * ldx + r]);
    char name[128];
    std::snprintf(name, sizeof name, "mlp %s b%d act %d split %d: up (gemv_in + act)", f32 ? "f32" : "bf16", batch,
                  act, v);
    fails += report(name, rel_err(got_h, want_h), 1e-5);
    std::snprintf(name, sizeof name, "mlp %s b%d act %d split %d: down (gemv_plain + residual)",
                  f32 ? "f32" : "bf16", batch, act, v);
    fails += report(name, rel_err(got_r, want_r), 1e-5);
    cudaFree(dbu), cudaFree(dbd), cudaFree(dx), cudaFree(dxw), cudaFree(dh);
  }
  cudaFree(dwu), cudaFree(dwd);
  return fails;
}

static int check_embed(bool f32) {
  const int rows = 300, cols = 600, ld = 608, batch = 5;
  std::vector<float> t = randv(size_t(rows) * ld);
  std::vector<unsigned> ids = {0, 299, 17, 17, 150};
  void* dt = up_weights(t, f32);
  std::vector<double> want(size_t(batch) * cols);
  for (int b = 0; b < batch; ++b)
    for (int c = 0; c < cols; ++c) want[size_t(b) * cols + c] = t[size_t(ids[b]) * ld + c];
  unsigned* di = up(ids);
  float* dr = poisoned(size_t(batch) * cols);
  const long long ldt = ld, ldr = cols;
  const unsigned* ci = di;
  if (f32) launch(Launch(), embed_f32, dim3(batch), dim3(256), (const float*)dt, ldt, ci, 1, dr, ldr, cols);
  else launch(Launch(), embed_bf16, dim3(batch), dim3(256), (const bf16*)dt, ldt, ci, 1, dr, ldr, cols);
  CK(cudaDeviceSynchronize());
  const double err = rel_err(down(dr, want.size()), want);
  cudaFree(dt), cudaFree(di), cudaFree(dr);
  return report(f32 ? "embed_f32 b5 300x600 (ld 608)" : "embed_bf16 b5 300x600 (ld 608)", err, 0);
}

// argmax_rows: the first index of the largest logit (NaN never wins, 0 when none is above -inf) and the flag.
static int check_argmax() {
  const int n = 5000, ld = 5003, batch = 7;
  const float inf = INFINITY;
  std::vector<float> l = randv(size_t(batch) * ld);
  float* r[batch];
  for (int b = 0; b < batch; ++b) r[b] = &l[size_t(b) * ld];
  const char* what[batch] = {"random", "ties at 2050, 1100, 3000 -> 1100", "all -inf -> 0, flag",
                             "NaN at 10, max at 4000 -> 4000, flag", "max at the last index",
                             "+inf at 2222 -> 2222, flag", "ties at 0 and 4999 -> 0"};
  r[1][2050] = r[1][1100] = r[1][3000] = 50.f;
  std::fill(r[2], r[2] + n, -inf);
  r[3][10] = NAN, r[3][4000] = 50.f;
  r[4][n - 1] = 50.f;
  r[5][2222] = inf;
  r[6][0] = r[6][n - 1] = 50.f;
  float* dl = up(l);
  unsigned* dout = dalloc<unsigned>(2 * batch);
  CK(cudaMemset(dout, 0xff, 2 * batch * 4));
  launch(Launch(), argmax_rows, dim3(batch), dim3(1024), (const float*)dl, (long long)ld, n, dout);
  CK(cudaDeviceSynchronize());
  const std::vector<unsigned> got = down(dout, 2 * batch);
  int fails = 0;
  for (int b = 0; b < batch; ++b) {
    float best = -inf;
    int bi = -1, bad = 0;
    for (int i = 0; i < n; ++i) {
      bad |= !std::isfinite(r[b][i]);
      if (r[b][i] > best) best = r[b][i], bi = i;
    }
    const unsigned wi = bi < 0 ? 0u : unsigned(bi), wf = unsigned(bad);
    char name[128];
    std::snprintf(name, sizeof name, "argmax %s: got %u/%u want %u/%u", what[b], got[2 * b], got[2 * b + 1], wi, wf);
    fails += report(name, got[2 * b] == wi && got[2 * b + 1] == wf ? 0.0 : 1.0, 0);
  }
  cudaFree(dl), cudaFree(dout);
  return fails;
}

// A whole model: bf16 weights (the embedding tied to the LM head), small f32 parameters shared by the layers,
// per-layer conv windows and SSM states, activations for up to bmax sequences.
struct Dims {
  const char* name;
  int D, I, H, P, N, G, K, L, V;
};
struct Model {
  Dims d;
  int bmax, C, rows, ldp;
  std::vector<bf16*> w_in, w_out;
  bf16* emb;
  float *norm, *norm_f, *conv_w, *conv_b, *a, *dtb, *dd, *gnorm;
  std::vector<float*> win, st;
  float *resid, *proj, *yg, *part, *logits;
  unsigned *ids, *picked;
  std::vector<void*> bufs;  // every allocation, for free_model
  template <typename T>
  T* alloc(size_t n) {
    bufs.push_back(dalloc<T>(n));
    return static_cast<T*>(bufs.back());
  }
  double weight_bytes() const {
    return 2.0 * (double(d.L) * (double(rows) * d.D + double(d.D) * d.I) + double(d.V) * d.D);
  }
  double state_bytes(int batch) const { return 4.0 * d.L * batch * d.H * d.P * d.N; }
};
static Model make_model(const Dims& d, int bmax) {
  Model m;
  m.d = d, m.bmax = bmax, m.C = d.I + 2 * d.G * d.N, m.rows = 2 * d.I + 2 * d.G * d.N + d.H;
  m.ldp = (m.rows + 3) / 4 * 4;
  const float si = 1.7f / std::sqrt(float(d.D)), so = 1.7f / std::sqrt(float(d.I));
  unsigned seed = 1;
  for (int l = 0; l < d.L; ++l) {
    m.w_in.push_back(m.alloc<bf16>(size_t(m.rows) * d.D));
    fill(m.w_in[l], size_t(m.rows) * d.D, seed++, -si, si);
    m.w_out.push_back(m.alloc<bf16>(size_t(d.D) * d.I));
    fill(m.w_out[l], size_t(d.D) * d.I, seed++, -so, so);
    m.win.push_back(m.alloc<float>(size_t(bmax) * m.C * d.K));
    m.st.push_back(m.alloc<float>(size_t(bmax) * d.H * d.P * d.N));
  }
  m.emb = m.alloc<bf16>(size_t(d.V) * d.D);
  fill(m.emb, size_t(d.V) * d.D, seed++, -1.f, 1.f);
  auto param = [&](size_t n, float lo, float hi) {
    float* p = m.alloc<float>(n);
    fill(p, n, seed++, lo, hi);
    return p;
  };
  m.norm = param(d.D, 0.5f, 1.5f), m.norm_f = param(d.D, 0.5f, 1.5f), m.gnorm = param(d.I, 0.5f, 1.5f);
  m.conv_w = param(size_t(m.C) * d.K, -0.5f, 0.5f), m.conv_b = param(m.C, -0.5f, 0.5f);
  m.a = param(d.H, -2.f, -0.5f), m.dtb = param(d.H, -3.f, -1.f), m.dd = param(d.H, 0.5f, 1.5f);
  m.resid = m.alloc<float>(size_t(bmax) * d.D), m.proj = m.alloc<float>(size_t(bmax) * m.ldp);
  m.yg = m.alloc<float>(size_t(bmax) * d.I), m.part = m.alloc<float>(size_t(bmax) * d.H);
  m.logits = m.alloc<float>(size_t(bmax) * d.V);
  m.ids = m.alloc<unsigned>(bmax), m.picked = m.alloc<unsigned>(2 * bmax);
  CK(cudaMemset(m.ids, 0, bmax * 4));
  CK(cudaMemset(m.proj, 0, size_t(bmax) * m.ldp * 4));  // its padding columns are never written
  CK(cudaDeviceSynchronize());
  return m;
}
static void init_state(Model& m) {
  for (int l = 0; l < m.d.L; ++l) {
    fill(m.win[l], size_t(m.bmax) * m.C * m.d.K, 1000 + l, -1.f, 1.f);
    fill(m.st[l], size_t(m.bmax) * m.d.H * m.d.P * m.d.N, 2000 + l, -0.5f, 0.5f);
  }
  CK(cudaDeviceSynchronize());
}
static void free_model(Model& m) {
  for (void* p : m.bufs) CK(cudaFree(p));
  m.bufs.clear();
}

// The launches of layer l as crates/infer/src/cuda_step.rs makes them.
static GemvArgs in_proj_args(const Model& m, int l) {
  const Dims& d = m.d;
  GemvArgs a{};
  a.w = m.w_in[l], a.x = m.resid, a.xw = m.norm, a.y = m.proj, a.window = m.win[l];
  a.conv_w = m.conv_w, a.conv_b = m.conv_b, a.dt_bias = m.dtb;
  a.ldw = d.D, a.ldx = d.D, a.ldy = m.ldp, a.rows = m.rows, a.cols = d.D;
  a.conv_lo = d.I, a.conv_hi = d.I + m.C, a.k = d.K, a.dt_lo = d.I + m.C, a.heads = 1, a.groups = 1;
  a.eps = 1e-5f, a.dt_min = 0.f, a.dt_max = INFINITY;
  return a;
}
static SsmArgs ssm_args(const Model& m, int l) {
  SsmArgs s{};
  s.proj = m.proj, s.a = m.a, s.d = m.dd, s.state = m.st[l], s.yg = m.yg, s.part = m.part;
  s.ld_proj = m.ldp, s.ld_yg = m.d.I, s.xbc_off = m.d.I, s.dt_off = m.d.I + m.C;
  s.heads = m.d.H, s.groups = m.d.G, s.head_dim = m.d.P;
  return s;
}
static GemvArgs out_proj_args(const Model& m, int l) {
  const Dims& d = m.d;
  GemvArgs a{};
  a.w = m.w_out[l], a.x = m.yg, a.xw = m.gnorm, a.part = m.part, a.y = m.resid;
  a.ldw = d.I, a.ldx = d.I, a.ldy = d.D, a.rows = d.D, a.cols = d.I;
  a.conv_lo = d.D, a.conv_hi = d.D, a.k = 1, a.dt_lo = d.D, a.heads = d.H, a.groups = d.G, a.eps = 1e-5f;
  return a;
}

// One decode step: embed, per layer gemv_in -> ssm_gate -> gemv_out, final norm + LM head, argmax.
static void step(const Model& m, const Launch& L, int batch) {
  const Dims& d = m.d;
  launch(L, embed_bf16, dim3(batch), dim3(256), (const bf16*)m.emb, (long long)d.D, (const unsigned*)m.ids, 1, m.resid,
         (long long)d.D, d.D);
  for (int l = 0; l < d.L; ++l) {
    run_gemv(L, false, false, in_proj_args(m, l), batch, (long long)m.C * d.K);
    launch(L, ssm_kernel(d.N), dim3(d.H, batch), dim3(4 * d.P), ssm_args(m, l));
    run_gemv(L, true, false, out_proj_args(m, l), batch, 0);
  }
  GemvArgs h{};
  h.w = m.emb, h.x = m.resid, h.xw = m.norm_f, h.y = m.logits;
  h.ldw = d.D, h.ldx = d.D, h.ldy = d.V, h.rows = d.V, h.cols = d.D;
  h.conv_lo = d.V, h.conv_hi = d.V, h.k = 1, h.dt_lo = d.V, h.heads = 1, h.groups = 1, h.eps = 1e-5f;
  run_gemv(L, false, false, h, batch, 0);
  launch(L, argmax_rows, dim3(batch), dim3(1024), (const float*)m.logits, (long long)d.V, d.V, m.picked);
}
// The launches `record` makes on g_st, captured into a CUDA graph.
static cudaGraphExec_t capture(const std::function<void()>& record) {
  cudaGraph_t g;
  cudaGraphExec_t ex;
  CK(cudaStreamBeginCapture(g_st, cudaStreamCaptureModeThreadLocal));
  record();
  CK(cudaStreamEndCapture(g_st, &g));
  CK(cudaGraphInstantiate(&ex, g, 0));
  CK(cudaGraphDestroy(g));
  return ex;
}

// Two steps of a small model (2 layers, hidden 64, 8 heads of 16, state 16, 2 groups, vocab 256, batch 3: GEMV
// groups 2 + 1), each after an ids copy as the engine does: plainly, with PDL, and with PDL from a CUDA graph;
// logits, picks, residual, states and windows must agree bit for bit. Then with the tma GEMVs (another summation
// order) plainly and with PDL from a graph: bitwise against each other, within 1e-5 (relative) of the plain step.
static int check_step_pdl() {
  const Dims d{"small", 64, 128, 8, 16, 16, 2, 4, 2, 256};
  const int batch = 3;
  Model m = make_model(d, batch);
  const std::vector<unsigned> ids[2] = {{5, 255, 0}, {17, 3, 200}};
  auto run = [&](int variant) {  // 0 plain, 1 PDL, 2 PDL graph, 3 tma plain, 4 tma PDL graph
    init_state(m);
    Launch L;
    L.pdl = variant != 0 && variant != 3, L.tma = variant >= 3, L.st = g_st;
    cudaGraphExec_t ex = variant == 2 || variant == 4 ? capture([&] { step(m, L, batch); }) : nullptr;
    for (int t = 0; t < 2; ++t) {
      CK(cudaMemcpyAsync(m.ids, ids[t].data(), batch * 4, cudaMemcpyHostToDevice, g_st));
      if (ex) CK(cudaGraphLaunch(ex, g_st));
      else step(m, L, batch);
    }
    CK(cudaDeviceSynchronize());
    if (ex) CK(cudaGraphExecDestroy(ex));
    std::vector<float> o = down(m.logits, size_t(batch) * d.V), r = down(m.resid, size_t(batch) * d.D);
    o.insert(o.end(), r.begin(), r.end());
    for (int l = 0; l < d.L; ++l) {
      const std::vector<float> s = down(m.st[l], size_t(batch) * d.H * d.P * d.N),
                               w = down(m.win[l], size_t(batch) * m.C * d.K);
      o.insert(o.end(), s.begin(), s.end());
      o.insert(o.end(), w.begin(), w.end());
    }
    for (unsigned v : down(m.picked, 2 * batch)) o.push_back(float(v));
    return o;
  };
  const std::vector<float> plain = run(0), pdl = run(1), graph = run(2), tma = run(3), tma_graph = run(4);
  size_t bad = 0;
  for (int i = 0; i < batch * d.V; ++i) bad += !std::isfinite(plain[i]);
  int fails = report("small model step x2, plain: logits finite", bad ? 1.0 : 0.0, 0);
  auto diff = [&](const std::vector<float>& v, const std::vector<float>& ref) {
    size_t n = 0;
    for (size_t i = 0; i < v.size(); ++i) n += std::memcmp(&v[i], &ref[i], 4) != 0;
    return double(n) / v.size();
  };
  fails += report("small model step x2, PDL vs plain: bitwise (share differing)", diff(pdl, plain), 0);
  fails += report("small model step x2, PDL graph vs plain: bitwise (share differing)", diff(graph, plain), 0);
  fails += report("small model step x2, tma PDL graph vs tma plain: bitwise", diff(tma_graph, tma), 0);
  // Everything but the picks (an index moves by a whole step on a near tie), against the plain step.
  const size_t n = plain.size() - 2 * batch;
  fails += report("small model step x2, tma plain vs plain: relative",
                  rel_err(std::vector<float>(tma.begin(), tma.begin() + n),
                          std::vector<double>(plain.begin(), plain.begin() + n)), 1e-5);
  free_model(m);
  return fails;
}

static int check_all() {
  int fails = 0;
  for (bool f32 : {false, true}) {
    const int batches[] = {1, 2, 4, 8, 11};
    for (int i = 0; i < 5; ++i) {
      const int b = batches[i], cols = b == 4 ? (f32 ? 1036 : 2568) : (f32 ? 200 : 264);
      fails += check_gemv_in(InCase{f32, b, cols, i % 2 == 0, (i / 2) % 2 == 1, false, i % 2 ? 1 : 4});
    }
    // Rows of 5200 / 4400 bytes: a full tile and a partial one per row for the tma kernels.
    fails += check_gemv_in(InCase{f32, 3, f32 ? 1100 : 2600, true, true, false, 1});
    fails += check_gemv_in(InCase{f32, 3, f32 ? 200 : 264, f32, false, true, 1});
    fails += check_gemv_in(InCase{f32, 2, f32 ? 1100 : 2600, false, false, true, 4});
  }
  for (int N : {16, 64, 128})
    for (int P : {16, 64})
      for (int G : {1, 2})
        for (int b : {1, 3}) fails += check_ssm(N, P, G, b) + check_ssm(N, P, G, b, true);
  for (bool f32 : {false, true})
    for (int G : {1, 2, 8})
      for (int b : {1, 4}) fails += check_gemv_out(f32, G, b, b == 1 ? 1 : 4);
  fails += check_gemv_out(false, 2, 11, 1);
  fails += check_gemv_out(false, 8, 2, 1, 112);  // bf16 rows of 5376 bytes: a partial second tile
  fails += check_gemv_out(true, 1, 3, 4, 48);     // f32 rows of 4608 bytes
  for (bool f32 : {false, true})
    for (int act : {ACT_RELU2, ACT_GELU})
      for (int b : {1, 3, 8}) fails += check_mlp(f32, b, act);
  fails += check_mlp(false, 2, ACT_NONE);
  fails += check_embed(false) + check_embed(true);
  fails += check_argmax();
  fails += check_step_pdl();
  return fails;
}

// Median of `iters` timed calls of f on `st` (after 3 warm-up calls).
static float median_ms(const std::function<void()>& f, cudaStream_t st, int iters = 20) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) f();
  CK(cudaStreamSynchronize(st));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(e0, st));
    f();
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float v;
    CK(cudaEventElapsedTime(&v, e0, e1));
    ms.push_back(v);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
// Median time of one replay of a graph of the launches `record` makes on g_st.
static float graph_ms(const std::function<void()>& record) {
  cudaGraphExec_t ex = capture(record);
  const float ms = median_ms([&] { CK(cudaGraphLaunch(ex, g_st)); }, g_st);
  CK(cudaGraphExecDestroy(ex));
  return ms;
}

// Mamba2-2.7B and Mamba2-130M (conv 4, one group, state 128, heads of 64, vocab 50288).
static const Dims M27{"2.7B", 2560, 5120, 80, 64, 128, 1, 4, 64, 50288};
static const Dims M130{"130M", 768, 1536, 24, 64, 128, 1, 4, 24, 50288};

// gemv_in (in_proj) and gemv_out (out_proj) alone on 2.7B's matrices at batch 1, 4 weight copies rotated, 8
// launches per graph; ssm_gate alone at batch 1 and 64 (4 states rotated, as layers).
static void time_kernels() {
  Dims d = M27;
  d.L = 4;  // 4 layers' weights and states: the rotated copies
  Model m = make_model(d, 1);
  init_state(m);
  fill(m.resid, d.D, 5, -1.f, 1.f), fill(m.yg, d.I, 6, -1.f, 1.f), fill(m.part, d.H, 7, 10.f, 20.f);
  CK(cudaDeviceSynchronize());
  const double in_bytes = 2.0 * m.rows * d.D, out_bytes = 2.0 * d.D * d.I;
  std::printf("occupancy, CTAs of 256 per SM, bf16 b1/b2/b4/b8:");
  for (int tma : {0, 1})
    for (int out : {0, 1})
      for (int n : {1, 2, 4, 8}) {
        int occ = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, gemv_kernel(out, false, n, tma), 256,
                                                         tma ? TMA_SMEM : 0));
        std::printf("%s%s%d", n == 1 ? (out ? "  gemv_out" : " gemv_in") : "/", n == 1 ? (tma ? "_tma " : " ") : "",
                    occ);
      }
  std::printf("\n");
  std::vector<Launch> cfgs;  // plain GEMVs: ctas 4, prefetch 0, split auto/1/2/4/8; tma: ctas 2
  for (int pdl : {0, 1}) {
    Launch L;
    L.pdl = pdl, L.st = g_st, L.ctas = 4, L.prefetch = 0;
    for (int sp : {1, 2, 4, 8}) L.split = sp, cfgs.push_back(L);
    L.tma = true, L.split = 1, L.ctas = 2;
    cfgs.push_back(L);
  }
  for (const Launch& L : cfgs) {
    const float t_in = graph_ms([&] {
      for (int j = 0; j < 8; ++j) run_gemv(L, false, false, in_proj_args(m, j % 4), 1, (long long)m.C * d.K);
    }) / 8;
    const float t_out = graph_ms([&] {
      for (int j = 0; j < 8; ++j) run_gemv(L, true, false, out_proj_args(m, j % 4), 1, 0);
    }) / 8;
    std::printf("time 2.7B pdl %d %-5s ctas %d split %s: gemv_in %dx%d b1 %.2f us %.2f TB/s | gemv_out %dx%d "
                "b1 %.2f us %.2f TB/s\n", int(L.pdl), L.tma ? "tma" : "plain", L.ctas,
                L.tma ? "-" : std::to_string(L.split).c_str(), m.rows, d.D, t_in * 1e3,
                in_bytes / (t_in * 1e-3) / 1e12, d.D, d.I, t_out * 1e3, out_bytes / (t_out * 1e-3) / 1e12);
  }
  free_model(m);
  for (int batch : {1, 64}) {
    // 2.7B's SSM sizes, 4 layers of state; only proj, the states, yg and part are used.
    Model s = make_model(Dims{"2.7B ssm", 8, 5120, 80, 64, 128, 1, 4, 4, 8}, batch);
    init_state(s);
    fill(s.proj, size_t(batch) * s.ldp, 8, 0.f, 0.5f);
    CK(cudaDeviceSynchronize());
    for (int bf : {0, 1})
      for (int pdl : {0, 1}) {
        Launch L;
        L.pdl = pdl, L.st = g_st;
        // bf16: the first half of each f32 state buffer, set to a small constant
        if (bf)
          for (float* st : s.st) CK(cudaMemset(st, 0x3c, size_t(s.state_bytes(batch) / s.d.L / 2)));
        const float ms = graph_ms([&] {
          for (int j = 0; j < 8; ++j) launch(L, bf ? ssm_gate_bf16_n128 : ssm_gate_n128, dim3(s.d.H, batch),
                                             dim3(4 * s.d.P), ssm_args(s, j % 4));
        }) / 8;
        const double bytes = 2 * s.state_bytes(batch) / s.d.L / (bf ? 2 : 1);
        std::printf("time ssm_gate 2.7B layer b%-2d %s state pdl %d: %.2f us, %.2f TB/s of state (read + write)\n",
                    batch, bf ? "bf16" : "f32 ", pdl, ms * 1e3, bytes / (ms * 1e-3) / 1e12);
      }
    free_model(s);
  }
}

// Whole decode steps replayed from CUDA graphs: PDL off/on x (plain GEMVs, prefetch_iters 0, ctas_per_sm 2/4 |
// tma GEMVs, ctas_per_sm 1/2).
static void time_steps(const Dims& d, std::vector<int> batches) {
  Model m = make_model(d, *std::max_element(batches.begin(), batches.end()));
  init_state(m);
  for (int batch : batches)
    for (int pdl : {0, 1})
      for (int v = 0; v < 4; ++v) {  // plain ctas 4 split 1 / split 2 / ctas 2 split 1; tma ctas 2
        Launch L;
        L.pdl = pdl, L.tma = v == 3, L.ctas = v == 2 || v == 3 ? 2 : 4, L.split = v == 1 ? 2 : 1, L.prefetch = 0;
        L.st = g_st;
        const float ms = graph_ms([&] { step(m, L, batch); });
        const double bytes = m.weight_bytes() + 2 * m.state_bytes(batch);
        std::printf("time %s step b%d pdl %d %-5s ctas %d split %s: %.3f ms, %.0f tok/s, %.2f GB -> %.2f TB/s\n",
                    d.name, batch, pdl, L.tma ? "tma" : "plain", L.ctas, v == 1 ? "2" : "1", ms, batch * 1e3 / ms,
                    bytes / 1e9, bytes / (ms * 1e-3) / 1e12);
      }
  free_model(m);
}

// One plain step of a two-layer 2.7B-sized model at batch 1 and at batch 8 (product launch settings: ctas 4, no
// prefetch, no PDL), for a profiler: `ncu --clock-control none -k regex:gemv_in_bf16_b1 -c 2 decode_lab profile`.
static void profile_steps() {
  Dims d = M27;
  d.L = 2;
  Model m = make_model(d, 8);
  init_state(m);
  CK(cudaDeviceSynchronize());
  Launch L;
  L.prefetch = 0, L.st = g_st;
  for (int batch : {1, 8}) step(m, L, batch);
  CK(cudaStreamSynchronize(g_st));
  free_model(m);
  std::printf("profile: one step of 2 layers at batch 1 and 8\n");
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode != "check" && mode != "time" && mode != "all" && mode != "profile") {
    std::fprintf(stderr, "usage: %s [check|time|all|profile]\n", argv[0]);
    return 2;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  std::printf("device %s sm_%d%d, %d SMs, L2 %d MB\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  CK(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
  if (prop.major < 9) {
    std::fprintf(stderr, "the tma GEMVs need sm_90\n");
    return 2;
  }
  init_tma_kernels();
  int fails = 0;
  if (mode == "profile") {
    profile_steps();
    return 0;
  }
  if (mode == "check" || mode == "all") fails = check_all();
  if (mode == "time" || mode == "all") {
    time_kernels();
    time_steps(M27, {1, 8});
    time_steps(M130, {1});
  }
  std::printf("%s: %d check failures\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
