// Lab harness for the fused SSD forward: checks the kernel against a float64 sequential scan on many shapes and
// times it on the benchmark shapes, all in one process (one device call). Not part of the build: compile with
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I crates/kernels/cuda -o ssd_lab crates/kernels/dev/ssd_lab.cu
// and run `./ssd_lab [check|time|variants|all|tiny|time1|sm90]` (tiny: the first shapes only, for compute-sanitizer;
// time1: one shape, for ncu; variants: stages left out in turn; sm90: checks and times of the wgmma kernel only).
// `SSD_LAB_SM90=1` in the environment makes tiny and time1 use the wgmma kernel. The product's own checks are the case tables in coil-ops.

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

#include "../cuda/ssd_fwd.cu"
#include "../cuda/ssd_fwd_sm90.cu"

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)

struct Shape {
  int b, t, h, p, g, n;
  bool seq, init, dt_f32, clamp;
};

static float bf(float v) { return __bfloat162float(__float2bfloat16(v)); }

struct Problem {
  Shape s;
  std::vector<float> x, bm, cm, dt, a, bias, d, init;  // bf16-rounded where the kernel reads bf16
  std::vector<int> seq;
  float lo = 0.f, hi = INFINITY;
};

static Problem make(const Shape& s, unsigned seed) {
  Problem pr;
  pr.s = s;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  auto fill = [&](std::vector<float>& v, size_t n, float scale) {
    v.resize(n);
    for (auto& e : v) e = bf(nd(rng) * scale);
  };
  fill(pr.x, size_t(s.b) * s.t * s.h * s.p, 1.f);
  fill(pr.bm, size_t(s.b) * s.t * s.g * s.n, 1.f);
  fill(pr.cm, size_t(s.b) * s.t * s.g * s.n, 1.f);
  pr.dt.resize(size_t(s.b) * s.t * s.h);
  for (auto& e : pr.dt) e = s.dt_f32 ? nd(rng) : bf(nd(rng));
  pr.a.resize(s.h), pr.bias.resize(s.h), pr.d.resize(s.h);
  for (int i = 0; i < s.h; ++i) {
    pr.a[i] = -(1.f + 15.f * ud(rng));
    const float dt0 = std::exp(std::log(1e-3f) + ud(rng) * (std::log(0.1f) - std::log(1e-3f)));
    pr.bias[i] = dt0 + std::log(-std::expm1(-dt0));
    pr.d[i] = nd(rng);
  }
  if (s.init) {
    pr.init.resize(size_t(s.b) * s.h * s.p * s.n);
    for (auto& e : pr.init) e = nd(rng);
  }
  if (s.seq) {
    pr.seq.resize(size_t(s.b) * s.t);
    for (int bi = 0; bi < s.b; ++bi) {
      int id = 0;
      for (int t = 0; t < s.t; ++t) {
        if (t > 0 && ud(rng) < 0.02f) ++id;
        pr.seq[size_t(bi) * s.t + t] = id;
      }
    }
  }
  if (s.clamp) pr.lo = 0.01f, pr.hi = 0.05f;
  return pr;
}

// float64 sequential reference: y [B,T,H,P], final [B,H,P,N].
static void reference(const Problem& pr, std::vector<double>& y, std::vector<double>& fin) {
  const Shape& s = pr.s;
  y.assign(size_t(s.b) * s.t * s.h * s.p, 0.0);
  fin.assign(size_t(s.b) * s.h * s.p * s.n, 0.0);
  std::vector<double> st(size_t(s.p) * s.n);
  for (int bi = 0; bi < s.b; ++bi)
    for (int h = 0; h < s.h; ++h) {
      const int g = h / (s.h / s.g);
      for (size_t i = 0; i < st.size(); ++i)
        st[i] = s.init ? pr.init[(size_t(bi) * s.h + h) * s.p * s.n + i] : 0.0;
      for (int t = 0; t < s.t; ++t) {
        if (s.seq && t > 0 && pr.seq[size_t(bi) * s.t + t] != pr.seq[size_t(bi) * s.t + t - 1])
          std::fill(st.begin(), st.end(), 0.0);
        double v = double(pr.dt[(size_t(bi) * s.t + t) * s.h + h]) + pr.bias[h];
        double dt = v > 20.0 ? v : std::log1p(std::exp(v));
        dt = std::min(std::max(dt, double(pr.lo)), double(pr.hi));
        const double dec = std::exp(dt * pr.a[h]);
        const float* xr = &pr.x[((size_t(bi) * s.t + t) * s.h + h) * s.p];
        const float* br = &pr.bm[((size_t(bi) * s.t + t) * s.g + g) * s.n];
        const float* cr = &pr.cm[((size_t(bi) * s.t + t) * s.g + g) * s.n];
        double* yr = &y[((size_t(bi) * s.t + t) * s.h + h) * s.p];
        for (int pi = 0; pi < s.p; ++pi) {
          double acc = 0.0;
          for (int ni = 0; ni < s.n; ++ni) {
            double& e = st[size_t(pi) * s.n + ni];
            e = dec * e + dt * xr[pi] * br[ni];
            acc += e * cr[ni];
          }
          yr[pi] = acc + pr.d[h] * xr[pi];
        }
      }
      for (size_t i = 0; i < st.size(); ++i) fin[(size_t(bi) * s.h + h) * s.p * s.n + i] = st[i];
    }
}

template <typename T>
static T* up(const std::vector<T>& v) {
  if (v.empty()) return nullptr;
  T* d;
  CK(cudaMalloc(&d, v.size() * sizeof(T)));
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

static std::vector<bf16> to_bf(const std::vector<float>& v) {
  std::vector<bf16> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
  return o;
}

struct Dev {
  SsdFwdParams p{};
  void* bufs[16] = {};
  int nb = 0;
  template <typename T>
  T* keep(T* ptr) {
    bufs[nb++] = (void*)ptr;
    return ptr;
  }
  ~Dev() {
    for (int i = 0; i < nb; ++i) cudaFree(bufs[i]);
  }
};

// Lab variants of the (64, 128) kernel with one stage left out (timing only: their outputs are wrong).
#define LAB_VARIANT(SK) \
  __global__ void __launch_bounds__(THREADS, 2) lab_p64_n128_skip##SK(const SsdFwdParams p) { ssd_fwd_body<64, 128, SK>(p); }
LAB_VARIANT(1) LAB_VARIANT(2) LAB_VARIANT(4) LAB_VARIANT(8) LAB_VARIANT(16) LAB_VARIANT(32) LAB_VARIANT(64)
LAB_VARIANT(128) LAB_VARIANT(25) LAB_VARIANT(255)
// The (64, 128) kernel with one CTA per SM and the registers that allows.
__global__ void __launch_bounds__(THREADS, 1) lab_p64_n128_minb1(const SsdFwdParams p) { ssd_fwd_body<64, 128, 0>(p); }

static int smem_bytes(int p, int n) {
  if (p == 64) return n == 64 ? Layout<64, 64>::BYTES : Layout<64, 128>::BYTES;
  return n == 64 ? Layout<128, 64>::BYTES : Layout<128, 128>::BYTES;
}

static bool g_minb1 = false;  // run the (64, 128) shapes with the one-CTA-per-SM build
static bool g_sm90 = false;   // run the (64, 128) shapes with the wgmma kernel (ssd_fwd_sm90.cu)

static void launch(const SsdFwdParams& p, int P, int N, cudaStream_t st = 0) {
  const int smem = smem_bytes(P, N);
  dim3 grid(p.heads, p.batch), block(256);
#define L_(PP, NN)                                                                                  \
  if (P == PP && N == NN) {                                                                        \
    CK(cudaFuncSetAttribute(ssd_fwd_p##PP##_n##NN, cudaFuncAttributeMaxDynamicSharedMemorySize, smem)); \
    ssd_fwd_p##PP##_n##NN<<<grid, block, smem, st>>>(p);                                           \
    return;                                                                                        \
  }
  if (g_sm90 && P == 64 && N == 128) {
    CK(cudaFuncSetAttribute(ssd_fwd_sm90_p64_n128, cudaFuncAttributeMaxDynamicSharedMemorySize, Sm90Layout::ALLOC));
    ssd_fwd_sm90_p64_n128<<<grid, block, Sm90Layout::ALLOC, st>>>(p);
    return;
  }
  if (g_minb1 && P == 64 && N == 128) {
    CK(cudaFuncSetAttribute(lab_p64_n128_minb1, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    lab_p64_n128_minb1<<<grid, block, smem, st>>>(p);
    return;
  }
  L_(64, 64) L_(64, 128) L_(128, 64) L_(128, 128)
#undef L_
  std::fprintf(stderr, "no kernel for P=%d N=%d\n", P, N);
  std::exit(2);
}

static void setup(Dev& dv, const Problem& pr) {
  const Shape& s = pr.s;
  SsdFwdParams& p = dv.p;
  p.x = dv.keep(up(to_bf(pr.x)));
  p.b = dv.keep(up(to_bf(pr.bm)));
  p.c = dv.keep(up(to_bf(pr.cm)));
  if (s.dt_f32)
    p.dt = dv.keep(up(pr.dt));
  else
    p.dt = dv.keep(up(to_bf(pr.dt)));
  p.a = dv.keep(up(pr.a));
  p.dt_bias = dv.keep(up(pr.bias));
  p.d = dv.keep(up(pr.d));
  p.init_state = s.init ? dv.keep(up(pr.init)) : nullptr;
  p.seq_idx = s.seq ? dv.keep(up(pr.seq)) : nullptr;
  bf16* y;
  CK(cudaMalloc(&y, pr.x.size() * 2));
  p.y = dv.keep(y);
  float* fin;
  CK(cudaMalloc(&fin, size_t(s.b) * s.h * s.p * s.n * 4));
  p.final_state = dv.keep(fin);
  p.x_bs = (long long)s.t * s.h * s.p, p.x_ts = s.h * s.p;
  p.bc_bs = (long long)s.t * s.g * s.n, p.bc_ts = s.g * s.n;
  p.dt_bs = (long long)s.t * s.h, p.dt_ts = s.h;
  p.y_bs = p.x_bs, p.y_ts = p.x_ts;
  p.batch = s.b, p.seqlen = s.t, p.heads = s.h, p.groups = s.g;
  p.dt_lo = pr.lo, p.dt_hi = pr.hi;
  p.dt_is_f32 = s.dt_f32, p.dt_softplus = 1;
}

static double rel_l2(const std::vector<float>& got, const std::vector<double>& want, bool& nan) {
  double num = 0, den = 0;
  nan = false;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) nan = true;
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

static int check(int count) {
  const Shape shapes[] = {
      // b   t     h   p    g  n    seq    init   dt_f32 clamp
      {1, 1, 4, 64, 1, 128, false, false, false, false},     {1, 37, 4, 64, 2, 128, false, false, false, false},
      {2, 64, 8, 64, 2, 128, false, false, false, false},    {2, 65, 8, 64, 8, 128, false, true, false, false},
      {1, 300, 6, 64, 3, 64, false, false, true, false},     {2, 1000, 4, 128, 1, 128, false, false, false, false},
      {1, 777, 4, 128, 2, 64, false, true, false, true},     {3, 500, 8, 64, 4, 128, true, false, false, false},
      {2, 640, 16, 64, 8, 128, true, true, true, false},     {1, 2048, 24, 64, 1, 128, false, false, false, false},
      {1, 4096, 8, 64, 8, 128, false, false, false, false},  {2, 333, 8, 64, 2, 128, false, true, false, true},
      {2, 129, 4, 64, 4, 128, true, true, true, true},
  };
  int fails = 0;
  unsigned seed = 1;
  for (const Shape& s : shapes) {
    if (count-- == 0) break;
    const Problem pr = make(s, seed++);
    std::vector<double> yr, fr;
    reference(pr, yr, fr);
    Dev dv;
    setup(dv, pr);
    CK(cudaMemset(dv.p.y, 0xff, pr.x.size() * 2));  // NaN poison: an unwritten y fails
    CK(cudaMemset(dv.p.final_state, 0xff, fr.size() * 4));
    launch(dv.p, s.p, s.n);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<bf16> yb(pr.x.size());
    std::vector<float> y(pr.x.size()), fin(fr.size());
    CK(cudaMemcpy(yb.data(), dv.p.y, yb.size() * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(fin.data(), dv.p.final_state, fin.size() * 4, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < y.size(); ++i) y[i] = __bfloat162float(yb[i]);
    bool n1, n2;
    const double ey = rel_l2(y, yr, n1), ef = rel_l2(fin, fr, n2);
    const bool ok = !n1 && !n2 && ey < 1e-2 && ef < 1e-2;
    fails += !ok;
    // Where it goes wrong: the first position whose error is large.
    int first_bad = -1;
    for (int t = 0; t < s.t && first_bad < 0; ++t)
      for (int i = 0; i < s.h * s.p; ++i) {
        const size_t k = size_t(t) * s.h * s.p + i;
        if (!(std::fabs(y[k] - yr[k]) <= 0.05 + 0.05 * std::fabs(yr[k]))) {
          first_bad = t;
          break;
        }
      }
    std::printf("check b%d t%d h%d p%d g%d n%d seq%d init%d dtf32%d clamp%d: y rel %.2e  final rel %.2e  nan %d/%d  first bad t %d  %s\n",
                s.b, s.t, s.h, s.p, s.g, s.n, s.seq, s.init, s.dt_f32, s.clamp, ey, ef, n1, n2, first_bad,
                ok ? "ok" : "FAIL");
  }
  return fails;
}

typedef void (*KernelFn)(const SsdFwdParams);

static void launch_fn(KernelFn fn, const SsdFwdParams& p, int smem) {
  CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  fn<<<dim3(p.heads, p.batch), dim3(256), smem>>>(p);
}

static float median_ms(const std::function<void()>& f) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) f();
  CK(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    CK(cudaEventRecord(e0));
    f();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float v;
    CK(cudaEventElapsedTime(&v, e0, e1));
    ms.push_back(v);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Each stage left out in turn: the time it saves is (about) what it costs.
static void variants(const char* label, Shape s) {
  const Problem pr = make(s, 98);
  Dev dv;
  setup(dv, pr);
  const int smem = smem_bytes(64, 128);
  const struct { const char* name; KernelFn fn; } vs[] = {
      {"full", ssd_fwd_p64_n128},          {"1 CTA/SM", lab_p64_n128_minb1},
      {"-mma1 (CB+yoff)", lab_p64_n128_skip1},
      {"-M epilogue", lab_p64_n128_skip2}, {"-B scaling", lab_p64_n128_skip4},
      {"-ydiag mma", lab_p64_n128_skip8},  {"-state mma", lab_p64_n128_skip16},
      {"-scalars", lab_p64_n128_skip32},   {"-tile loads", lab_p64_n128_skip64},
      {"-y stores", lab_p64_n128_skip128}, {"-all mma", lab_p64_n128_skip25},
      {"-everything", lab_p64_n128_skip255},
  };
  for (const auto& v : vs)
    std::printf("variant %-14s %-16s median %.4f ms\n", label, v.name,
                median_ms([&] { launch_fn(v.fn, dv.p, smem); }));
}

static void time_one(const char* label, Shape s) {
  const Problem pr = make(s, 99);
  Dev dv;
  setup(dv, pr);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) launch(dv.p, s.p, s.n);
  CK(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    CK(cudaEventRecord(e0));
    launch(dv.p, s.p, s.n);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float v;
    CK(cudaEventElapsedTime(&v, e0, e1));
    ms.push_back(v);
  }
  CK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  const double l = 64.0, tok = double(s.b) * s.t;
  // Useful FLOPs (per head: C·Bᵀ per group counted once per head here, as the kernel does it).
  const double flops = 2.0 * tok * s.h * (l / 2 * s.n + l / 2 * s.p + 2.0 * s.p * s.n);
  std::printf("time %-16s median %.4f ms  min %.4f  (%.1f TFLOP/s issued)\n", label, ms[ms.size() / 2], ms[0],
              flops / (ms[ms.size() / 2] * 1e-3) / 1e12);
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  int fails = 0;
  if (mode == "check" || mode == "all") {
    fails = check(-1);
    g_minb1 = true;
    std::printf("-- the same checks with the one-CTA-per-SM build of (64, 128)\n");
    fails += check(-1);
    g_minb1 = false;
  }
  if (mode == "check" || mode == "all" || mode == "sm90") {
    g_sm90 = true;
    std::printf("-- the same checks with the wgmma kernel for (64, 128)\n");
    fails += check(-1);
    g_sm90 = false;
  }
  if (const char* e = std::getenv("SSD_LAB_SM90"); e && std::string(e) == "1") g_sm90 = true;
  if (mode == "tiny") fails = check(4);  // for compute-sanitizer
  if (mode == "time1") time_one("NH-8B 1x8192", {1, 8192, 128, 64, 8, 128, false, false, false, false});
  if (mode == "variants" || mode == "all") {
    variants("NH-8B 1x8192", {1, 8192, 128, 64, 8, 128, false, false, false, false});
    variants("NH-8B 4x8192", {4, 8192, 128, 64, 8, 128, false, false, false, false});
  }
  if (mode == "time" || mode == "all") {
    time_one("NH-8B 1x8192", {1, 8192, 128, 64, 8, 128, false, false, false, false});
    time_one("NH-8B 4x8192", {4, 8192, 128, 64, 8, 128, false, false, false, false});
    time_one("130M 8x2048", {8, 2048, 24, 64, 1, 128, false, false, false, false});
    time_one("P128 N128 2x4096", {2, 4096, 64, 128, 8, 128, false, false, false, false});
    g_minb1 = true;
    time_one("1CTA NH-8B 1x8192", {1, 8192, 128, 64, 8, 128, false, false, false, false});
    time_one("1CTA NH-8B 4x8192", {4, 8192, 128, 64, 8, 128, false, false, false, false});
    time_one("1CTA 130M 8x2048", {8, 2048, 24, 64, 1, 128, false, false, false, false});
    g_minb1 = false;
  }
  if (mode == "time" || mode == "all" || mode == "sm90") {
    g_sm90 = true;
    time_one("wgmma NH-8B 1x8192", {1, 8192, 128, 64, 8, 128, false, false, false, false});
    time_one("wgmma NH-8B 4x8192", {4, 8192, 128, 64, 8, 128, false, false, false, false});
    time_one("wgmma 130M 8x2048", {8, 2048, 24, 64, 1, 128, false, false, false, false});
    time_one("wgmma seq 4x8192", {4, 8192, 128, 64, 8, 128, true, false, false, false});
    g_sm90 = false;
  }
  std::printf("%s: %d check failures\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
