/* Selective scan forward pass for CPUs: one sequential walk per (batch, channel) row, the N = 16 states
 * of the row in one SIMD vector (AVX-512 intrinsics where the compiler targets them, else GCC/clang
 * vector extensions lowered to whatever SIMD the target has; other N run state by state).
 * Compiled on first use by native_build.py with the system C compiler (-O3 -march=native where accepted).
 *
 *   dt_t = softplus(delta_t + bias)   (or delta_t + bias)
 *   h_t  = exp2(dt_t * A2) * h_{t-1} + dt_t u_t B_t,   y_t = (C_t . h_t + D u_t) * silu(z_t)
 *
 * with A2 = A * log2(e). A row is done in blocks of BLOCK positions: its delta, u and z are converted to
 * float32 and the softplus taken 16 positions at a time into stack buffers, the recurrence walks the
 * block, and the gate is applied to the block's outputs before they are stored. All arithmetic is float32.
 * Layouts: u, delta, z, y (batch, E, L) contiguous, float32 or bfloat16 (all four the same, `bf16`);
 * B, C (batch, G, L, N) float32 contiguous; A2 (E, N), D and bias (E) float32 or NULL; last (batch, E, N)
 * float32 or NULL. Rows [row0, row1) of the batch * E rows are done per call, so the caller can split
 * them over threads (ctypes releases the GIL).
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define BLOCK 256
#define MAX_N 64

/* ---- 16-lane float vectors ------------------------------------------------------------------ */
#if defined(__AVX512F__)
typedef __m512 v16;
static inline v16 v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, v16 a) { _mm512_storeu_ps(p, a); }
static inline v16 v_set(float x) { return _mm512_set1_ps(x); }
static inline v16 v_fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
static inline v16 v_mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
static inline v16 v_add(v16 a, v16 b) { return _mm512_add_ps(a, b); }
static inline v16 v_sub(v16 a, v16 b) { return _mm512_sub_ps(a, b); }
static inline v16 v_div(v16 a, v16 b) { return _mm512_div_ps(a, b); }
static inline v16 v_max(v16 a, v16 b) { return _mm512_max_ps(a, b); }
static inline v16 v_min(v16 a, v16 b) { return _mm512_min_ps(a, b); }
static inline v16 v_abs(v16 a) { return _mm512_abs_ps(a); }
static inline v16 v_floor(v16 a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
static inline v16 v_ldexp(v16 p, v16 i) { return _mm512_scalef_ps(p, i); }    /* p * 2^i, 0 or inf at the ends */
static inline float v_sum(v16 a) { return _mm512_reduce_add_ps(a); }
static inline v16 v_gt_select(v16 x, v16 lim, v16 a, v16 b) {                  /* x > lim ? a : b */
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lim, _CMP_GT_OQ), b, a);
}
#else
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
static inline v16 v_load(const float *p) { v16 a; memcpy(&a, p, sizeof a); return a; }
static inline void v_store(float *p, v16 a) { memcpy(p, &a, sizeof a); }
static inline v16 v_set(float x) { v16 a = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; return a; }
static inline v16 v_fma(v16 a, v16 b, v16 c) { return a * b + c; }
static inline v16 v_mul(v16 a, v16 b) { return a * b; }
static inline v16 v_add(v16 a, v16 b) { return a + b; }
static inline v16 v_sub(v16 a, v16 b) { return a - b; }
static inline v16 v_div(v16 a, v16 b) { return a / b; }
static inline v16 v_sel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
static inline v16 v_max(v16 a, v16 b) { return v_sel(a > b, a, b); }
static inline v16 v_min(v16 a, v16 b) { return v_sel(a < b, a, b); }
static inline v16 v_abs(v16 a) { return (v16)((v16i)a & 0x7fffffff); }
static inline v16 v_floor(v16 a) {          /* for |a| < 2^31, which every caller guarantees */
    v16 t = __builtin_convertvector(__builtin_convertvector(a, v16i), v16);
    return t - v_sel(t > a, v_set(1.0f), v_set(0.0f));
}
static inline v16 v_ldexp(v16 p, v16 i) {   /* p * 2^i for i in [-127, 127]; 2^-127 taken as 0 */
    v16i e = __builtin_convertvector(i, v16i) + 127;
    return v_sel(e > 0, p * (v16)(e << 23), v_set(0.0f));
}
static inline float v_sum(v16 a) {
    union { v16 v; v8f h[2]; } x = {a};
    union { v8f v; v4f h[2]; } y = {x.h[0] + x.h[1]};
    v4f c = y.h[0] + y.h[1];
    return (c[0] + c[2]) + (c[1] + c[3]);
}
static inline v16 v_gt_select(v16 x, v16 lim, v16 a, v16 b) { return v_sel(x > lim, a, b); }
#endif

/* 2^x: x = i + f (i = floor(x), f in [0, 1)) and a degree-6 polynomial for 2^f (relative error 8.5e-8 in
 * float32 over [0, 1), a relative-error least-squares fit); x is clamped to [-127, 127]. */
static inline v16 v_exp2(v16 x) {
    x = v_min(v_max(x, v_set(-127.0f)), v_set(127.0f));
    v16 i = v_floor(x), f = v_sub(x, i);
    v16 p = v_set(2.169060899e-04f);
    p = v_fma(p, f, v_set(1.244308194e-03f));
    p = v_fma(p, f, v_set(9.678472765e-03f));
    p = v_fma(p, f, v_set(5.548352376e-02f));
    p = v_fma(p, f, v_set(2.402298003e-01f));
    p = v_fma(p, f, v_set(6.931470037e-01f));
    p = v_fma(p, f, v_set(1.0f));
    return v_ldexp(p, i);
}

/* log1p(e) for e in [0, 1]: 2 atanh(s), s = e / (2 + e) in [0, 1/3], as an odd series to s^15. */
static inline v16 v_log1p_unit(v16 e) {
    v16 s = v_div(e, v_add(e, v_set(2.0f))), s2 = v_mul(s, s);
    v16 p = v_set(2.0f / 15.0f);
    p = v_fma(p, s2, v_set(2.0f / 13.0f));
    p = v_fma(p, s2, v_set(2.0f / 11.0f));
    p = v_fma(p, s2, v_set(2.0f / 9.0f));
    p = v_fma(p, s2, v_set(2.0f / 7.0f));
    p = v_fma(p, s2, v_set(2.0f / 5.0f));
    p = v_fma(p, s2, v_set(2.0f / 3.0f));
    p = v_fma(p, s2, v_set(2.0f));
    return v_mul(p, s);
}

static const float LOG2E = 1.4426950408889634f;

/* mamba_ssm's softplus: x above 20, else log1p(exp(x)) = max(x, 0) + log1p(exp(-|x|)). */
static inline v16 v_softplus(v16 x) {
    v16 e = v_exp2(v_mul(v_abs(x), v_set(-LOG2E)));
    v16 sp = v_add(v_max(x, v_set(0.0f)), v_log1p_unit(e));
    return v_gt_select(x, v_set(20.0f), x, sp);
}

/* x * silu(z) = x * z / (1 + exp(-z)) */
static inline v16 v_gate(v16 x, v16 z) {
    v16 e = v_exp2(v_mul(z, v_set(-LOG2E)));
    return v_div(v_mul(x, z), v_add(v_set(1.0f), e));
}

/* ---- float32 / bfloat16 rows ---------------------------------------------------------------- */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even, as torch does; NaN kept NaN */
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    if ((b & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline void load_row(float *dst, const void *src, int64_t off, int64_t n, int bf16) {
    if (bf16) {
        const uint16_t *s = (const uint16_t *)src + off;
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        memcpy(dst, (const float *)src + off, (size_t)n * sizeof(float));
    }
}

static inline void store_row(void *dst, const float *src, int64_t off, int64_t n, int bf16) {
    if (bf16) {
        uint16_t *d = (uint16_t *)dst + off;
        for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {
        memcpy((float *)dst + off, src, (size_t)n * sizeof(float));
    }
}

/* ---- the scan ------------------------------------------------------------------------------ */
/* Block prologue: dt = softplus(delta + bias) (or delta + bias) over n positions, padded to 16. */
static inline void block_dt(float *dt, int64_t n, float bias, int softplus) {
    for (int64_t i = n; i < (n + 15) / 16 * 16; i++) dt[i] = 0.0f;
    for (int64_t i = 0; i < n; i += 16) {
        v16 x = v_add(v_load(dt + i), v_set(bias));
        v_store(dt + i, softplus ? v_softplus(x) : x);
    }
}

/* Block epilogue: y *= silu(z) over n positions (buffers padded to 16). */
static inline void block_gate(float *y, const float *z, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) v_store(y + i, v_gate(v_load(y + i), v_load(z + i)));
}

int selective_scan_fwd_rows(const void *u, const void *delta, const void *z, void *y, int bf16,
                            const float *A2, const float *B, const float *C, const float *D,
                            const float *bias, int softplus, float *last, int64_t E, int64_t L,
                            int64_t N, int64_t G, int64_t row0, int64_t row1) {
    if (N > MAX_N || N < 1 || G < 1 || E % G)
        return 1;
    float ub[BLOCK + 16], dtb[BLOCK + 16], zb[BLOCK + 16], yb[BLOCK + 16], h[MAX_N];
    for (int64_t row = row0; row < row1; row++) {
        const int64_t b = row / E, e = row % E, g = e / (E / G);
        const float *Br = B + (b * G + g) * L * N, *Cr = C + (b * G + g) * L * N, *a2 = A2 + e * N;
        const float d = D ? D[e] : 0.0f, bi = bias ? bias[e] : 0.0f;
        v16 hv = v_set(0.0f), av = N == 16 ? v_load(a2) : v_set(0.0f);
        for (int64_t n = 0; n < N; n++) h[n] = 0.0f;
        for (int64_t t0 = 0; t0 < L; t0 += BLOCK) {
            const int64_t n = L - t0 < BLOCK ? L - t0 : BLOCK;
            load_row(ub, u, row * L + t0, n, bf16);
            load_row(dtb, delta, row * L + t0, n, bf16);
            block_dt(dtb, n, bi, softplus);
            if (N == 16) {
                for (int64_t t = 0; t < n; t++) {
                    const float dt = dtb[t], du = dt * ub[t];
                    const int64_t k = (t0 + t) * 16;
                    hv = v_fma(v_exp2(v_mul(av, v_set(dt))), hv, v_mul(v_load(Br + k), v_set(du)));
                    yb[t] = v_sum(v_mul(v_load(Cr + k), hv)) + d * ub[t];
                }
            } else {
                for (int64_t t = 0; t < n; t++) {
                    const float dt = dtb[t], du = dt * ub[t];
                    const int64_t k = (t0 + t) * N;
                    float acc = 0.0f, x[MAX_N];
                    for (int64_t m = 0; m < N; m += 16) {   /* exp2 16 states at a time */
                        float in[16] = {0};
                        for (int64_t j = 0; j < 16 && m + j < N; j++) in[j] = dt * a2[m + j];
                        v_store(x + m, v_exp2(v_load(in)));
                    }
                    for (int64_t m = 0; m < N; m++) {
                        h[m] = x[m] * h[m] + du * Br[k + m];
                        acc += Cr[k + m] * h[m];
                    }
                    yb[t] = acc + d * ub[t];
                }
            }
            if (z) {
                load_row(zb, z, row * L + t0, n, bf16);
                for (int64_t i = n; i < (n + 15) / 16 * 16; i++) zb[i] = yb[i] = 0.0f;
                block_gate(yb, zb, n);
            }
            store_row(y, yb, row * L + t0, n, bf16);
        }
        if (last) {
            if (N == 16)
                v_store(last + row * 16, hv);
            else
                memcpy(last + row * N, h, (size_t)N * sizeof(float));
        }
    }
    return 0;
}
