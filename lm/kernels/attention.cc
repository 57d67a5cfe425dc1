// Fused causal self-attention for XLA:CPU, forward and backward, as XLA FFI handlers.
//
// Why: on CPU the attention core ran as separate library calls (logits GEMM, softmax,
// PV GEMM and four backward GEMMs) with [B, L, H, K] <-> [B, H, L, K] layout copies
// around them, at about 110 GFLOP/s against a ~480 GFLOP/s matmul peak (BENCHMARKS.md).
// Here one work item is a batch row (or a range of its kv heads): its q, k, v rows are
// read from the fused [B, L, H + 2G, K] projection in one streaming pass, rotated (RoPE)
// and scaled into head-major cache-resident buffers, and every product is a
// register-blocked GEMM on them, so no
// layout copy touches memory and causal key blocks above the diagonal are skipped.
//
// Layouts (row-major):
//   qkv   [B, L, N, K]  N = H + 2G: query heads, then key heads, then value heads
//   mask  [B, L, S]     uint8, nonzero = the query may attend the key (S == L)
//   cos, sin [B, L, K/2] rotate-half RoPE tables (lm/rope.py), or empty (no RoPE)
//   out   [B, L, H, K]
//   probs [B, H, L, S]  the softmax, saved for the backward (empty: not saved); with
//                       causal, entries 16 or more keys past a row's prefix are unset
//   dqkv  [B, L, N, K]
// Query rows that see no key get zero probabilities and a zero output, as the XLA path.
//
// Built by lm/kernels/build.py with -O3 -march=native; the GEMM uses GCC vector
// extensions, 16 floats per vector with AVX-512 and 8 otherwise.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <immintrin.h>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kVL = 16;  // floats per vector
constexpr int kMR = 6;   // rows per micro-tile
constexpr int kNV = 4;   // vectors per micro-tile row: 6 x 4 accumulators of 32 registers
#else
constexpr int kVL = 8;
constexpr int kMR = 6;
constexpr int kNV = 2;  // 6 x 2 accumulators of 16 registers
#endif

typedef float vf __attribute__((vector_size(kVL * 4)));
typedef float vf_u __attribute__((vector_size(kVL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(kVL * 4)));
typedef uint8_t vu8 __attribute__((vector_size(kVL)));

inline vf load(const float* p) { return *reinterpret_cast<const vf_u*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_u*>(p) = v; }
inline vf splat(float x) { return x - vf{}; }  // x - 0 == x for every x, so no add is emitted

// C[m, 0:NV*VL] (+)= sum_k A(m, k) B[k, 0:NV*VL], A(m, k) = a[m * a_rs + k * a_cs].
template <int MR, int NV>
inline void micro_tile(int64_t kc, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                       int64_t b_rs, float* c, int64_t c_rs, bool accumulate) {
  vf acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = accumulate ? load(c + m * c_rs + v * kVL) : vf{};
  for (int64_t k = 0; k < kc; ++k) {
    const float* brow = b + k * b_rs;
    vf bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(brow + v * kVL);
    const float* ak = a + k * a_cs;
    for (int m = 0; m < MR; ++m) {
      vf av = splat(ak[m * a_rs]);
      for (int v = 0; v < NV; ++v) acc[m][v] += av * bv[v];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) store(c + m * c_rs + v * kVL, acc[m][v]);
}

using TileFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                        int64_t, bool);

template <int MR>
constexpr TileFn tile_for(int nv) {
  return nv == 1 ? micro_tile<MR, 1> : nv == 2 ? micro_tile<MR, (kNV >= 2 ? 2 : 1)>
       : nv == 3 ? micro_tile<MR, (kNV >= 3 ? 3 : 1)> : micro_tile<MR, kNV>;
}

TileFn tile(int mr, int nv) {
  switch (mr) {
    case 1: return tile_for<1>(nv);
    case 2: return tile_for<2>(nv);
    case 3: return tile_for<3>(nv);
    case 4: return tile_for<(kMR >= 4 ? 4 : 1)>(nv);
    case 5: return tile_for<(kMR >= 5 ? 5 : 1)>(nv);
    default: return tile_for<kMR>(nv);
  }
}

// C[M, N] (+)= A[M, Kd] B[Kd, N]; N a multiple of kVL. Column panels outermost, so a
// [Kd, NV * VL] panel of B stays in L1 across the row tiles.
void gemm(int64_t M, int64_t N, int64_t Kd, const float* a, int64_t a_rs, int64_t a_cs,
          const float* b, int64_t b_rs, float* c, int64_t c_rs, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += kNV * kVL) {
    int nv = static_cast<int>(std::min<int64_t>(kNV, (N - n0) / kVL));
    for (int64_t m0 = 0; m0 < M; m0 += kMR) {
      int mr = static_cast<int>(std::min<int64_t>(kMR, M - m0));
      tile(mr, nv)(Kd, a + m0 * a_rs, a_rs, a_cs, b + n0, b_rs, c + m0 * c_rs + n0, c_rs,
                   accumulate);
    }
  }
}

// exp(x) for x <= 0 (arguments of the softmax), about 1 ulp: 2^n * p(r), r = x - n ln 2.
inline vf exp_nonpositive(vf x) {
  x = x > splat(-87.0f) ? x : splat(-87.0f);
  vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// -1 in the lanes whose mask byte is nonzero (the query may attend the key), else 0.
inline vi visible(const uint8_t* m) {
#if defined(__AVX512F__)
  __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m));
  vi ints = reinterpret_cast<vi>(_mm512_cvtepu8_epi32(bytes));
#elif defined(__AVX2__)
  __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m));
  vi ints = reinterpret_cast<vi>(_mm256_cvtepu8_epi32(bytes));
#else
  vi ints;
  for (int i = 0; i < kVL; ++i) ints[i] = m[i];
#endif
  return ints != 0;
}

#if defined(__AVX512F__)
inline float hmax(vf v) { return _mm512_reduce_max_ps(reinterpret_cast<__m512>(v)); }
inline float hsum(vf v) { return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v)); }
#else
inline float hmax(vf v) {
  float r = v[0];
  for (int i = 1; i < kVL; ++i) r = std::max(r, v[i]);
  return r;
}

inline float hsum(vf v) {
  float r = 0.0f;
  for (int i = 0; i < kVL; ++i) r += v[i];
  return r;
}
#endif

// p[0:n] = softmax of the logits p[0:n] over the keys the mask allows; zeros if none.
void masked_softmax(float* p, const uint8_t* mask, int64_t n) {
  const vf neg_inf = splat(-std::numeric_limits<float>::infinity());
  vf mx = neg_inf;
  for (int64_t j = 0; j < n; j += kVL) {
    vf x = visible(mask + j) ? load(p + j) : neg_inf;
    mx = x > mx ? x : mx;
  }
  float row_max = hmax(mx);
  if (row_max == -std::numeric_limits<float>::infinity()) {
    std::fill(p, p + n, 0.0f);
    return;
  }
  vf sum{};
  for (int64_t j = 0; j < n; j += kVL) {
    vf e = visible(mask + j) ? exp_nonpositive(load(p + j) - row_max) : vf{};
    store(p + j, e);
    sum += e;
  }
  vf inv = splat(1.0f / hsum(sum));
  for (int64_t j = 0; j < n; j += kVL) store(p + j, load(p + j) * inv);
}

struct Shapes {
  int64_t B, L, S, N, K, H, G, R;
  bool rope, causal;
  float scale;
  static constexpr int64_t kPanel = 16;  // query rows per causal panel

  // Keys that query rows [i0, i0 + rows) attend: a prefix rounded up to whole vectors.
  int64_t keys(int64_t i0, int64_t rows) const {
    if (!causal) return S;
    int64_t end = i0 + rows;
    return std::min(S, (end + kVL - 1) / kVL * kVL);
  }
};

// Row x[0:K] rotated by the tables' row (pairs x[i], x[i + K/2]); `sign` -1 inverts.
inline void rotate_row(const float* x, const float* cos, const float* sin, int64_t K, float sign,
                       float scale, float* out) {
  const int64_t half = K / 2;
  int64_t i = 0;
  for (; i + kVL <= half; i += kVL) {
    vf c = load(cos + i), s = load(sin + i) * sign, x1 = load(x + i), x2 = load(x + half + i);
    store(out + i, (x1 * c - x2 * s) * scale);
    store(out + half + i, (x2 * c + x1 * s) * scale);
  }
  for (; i < half; ++i) {  // K/2 not a multiple of the vector width
    float c = cos[i], s = sign * sin[i], x1 = x[i], x2 = x[i + half];
    out[i] = (x1 * c - x2 * s) * scale;
    out[i + half] = (x2 * c + x1 * s) * scale;
  }
}

// out[0:K] = x[0:K] * scale (K a multiple of the vector width).
inline void scale_row(const float* x, int64_t K, float scale, float* out) {
  for (int64_t d = 0; d < K; d += kVL) store(out + d, load(x + d) * scale);
}

// Runs fn(0 .. total-1) on the caller and the pool's threads. The caller takes items
// too, so the call finishes even if no pool thread is free; helpers that start late
// find nothing left (the shared state outlives the call).
struct ParallelJob {
  std::function<void(int64_t)> fn;
  int64_t total = 0;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;

  void work() {
    for (int64_t i; (i = next.fetch_add(1)) < total;) {
      fn(i);
      if (done.fetch_add(1) + 1 == total) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

void parallel_for(ffi::ThreadPool& pool, int64_t total, std::function<void(int64_t)> fn) {
  auto job = std::make_shared<ParallelJob>();
  job->fn = std::move(fn);
  job->total = total;
  int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  std::unique_lock<std::mutex> lock(job->mu);
  job->cv.wait(lock, [&] { return job->done.load() == total; });
}

// A work item: batch row b, kv heads [g0, g0 + gn) and their query heads.
struct Item {
  int64_t b, g0, gn;
};

// The token rows of a batch row lie heads * K floats apart (3 KB at ref_tiny), and the
// hardware prefetcher leaves their latency exposed: fetching a few rows ahead took the
// kernel's row passes (measured alone) about 10% off the forward and 8% off the backward.
constexpr int64_t kPrefetchRows = 4;

inline void prefetch(const float* p, int64_t floats, bool for_write) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t c = 0; c < floats * 4; c += 64) {
    if (for_write) __builtin_prefetch(bytes + c, 1);
    else __builtin_prefetch(bytes + c, 0);
  }
}

// Heads [h0, h0 + hn) of batch row b of a [B, L, heads, K] array, head-major into
// out [hn, L, K], times `scale`, rotated by the tables if `rope`. One pass over the
// token rows, whose heads are contiguous, so the reads stream.
void gather_heads(const Shapes& s, const float* src, int64_t heads, int64_t b, int64_t h0,
                  int64_t hn, bool rope, float scale, const float* cos, const float* sin,
                  float* out) {
  const int64_t L = s.L, K = s.K;
  for (int64_t i = 0; i < L; ++i) {
    const float* row = src + ((b * L + i) * heads + h0) * K;
    if (i + kPrefetchRows < L) prefetch(row + kPrefetchRows * heads * K, hn * K, false);
    for (int64_t h = 0; h < hn; ++h) {
      const float* x = row + h * K;
      float* o = out + (h * L + i) * K;
      if (rope) {
        const int64_t t = (b * L + i) * (K / 2);
        rotate_row(x, cos + t, sin + t, K, 1.0f, scale, o);
      } else {
        scale_row(x, K, scale, o);
      }
    }
  }
}

// The reverse: x [hn, L, K] into heads [h0, h0 + hn) of batch row b of dst, times `scale`,
// rotated back (the inverse rotation: a gradient w.r.t. the rotated value becomes one
// w.r.t. the unrotated) if `rope`. The writes stream.
void scatter_heads(const Shapes& s, const float* x, int64_t heads, int64_t b, int64_t h0,
                   int64_t hn, bool rope, float scale, const float* cos, const float* sin,
                   float* dst) {
  const int64_t L = s.L, K = s.K;
  for (int64_t i = 0; i < L; ++i) {
    float* row = dst + ((b * L + i) * heads + h0) * K;
    if (i + kPrefetchRows < L) prefetch(row + kPrefetchRows * heads * K, hn * K, true);
    for (int64_t h = 0; h < hn; ++h) {
      const float* xi = x + (h * L + i) * K;
      float* o = row + h * K;
      if (rope) {
        const int64_t t = (b * L + i) * (K / 2);
        rotate_row(xi, cos + t, sin + t, K, -1.0f, scale, o);
      } else {
        scale_row(xi, K, scale, o);
      }
    }
  }
}

// x [rows, K] (row-major) transposed into out [K, rows].
void transpose(const float* x, int64_t rows, int64_t K, float* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < K; ++d) out[d * rows + i] = x[i * K + d];
}

thread_local std::vector<float> scratch;

float* scratch_floats(int64_t n) {
  if (static_cast<int64_t>(scratch.size()) < n) scratch.resize(n);
  return scratch.data();
}

void forward_item(const Shapes& s, const float* qkv, const uint8_t* mask, const float* cos,
                  const float* sin, float* out, float* probs, Item it) {
  const int64_t L = s.L, S = s.S, K = s.K, b = it.b;
  const int64_t h0 = it.g0 * s.R, hn = it.gn * s.R;
  float* q = scratch_floats(2 * hn * L * K + 2 * it.gn * S * K + K * S + (probs ? 0 : L * S));
  float* o = q + hn * L * K;
  float* k = o + hn * L * K;
  float* v = k + it.gn * S * K;
  float* kt = v + it.gn * S * K;
  float* plocal = kt + K * S;
  gather_heads(s, qkv, s.N, b, h0, hn, s.rope, s.scale, cos, sin, q);
  gather_heads(s, qkv, s.N, b, s.H + it.g0, it.gn, s.rope, 1.0f, cos, sin, k);
  gather_heads(s, qkv, s.N, b, s.H + s.G + it.g0, it.gn, false, 1.0f, cos, sin, v);
  for (int64_t gl = 0; gl < it.gn; ++gl) {
    transpose(k + gl * S * K, S, K, kt);
    const float* vg = v + gl * S * K;
    for (int64_t hl = gl * s.R; hl < (gl + 1) * s.R; ++hl) {
      const float* qh = q + hl * L * K;
      float* p = probs ? probs + (b * s.H + h0 + hl) * L * S : plocal;
      for (int64_t i0 = 0; i0 < L; i0 += Shapes::kPanel) {
        int64_t rows = std::min(Shapes::kPanel, L - i0), n = s.keys(i0, rows);
        gemm(rows, n, K, qh + i0 * K, K, 1, kt, S, p + i0 * S, S, false);
        for (int64_t i = i0; i < i0 + rows; ++i) {
          masked_softmax(p + i * S, mask + (b * L + i) * S, n);
          // The backward reads up to a micro-tile (< 16 keys) past a row's prefix; the rest
          // of the saved row is never read, so it is not written.
          if (probs) std::fill(p + i * S + n, p + i * S + std::min(S, n + Shapes::kPanel), 0.0f);
        }
        gemm(rows, K, n, p + i0 * S, S, 1, vg, K, o + (hl * L + i0) * K, K, false);
      }
    }
  }
  scatter_heads(s, o, s.H, b, h0, hn, false, 1.0f, cos, sin, out);
}

void backward_item(const Shapes& s, const float* qkv, const float* cos, const float* sin,
                   const float* probs, const float* dout, float* dqkv, Item it) {
  const int64_t L = s.L, S = s.S, K = s.K, b = it.b;
  const int64_t h0 = it.g0 * s.R, hn = it.gn * s.R;
  float* q = scratch_floats(3 * hn * L * K + 4 * it.gn * S * K + K * S + L * S);
  float* dO = q + hn * L * K;
  float* dq = dO + hn * L * K;
  float* k = dq + hn * L * K;
  float* v = k + it.gn * S * K;
  float* dk = v + it.gn * S * K;
  float* dv = dk + it.gn * S * K;
  float* vt = dv + it.gn * S * K;
  float* ds = vt + K * S;
  gather_heads(s, qkv, s.N, b, h0, hn, s.rope, s.scale, cos, sin, q);
  gather_heads(s, qkv, s.N, b, s.H + it.g0, it.gn, s.rope, 1.0f, cos, sin, k);
  gather_heads(s, qkv, s.N, b, s.H + s.G + it.g0, it.gn, false, 1.0f, cos, sin, v);
  gather_heads(s, dout, s.H, b, h0, hn, false, 1.0f, cos, sin, dO);
  std::fill(dk, dk + 2 * it.gn * S * K, 0.0f);
  for (int64_t gl = 0; gl < it.gn; ++gl) {
    transpose(v + gl * S * K, S, K, vt);  // for dP = dO v^T
    const float* kg = k + gl * S * K;
    float* dkg = dk + gl * S * K;
    float* dvg = dv + gl * S * K;
    for (int64_t hl = gl * s.R; hl < (gl + 1) * s.R; ++hl) {
      const float* qh = q + hl * L * K;
      const float* dOh = dO + hl * L * K;
      const float* p = probs + (b * s.H + h0 + hl) * L * S;
      for (int64_t i0 = 0; i0 < L; i0 += Shapes::kPanel) {
        int64_t rows = std::min(Shapes::kPanel, L - i0), n = s.keys(i0, rows);
        gemm(rows, n, K, dOh + i0 * K, K, 1, vt, S, ds + i0 * S, S, false);
        for (int64_t i = i0; i < i0 + rows; ++i) {
          // dS = P * (dP - rowsum(P * dP)), the row's P and dP in cache.
          float* dsi = ds + i * S;
          const float* pi = p + i * S;
          vf acc{};
          for (int64_t j = 0; j < n; j += kVL) acc += load(pi + j) * load(dsi + j);
          vf rowsum = splat(hsum(acc));
          for (int64_t j = 0; j < n; j += kVL)
            store(dsi + j, load(pi + j) * (load(dsi + j) - rowsum));
          std::fill(dsi + n, dsi + std::min(S, n + Shapes::kPanel), 0.0f);  // as the forward's
        }
        // dq (times the scale when written out) = dS k.
        gemm(rows, K, n, ds + i0 * S, S, 1, kg, K, dq + (hl * L + i0) * K, K, false);
      }
      // dk += dS^T (scale q), dv += P^T dO; with causal, key j gets rows i >= j only.
      for (int64_t j0 = 0; j0 < S; j0 += kMR) {
        int64_t mr = std::min<int64_t>(kMR, S - j0);
        int64_t i_start = s.causal ? j0 : 0;
        for (int64_t n0 = 0; n0 < K; n0 += kNV * kVL) {
          int nv = static_cast<int>(std::min<int64_t>(kNV, (K - n0) / kVL));
          TileFn f = tile(static_cast<int>(mr), nv);
          f(L - i_start, ds + i_start * S + j0, 1, S, qh + i_start * K + n0, K,
            dkg + j0 * K + n0, K, true);
          f(L - i_start, p + i_start * S + j0, 1, S, dOh + i_start * K + n0, K,
            dvg + j0 * K + n0, K, true);
        }
      }
    }
  }
  scatter_heads(s, dq, s.N, b, h0, hn, s.rope, s.scale, cos, sin, dqkv);
  scatter_heads(s, dk, s.N, b, s.H + it.g0, it.gn, s.rope, 1.0f, cos, sin, dqkv);
  scatter_heads(s, dv, s.N, b, s.H + s.G + it.g0, it.gn, false, 1.0f, cos, sin, dqkv);
}

// Whole batch rows (every kv head) per work item stream best; the kv heads are split
// only when the rows are too few to keep every thread busy.
int64_t kv_heads_per_item(const Shapes& s, int64_t threads) {
  int64_t gn = s.G;
  while (gn > 1 && s.B * (s.G / gn) < 4 * threads) {
    do --gn; while (s.G % gn);
  }
  return gn;
}

// `forced_gn` > 0 (a divisor of G) overrides the choice, for tests.
template <typename F>
void for_each_item(ffi::ThreadPool& pool, const Shapes& s, int64_t forced_gn, F fn) {
  int64_t gn = forced_gn > 0 ? forced_gn
                             : kv_heads_per_item(s, std::max<int64_t>(1, pool.num_threads()));
  int64_t per_row = s.G / gn;
  parallel_for(pool, s.B * per_row, [&, gn, per_row](int64_t index) {
    fn(Item{index / per_row, (index % per_row) * gn, gn});
  });
}

ffi::Error shapes_of(ffi::Buffer<ffi::F32>& qkv, ffi::Buffer<ffi::F32>& cos, int64_t num_heads,
                     int64_t kv_heads, int64_t causal, float scale, Shapes& s) {
  auto d = qkv.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("qkv must be [B, L, H + 2G, K]");
  s = Shapes{d[0], d[1], d[1], d[2], d[3], num_heads, kv_heads, 0, cos.element_count() > 0,
             causal != 0, scale};
  if (kv_heads <= 0 || num_heads % kv_heads || s.N != num_heads + 2 * kv_heads)
    return ffi::Error::InvalidArgument("qkv's head axis must be num_heads + 2 * kv_heads");
  if (s.K % kVL || s.L % kVL)
    return ffi::Error::InvalidArgument("head dim and length must be multiples of the vector width");
  s.R = num_heads / kv_heads;
  return ffi::Error::Success();
}

ffi::Error attention_forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                             ffi::Buffer<ffi::U8> mask, ffi::Buffer<ffi::F32> cos,
                             ffi::Buffer<ffi::F32> sin, ffi::ResultBuffer<ffi::F32> out,
                             ffi::ResultBuffer<ffi::F32> probs, int64_t num_heads,
                             int64_t kv_heads, int64_t causal, float scale,
                             int64_t kv_heads_per_item_attr) {
  Shapes sh;
  if (ffi::Error e = shapes_of(qkv, cos, num_heads, kv_heads, causal, scale, sh); e.failure())
    return e;
  if (kv_heads_per_item_attr < 0 || (kv_heads_per_item_attr && kv_heads % kv_heads_per_item_attr))
    return ffi::Error::InvalidArgument("kv_heads_per_item must be 0 or a divisor of kv_heads");
  const float* qkv_p = qkv.typed_data();
  const uint8_t* mask_p = mask.typed_data();
  const float* cos_p = cos.typed_data();
  const float* sin_p = sin.typed_data();
  float* out_p = out->typed_data();
  float* probs_p = probs->element_count() > 0 ? probs->typed_data() : nullptr;
  for_each_item(pool, sh, kv_heads_per_item_attr, [&](Item item) {
    forward_item(sh, qkv_p, mask_p, cos_p, sin_p, out_p, probs_p, item);
  });
  return ffi::Error::Success();
}

ffi::Error attention_backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                              ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                              ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> dout,
                              ffi::ResultBuffer<ffi::F32> dqkv, int64_t num_heads,
                              int64_t kv_heads, int64_t causal, float scale,
                              int64_t kv_heads_per_item_attr) {
  Shapes sh;
  if (ffi::Error e = shapes_of(qkv, cos, num_heads, kv_heads, causal, scale, sh); e.failure())
    return e;
  if (kv_heads_per_item_attr < 0 || (kv_heads_per_item_attr && kv_heads % kv_heads_per_item_attr))
    return ffi::Error::InvalidArgument("kv_heads_per_item must be 0 or a divisor of kv_heads");
  const float* qkv_p = qkv.typed_data();
  const float* cos_p = cos.typed_data();
  const float* sin_p = sin.typed_data();
  const float* probs_p = probs.typed_data();
  const float* dout_p = dout.typed_data();
  float* dqkv_p = dqkv->typed_data();
  for_each_item(pool, sh, kv_heads_per_item_attr, [&](Item item) {
    backward_item(sh, qkv_p, cos_p, sin_p, probs_p, dout_p, dqkv_p, item);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmAttentionForward, attention_forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv
                                  .Arg<ffi::Buffer<ffi::U8>>()   // mask
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cos
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sin
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // probs
                                  .Attr<int64_t>("num_heads")
                                  .Attr<int64_t>("kv_heads")
                                  .Attr<int64_t>("causal")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("kv_heads_per_item"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmAttentionBackward, attention_backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // qkv
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cos
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sin
                                  .Arg<ffi::Buffer<ffi::F32>>()  // probs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dout
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dqkv
                                  .Attr<int64_t>("num_heads")
                                  .Attr<int64_t>("kv_heads")
                                  .Attr<int64_t>("causal")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("kv_heads_per_item"));
