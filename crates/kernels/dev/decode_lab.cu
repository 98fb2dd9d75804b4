// Lab harness for the decode kernels (`cuda/decode.cu`): checks each kernel against a plain float64 CPU version on
// random inputs (NaN-poisoned outputs), times the weight-streaming GEMV on Mamba2-2.7B's matrices with the weights
// rotated through several copies (so L2 never holds them), times the SSM state update, and times a whole
// Mamba2-2.7B decode step (64 layers + LM head, random weights) as plain launches and replayed from a CUDA graph.
// Not part of the build:
//   nvcc -std=c++17 -O3 -lineinfo -gencode=arch=compute_90,code=sm_90 -o decode_lab crates/kernels/dev/decode_lab.cu
// and run `./decode_lab [check|time|all]`.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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
static std::vector<float> randv(size_t n, float scale = 1.f) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& e : v) e = nd(rng);
  return v;
}
static float bfr(float v) { return __bfloat162float(__float2bfloat16(v)); }
template <typename T>
static T* up(const std::vector<T>& v) {
  T* d;
  CK(cudaMalloc(&d, v.size() * sizeof(T)));
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
  float* d;
  CK(cudaMalloc(&d, n * 4));
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
  std::printf("check %-44s rel %.2e (tol %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
  return !ok;
}

// Lab variants: loads in flight per lane.
#define LAB_GEMV(B, U, R)                                                                                          \
  __global__ void __launch_bounds__(256) lab_gemv_b##B##_u##U##_r##R(const bf16* w, long long ldw, const float* x, \
                                                                     long long ldx, float* y, long long ldy,      \
                                                                     int rows, int cols) {                       \
    gemv_body<bf16, B, U, R>(w, ldw, nullptr, x, ldx, y, ldy, rows, cols);                                                  \
  }
LAB_GEMV(1, 8, 1) LAB_GEMV(1, 2, 2) LAB_GEMV(1, 4, 2) LAB_GEMV(1, 2, 4) LAB_GEMV(1, 4, 4) LAB_GEMV(8, 2, 2)
// Lab variant (measured slower than one row per warp, kept for the record): the GEMV with the work balanced
// over a persistent grid ("stream-K"): the rows x 16-byte-chunks index
// space is cut into one equal, 32-chunk aligned share per warp, so no wave of rows leaves SMs idle at the end; a
// warp adds its partial sum of each row it touches into y with atomicAdd (y zeroed beforehand; the order of the
// at most few partial sums of a row is not fixed, so the last bit can differ between runs).
template <int BATCH, int UNROLL>
__device__ __forceinline__ void gemv_sk_body(const __nv_bfloat16* __restrict__ w, long long ldw,
                                             const float* __restrict__ x, long long ldx, float* __restrict__ y,
                                             long long ldy, int rows, int cols) {
  const int lane = threadIdx.x & 31;
  const long long nwarps = static_cast<long long>(gridDim.x) * (blockDim.x >> 5);
  const long long wid = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int chunks = cols / 8;
  const long long total = static_cast<long long>(rows) * chunks;
  const long long share = ((total + nwarps - 1) / nwarps + 31) / 32 * 32;
  long long pos = wid * share;
  const long long end = pos + share < total ? pos + share : total;
  while (pos < end) {
    const int r = static_cast<int>(pos / chunks);
    const int cb = static_cast<int>(pos % chunks);
    const int ce = static_cast<int>(end - pos < chunks - cb ? cb + (end - pos) : chunks);
    const __nv_bfloat16* row = w + r * ldw;
    float acc[BATCH];
#pragma unroll
    for (int b = 0; b < BATCH; ++b) acc[b] = 0.f;
    for (int c0 = cb + lane; c0 < ce; c0 += 32 * UNROLL) {
      uint4 u[UNROLL];
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        const int c = c0 + 32 * k;
        u[k] = c < ce ? ld_stream(row + 8 * c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int k = 0; k < UNROLL; ++k) {
        const int c = c0 + 32 * k;
        if (c >= ce) break;
        float wf[8];
        chunk_to_f32(u[k], wf);
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
          const float4 xa = __ldg(reinterpret_cast<const float4*>(x + b * ldx + 8 * c));
          const float4 xb = __ldg(reinterpret_cast<const float4*>(x + b * ldx + 8 * c + 4));
          acc[b] += wf[0] * xa.x + wf[1] * xa.y + wf[2] * xa.z + wf[3] * xa.w + wf[4] * xb.x + wf[5] * xb.y +
                    wf[6] * xb.z + wf[7] * xb.w;
        }
      }
    }
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      const float sum = warp_sum(acc[b]);
      if (lane == 0) atomicAdd(y + b * ldy + r, sum);
    }
    pos += ce - cb;
  }
}

// Lab variant: a persistent grid whose warps stream their rows (r = warp, warp + warps, ...) as one sequence of
// slices of UNROLL chunks per lane, the next slice's loads (across row ends too) in flight while the current
// one is summed, so the bytes in flight per warp never drop to zero between rows.
template <int BATCH, int UNROLL>
__device__ __forceinline__ void gemv_pipe_body(const bf16* __restrict__ w, long long ldw, const float* __restrict__ x,
                                               long long ldx, float* __restrict__ y, long long ldy, int rows,
                                               int cols) {
  const int lane = threadIdx.x & 31;
  const int nw = gridDim.x * (blockDim.x >> 5);
  const int gw = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int chunks = cols / 8;
  const int spr = (chunks + 32 * UNROLL - 1) / (32 * UNROLL);  // slices per row
  const int my_rows = gw < rows ? (rows - gw + nw - 1) / nw : 0;
  const int total = my_rows * spr;
  auto load = [&](int i, uint4 (&u)[UNROLL]) {
    const int row = gw + (i / spr) * nw, c0 = (i % spr) * 32 * UNROLL + lane;
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int c = c0 + 32 * k;
      u[k] = c < chunks ? ld_stream(w + row * ldw + 8 * c) : make_uint4(0, 0, 0, 0);
    }
  };
  float acc[BATCH];
#pragma unroll
  for (int b = 0; b < BATCH; ++b) acc[b] = 0.f;
  auto consume = [&](int i, const uint4 (&u)[UNROLL]) {
    const int row = gw + (i / spr) * nw, c0 = (i % spr) * 32 * UNROLL + lane;
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int c = c0 + 32 * k;
      if (c < chunks) {
        float wf[8];
        chunk_to_f32(u[k], wf);
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
          const float4 xa = __ldg(reinterpret_cast<const float4*>(x + b * ldx + 8 * c));
          const float4 xb = __ldg(reinterpret_cast<const float4*>(x + b * ldx + 8 * c + 4));
          acc[b] += wf[0] * xa.x + wf[1] * xa.y + wf[2] * xa.z + wf[3] * xa.w + wf[4] * xb.x + wf[5] * xb.y +
                    wf[6] * xb.z + wf[7] * xb.w;
        }
      }
    }
    if (i % spr == spr - 1) {
#pragma unroll
      for (int b = 0; b < BATCH; ++b) {
        const float s = warp_sum(acc[b]);
        if (lane == 0) y[b * ldy + row] = s;
        acc[b] = 0.f;
      }
    }
  };
  uint4 ua[UNROLL], ub[UNROLL];
  if (total > 0) load(0, ua);
  for (int i = 0; i < total; i += 2) {
    if (i + 1 < total) load(i + 1, ub);
    consume(i, ua);
    if (i + 1 >= total) break;
    if (i + 2 < total) load(i + 2, ua);
    consume(i + 1, ub);
  }
}
#define LAB_GEMV_PIPE(B, U)                                                                                      \
  __global__ void __launch_bounds__(256) lab_gemv_pipe_b##B##_u##U(const bf16* w, long long ldw, const float* x,\
                                                                   long long ldx, float* y, long long ldy,     \
                                                                   int rows, int cols) {                       \
    gemv_pipe_body<B, U>(w, ldw, x, ldx, y, ldy, rows, cols);                                                   \
  }
LAB_GEMV_PIPE(1, 4) LAB_GEMV_PIPE(1, 2) LAB_GEMV_PIPE(8, 2)
// 8 CTAs of 256 per SM (register cap 32).
__global__ void __launch_bounds__(256, 8) lab_gemv_b1_occ8(const bf16* w, long long ldw, const float* x,
                                                          long long ldx, float* y, long long ldy, int rows, int cols) {
  gemv_body<bf16, 1, 4, 1>(w, ldw, nullptr, x, ldx, y, ldy, rows, cols);
}
#define LAB_GEMV_SK(B, U)                                                                                        \
  __global__ void __launch_bounds__(256) lab_gemv_sk_b##B##_u##U(const bf16* w, long long ldw, const float* x,  \
                                                                 long long ldx, float* y, long long ldy,       \
                                                                 int rows, int cols) {                         \
    gemv_sk_body<B, U>(w, ldw, x, ldx, y, ldy, rows, cols);                                                     \
  }
LAB_GEMV_SK(1, 4) LAB_GEMV_SK(1, 8) LAB_GEMV_SK(8, 2)
typedef void (*GemvFn)(const bf16*, long long, const float*, long long, float*, long long, int, int);
// Stream-K launch: y zeroed, then a persistent grid of `per_sm` CTAs per SM.
static void launch_sk(GemvFn fn, int per_sm, const bf16* w, long long ldw, const float* x, long long ldx, float* y,
                      long long ldy, int rows, int cols, int batch, cudaStream_t st = 0) {
  CK(cudaMemsetAsync(y, 0, size_t(batch) * ldy * 4, st));
  fn<<<132 * per_sm, 256, 0, st>>>(w, ldw, x, ldx, y, ldy, rows, cols);
}

static void launch_gemv(int batch, const bf16* w, long long ldw, const float* x, long long ldx, float* y,
                        long long ldy, int rows, int cols, cudaStream_t st = 0) {
  const int grid = (rows + 7) / 8;
  switch (batch) {
    case 1: gemv_bf16_b1<<<grid, 256, 0, st>>>(w, ldw, nullptr, x, ldx, y, ldy, rows, cols); break;
    case 2: gemv_bf16_b2<<<grid, 256, 0, st>>>(w, ldw, nullptr, x, ldx, y, ldy, rows, cols); break;
    case 4: gemv_bf16_b4<<<grid, 256, 0, st>>>(w, ldw, nullptr, x, ldx, y, ldy, rows, cols); break;
    case 8: gemv_bf16_b8<<<grid, 256, 0, st>>>(w, ldw, nullptr, x, ldx, y, ldy, rows, cols); break;
    default: std::fprintf(stderr, "batch %d\n", batch); std::exit(2);
  }
}

static int check_all() {
  int fails = 0;
  // GEMV: every batch size, a ragged column count (a multiple of 8, not of 256), more rows than one grid pass.
  for (int batch : {1, 2, 4, 8}) {
    const int rows = 3001, cols = 2568;
    std::vector<float> wf = randv(size_t(rows) * cols);
    std::vector<bf16> wb(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) wb[i] = __float2bfloat16(wf[i]), wf[i] = bfr(wf[i]);
    std::vector<float> x = randv(size_t(batch) * cols);
    std::vector<double> want(size_t(batch) * rows);
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < rows; ++r) {
        double s = 0;
        for (int c = 0; c < cols; ++c) s += double(wf[size_t(r) * cols + c]) * x[size_t(b) * cols + c];
        want[size_t(b) * rows + r] = s;
      }
    bf16* dw = up(wb);
    float* dx = up(x);
    float* dy = poisoned(want.size());
    launch_gemv(batch, dw, cols, dx, cols, dy, rows, rows, cols);
    CK(cudaDeviceSynchronize());
    char name[64];
    std::snprintf(name, sizeof name, "gemv_bf16 b%d %dx%d", batch, rows, cols);
    fails += report(name, rel_err(down(dy, want.size()), want), 1e-5);
    if (batch == 1 || batch == 8) {  // the pipelined persistent variant on the same problem
      CK(cudaMemset(dy, 0xff, want.size() * 4));
      (batch == 1 ? lab_gemv_pipe_b1_u4 : lab_gemv_pipe_b8_u2)<<<132 * 4, 256>>>(dw, cols, dx, cols, dy, rows, rows, cols);
      CK(cudaDeviceSynchronize());
      std::snprintf(name, sizeof name, "gemv pipelined b%d %dx%d", batch, rows, cols);
      fails += report(name, rel_err(down(dy, want.size()), want), 1e-5);
    }
    if (batch == 1 || batch == 8) {  // the stream-K variant on the same problem
      launch_sk(batch == 1 ? lab_gemv_sk_b1_u4 : lab_gemv_sk_b8_u2, 4, dw, cols, dx, cols, dy, rows, rows, cols, batch);
      CK(cudaDeviceSynchronize());
      std::snprintf(name, sizeof name, "gemv stream-K b%d %dx%d", batch, rows, cols);
      fails += report(name, rel_err(down(dy, want.size()), want), 1e-5);
    }
    cudaFree(dw), cudaFree(dx), cudaFree(dy);
  }
  // add_rmsnorm, with and without the addend.
  for (int with_x : {0, 1}) {
    const int batch = 3, width = 2560;
    const float eps = 1e-5f;
    std::vector<float> r = randv(size_t(batch) * width), x = randv(r.size()), w = randv(width);
    std::vector<double> want_r(r.size()), want_h(r.size());
    for (int b = 0; b < batch; ++b) {
      double ss = 0;
      for (int i = 0; i < width; ++i) {
        const double v = double(r[b * width + i]) + (with_x ? x[b * width + i] : 0.0);
        want_r[b * width + i] = v;
        ss += v * v;
      }
      const double inv = 1.0 / std::sqrt(ss / width + eps);
      for (int i = 0; i < width; ++i) want_h[b * width + i] = want_r[b * width + i] * inv * w[i];
    }
    float *dr = up(r), *dx = up(x), *dw = up(w), *dh = poisoned(r.size());
    add_rmsnorm<<<batch, 256>>>(dr, with_x ? dx : nullptr, dw, dh, width, width, eps);
    CK(cudaDeviceSynchronize());
    fails += report(with_x ? "add_rmsnorm residual (with x)" : "add_rmsnorm residual (no x)",
                    rel_err(down(dr, r.size()), want_r), 1e-6);
    fails += report(with_x ? "add_rmsnorm h (with x)" : "add_rmsnorm h (no x)", rel_err(down(dh, r.size()), want_h),
                    1e-5);
    cudaFree(dr), cudaFree(dx), cudaFree(dw), cudaFree(dh);
  }
  // conv_step: three tokens in a row (the window rolls), bias and no bias; the window is [batch, channels, K].
  for (int with_bias : {0, 1}) {
    const int batch = 2, channels = 700, k = 4, ld_in = 900;
    std::vector<float> win = randv(size_t(batch) * channels * k), w = randv(size_t(channels) * k),
                       bias = randv(channels);
    std::vector<double> wwin(win.begin(), win.end());
    float *dwin = up(win), *dw = up(w), *db = up(bias), *dout = poisoned(size_t(batch) * channels);
    double err = 0;
    for (int tok = 0; tok < 3; ++tok) {
      std::vector<float> in = randv(size_t(batch) * ld_in);
      std::vector<double> want(size_t(batch) * channels);
      for (int b = 0; b < batch; ++b)
        for (int c = 0; c < channels; ++c) {
          double* wn = &wwin[(size_t(b) * channels + c) * k];
          for (int i = 0; i + 1 < k; ++i) wn[i] = wn[i + 1];
          wn[k - 1] = in[b * ld_in + c];
          double acc = with_bias ? bias[c] : 0.0;
          for (int i = 0; i < k; ++i) acc += double(w[c * k + i]) * wn[i];
          want[b * channels + c] = acc / (1.0 + std::exp(-acc));
        }
      float* din = up(in);
      conv_step<<<dim3((channels + 255) / 256, batch), 256>>>(din, ld_in, dwin, dw, with_bias ? db : nullptr, dout,
                                                             channels, channels, k);
      CK(cudaDeviceSynchronize());
      err = std::max(err, rel_err(down(dout, want.size()), want));
      cudaFree(din);
    }
    const std::vector<float> gw = down(dwin, win.size());
    err = std::max(err, rel_err(gw, wwin));
    fails += report(with_bias ? "conv_step x3 tokens (bias)" : "conv_step x3 tokens (no bias)", err, 1e-5);
    cudaFree(dwin), cudaFree(dw), cudaFree(db), cudaFree(dout);
  }
  // ssm_step: head dim 64 and 128, state 64 and 128, groups, clamp; two tokens in a row.
  struct S { int batch, heads, groups, p, n; float lo, hi; };
  for (const S s : {S{2, 8, 2, 64, 128, 0.f, INFINITY}, S{3, 6, 3, 64, 64, 0.f, INFINITY},
                    S{1, 4, 1, 128, 128, 0.01f, 0.05f}}) {
    const int xw = s.heads * s.p, width = xw + 2 * s.groups * s.n, ld_xbc = width + 4, ld_dt = s.heads + 3;
    std::vector<float> a(s.heads), bias = randv(s.heads), d = randv(s.heads);
    for (auto& e : a) e = -std::exp(std::uniform_real_distribution<float>(0.f, 2.5f)(rng));
    std::vector<float> st = randv(size_t(s.batch) * s.heads * s.p * s.n);
    std::vector<double> wst(st.begin(), st.end());
    float *dst = up(st), *da = up(a), *dbias = up(bias), *dd = up(d);
    float* dy = poisoned(size_t(s.batch) * xw);
    double err = 0;
    for (int tok = 0; tok < 2; ++tok) {
      std::vector<float> xbc = randv(size_t(s.batch) * ld_xbc), dt = randv(size_t(s.batch) * ld_dt);
      std::vector<double> want(size_t(s.batch) * xw);
      for (int b = 0; b < s.batch; ++b)
        for (int h = 0; h < s.heads; ++h) {
          const int g = h / (s.heads / s.groups);
          double v = double(dt[b * ld_dt + h]) + bias[h];
          v = v > 20 ? v : std::log1p(std::exp(v));
          v = std::min(std::max(v, double(s.lo)), double(s.hi));
          const double dA = std::exp(v * a[h]);
          for (int p = 0; p < s.p; ++p) {
            const double xp = xbc[b * ld_xbc + h * s.p + p];
            double acc = 0;
            for (int n = 0; n < s.n; ++n) {
              double& e = wst[((size_t(b) * s.heads + h) * s.p + p) * s.n + n];
              e = e * dA + v * xp * xbc[b * ld_xbc + xw + g * s.n + n];
              acc += e * xbc[b * ld_xbc + xw + s.groups * s.n + g * s.n + n];
            }
            want[b * xw + h * s.p + p] = acc + d[h] * xp;
          }
        }
      float *dx = up(xbc), *ddt = up(dt);
      const dim3 grid(s.heads, s.batch), block(s.p * 4);
      if (s.n == 128)
        ssm_step_n128<<<grid, block>>>(dx, ld_xbc, ddt, ld_dt, da, dbias, dd, dst, dy, xw, s.heads, s.groups, s.p,
                                       s.lo, s.hi);
      else
        ssm_step_n64<<<grid, block>>>(dx, ld_xbc, ddt, ld_dt, da, dbias, dd, dst, dy, xw, s.heads, s.groups, s.p,
                                      s.lo, s.hi);
      CK(cudaDeviceSynchronize());
      err = std::max(err, rel_err(down(dy, want.size()), want));
      cudaFree(dx), cudaFree(ddt);
    }
    err = std::max(err, rel_err(down(dst, st.size()), wst));
    char name[64];
    std::snprintf(name, sizeof name, "ssm_step b%d h%d g%d p%d n%d x2 tokens", s.batch, s.heads, s.groups, s.p, s.n);
    fails += report(name, err, 1e-5);
    cudaFree(dst), cudaFree(da), cudaFree(dbias), cudaFree(dd), cudaFree(dy);
  }
  // gated_rmsnorm over groups.
  {
    const int batch = 2, width = 1024, group = 256, ld = 1030;
    const float eps = 1e-5f;
    std::vector<float> y = randv(size_t(batch) * ld), z = randv(size_t(batch) * ld), w = randv(width);
    std::vector<double> want(size_t(batch) * width);
    for (int b = 0; b < batch; ++b)
      for (int g0 = 0; g0 < width; g0 += group) {
        double ss = 0;
        for (int i = g0; i < g0 + group; ++i) {
          const double zz = z[b * ld + i], v = y[b * ld + i] * zz / (1 + std::exp(-zz));
          ss += v * v;
        }
        const double inv = 1 / std::sqrt(ss / group + eps);
        for (int i = g0; i < g0 + group; ++i) {
          const double zz = z[b * ld + i], v = y[b * ld + i] * zz / (1 + std::exp(-zz));
          want[b * width + i] = v * inv * w[i];
        }
      }
    float *dy = up(y), *dz = up(z), *dw = up(w), *dout = poisoned(want.size());
    gated_rmsnorm<<<dim3(width / group, batch), 256>>>(dy, ld, dz, ld, dw, dout, width, group, eps);
    CK(cudaDeviceSynchronize());
    fails += report("gated_rmsnorm b2 groups of 256", rel_err(down(dout, want.size()), want), 1e-5);
    cudaFree(dy), cudaFree(dz), cudaFree(dw), cudaFree(dout);
  }
  return fails;
}

static float median_ms(const std::function<void()>& f, int iters = 20) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) f();
  CK(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < iters; ++i) {
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

// Mamba2-2.7B: d_model 2560, d_inner 5120, 80 heads of 64, state 128, 1 group, conv 4, 64 layers, vocab 50288.
constexpr int D = 2560, DI = 5120, H = 80, P = 64, N = 128, G = 1, K = 4, LAYERS = 64, VOCAB = 50288;
constexpr int CONV = DI + 2 * G * N, IN_ROWS = 2 * DI + 2 * G * N + H;

static void time_gemv() {
  struct M { const char* name; int rows, cols; };
  const int copies = 4;  // rotated per call: 4 x the largest matrix is past the 50 MB L2
  for (const M m : {M{"in_proj 10576x2560", IN_ROWS, D}, M{"out_proj 2560x5120", D, DI}, M{"lm_head 50288x2560", VOCAB, D}}) {
    std::vector<bf16*> ws(copies);
    for (auto& w : ws) {
      CK(cudaMalloc(&w, size_t(m.rows) * m.cols * 2));
      CK(cudaMemset(w, 0x3c, size_t(m.rows) * m.cols * 2));
    }
    float *x, *y;
    CK(cudaMalloc(&x, size_t(8) * m.cols * 4));
    CK(cudaMemset(x, 0, size_t(8) * m.cols * 4));
    CK(cudaMalloc(&y, size_t(8) * m.rows * 4));
    const double bytes = double(m.rows) * m.cols * 2;
    for (int batch : {1, 8}) {
      int i = 0;
      const float ms = median_ms([&] { launch_gemv(batch, ws[i++ % copies], m.cols, x, m.cols, y, m.rows, m.rows, m.cols); });
      std::printf("time gemv %-20s b%d u4  median %.2f us  %.2f TB/s of weights\n", m.name, batch, ms * 1e3,
                  bytes / (ms * 1e-3) / 1e12);
    }
    typedef void (*G)(const bf16*, long long, const float*, long long, float*, long long, int, int);
    const struct { const char* name; G fn; int rpw; } vs[] = {
        {"b1 u8 r1", lab_gemv_b1_u8_r1, 1}, {"b1 u2 r2", lab_gemv_b1_u2_r2, 2}, {"b1 u4 r2", lab_gemv_b1_u4_r2, 2},
        {"b1 u2 r4", lab_gemv_b1_u2_r4, 4}, {"b1 u4 r4", lab_gemv_b1_u4_r4, 4}, {"b8 u2 r2", lab_gemv_b8_u2_r2, 2}};
    {
      int i = 0;
      const int grid = (m.rows + 7) / 8;
      const float ms = median_ms([&] { lab_gemv_b1_occ8<<<grid, 256>>>(ws[i++ % copies], m.cols, x, m.cols, y, m.rows, m.rows, m.cols); });
      std::printf("time gemv %-20s %-8s  median %.2f us  %.2f TB/s of weights\n", m.name, "b1 occ8", ms * 1e3,
                  bytes / (ms * 1e-3) / 1e12);
    }
    const struct { const char* name; GemvFn fn; int batch, per_sm; } sks[] = {
        {"sk b1 u4 x6", lab_gemv_sk_b1_u4, 1, 6}, {"sk b1 u8 x4", lab_gemv_sk_b1_u8, 1, 4},
        {"sk b1 u4 x4", lab_gemv_sk_b1_u4, 1, 4}, {"sk b8 u2 x4", lab_gemv_sk_b8_u2, 8, 4}};
    const struct { const char* name; GemvFn fn; int batch, per_sm; } pipes[] = {
        {"pipe b1 u4 x4", lab_gemv_pipe_b1_u4, 1, 4}, {"pipe b1 u4 x6", lab_gemv_pipe_b1_u4, 1, 6},
        {"pipe b1 u2 x8", lab_gemv_pipe_b1_u2, 1, 8}, {"pipe b8 u2 x4", lab_gemv_pipe_b8_u2, 8, 4}};
    for (const auto& v : pipes) {
      int i = 0;
      const float ms = median_ms([&] { v.fn<<<132 * v.per_sm, 256>>>(ws[i++ % copies], m.cols, x, m.cols, y, m.rows, m.rows, m.cols); });
      std::printf("time gemv %-20s %-13s  median %.2f us  %.2f TB/s of weights\n", m.name, v.name, ms * 1e3,
                  bytes / (ms * 1e-3) / 1e12);
    }
    for (const auto& v : sks) {
      int i = 0;
      const float ms = median_ms([&] { launch_sk(v.fn, v.per_sm, ws[i++ % copies], m.cols, x, m.cols, y, m.rows, m.rows, m.cols, v.batch); });
      std::printf("time gemv %-20s %-8s  median %.2f us  %.2f TB/s of weights (memset included)\n", m.name, v.name,
                  ms * 1e3, bytes / (ms * 1e-3) / 1e12);
    }
    for (const auto& v : vs) {
      int i = 0;
      const int grid = (m.rows + 8 * v.rpw - 1) / (8 * v.rpw);
      const float ms = median_ms([&] { v.fn<<<grid, 256>>>(ws[i++ % copies], m.cols, x, m.cols, y, m.rows, m.rows, m.cols); });
      std::printf("time gemv %-20s %-6s  median %.2f us  %.2f TB/s of weights\n", m.name, v.name, ms * 1e3,
                  bytes / (ms * 1e-3) / 1e12);
    }
    for (auto w : ws) cudaFree(w);
    cudaFree(x), cudaFree(y);
  }
}

static void time_ssm_step() {
  for (int batch : {1, 64}) {
    float *xbc, *dt, *a, *st, *y;
    CK(cudaMalloc(&xbc, size_t(batch) * CONV * 4));
    CK(cudaMemset(xbc, 0, size_t(batch) * CONV * 4));
    CK(cudaMalloc(&dt, size_t(batch) * H * 4));
    CK(cudaMemset(dt, 0, size_t(batch) * H * 4));
    CK(cudaMalloc(&a, H * 4));
    CK(cudaMemset(a, 0, H * 4));
    const size_t st_elems = size_t(batch) * H * P * N;
    CK(cudaMalloc(&st, st_elems * 4 * 4));  // four states rotated, as four layers
    CK(cudaMemset(st, 0, st_elems * 4 * 4));
    CK(cudaMalloc(&y, size_t(batch) * DI * 4));
    int i = 0;
    const float ms = median_ms([&] {
      ssm_step_n128<<<dim3(H, batch), P * 4>>>(xbc, CONV, dt, H, a, nullptr, nullptr, st + (i++ % 4) * st_elems, y, DI,
                                               H, G, P, 0.f, INFINITY);
    });
    std::printf("time ssm_step 2.7B layer b%-3d median %.2f us  %.2f TB/s of state (read + write)\n", batch, ms * 1e3,
                2.0 * st_elems * 4 / (ms * 1e-3) / 1e12);
    cudaFree(xbc), cudaFree(dt), cudaFree(a), cudaFree(st), cudaFree(y);
  }
}

// A whole decode step of Mamba2-2.7B with random weights: the kernels of every layer in order, then the final
// norm and the LM head.
static void time_model_step() {
  const int bmax = 8;
  std::vector<bf16*> w_in(LAYERS), w_out(LAYERS);
  for (int l = 0; l < LAYERS; ++l) {
    CK(cudaMalloc(&w_in[l], size_t(IN_ROWS) * D * 2));
    CK(cudaMemset(w_in[l], 0, size_t(IN_ROWS) * D * 2));
    CK(cudaMalloc(&w_out[l], size_t(D) * DI * 2));
    CK(cudaMemset(w_out[l], 0, size_t(D) * DI * 2));
  }
  bf16* w_head;
  CK(cudaMalloc(&w_head, size_t(VOCAB) * D * 2));
  CK(cudaMemset(w_head, 0, size_t(VOCAB) * D * 2));
  auto zeros = [](size_t n) {
    float* p;
    CK(cudaMalloc(&p, n * 4));
    CK(cudaMemset(p, 0, n * 4));
    return p;
  };
  float *norm_w = zeros(D), *gnorm_w = zeros(DI), *conv_w = zeros(size_t(CONV) * K), *conv_b = zeros(CONV);
  float *a = zeros(H), *dtb = zeros(H), *dd = zeros(H);
  float *resid = zeros(size_t(bmax) * D), *hbuf = zeros(size_t(bmax) * D), *proj = zeros(size_t(bmax) * IN_ROWS);
  float *xbc = zeros(size_t(bmax) * CONV), *y = zeros(size_t(bmax) * DI), *yn = zeros(size_t(bmax) * DI);
  float *out = zeros(size_t(bmax) * D), *logits = zeros(size_t(bmax) * VOCAB);
  float* win = zeros(size_t(LAYERS) * bmax * CONV * K);
  float* st = zeros(size_t(LAYERS) * bmax * H * P * N);
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int sk : {0, 1})
  for (int batch : {1, 8}) {
    // sk: the stream-K GEMV (y zeroed by a memset node, then a persistent grid) for every matrix.
    auto gemv = [&](const bf16* w, const float* x, float* y, int rows, int cols, cudaStream_t s) {
      if (sk)
        launch_sk(batch == 1 ? lab_gemv_sk_b1_u4 : lab_gemv_sk_b8_u2, 4, w, cols, x, cols, y, rows, rows, cols, batch, s);
      else
        launch_gemv(batch, w, cols, x, cols, y, rows, rows, cols, s);
    };
    auto step = [&](cudaStream_t s) {
      for (int l = 0; l < LAYERS; ++l) {
        add_rmsnorm<<<batch, 256, 0, s>>>(resid, l ? out : nullptr, norm_w, hbuf, D, D, 1e-5f);
        gemv(w_in[l], hbuf, proj, IN_ROWS, D, s);
        conv_step<<<dim3((CONV + 255) / 256, batch), 256, 0, s>>>(proj + DI, IN_ROWS,
                                                                  win + size_t(l) * bmax * CONV * K, conv_w,
                                                                  conv_b, xbc, CONV, CONV, K);
        ssm_step_n128<<<dim3(H, batch), P * 4, 0, s>>>(xbc, CONV, proj + DI + CONV, IN_ROWS, a, dtb, dd,
                                                       st + size_t(l) * bmax * H * P * N, y, DI, H, G, P, 0.f,
                                                       INFINITY);
        gated_rmsnorm<<<dim3(DI / (DI / G), batch), 256, 0, s>>>(y, DI, proj, IN_ROWS, gnorm_w, yn, DI, DI / G,
                                                                 1e-5f);
        gemv(w_out[l], yn, out, D, DI, s);
      }
      add_rmsnorm<<<batch, 256, 0, s>>>(resid, out, norm_w, hbuf, D, D, 1e-5f);
      gemv(w_head, hbuf, logits, VOCAB, D, s);
    };
    const float plain = median_ms([&] { step(0); }, 10);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    step(stream);
    CK(cudaStreamEndCapture(stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < 23; ++i) {
      CK(cudaEventRecord(e0, stream));
      CK(cudaGraphLaunch(exec, stream));
      CK(cudaEventRecord(e1, stream));
      CK(cudaEventSynchronize(e1));
      float v;
      CK(cudaEventElapsedTime(&v, e0, e1));
      if (i >= 3) ms.push_back(v);
    }
    std::sort(ms.begin(), ms.end());
    const float graphed = ms[ms.size() / 2];
    const double weight_bytes = double(LAYERS) * (double(IN_ROWS) * D + double(D) * DI) * 2 + double(VOCAB) * D * 2;
    const double state_bytes = 2.0 * LAYERS * batch * H * P * N * 4;
    std::printf(
        "time 2.7B decode step %s b%d: plain launches %.3f ms, CUDA graph %.3f ms = %.0f tok/s per sequence, %.0f tok/s "
        "in all; weights + state %.2f GB -> %.2f TB/s\n",
        sk ? "stream-K" : "row/warp", batch, plain, graphed, 1e3 / graphed, batch * 1e3 / graphed, (weight_bytes + state_bytes) / 1e9,
        (weight_bytes + state_bytes) / (graphed * 1e-3) / 1e12);
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
  }
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s sm_%d%d, %d SMs, L2 %d MB\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  int fails = 0;
  if (mode == "check" || mode == "all") fails = check_all();
  if (mode == "prof") {  // a few launches for ncu: the in_proj GEMV at batch 1, the SSM update at batch 64
    bf16* w;
    float *x, *y, *xbc, *dt, *a, *st, *yy;
    CK(cudaMalloc(&w, size_t(IN_ROWS) * D * 2));
    CK(cudaMalloc(&x, D * 4));
    CK(cudaMalloc(&y, IN_ROWS * 4));
    CK(cudaMemset(w, 0, size_t(IN_ROWS) * D * 2));
    CK(cudaMemset(x, 0, D * 4));
    for (int i = 0; i < 3; ++i) launch_gemv(1, w, D, x, D, y, IN_ROWS, IN_ROWS, D);
    const int batch = 64;
    CK(cudaMalloc(&xbc, size_t(batch) * CONV * 4));
    CK(cudaMalloc(&dt, size_t(batch) * H * 4));
    CK(cudaMalloc(&a, H * 4));
    CK(cudaMalloc(&st, size_t(batch) * H * P * N * 4));
    CK(cudaMalloc(&yy, size_t(batch) * DI * 4));
    CK(cudaMemset(xbc, 0, size_t(batch) * CONV * 4));
    CK(cudaMemset(dt, 0, size_t(batch) * H * 4));
    CK(cudaMemset(a, 0, H * 4));
    CK(cudaMemset(st, 0, size_t(batch) * H * P * N * 4));
    for (int i = 0; i < 3; ++i)
      ssm_step_n128<<<dim3(H, batch), P * 4>>>(xbc, CONV, dt, H, a, nullptr, nullptr, st, yy, DI, H, G, P, 0.f, INFINITY);
    CK(cudaDeviceSynchronize());
  }
  if (mode == "time" || mode == "all") {
    time_gemv();
    time_ssm_step();
    time_model_step();
  }
  std::printf("%s: %d check failures\n", fails ? "FAIL" : "PASS", fails);
  return fails ? 1 : 0;
}
