// Lab harness for the attention decode kernels (`cuda/attn_decode.cu`).
//   check: two consecutive steps (split + combine + advance_lens, replayed from a CUDA graph) against a float64 CPU
//          reference on random inputs, outputs and partials NaN-poisoned beforehand, for heads/kv_heads 8/8, 32/8,
//          16/2, 12/1, ..., head_dim 16 and 32 to 256, batch 1 and 3 with different lens per sequence (0 .. 10000, the
//          last slot max_len - 1, and lens == max_len, which must neither append nor read or write past the caches),
//          each under five split plans (the rule of src/attn_decode.rs, fixed chunks of 256, one split, chunks of
//          320 = two sub-chunks, ranges of any length); per plan: the outputs of both steps within 1e-5 (relative,
//          per head) of the reference, the caches (the appended rows equal to qkv's k and v, every other row
//          untouched), lens and the output's row padding bitwise, and the same graph with PDL (sm_90) bitwise equal
//          to the plain one; per case, a second run of the rule's graph bitwise equal to the first.
//   guard: only the cases with lens at max_len - 1 and max_len (small: for compute-sanitizer).
//   time:  Nemotron-H-4B's attention (32 heads, 8 kv heads, head_dim 128; max_len 10240) at batch 1 and 64, lens
//          200, 1000, 10000: split + combine replayed from a CUDA graph, median of 20 replays after 3 warm-up ones
//          (cudaEvents), with the L2 as the previous replay left it (hot) and flushed before each replay (cold), per
//          split plan (the rule, and 10 to 128 splits of multiples of 32 to 256 positions); µs and GB/s of K/V read
//          (2·batch·kv_heads·n·head_dim·4 bytes, n = lens + 1).
// Not part of the build:
//   source /work/shared/gpu/cuda-env.sh
//   nvcc -std=c++17 -O3 -lineinfo -gencode=arch=compute_90,code=sm_90 -o /tmp/attn_lab crates/kernels/dev/attn_lab.cu
// and run `/tmp/attn_lab [check|guard|time|all]` (default all = check + time; `time` needs about 6 GB of GPU
// memory: the batch-64 caches). Each `check` line ends in ok or FAIL; the exit status is 1 when any check failed.

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

#include "../cuda/attn_decode.cu"

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                             \
    }                                                                                           \
  } while (0)

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
static void upload(T* d, const std::vector<T>& v) {
  CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <typename T>
static std::vector<T> down(const T* d, size_t n) {
  std::vector<T> v(n);
  CK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
static int report(const std::string& what, double err, double tol) {
  const bool ok = err <= tol;
  std::printf("check %-78s %.2e (tol %.0e) %s\n", what.c_str(), err, tol, ok ? "ok" : "FAIL");
  return !ok;
}

// Deterministic pseudo-random values in [lo, hi) on the GPU (the timed caches).
__global__ void fill_kernel(float* p, size_t n, unsigned seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) ^ (unsigned(i >> 32) * 0x9e3779b9u) ^ (seed * 0x85ebca6bu);
    h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
    p[i] = lo + (hi - lo) * float(h >> 8) * (1.f / 16777216.f);
  }
}
static void fill(float* p, size_t n, unsigned seed, float lo, float hi) {
  fill_kernel<<<2048, 256>>>(p, n, seed, lo, hi);
  CK(cudaGetLastError());
}

static int g_sms = 132;
static bool g_pdl_ok = false;  // sm_90: programmatic dependent launch
static cudaStream_t g_st;

// The kernels as src/attn_decode.rs launches them.
typedef void (*SplitK)(const AttnArgs);
static SplitK split_kernel(int hd) {
  switch (hd) {
    case 16: return attn_decode_split_hd16;
    case 32: return attn_decode_split_hd32;
    case 64: return attn_decode_split_hd64;
    case 96: return attn_decode_split_hd96;
    case 128: return attn_decode_split_hd128;
    case 160: return attn_decode_split_hd160;
    case 192: return attn_decode_split_hd192;
    case 224: return attn_decode_split_hd224;
    default: return attn_decode_split_hd256;
  }
}
constexpr int SMEM_MAX = 96 * 1024;  // ATTN_SMEM_MAX
static void init_kernels() {
  for (int hd = 16; hd <= 256; hd += hd == 16 ? 16 : 32)
    CK(cudaFuncSetAttribute(split_kernel(hd), cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_MAX));
}
// split_smem_bytes of src/attn_decode.rs.
static size_t smem_bytes(int G, int hd) {
  const size_t floats = 2 * size_t(G) * hd + size_t(WARPS) * std::min(G, 8) * hd + size_t(G) * SUB + 3 * G;
  return (4 * floats + 15) / 16 * 16;
}

// The split rule of src/attn_decode.rs (attn_plan, plan_with).
struct Plan {
  int splits, chunk, min_chunk;
  std::string name;
};
static int max_splits(int max_len) { return std::min(std::max((max_len + 255) / 256, 1), 128); }
static Plan plan_with(int max_len, int splits, int min_chunk, const std::string& name, int cap = 0) {
  splits = std::min(std::max(splits, 1), cap ? cap : max_splits(max_len));  // cap: the lab's own scratch (time)
  min_chunk = std::max(min_chunk, 1);
  const int per = (std::max(max_len, 1) + splits - 1) / splits;
  const int chunk = (per + min_chunk - 1) / min_chunk * min_chunk;
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s (s%d c%d m%d)", name.c_str(), splits, chunk, min_chunk);
  return Plan{splits, chunk, min_chunk, buf};
}
static Plan plan_rule(int batch, int kv, int max_len) {
  const int pairs = std::max(batch * kv, 1), by_grid = (32 * g_sms + pairs - 1) / pairs;  // CTAS_PER_SM 32
  return plan_with(max_len, std::min(by_grid, max_splits(max_len)), 64, "rule");
}

// One attention layer's buffers on the device.
struct Dev {
  int batch, heads, kv, hd, max_len;
  long long ld_qkv, ld_out;
  int cap;  // splits the scratch holds: max_splits(max_len) as src/attn_decode.rs sizes it, or more (time)
  float *qkv, *kc, *vc, *out, *scratch;
  unsigned* lens;
  size_t cache_len() const { return size_t(batch) * kv * max_len * hd; }
  size_t scratch_len() const { return size_t(batch) * heads * cap * (hd + 2); }  // attn_scratch_len
  int group() const { return heads / kv; }
};
static Dev make_dev(int batch, int heads, int kv, int hd, int max_len, int cap = 0) {
  Dev d{batch, heads, kv, hd, max_len, (long long)(heads + 2 * kv) * hd + 4, (long long)heads * hd + 4,
        cap ? cap : max_splits(max_len)};
  d.qkv = dalloc<float>(size_t(batch) * d.ld_qkv);
  d.kc = dalloc<float>(d.cache_len());
  d.vc = dalloc<float>(d.cache_len());
  d.out = dalloc<float>(size_t(batch) * d.ld_out);
  d.scratch = dalloc<float>(d.scratch_len());
  d.lens = dalloc<unsigned>(batch);
  return d;
}
static void free_dev(Dev& d) {
  cudaFree(d.qkv), cudaFree(d.kc), cudaFree(d.vc), cudaFree(d.out), cudaFree(d.scratch), cudaFree(d.lens);
}
static AttnArgs args_for(const Dev& d, const Plan& p) {
  AttnArgs a{};
  a.qkv = d.qkv, a.k_cache = d.kc, a.v_cache = d.vc, a.lens = d.lens, a.out = d.out;
  a.part_o = d.scratch, a.part_ml = d.scratch + size_t(d.batch) * d.heads * d.cap * d.hd;
  a.ld_qkv = d.ld_qkv, a.ld_out = d.ld_out, a.heads = d.heads, a.kv_heads = d.kv, a.head_dim = d.hd;
  a.max_len = d.max_len, a.splits = p.splits, a.chunk = p.chunk, a.min_chunk = p.min_chunk;
  a.scale = 1.f / std::sqrt(float(d.hd));
  return a;
}

// Plainly (<<<>>>) or through cudaLaunchKernelEx with programmatic dependent launch.
template <typename... P, typename... A>
static void launch(bool pdl, void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  if (!pdl) {
    k<<<grid, block, smem, g_st>>>(args...);
  } else {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = g_st;
    cfg.attrs = &attr, cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, k, args...));
  }
  CK(cudaGetLastError());
}
// One layer's step as src/attn_decode.rs launches it (split: grid (batch·kv_heads, splits), 128 threads; combine:
// grid batch·heads, head_dim threads), then (advance) attn_advance_lens.
static void record_step(const Dev& d, const Plan& p, bool pdl, bool advance, bool combine = true) {
  const AttnArgs a = args_for(d, p);
  launch(pdl, split_kernel(d.hd), dim3(d.batch * d.kv, p.splits), dim3(THREADS), smem_bytes(d.group(), d.hd), a);
  if (combine) launch(pdl, attn_decode_combine, dim3(d.batch * d.heads), dim3(d.hd), 0, a);
  if (advance) launch(pdl, attn_advance_lens, dim3((d.batch + 255) / 256), dim3(256), 0, d.lens, d.batch, d.max_len);
}
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

// A check case: sizes and the lens of each sequence before the first step.
struct Case {
  int heads, kv, hd, max_len;
  std::vector<unsigned> lens;
  bool guard;  // lens at max_len - 1 or max_len: also in `guard` mode
};
static std::string case_name(const Case& c) {
  std::string s = "h" + std::to_string(c.heads) + "/kv" + std::to_string(c.kv) + " hd" + std::to_string(c.hd) +
                  " max " + std::to_string(c.max_len) + " lens";
  for (unsigned l : c.lens) s += " " + std::to_string(l);
  return s;
}

// The float64 reference of one step: appends row b's k and v at lens[b] (when below max_len) to the host caches,
// returns out [batch, heads·hd]; lens unchanged.
static std::vector<double> ref_step(const Case& c, std::vector<float>& kc, std::vector<float>& vc,
                                    const std::vector<unsigned>& lens, const std::vector<float>& qkv,
                                    long long ld_qkv) {
  const int B = int(c.lens.size()), H = c.heads, KV = c.kv, hd = c.hd, G = H / KV;
  const double scale = double(1.f / std::sqrt(float(hd)));
  std::vector<double> out(size_t(B) * H * hd);
  for (int b = 0; b < B; ++b) {
    const bool append = lens[b] < unsigned(c.max_len);
    const int n = append ? int(lens[b]) + 1 : c.max_len;
    const float* row = &qkv[size_t(b) * ld_qkv];
    for (int k = 0; k < KV; ++k) {
      const size_t head = (size_t(b) * KV + k) * c.max_len * hd;
      if (append)
        for (int e = 0; e < hd; ++e) {
          kc[head + size_t(lens[b]) * hd + e] = row[size_t(H + k) * hd + e];
          vc[head + size_t(lens[b]) * hd + e] = row[size_t(H + KV + k) * hd + e];
        }
      for (int g = 0; g < G; ++g) {
        const int h = k * G + g;
        const float* q = row + size_t(h) * hd;
        std::vector<double> s(n);
        double mx = -INFINITY;
        for (int t = 0; t < n; ++t) {
          double d = 0;
          for (int e = 0; e < hd; ++e) d += double(q[e]) * kc[head + size_t(t) * hd + e];
          s[t] = d * scale;
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (int t = 0; t < n; ++t) s[t] = std::exp(s[t] - mx), sum += s[t];
        double* o = &out[(size_t(b) * H + h) * hd];
        for (int t = 0; t < n; ++t)
          for (int e = 0; e < hd; ++e) o[e] += s[t] * vc[head + size_t(t) * hd + e];
        for (int e = 0; e < hd; ++e) o[e] /= sum;
      }
    }
  }
  return out;
}

// The largest relative error (2-norm) over the (sequence, head) output vectors; infinite for a non-finite value.
static double head_err(const std::vector<float>& got, long long ld_out, const std::vector<double>& want, int B, int H,
                       int hd) {
  double worst = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      double num = 0, den = 0;
      for (int e = 0; e < hd; ++e) {
        const float g = got[size_t(b) * ld_out + size_t(h) * hd + e];
        const double w = want[(size_t(b) * H + h) * hd + e];
        if (!std::isfinite(g)) return INFINITY;
        num += (g - w) * (g - w), den += w * w;
      }
      worst = std::max(worst, std::sqrt(num / std::max(den, 1e-300)));
    }
  return worst;
}

template <typename T>
static double share_differing(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 1.0;
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return a.empty() ? 0.0 : double(n) / a.size();
}

struct RunOut {
  std::vector<float> out[2], kc, vc;
  std::vector<unsigned> lens;
};

static int check_case(const Case& c) {
  const int B = int(c.lens.size()), H = c.heads, KV = c.kv, hd = c.hd;
  Dev d = make_dev(B, H, KV, hd, c.max_len);
  // q·k of typical size ~2 after the scale; v with a mean, so the outputs are not close to 0.
  std::vector<float> qkv[2];
  for (auto& v : qkv) {
    v = randv(size_t(B) * d.ld_qkv);
    for (int b = 0; b < B; ++b) {
      float* row = &v[size_t(b) * d.ld_qkv];
      for (int i = 0; i < H * hd; ++i) row[i] *= 2.f;
      for (int i = (H + KV) * hd; i < (H + 2 * KV) * hd; ++i) row[i] += 0.3f;
    }
  }
  const std::vector<float> kc0 = randv(d.cache_len()), vc0 = randv(d.cache_len(), 1.f, 0.3f);
  // Reference: two steps, lens advanced between them (never beyond max_len).
  std::vector<float> rk = kc0, rv = vc0;
  std::vector<unsigned> rl = c.lens;
  std::vector<double> want[2];
  for (int t = 0; t < 2; ++t) {
    want[t] = ref_step(c, rk, rv, rl, qkv[t], d.ld_qkv);
    for (auto& l : rl) l = l < unsigned(c.max_len) ? l + 1 : l;
  }
  auto run = [&](const Plan& p, bool pdl) {
    upload(d.kc, kc0), upload(d.vc, vc0), upload(d.lens, c.lens);
    CK(cudaMemset(d.scratch, 0xff, d.scratch_len() * 4));
    CK(cudaDeviceSynchronize());  // the uploads ran on the legacy stream, the graph runs on g_st
    cudaGraphExec_t ex = capture([&] { record_step(d, p, pdl, true); });
    RunOut r;
    for (int t = 0; t < 2; ++t) {
      CK(cudaMemsetAsync(d.out, 0xff, size_t(B) * d.ld_out * 4, g_st));
      CK(cudaMemcpyAsync(d.qkv, qkv[t].data(), qkv[t].size() * 4, cudaMemcpyHostToDevice, g_st));
      CK(cudaGraphLaunch(ex, g_st));
      CK(cudaStreamSynchronize(g_st));
      r.out[t] = down(d.out, size_t(B) * d.ld_out);
    }
    CK(cudaGraphExecDestroy(ex));
    r.kc = down(d.kc, d.cache_len()), r.vc = down(d.vc, d.cache_len()), r.lens = down(d.lens, B);
    return r;
  };
  const std::vector<Plan> plans = {
      plan_rule(B, KV, c.max_len),
      plan_with(c.max_len, max_splits(c.max_len), 256, "fixed 256"),
      plan_with(c.max_len, 1, 64, "one split"),
      plan_with(c.max_len, (c.max_len + 319) / 320, 320, "chunks of 320"),
      plan_with(c.max_len, max_splits(c.max_len), 1, "any length"),
  };
  const std::string name = case_name(c);
  int fails = 0;
  RunOut first;
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan& p = plans[i];
    const RunOut r = run(p, false);
    const double err = std::max(head_err(r.out[0], d.ld_out, want[0], B, H, hd),
                                head_err(r.out[1], d.ld_out, want[1], B, H, hd));
    fails += report(name + " " + p.name + ": out x2, rel", err, 1e-5);
    // Caches and lens as the reference left them; the output's row padding still poisoned.
    size_t pad_bad = 0;
    for (int t = 0; t < 2; ++t)
      for (int b = 0; b < B; ++b)
        for (long long e = (long long)H * hd; e < d.ld_out; ++e) {
          uint32_t u;
          std::memcpy(&u, &r.out[t][size_t(b) * d.ld_out + e], 4);
          pad_bad += u != 0xffffffffu;
        }
    const double bits = std::max({share_differing(r.kc, rk), share_differing(r.vc, rv),
                                  share_differing(r.lens, rl), pad_bad ? 1.0 : 0.0});
    fails += report(name + " " + p.name + ": caches, lens, padding bitwise", bits, 0);
    if (g_pdl_ok) {
      const RunOut q = run(p, true);
      const double diff = std::max({share_differing(q.out[0], r.out[0]), share_differing(q.out[1], r.out[1]),
                                    share_differing(q.kc, r.kc), share_differing(q.vc, r.vc),
                                    share_differing(q.lens, r.lens)});
      fails += report(name + " " + p.name + ": PDL graph vs plain bitwise", diff, 0);
    }
    if (i == 0) first = r;
  }
  const RunOut again = run(plans[0], false);
  fails += report(name + " rule: second run bitwise",
                  std::max(share_differing(again.out[0], first.out[0]), share_differing(again.out[1], first.out[1])),
                  0);
  free_dev(d);
  return fails;
}

static std::vector<Case> cases(bool guard_only) {
  const std::vector<Case> all = {
      {8, 8, 64, 512, {0, 255, 256}, false},
      {8, 8, 64, 512, {5}, false},
      {32, 8, 128, 4096, {1, 1000, 4094}, false},
      {32, 8, 128, 4096, {4095}, true},  // the last slot, then lens == max_len
      {32, 8, 128, 2048, {1000, 256, 257}, false},
      {16, 2, 128, 1024, {257, 0, 5}, false},
      {12, 1, 64, 512, {255, 256, 1}, false},  // group 12: two passes of 8 heads over the V rows
      {12, 1, 128, 300, {299}, true},
      {32, 8, 64, 10240, {4095, 1, 10000}, false},
      {8, 2, 32, 256, {0, 63, 64}, false},
      {12, 4, 96, 700, {100, 699, 300}, true},
      {16, 1, 256, 600, {257, 0, 598}, false},  // group 16, two quads per lane
      {8, 4, 160, 128, {77}, false},
      {32, 8, 128, 1000, {999, 1000, 500}, true},  // lens == max_len from the start: no append, no OOB
      {12, 1, 64, 64, {64, 63, 0}, true},
      {16, 16, 128, 1, {0}, true},  // a one-position cache: append, then attend to it alone
      {4, 2, 16, 300, {0, 17, 299}, true},  // head_dim 16 (the HF Nemotron-H fixtures): 8 rows per load
      {8, 1, 16, 4096, {4000, 3, 600}, false},
  };
  std::vector<Case> out;
  for (const Case& c : all)
    if (!guard_only || c.guard) out.push_back(c);
  return out;
}

static int check_all(bool guard_only) {
  int fails = 0;
  for (const Case& c : cases(guard_only)) fails += check_case(c);
  return fails;
}

// Median of `iters` timed calls of f on g_st (after 3 warm-up calls); `before` runs before each, untimed.
static float median_ms(const std::function<void()>& f, const std::function<void()>& before, int iters = 20) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) before(), f();
  CK(cudaStreamSynchronize(g_st));
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
    before();
    CK(cudaEventRecord(e0, g_st));
    f();
    CK(cudaEventRecord(e1, g_st));
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

// Nemotron-H-4B's attention layer (nemo_spec §1.2: 32 heads, 8 kv heads, kv_channels 128).
static void time_all() {
  const int H = 32, KV = 8, hd = 128, max_len = 10240;
  const size_t flush_bytes = size_t(256) << 20;
  void* flush;
  CK(cudaMalloc(&flush, flush_bytes));
  for (int batch : {1, 64}) {
    Dev d = make_dev(batch, H, KV, hd, max_len, 128);
    fill(d.kc, d.cache_len(), 1, -1.f, 1.f), fill(d.vc, d.cache_len(), 2, -1.f, 1.f);
    fill(d.qkv, size_t(batch) * d.ld_qkv, 3, -1.f, 1.f);
    CK(cudaDeviceSynchronize());
    for (int len : {200, 1000, 10000}) {
      upload(d.lens, std::vector<unsigned>(batch, unsigned(len)));
      CK(cudaDeviceSynchronize());
      const double bytes = 2.0 * batch * KV * (len + 1) * hd * 4;
      std::vector<Plan> plans = {plan_rule(batch, KV, max_len)};
      const int sm[][2] = {{10, 64}, {10, 256}, {20, 64}, {20, 256}, {40, 64}, {80, 64}, {80, 32}, {128, 64}};
      for (const auto& v : sm) plans.push_back(plan_with(max_len, v[0], v[1], "splits", 128));
      for (const Plan& p : plans) {
        for (int split_only : {0, 1}) {
          if (split_only && &p != &plans[0]) continue;
          cudaGraphExec_t ex = capture([&] { record_step(d, p, false, false, !split_only); });
          auto replay = [&] { CK(cudaGraphLaunch(ex, g_st)); };
          const float hot = median_ms(replay, [] {});
          const float cold = median_ms(replay, [&] { CK(cudaMemsetAsync(flush, 0, flush_bytes, g_st)); });
          CK(cudaGraphExecDestroy(ex));
          std::printf("time 4B attn b%-2d lens %5d %-26s %s: hot %8.2f us %6.0f GB/s | cold %8.2f us %6.0f GB/s\n",
                      batch, len, p.name.c_str(), split_only ? "split only" : "split+comb", hot * 1e3,
                      bytes / (hot * 1e-3) / 1e9, cold * 1e3, bytes / (cold * 1e-3) / 1e9);
        }
      }
    }
    free_dev(d);
  }
  CK(cudaFree(flush));
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode != "check" && mode != "guard" && mode != "time" && mode != "all") {
    std::fprintf(stderr, "usage: %s [check|guard|time|all]\n", argv[0]);
    return 2;
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  g_pdl_ok = prop.major >= 9;
  std::printf("device %s sm_%d%d, %d SMs, L2 %d MB\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  CK(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking));
  init_kernels();
  int fails = 0;
  if (mode == "check" || mode == "all") fails += check_all(false);
  if (mode == "guard") fails += check_all(true);
  if (mode == "time" || mode == "all") time_all();
  std::printf("%s: %d check failures\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
