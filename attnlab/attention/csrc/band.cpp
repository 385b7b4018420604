// Sliding-window attention on the CPU: each block of query rows multiplies only the keys its window can
// reach, so a window of W costs O(Lq x (W + block)) with no masked tile wider than one block.
//
// Why it exists: the stock CPU flash kernel never skips a masked tile inside its 512-key tile, so the
// fused backend ran windows as many small kernel calls whose key blocks overlap; this kernel keeps one
// block's scores in cache and accumulates key gradients in place. attnlab/attention/band.py compiles it
// with the system C++ compiler, loads it with ctypes and checks it against the reference backend.
//
// Layout: q (B, H, Lq, D), k and v (B, Hk, Lk, D), all contiguous; H is a multiple of Hk (query head h
// reads kv head h / (H / Hk)). Query i sits at key position p = Lk - Lq + i and sees keys
// max(0, p - W + 1) <= j <= p. BLAS (sgemm_/dgemm_, column-major) is handed in as a function pointer
// taken from the BLAS torch already loaded, so nothing is linked at build time.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

template <typename T>
using gemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*,
                         const int*, const T*, const int*, const T*, T*, const int*);
using threads_local_fn = int (*)(int);

// Row-major C (M x N) = alpha op(A) op(B) + beta C, on a column-major BLAS: C^T = op(B)^T op(A)^T.
template <typename T>
struct Gemm {
  gemm_fn<T> f;
  void operator()(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
                  T beta, T* c, int ldc) const {
    const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
    f(&cb, &ca, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
  }
};

// exp for x <= 0 (scores minus their row maximum): Cody-Waite reduction and a degree-7 Taylor polynomial,
// written so the compiler vectorizes the loops that call it; relative error ~1e-7 (float rounding).
inline float exp_nonpos(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.42860676533018704e-06f;
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}
inline double exp_nonpos(double x) { return std::exp(x); }

struct Shape {
  int64_t B, H, Hk, Lq, Lk, D, W, bq;
  int64_t off() const { return Lk - Lq; }
  // Keys of the block of rows [r0, r0 + rows): [lo, hi).
  int64_t lo(int64_t r0) const { return std::max<int64_t>(0, off() + r0 - W + 1); }
  int64_t hi(int64_t r0, int64_t rows) const { return off() + r0 + rows; }
  int64_t max_keys() const { return std::min<int64_t>(Lk, bq + W - 1); }
};

// Runs task(t, scratch) for t < tasks on `threads` workers, each with its own scratch and BLAS kept
// single-threaded (the workers are the parallelism).
template <typename F>
void for_tasks(int64_t tasks, int threads, threads_local_fn local, size_t scratch, F task) {
  const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    const int before = local ? local(1) : 0;
    std::vector<char> buf(scratch);
    for (int64_t t = next++; t < tasks; t = next++) task(t, buf.data());
    if (local) local(before);
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < n; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

// Scores of one block into S (rows x nk, row stride nk), then P = exp(S - m_i) on each row's visible
// keys and 0 elsewhere. Forward (lse == nullptr): m_i is the row max, and row_lse / row_inv receive
// log-sum-exp and 1 / sum. Backward: m_i = lse[i], the total log-sum-exp handed in.
template <typename T>
void block_weights(const Shape& s, int64_t r0, int64_t rows, int64_t lo, int64_t nk, T* S, const T* lse,
                   T* row_lse, T* row_inv) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t p = s.off() + r0 + i;
    const int64_t a = std::max<int64_t>(0, p - s.W + 1) - lo, e = p - lo + 1;  // visible: [a, e)
    T* row = S + i * nk;
    T m;
    if (lse) {
      m = lse[i];
    } else {
      m = row[a];
      for (int64_t j = a + 1; j < e; ++j) m = row[j] > m ? row[j] : m;
    }
    T sum = 0;
    for (int64_t j = a; j < e; ++j) {
      const T w = exp_nonpos(row[j] - m);
      row[j] = w;
      sum += w;
    }
    std::fill(row, row + a, T(0));
    std::fill(row + e, row + nk, T(0));
    if (!lse) {
      row_lse[i] = m + std::log(sum);
      row_inv[i] = T(1) / sum;
    }
  }
}

template <typename T>
void forward(const T* q, const T* k, const T* v, T* out, T* lse, const Shape& s, T scale, int threads,
             gemm_fn<T> f, threads_local_fn local) {
  const Gemm<T> gemm{f};
  const int64_t D = s.D, g = s.H / s.Hk, nk_max = s.max_keys();
  const size_t scratch = sizeof(T) * (s.bq * nk_max + s.bq);
  // Every (batch, query head) is independent here: more tasks than kv heads balance the workers better.
  for_tasks(s.B * s.H, threads, local, scratch, [&](int64_t bh, char* buf) {
    T* S = reinterpret_cast<T*>(buf);
    T* inv = S + s.bq * nk_max;
    const int64_t kv0 = (bh / s.H * s.Hk + bh % s.H / g) * s.Lk * D;
    const T* kb = k + kv0;
    const T* vb = v + kv0;
    for (int64_t r0 = 0; r0 < s.Lq; r0 += s.bq) {
      const int64_t rows = std::min(s.bq, s.Lq - r0), lo = s.lo(r0), nk = s.hi(r0, rows) - lo;
      const T* qb = q + (bh * s.Lq + r0) * D;
      T* ob = out + (bh * s.Lq + r0) * D;
      gemm(false, true, rows, nk, D, scale, qb, D, kb + lo * D, D, T(0), S, nk);
      block_weights<T>(s, r0, rows, lo, nk, S, nullptr, lse + bh * s.Lq + r0, inv);
      gemm(false, false, rows, D, nk, T(1), S, nk, vb + lo * D, D, T(0), ob, D);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t d = 0; d < D; ++d) ob[i * D + d] *= inv[i];
    }
  });
}

// dq, dk, dv from the output gradient `dout`, the output `out` and the total log-sum-exp `lse` (which may
// include a virtual sink key: the weights are recomputed as exp(s_ij - lse_i), D_i = <dout_i, out_i>).
// dk and dv must be zero on entry; each task owns one kv head, so they are accumulated without races.
template <typename T>
void backward(const T* dout, const T* q, const T* k, const T* v, const T* out, const T* lse, T* dq, T* dk,
              T* dv, const Shape& s, T scale, int threads, gemm_fn<T> f, threads_local_fn local) {
  const Gemm<T> gemm{f};
  const int64_t D = s.D, g = s.H / s.Hk, nk_max = s.max_keys();
  const size_t scratch = sizeof(T) * (2 * s.bq * nk_max + s.bq);
  for_tasks(s.B * s.Hk, threads, local, scratch, [&](int64_t t, char* buf) {
    const int64_t b = t / s.Hk, hk = t % s.Hk;
    T* P = reinterpret_cast<T*>(buf);
    T* dS = P + s.bq * nk_max;
    T* Di = dS + s.bq * nk_max;
    const int64_t kv0 = (b * s.Hk + hk) * s.Lk * D;
    for (int64_t h = hk * g; h < (hk + 1) * g; ++h) {
      const int64_t bh = b * s.H + h;
      for (int64_t r0 = 0; r0 < s.Lq; r0 += s.bq) {
        const int64_t rows = std::min(s.bq, s.Lq - r0), lo = s.lo(r0), nk = s.hi(r0, rows) - lo;
        const int64_t at = (bh * s.Lq + r0) * D;
        const T *qb = q + at, *gb = dout + at, *ob = out + at;
        const T *kb = k + kv0 + lo * D, *vb = v + kv0 + lo * D;
        for (int64_t i = 0; i < rows; ++i) {
          T acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += gb[i * D + d] * ob[i * D + d];
          Di[i] = acc;
        }
        gemm(false, true, rows, nk, D, scale, qb, D, kb, D, T(0), P, nk);
        block_weights<T>(s, r0, rows, lo, nk, P, lse + bh * s.Lq + r0, nullptr, nullptr);
        gemm(true, false, nk, D, rows, T(1), P, nk, gb, D, T(1), dv + kv0 + lo * D, D);
        gemm(false, true, rows, nk, D, T(1), gb, D, vb, D, T(0), dS, nk);
        for (int64_t i = 0; i < rows; ++i) {
          T* ds = dS + i * nk;
          const T* p = P + i * nk;
          const T di = Di[i];
          for (int64_t j = 0; j < nk; ++j) ds[j] = p[j] * (ds[j] - di);
        }
        gemm(false, false, rows, D, nk, scale, dS, nk, kb, D, T(0), dq + at, D);
        gemm(true, false, nk, D, rows, scale, dS, nk, qb, D, T(1), dk + kv0 + lo * D, D);
      }
    }
  });
}

Shape shape(int64_t B, int64_t H, int64_t Hk, int64_t Lq, int64_t Lk, int64_t D, int64_t W, int64_t bq) {
  return Shape{B, H, Hk, Lq, Lk, D, W, bq};
}

}  // namespace

extern "C" {

void band_forward_f32(const float* q, const float* k, const float* v, float* out, float* lse, int64_t B,
                      int64_t H, int64_t Hk, int64_t Lq, int64_t Lk, int64_t D, int64_t W, int64_t bq,
                      double scale, int threads, void* gemm, void* local) {
  forward<float>(q, k, v, out, lse, shape(B, H, Hk, Lq, Lk, D, W, bq), static_cast<float>(scale), threads,
                 reinterpret_cast<gemm_fn<float>>(gemm), reinterpret_cast<threads_local_fn>(local));
}

void band_forward_f64(const double* q, const double* k, const double* v, double* out, double* lse,
                      int64_t B, int64_t H, int64_t Hk, int64_t Lq, int64_t Lk, int64_t D, int64_t W,
                      int64_t bq, double scale, int threads, void* gemm, void* local) {
  forward<double>(q, k, v, out, lse, shape(B, H, Hk, Lq, Lk, D, W, bq), scale, threads,
                  reinterpret_cast<gemm_fn<double>>(gemm), reinterpret_cast<threads_local_fn>(local));
}

void band_backward_f32(const float* dout, const float* q, const float* k, const float* v, const float* out,
                       const float* lse, float* dq, float* dk, float* dv, int64_t B, int64_t H, int64_t Hk,
                       int64_t Lq, int64_t Lk, int64_t D, int64_t W, int64_t bq, double scale, int threads,
                       void* gemm, void* local) {
  backward<float>(dout, q, k, v, out, lse, dq, dk, dv, shape(B, H, Hk, Lq, Lk, D, W, bq),
                  static_cast<float>(scale), threads, reinterpret_cast<gemm_fn<float>>(gemm),
                  reinterpret_cast<threads_local_fn>(local));
}

void band_backward_f64(const double* dout, const double* q, const double* k, const double* v,
                       const double* out, const double* lse, double* dq, double* dk, double* dv, int64_t B,
                       int64_t H, int64_t Hk, int64_t Lq, int64_t Lk, int64_t D, int64_t W, int64_t bq,
                       double scale, int threads, void* gemm, void* local) {
  backward<double>(dout, q, k, v, out, lse, dq, dk, dv, shape(B, H, Hk, Lq, Lk, D, W, bq), scale, threads,
                   reinterpret_cast<gemm_fn<double>>(gemm), reinterpret_cast<threads_local_fn>(local));
}

}  // extern "C"
