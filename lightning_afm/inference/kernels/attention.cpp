// AutoInt's interacting layer for inference on CPU, one sample at a time:
//   out[b, i, h] = relu( softmax_j(q[b, i, h] . k[b, j, h]) @ v[b, :, h] + res[b, i, h] )
// Two entry points: afm_attend reads one projection row per field, [q (d) | k (d) | v (d) | res (d)],
// d = heads * head_dim; afm_interacting makes those rows itself, per sample, from the layer's input
// and its stacked weight (so the [B, F, 4 d] projections are never written to memory).
//
// Why: at AutoInt's shape (26 fields, heads of 8) each (sample, head) is a 26 x 26 x 8 problem.
// PyTorch's flash kernel and bmm pay a per-matrix overhead several times the arithmetic; here the
// keys are transposed into register-wide rows (fields padded to a multiple of 8), the logits of a
// query are NV vectors held in registers, the softmax uses a vectorised exp, and P V runs with four
// accumulators. Built on first use by lightning_afm/inference/native.py with the machine's C++
// compiler (GCC vector extensions: AVX2 with -march=native on x86, NEON pairs on ARM).
//
// NaN anywhere in a row's inputs gives NaN where PyTorch's softmax and ReLU would (the clamp and
// the ReLU keep NaN; a NaN the row's max skips still reaches the row's sum). The caller splits the
// batch across threads; these functions are single-threaded.

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

inline v8f splat(float x) { return (v8f){x, x, x, x, x, x, x, x}; }
inline v8f loadu(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
inline void storeu(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
inline float hsum(v8f v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }
inline float hmax(v8f v) {
  float m = v[0];
  for (int l = 1; l < 8; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
// relu that keeps NaN (x < 0 is false for NaN)
inline v8f vrelu(v8f x) { return x < splat(0.f) ? splat(0.f) : x; }

// exp(x) for x <= 0 (NaN stays NaN), as 2^y with y = x log2(e): 0 below -87 (exp(-87) is the
// smallest normal float's order); n = round(y) by the 1.5 * 2^23 trick (y + that constant holds n in its low mantissa
// bits, so its bit pattern shifted left by 23 after adding the exponent bias 127 is 2^n); 2^f for
// f = y - n in [-1/2, 1/2] by its degree-6 Taylor polynomial (relative error below 2e-7). Rounding
// y costs up to |y| * 6e-8 relative, which matters only for terms already below e^-20 of the row's
// largest.
inline v8f vexp_nonpos(v8f x) {
  const v8f low = splat(-87.0f);
  const v8f c = x < low ? low : x;
  const v8f y = c * splat(1.44269504088896341f);
  const v8f shifted = y + splat(12582912.0f);  // 1.5 * 2^23
  const v8f f = y - (shifted - splat(12582912.0f));
  v8f p = splat(1.5403530393381606e-4f);
  p = p * f + splat(1.3333558146428443e-3f);
  p = p * f + splat(9.6181291076284772e-3f);
  p = p * f + splat(5.5504108664821580e-2f);
  p = p * f + splat(2.4022650695910071e-1f);
  p = p * f + splat(6.9314718055994531e-1f);
  p = p * f + splat(1.0f);
  v8u bits;  // unsigned: the shift drops the constant's high bits without overflow
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits + 127u) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const v8f e = p * scale;
  return x < low ? splat(0.f) : e;  // below e^-87 a weight is 0, as PyTorch's float exp nearly gives
}

// One sample's attention for a thread: NV = ceil(F / 8) vectors hold one query's logits; the
// scratch (transposed keys, padding masks) is allocated once per thread's share.
template <int NV>
struct Attender {
  int64_t F, H, dh, d, wide;
  bool has_res, direct;
  std::vector<v8f> kt, vt;
  std::vector<float> column;
  v8f pad[NV];  // logits of the padding fields: -inf (never the row's max unless every field is -inf)
  v8u keep[NV];  // all ones on the real fields' lanes: the padding's weights are set to 0
  alignas(32) float weights[NV * 8];

  Attender(int64_t fields, int64_t heads, int64_t head_dim, bool residual)
      : F(fields), H(heads), dh(head_dim), d(heads * head_dim), wide(head_dim - head_dim % 8),
        has_res(residual),
        // P V from 8-wide slices of the value rows (a scalar tail for d_h % 8 columns); heads under
        // 8 wide go over the padded fields instead
        direct(head_dim >= 8), kt(head_dim * NV), vt(head_dim >= 8 ? 0 : head_dim * NV), column(NV * 8, 0.f) {
    for (int n = 0; n < NV; ++n)
      for (int l = 0; l < 8; ++l) {
        pad[n][l] = n * 8 + l < F ? 0.f : -__builtin_inff();
        keep[n][l] = n * 8 + l < F ? ~0u : 0u;
      }
  }

  // row: field i's [q | k | v (| res)] at row + i * field_stride; out_row: [F, d], contiguous.
  void sample(const float* row, int64_t field_stride, float* out_row) {
    const int64_t fp = NV * 8;
    for (int64_t h = 0; h < H; ++h) {
      const float* keys = row + d + h * dh;
      const float* values = row + 2 * d + h * dh;
      for (int64_t t = 0; t < dh; ++t) {  // keys (and, if not direct, values) as [d_h, F padded]
        for (int64_t j = 0; j < F; ++j) column[j] = keys[j * field_stride + t];
        std::memcpy(&kt[t * NV], column.data(), fp * sizeof(float));
        if (!direct) {
          for (int64_t j = 0; j < F; ++j) column[j] = values[j * field_stride + t];
          std::memcpy(&vt[t * NV], column.data(), fp * sizeof(float));
        }
      }
      for (int64_t i = 0; i < F; ++i) {
        const float* query = row + i * field_stride + h * dh;
        v8f logits[NV];
        for (int n = 0; n < NV; ++n) logits[n] = pad[n];
        for (int64_t t = 0; t < dh; ++t) {
          const v8f q = splat(query[t]);
          for (int n = 0; n < NV; ++n) logits[n] += q * kt[t * NV + n];
        }
        v8f m = logits[0];
        for (int n = 1; n < NV; ++n) m = vmax(m, logits[n]);
        const v8f top = splat(hmax(m));
        v8f total = splat(0.f);
        for (int n = 0; n < NV; ++n) {
          logits[n] = keep[n] ? vexp_nonpos(logits[n] - top) : splat(0.f);
          total += logits[n];
        }
        const float inv = 1.f / hsum(total);
        float* o = out_row + i * d + h * dh;
        const float* res = row + i * field_stride + 3 * d + h * dh;
        if (direct) {
          std::memcpy(weights, logits, sizeof weights);
          for (int64_t t = 0; t < wide; t += 8) {
            v8f a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;  // four chains hide the FMA latency
            int64_t j = 0;
            for (; j + 4 <= F; j += 4) {
              a0 += splat(weights[j]) * loadu(values + j * field_stride + t);
              a1 += splat(weights[j + 1]) * loadu(values + (j + 1) * field_stride + t);
              a2 += splat(weights[j + 2]) * loadu(values + (j + 2) * field_stride + t);
              a3 += splat(weights[j + 3]) * loadu(values + (j + 3) * field_stride + t);
            }
            for (; j < F; ++j) a0 += splat(weights[j]) * loadu(values + j * field_stride + t);
            v8f acc = ((a0 + a1) + (a2 + a3)) * splat(inv);
            if (has_res) acc += loadu(res + t);
            storeu(o + t, vrelu(acc));
          }
          for (int64_t t = wide; t < dh; ++t) {
            float a = 0.f;
            for (int64_t j = 0; j < F; ++j) a += weights[j] * values[j * field_stride + t];
            const float x = a * inv + (has_res ? res[t] : 0.f);
            o[t] = x < 0.f ? 0.f : x;
          }
        } else {
          for (int64_t t = 0; t < dh; ++t) {
            v8f acc = splat(0.f);
            for (int n = 0; n < NV; ++n) acc += logits[n] * vt[t * NV + n];
            const float x = hsum(acc) * inv + (has_res ? res[t] : 0.f);
            o[t] = x < 0.f ? 0.f : x;
          }
        }
      }
    }
  }
};

// One sample's projections: proj[i, :] = x[i, :] @ W for the F fields, W [d_in, wpad] row-major with
// wpad a multiple of 8 (zero columns past the real width). Blocks of 8 vectors (64 columns) keep their
// accumulators in registers; the sample's x rows and W stay in L1/L2.
inline void project_sample(const float* x, int64_t F, int64_t x_field_stride, int64_t d_in, const float* W,
                           int64_t wpad, float* proj) {
  for (int64_t i = 0; i < F; ++i) {
    const float* xi = x + i * x_field_stride;
    float* pi = proj + i * wpad;
    int64_t c0 = 0;
    for (; c0 + 64 <= wpad; c0 += 64) {
      v8f a[8];
      for (int n = 0; n < 8; ++n) a[n] = splat(0.f);
      for (int64_t c = 0; c < d_in; ++c) {
        const v8f xs = splat(xi[c]);
        const float* w = W + c * wpad + c0;
        for (int n = 0; n < 8; ++n) a[n] += xs * loadu(w + 8 * n);
      }
      for (int n = 0; n < 8; ++n) storeu(pi + c0 + 8 * n, a[n]);
    }
    for (; c0 < wpad; c0 += 8) {
      v8f a0 = splat(0.f), a1 = a0;
      int64_t c = 0;
      for (; c + 2 <= d_in; c += 2) {
        a0 += splat(xi[c]) * loadu(W + c * wpad + c0);
        a1 += splat(xi[c + 1]) * loadu(W + (c + 1) * wpad + c0);
      }
      if (c < d_in) a0 += splat(xi[c]) * loadu(W + c * wpad + c0);
      storeu(pi + c0, a0 + a1);
    }
  }
}

template <int NV>
void attend_rows(const float* proj, int64_t rows, int64_t F, int64_t row_stride, int64_t field_stride,
                 int64_t H, int64_t dh, bool has_res, float* out) {
  Attender<NV> attender(F, H, dh, has_res);
  for (int64_t b = 0; b < rows; ++b) attender.sample(proj + b * row_stride, field_stride, out + b * F * H * dh);
}

template <int NV>
void interacting_rows(const float* x, int64_t rows, int64_t F, int64_t x_row_stride, int64_t x_field_stride,
                      int64_t d_in, const float* W, int64_t wpad, int64_t H, int64_t dh, bool has_res, float* out) {
  Attender<NV> attender(F, H, dh, has_res);
  std::vector<float> proj(F * wpad);
  for (int64_t b = 0; b < rows; ++b) {
    project_sample(x + b * x_row_stride, F, x_field_stride, d_in, W, wpad, proj.data());
    attender.sample(proj.data(), wpad, out + b * F * H * dh);
  }
}

}  // namespace

extern "C" {

// The largest field count (8 * the largest NV instantiated below).
int64_t afm_attend_max_fields() { return 128; }

// proj: rows x F x (3 or 4) d floats, unit stride along the last axis; out: rows x F x d, contiguous.
// Returns 0, or 1 when F is outside [1, afm_attend_max_fields()] (nothing written).
int afm_attend(const float* proj, int64_t rows, int64_t F, int64_t row_stride, int64_t field_stride,
               int64_t H, int64_t dh, int64_t has_res, float* out) {
  const bool res = has_res != 0;
  switch ((F + 7) / 8) {
#define AFM_CASE(NV) case NV: attend_rows<NV>(proj, rows, F, row_stride, field_stride, H, dh, res, out); return 0;
    AFM_CASE(1) AFM_CASE(2) AFM_CASE(3) AFM_CASE(4) AFM_CASE(5) AFM_CASE(6) AFM_CASE(7) AFM_CASE(8)
    AFM_CASE(9) AFM_CASE(10) AFM_CASE(11) AFM_CASE(12) AFM_CASE(13) AFM_CASE(14) AFM_CASE(15) AFM_CASE(16)
#undef AFM_CASE
    default: return 1;
  }
}

// The whole layer: x rows x F x d_in (unit stride along the last axis) projected by W [d_in, wpad]
// (columns [q | k | v (| res) | zeros], wpad a multiple of 8), then attention as afm_attend.
// Returns 0, 1 when F is out of range, 2 when wpad is not a multiple of 8 or too narrow.
int afm_interacting(const float* x, int64_t rows, int64_t F, int64_t x_row_stride, int64_t x_field_stride,
                    int64_t d_in, const float* W, int64_t wpad, int64_t H, int64_t dh, int64_t has_res, float* out) {
  if (wpad % 8 != 0 || wpad < (has_res ? 4 : 3) * H * dh) return 2;
  const bool res = has_res != 0;
  switch ((F + 7) / 8) {
#define AFM_CASE(NV) case NV: interacting_rows<NV>(x, rows, F, x_row_stride, x_field_stride, d_in, W, wpad, H, dh, res, out); return 0;
    AFM_CASE(1) AFM_CASE(2) AFM_CASE(3) AFM_CASE(4) AFM_CASE(5) AFM_CASE(6) AFM_CASE(7) AFM_CASE(8)
    AFM_CASE(9) AFM_CASE(10) AFM_CASE(11) AFM_CASE(12) AFM_CASE(13) AFM_CASE(14) AFM_CASE(15) AFM_CASE(16)
#undef AFM_CASE
    default: return 1;
  }
}

}  // extern "C"
