// Selective scan forward for CUDA inference, compiled at run time with NVRTC (cuda_scan.py). Two kernels:
// scan_fwd (this header; short sequences) and scan_rows (a thread per row, its own header further down; long
// sequences), sharing the chunk join and the helpers.
//
// scan_fwd, one lane per (row, state): a row (batch, channel) is walked sequentially by NS = N lanes, lane n
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

// The arguments both scan kernels take, in the order cuda_scan.selective_scan passes them.
#define SCAN_PARAMS \
    const T_U* __restrict__ u, const T_DT* __restrict__ dt, const T_Z* __restrict__ z, T_OUT* __restrict__ out, \
    const float* __restrict__ A2, const T_B* __restrict__ Bm, const T_C* __restrict__ Cm, \
    const float* __restrict__ Dv, const float* __restrict__ bias, \
    const float* __restrict__ h_init, float* __restrict__ chunk_state, float* __restrict__ chunk_dsum, \
    float* __restrict__ last, \
    long long rows, long long E, long long L, long long egroup, long long chunk_len, \
    long long su_b, long long su_e, long long sd_b, long long sd_e, long long sz_b, long long sz_e, \
    long long sB_b, long long sB_g, long long sB_n, long long sC_b, long long sC_g, long long sC_n

// Shared B/C: 24 warps per SM, enough for the sequential lanes to hide each other's latencies (at most 85
// registers; measured faster). The per-lane path measured slower under the same bound and keeps none.
#if SHARE_BC
#define SCAN_BOUNDS __launch_bounds__(32 * WARPS, (24 + WARPS - 1) / WARPS)
#else
#define SCAN_BOUNDS
#endif
extern "C" __global__ void SCAN_BOUNDS scan_fwd(
SCAN_PARAMS) {
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

// ---------------------------------------------------------------------------------------------------
// scan_rows: one thread per (row, chunk), the row's NS states in its registers.
//
// The lane kernel above spends most of its instructions on moving values between lanes (a butterfly per
// block of positions, warp-synchronous exchanges of delta); here a thread walks its row alone: per
// position one softplus, then per state one ex2.approx, one FMA for h and one for C.h, with B and C of
// the position read from shared memory (all threads of a block belong to one batch and B/C group, and
// one cooperative load per block of RP positions serves them all, double-buffered). A thread loads RP
// consecutive positions of u, delta (and z) of its row as 16-byte words where the host found them
// aligned (vec_rows), and writes its outputs the same way. Set by the host: RP (positions per step),
// ROWS_MIN_THREADS and ROWS_MAX_THREADS (threads per block). Inputs past the chunk's end count as delta 0:
// the state passes through unchanged. Chunks, the join and h_init work as for scan_fwd.
#define RPAD 4                // shared-memory row padding (floats): fewer bank conflicts, float4 reads kept

template <typename T>
struct Run {                  // RP consecutive positions of one row
    static constexpr int NW = RP * (int)sizeof(T) / 16;
    uint4 w[NW];
    __device__ __forceinline__ void load(const T* __restrict__ p, int valid, bool vec) {
        if (vec && valid == RP) {
#pragma unroll
            for (int k = 0; k < NW; ++k) w[k] = __ldg(reinterpret_cast<const uint4*>(p) + k);
        } else {
            T* e = reinterpret_cast<T*>(w);
#pragma unroll
            for (int j = 0; j < RP; ++j) e[j] = (j < valid) ? p[j] : T{};
        }
    }
    __device__ __forceinline__ float at(int j) const { return to_f(reinterpret_cast<const T*>(w)[j]); }
    __device__ __forceinline__ void put(int j, float v) { store_f(reinterpret_cast<T*>(w) + j, v); }
    __device__ __forceinline__ void store(T* __restrict__ p, int valid, bool vec) const {
        if (vec && valid == RP) {
#pragma unroll
            for (int k = 0; k < NW; ++k) reinterpret_cast<uint4*>(p)[k] = w[k];
        } else {
            const T* e = reinterpret_cast<const T*>(w);
#pragma unroll
            for (int j = 0; j < RP; ++j)
                if (j < valid) p[j] = e[j];
        }
    }
};

#define BC_PER_THREAD ((NS * RP + ROWS_MIN_THREADS - 1) / ROWS_MIN_THREADS)   // B (and C) elements a thread stages

extern "C" __global__ void __launch_bounds__(ROWS_MAX_THREADS, ROWS_MIN_BLOCKS) scan_rows(
SCAN_PARAMS, int vec_rows) {
    __shared__ __align__(16) float sB[2][RP][NS + RPAD];
    __shared__ __align__(16) float sC[2][RP][NS + RPAD];

    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const long long per_group = (egroup + nthreads - 1) / nthreads;   // blocks per (batch, group)
    const long long G = E / egroup;
    const long long blk = blockIdx.x % per_group;
    const long long g = (blockIdx.x / per_group) % G;
    const long long b = blockIdx.x / (per_group * G);
    const long long e_in = blk * nthreads + tid;
    const bool row_ok = e_in < egroup;
    const long long e = g * egroup + (row_ok ? e_in : 0);   // idle threads follow a real row's loads
    const long long row = b * E + e;
    const long long nchunks = gridDim.y;
    const long long chunk = blockIdx.y;
    const long long start = chunk * chunk_len;
    const long long end = min(start + chunk_len, L);
    const bool vec = vec_rows != 0;

    float a2[NS], h[NS];
#pragma unroll
    for (int n = 0; n < NS; ++n) {
        a2[n] = A2[e * NS + n];
        h[n] = HAS_HINIT ? h_init[(row * nchunks + chunk) * NS + n] : 0.f;
    }
    const float bias_e = HAS_BIAS ? bias[e] : 0.f;
    const float d_e = HAS_D ? Dv[e] : 0.f;
    const T_U* up = u + b * su_b + e * su_e;
    const T_DT* dp = dt + b * sd_b + e * sd_e;
    const T_Z* zp = HAS_Z ? z + b * sz_b + e * sz_e : nullptr;
    T_OUT* op = out + row * L;
    const T_B* Bg = Bm + b * sB_b + g * sB_g;
    const T_C* Cg = Cm + b * sC_b + g * sC_g;

    // B and C of RP positions from t0, element i of the block's NS x RP = (state i / RP, position i % RP).
    float nb[BC_PER_THREAD], nc[BC_PER_THREAD];
    auto fetch_bc = [&](long long t0, int valid) {
#pragma unroll
        for (int k = 0; k < BC_PER_THREAD; ++k) {
            const int i = tid + k * nthreads;
            const int n = i / RP, j = i % RP;
            const bool ok = i < NS * RP && j < valid;
            nb[k] = ok ? to_f(Bg[n * sB_n + t0 + j]) : 0.f;
            if (!STATE_ONLY) nc[k] = ok ? to_f(Cg[n * sC_n + t0 + j]) : 0.f;
        }
    };
    auto put_bc = [&](int buf) {
#pragma unroll
        for (int k = 0; k < BC_PER_THREAD; ++k) {
            const int i = tid + k * nthreads;
            if (i < NS * RP) {
                sB[buf][i % RP][i / RP] = nb[k];
                if (!STATE_ONLY) sC[buf][i % RP][i / RP] = nc[k];
            }
        }
    };

    const long long nsteps = (end - start + RP - 1) / RP;
    Run<T_U> ru, nu;
    Run<T_DT> rd, nd;
    Run<T_Z> rz, nz;
    Run<T_OUT> ro;
    float dsum = 0.f;
    if (nsteps > 0) {
        const int valid = (int)min((long long)RP, end - start);
        ru.load(up + start, valid, vec);
        rd.load(dp + start, valid, vec);
        if (HAS_Z && !STATE_ONLY) rz.load(zp + start, valid, vec);
        fetch_bc(start, valid);
        put_bc(0);
    }
    __syncthreads();
    for (long long k = 0; k < nsteps; ++k) {
        const long long t0 = start + k * RP;
        const int valid = (int)min((long long)RP, end - t0);
        const int buf = (int)(k & 1);
        if (k + 1 < nsteps) {
            const int nvalid = (int)min((long long)RP, end - t0 - RP);
            nu.load(up + t0 + RP, nvalid, vec);
            nd.load(dp + t0 + RP, nvalid, vec);
            if (HAS_Z && !STATE_ONLY) nz.load(zp + t0 + RP, nvalid, vec);
            fetch_bc(t0 + RP, nvalid);
        }
#pragma unroll
        for (int j = 0; j < RP; ++j) {
            float dl = rd.at(j) + bias_e;
            if (SOFTPLUS) dl = softplus(dl);
            dl = (j < valid) ? dl : 0.f;
            if (STATE_ONLY) dsum += dl;
            const float uv = ru.at(j);
            const float dlu = dl * uv;
            const float4* bq = reinterpret_cast<const float4*>(&sB[buf][j][0]);
            const float4* cq = reinterpret_cast<const float4*>(&sC[buf][j][0]);
            float acc0 = 0.f, acc1 = 0.f;
#pragma unroll
            for (int q = 0; q < NS / 4; ++q) {
                const float4 bb = bq[q];
                const float bv[4] = {bb.x, bb.y, bb.z, bb.w};
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int n = 4 * q + r;
                    h[n] = fmaf(fast_exp2(a2[n] * dl), h[n], dlu * bv[r]);
                }
                if (!STATE_ONLY) {
                    const float4 cc = cq[q];
                    acc0 = fmaf(cc.x, h[4 * q], acc0);
                    acc1 = fmaf(cc.y, h[4 * q + 1], acc1);
                    acc0 = fmaf(cc.z, h[4 * q + 2], acc0);
                    acc1 = fmaf(cc.w, h[4 * q + 3], acc1);
                }
            }
            if (!STATE_ONLY) {
                float y = acc0 + acc1;
                if (HAS_D) y = fmaf(d_e, uv, y);
                if (HAS_Z) {
                    const float zv = rz.at(j);
                    y *= zv / (1.f + __expf(-zv));
                }
                ro.put(j, y);
            }
        }
        if (!STATE_ONLY && row_ok) ro.store(op + t0, valid, vec);
        if (k + 1 < nsteps) put_bc(buf ^ 1);
        __syncthreads();
        ru = nu;
        rd = nd;
        if (HAS_Z && !STATE_ONLY) rz = nz;
    }
    if (!row_ok) return;
    if (STATE_ONLY) {
#pragma unroll
        for (int n = 0; n < NS; ++n) chunk_state[(row * nchunks + chunk) * NS + n] = h[n];
        chunk_dsum[row * nchunks + chunk] = dsum;
    }
    if (WRITE_LAST && chunk == nchunks - 1) {
#pragma unroll
        for (int n = 0; n < NS; ++n) last[row * NS + n] = h[n];
    }
}
