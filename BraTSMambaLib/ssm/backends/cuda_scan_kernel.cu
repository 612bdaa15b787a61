// Selective scan forward for CUDA inference, compiled at run time with NVRTC (cuda_scan.py).
//
// One lane per (row, state): a row (batch, channel) is walked sequentially by NS = N lanes, lane n
// holding state h[n] in a register. The sequence is taken NS positions at a time: lane n loads
// position t0+n of u and delta (coalesced), computes softplus(delta + bias) and delta*u for it and
// shares both through shared memory; it loads B[n] and C[n] for the NS positions with vector loads, or
// (SHARE_BC) reads them from shared memory, where the block's rows share one load of each block of
// positions. The next block's loads are issued before this block's arithmetic.
// Then NS steps of h = exp2(A2 dl) h + dl u B, each keeping p_j = C_j h; a transposed butterfly over
// the NS lanes (NS-1 shuffles for NS positions) leaves y at position t0+n in lane n, which adds D u,
// gates with silu(z) and writes it (coalesced). Every exponential is one ex2.approx (no table of
// exp(delta A) is stored) and each input is read once.
//
// A row can be cut into chunks (blockIdx.y) to fill the GPU when there are few rows: STATE_ONLY runs
// a chunk from a zero state and writes only its end state and summed delta; `join_chunks` runs the
// recurrence over the chunks and the full pass starts each chunk from h_init.
//
// Set by the host before this text: NS (states = lanes per row, power of two <= 32), WARPS (per block),
// T_U, T_DT, T_Z, T_OUT, T_B, T_C (float, bf16 or f16), HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, VEC_B, VEC_C, SHARE_BC (every row
// of a block in one batch and B/C group, B and C rows 16-byte aligned, enough threads to load a block of
// positions: one word each), STATE_ONLY, HAS_HINIT, WRITE_LAST.

struct bf16 { unsigned short x; };
struct f16 { unsigned short x; };

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float to_f(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
    return f;
}
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(bf16* p, float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p->x = h;
}
__device__ __forceinline__ void store_f(f16* p, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p->x = h;
}

// c ? a : b as a register select (a ternary on array elements would become a local-memory index).
__device__ __forceinline__ float select(bool c, float a, float b) {
    float r;
    asm("{ .reg .pred q; setp.ne.b32 q, %3, 0; selp.f32 %0, %1, %2, q; }" : "=f"(r) : "f"(a), "f"(b), "r"((int)c));
    return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// mamba_ssm's softplus: log1p(exp(x)) for x <= 20, else x; log1p kept accurate where exp(x) is tiny.
__device__ __forceinline__ float softplus(float x) {
    const float e = __expf(fminf(x, 20.f));
    const float w = 1.f + e;
    const float lp = (w == 1.f) ? e : __logf(w) * (e / (w - 1.f));
    return x <= 20.f ? lp : x;
}

// NS consecutive values of one state row from position t0, as loaded (16-byte words where the host found
// the rows aligned, else converted elements), so the next block's loads can be issued before this one's
// arithmetic. `load` takes a whole block; `load_tail` the last, partial one (zero-filled).
template <typename T, bool VEC>
struct Row {
    static constexpr bool WORDS = VEC && NS * sizeof(T) >= 16;
    static constexpr int NV = WORDS ? NS * (int)sizeof(T) / 16 : 1;
    uint4 w[NV];
    float f[WORDS ? 1 : NS];

    __device__ __forceinline__ void load(const T* __restrict__ p, long long t0) {
        if constexpr (WORDS) {
#pragma unroll
            for (int k = 0; k < NV; ++k) w[k] = __ldg(reinterpret_cast<const uint4*>(p + t0) + k);
        } else {
#pragma unroll
            for (int j = 0; j < NS; ++j) f[j] = to_f(p[t0 + j]);
        }
    }
    __device__ __forceinline__ void values(float (&out)[NS]) const {
        if constexpr (WORDS) {
            const T* e = reinterpret_cast<const T*>(w);
#pragma unroll
            for (int j = 0; j < NS; ++j) out[j] = to_f(e[j]);
        } else {
#pragma unroll
            for (int j = 0; j < NS; ++j) out[j] = f[j];
        }
    }
};

template <typename T>
__device__ __forceinline__ void load_tail(const T* __restrict__ p, long long t0, long long end, float (&out)[NS]) {
#pragma unroll
    for (int j = 0; j < NS; ++j) out[j] = (t0 + j < end) ? to_f(p[t0 + j]) : 0.f;
}

__device__ __forceinline__ void multiply(float (&p)[NS], const float (&c)[NS]) {
#pragma unroll
    for (int j = 0; j < NS; ++j) p[j] *= c[j];
}

// Transposed butterfly over the NS lanes of a row: after the step of offset O, lane n keeps the half of
// its values whose position has bit O equal to its own, summed with its partner's; at the end p[0] of
// lane n is the sum over the lanes of position n.
template <int O>
__device__ __forceinline__ void butterfly(float (&p)[NS], int n) {
    const bool hi = (n & O) != 0;
#pragma unroll
    for (int i = 0; i < O; ++i) {
        const float send = select(hi, p[i], p[i + O]);
        const float keep = select(hi, p[i + O], p[i]);
        p[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    if constexpr (O > 1) butterfly<O / 2>(p, n);
}

// Shared B/C: 24 warps per SM, enough for the sequential lanes to hide each other's latencies (at most 85
// registers; measured faster). The per-lane path measured slower under the same bound and keeps none.
#if SHARE_BC
#define SCAN_BOUNDS __launch_bounds__(32 * WARPS, (24 + WARPS - 1) / WARPS)
#else
#define SCAN_BOUNDS
#endif
extern "C" __global__ void SCAN_BOUNDS scan_fwd(
    const T_U* __restrict__ u, const T_DT* __restrict__ dt, const T_Z* __restrict__ z, T_OUT* __restrict__ out,
    const float* __restrict__ A2, const T_B* __restrict__ Bm, const T_C* __restrict__ Cm,
    const float* __restrict__ Dv, const float* __restrict__ bias,
    const float* __restrict__ h_init, float* __restrict__ chunk_state, float* __restrict__ chunk_dsum,
    float* __restrict__ last,
    long long rows, long long E, long long L, long long egroup, long long chunk_len,
    long long su_b, long long su_e, long long sd_b, long long sd_e, long long sz_b, long long sz_e,
    long long sB_b, long long sB_g, long long sB_n, long long sC_b, long long sC_g, long long sC_n) {
    constexpr int RPW = 32 / NS;                     // rows per warp
    __shared__ __align__(16) float s_dl[WARPS * 32];
    __shared__ __align__(16) float s_dlu[WARPS * 32];

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n = lane % NS;
    const int sub = lane / NS;
    const long long row_raw = ((long long)blockIdx.x * (blockDim.x >> 5) + warp) * RPW + sub;
    const bool row_ok = row_raw < rows;
    const long long row = row_ok ? row_raw : rows - 1;   // idle lanes follow a real row: shuffles need all
    const long long b = row / E;
    const long long e = row - b * E;
    const long long g = e / egroup;
    const long long nchunks = gridDim.y;
    const long long chunk = blockIdx.y;
    const long long start = chunk * chunk_len;
    const long long end = min(start + chunk_len, L);

    const float a2 = A2[e * NS + n];
    const float bias_e = HAS_BIAS ? bias[e] : 0.f;
    const float d_e = HAS_D ? Dv[e] : 0.f;
    const T_U* up = u + b * su_b + e * su_e;
    const T_DT* dp = dt + b * sd_b + e * sd_e;
    const T_B* Bp = Bm + b * sB_b + g * sB_g + n * sB_n;
    const T_C* Cp = Cm + b * sC_b + g * sC_g + n * sC_n;
    float* s_dl_w = s_dl + warp * 32;
    float* s_dlu_w = s_dlu + warp * 32;
    const float* my_dl = s_dl_w + sub * NS;
    const float* my_dlu = s_dlu_w + sub * NS;

    float h = 0.f;
    if (HAS_HINIT) h = h_init[(row * nchunks + chunk) * NS + n];
    float dsum = 0.f;
    const T_Z* zp = HAS_Z ? z + b * sz_b + e * sz_e : nullptr;
    T_OUT* op = out + row * L;

    // One block of NS positions from t0: lane n's own position t0+n (u, raw delta, z), B and C of its state.
    // c_of(p) multiplies each p[j] by C of position t0+j of the lane's state.
    auto block = [&](long long t0, float uv, float draw, float zv, const float (&bv)[NS], auto&& c_of) {
        const long long t = t0 + n;
        const bool valid = t < end;
        float dl = 0.f;
        if (valid) {
            dl = draw + bias_e;
            if (SOFTPLUS) dl = softplus(dl);
        }
        if (STATE_ONLY) dsum += dl;
        s_dl_w[lane] = dl;
        s_dlu_w[lane] = dl * uv;
        __syncwarp();
        float p[NS];
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            h = fmaf(fast_exp2(a2 * my_dl[j]), h, my_dlu[j] * bv[j]);
            p[j] = h;
        }
        __syncwarp();
        if (!STATE_ONLY) {
            c_of(p);
            if constexpr (NS > 1) butterfly<NS / 2>(p, n);
            if (valid && row_ok) {
                float y = p[0];
                if (HAS_D) y = fmaf(d_e, uv, y);
                if (HAS_Z) y *= zv / (1.f + __expf(-zv));
                store_f(op + t, y);
            }
        }
    };

    const long long nfull = (end - start) / NS;
    T_U ru{}, nu{};
    T_DT rd{}, nd{};
    T_Z rz{}, nz{};
    auto fetch_own = [&](long long t0, T_U& u_, T_DT& d_, T_Z& z_) {   // lane n's position t0+n
        u_ = up[t0 + n];
        d_ = dp[t0 + n];
        if (HAS_Z) z_ = zp[t0 + n];
    };
    auto rotate = [&]() {
        ru = nu;
        rd = nd;
        rz = nz;
    };
    if constexpr (SHARE_BC) {
        // All rows of the block share one (batch, group): B and C of a block of positions are loaded once
        // per thread block (one 16-byte word per loading thread, the next block's word held in a register)
        // into shared memory, double-buffered, where each lane reads its state's row.
        constexpr int WB = NS * (int)sizeof(T_B) / 16, WC = NS * (int)sizeof(T_C) / 16;   // words per state row
        constexpr int EB = 16 / (int)sizeof(T_B), EC = 16 / (int)sizeof(T_C);            // elements per word
        __shared__ __align__(16) float sB[2][NS][NS + 4];
        __shared__ __align__(16) float sC[2][NS][NS + 4];
        const int li = threadIdx.x;
        const bool loads_b = li < NS * WB;
        const bool loads_c = !STATE_ONLY && !loads_b && li < NS * WB + NS * WC;
        const int lc = li - NS * WB;
        const T_B* Bw = Bm + b * sB_b + g * sB_g + (loads_b ? (li / WB) * sB_n + (li % WB) * EB : 0);
        const T_C* Cw = Cm + b * sC_b + g * sC_g + (loads_c ? (lc / WC) * sC_n + (lc % WC) * EC : 0);
        auto word = [&](long long t0) -> uint4 {
            uint4 w{};
            if (loads_b) w = __ldg(reinterpret_cast<const uint4*>(Bw + t0));
            else if (loads_c) w = __ldg(reinterpret_cast<const uint4*>(Cw + t0));
            return w;
        };
        auto put = [&](int buf, uint4 w) {
            if (loads_b) {
                const T_B* e = reinterpret_cast<const T_B*>(&w);
#pragma unroll
                for (int i = 0; i < EB; ++i) sB[buf][li / WB][(li % WB) * EB + i] = to_f(e[i]);
            } else if (loads_c) {
                const T_C* e = reinterpret_cast<const T_C*>(&w);
#pragma unroll
                for (int i = 0; i < EC; ++i) sC[buf][lc / WC][(lc % WC) * EC + i] = to_f(e[i]);
            }
        };
        if (nfull > 0) {
            put(0, word(start));
            fetch_own(start, ru, rd, rz);
        }
        __syncthreads();
        for (long long k = 0; k < nfull; ++k) {
            const long long t0 = start + k * NS;
            const int buf = (int)(k & 1);
            uint4 next{};
            if (k + 1 < nfull) {
                next = word(t0 + NS);
                fetch_own(t0 + NS, nu, nd, nz);
            }
            float bv[NS];
#pragma unroll
            for (int j = 0; j < NS; j += 4) {
                const float4 x = *reinterpret_cast<const float4*>(&sB[buf][n][j]);
                bv[j] = x.x; bv[j + 1] = x.y; bv[j + 2] = x.z; bv[j + 3] = x.w;
            }
            block(t0, to_f(ru), to_f(rd), HAS_Z ? to_f(rz) : 0.f, bv, [&](float (&p)[NS]) {
#pragma unroll
                for (int j = 0; j < NS; j += 4) {
                    const float4 y = *reinterpret_cast<const float4*>(&sC[buf][n][j]);
                    p[j] *= y.x; p[j + 1] *= y.y; p[j + 2] *= y.z; p[j + 3] *= y.w;
                }
            });
            if (k + 1 < nfull) put(buf ^ 1, next);
            __syncthreads();
            rotate();
        }
    } else {
        Row<T_B, VEC_B> rb, nb;
        Row<T_C, VEC_C> rc, nc;
        auto fetch = [&](long long t0, Row<T_B, VEC_B>& B_, Row<T_C, VEC_C>& C_, T_U& u_, T_DT& d_, T_Z& z_) {
            fetch_own(t0, u_, d_, z_);
            B_.load(Bp, t0);
            if (!STATE_ONLY) C_.load(Cp, t0);
        };
        if (nfull > 0) fetch(start, rb, rc, ru, rd, rz);
        for (long long k = 0; k < nfull; ++k) {
            const long long t0 = start + k * NS;
            if (k + 1 < nfull) fetch(t0 + NS, nb, nc, nu, nd, nz);
            float bv[NS], cv[NS];
            rb.values(bv);
            if (!STATE_ONLY) rc.values(cv);
            block(t0, to_f(ru), to_f(rd), HAS_Z ? to_f(rz) : 0.f, bv, [&](float (&p)[NS]) { multiply(p, cv); });
            rb = nb;
            rc = nc;
            rotate();
        }
    }
    const long long tail = start + nfull * NS;
    if (tail < end) {
        const long long t = tail + n;
        const bool valid = t < end;
        float bv[NS], cv[NS];
        load_tail(Bp, tail, end, bv);
        if (!STATE_ONLY) load_tail(Cp, tail, end, cv);
        block(tail, valid ? to_f(up[t]) : 0.f, valid ? to_f(dp[t]) : 0.f, (HAS_Z && valid) ? to_f(zp[t]) : 0.f,
              bv, [&](float (&p)[NS]) { multiply(p, cv); });
    }
    if (STATE_ONLY) {   // each lane summed the deltas of its own positions: add up the row's lanes
#pragma unroll
        for (int o = NS / 2; o >= 1; o >>= 1) dsum += __shfl_xor_sync(0xffffffffu, dsum, o);
    }
    if (!row_ok) return;
    if (STATE_ONLY) {
        chunk_state[(row * nchunks + chunk) * NS + n] = h;
        if (n == 0) chunk_dsum[row * nchunks + chunk] = dsum;
    }
    if (WRITE_LAST && chunk == nchunks - 1) last[row * NS + n] = h;
}

// The state entering each chunk, one thread per (row, state): H[row, c] = exp2(A2 dsum[row, c-1]) H[row, c-1]
// + S[row, c-1] from H[row, 0] = 0, where S is a chunk's end state from a zero start (STATE_ONLY pass).
extern "C" __global__ void join_chunks(const float* __restrict__ S, const float* __restrict__ dsum,
                                       const float* __restrict__ A2, float* __restrict__ H, long long rows,
                                       long long E, long long nchunks) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * NS) return;
    const long long row = i / NS;
    const int n = (int)(i % NS);
    const float a2 = A2[(row % E) * NS + n];
    float h = 0.f;
    for (long long c = 0; c < nchunks; ++c) {
        H[(row * nchunks + c) * NS + n] = h;
        h = fmaf(fast_exp2(a2 * dsum[row * nchunks + c]), h, S[(row * nchunks + c) * NS + n]);
    }
}
