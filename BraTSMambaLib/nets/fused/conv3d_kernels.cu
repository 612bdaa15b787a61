// 3x3x3 convolutions, stride 1, zero padding 1, NDHWC, bf16 or f16 in and out, fp32 accumulation, no bias,
// on tiles of 8x8x8 output voxels (one z-slice of 64 voxels per warp, 8 warps): the full-resolution
// convolutions of SegMamba's first stage (conv3d_kernels.py says why).
//
// conv3x3x3_c48, 48 -> 48 channels. Why it beats an implicit GEMM here: with 48 channels a filter tap is a K
// block of only 48, so cuDNN's and CUTLASS's kernels reload the input from L2 for every one of the 27 taps
// (im2col: 2.6 KB of loads per output voxel). This kernel loads an output tile's input halo into shared
// memory once (1000 voxels for a tile of 512) and runs all 27 taps from there with ldmatrix (any row
// addresses, so a shifted window of the halo is as cheap as an aligned one) and mma.sync m16n8k16; K = 48 and
// N = 48 are whole multiples of the instruction's 16 and 8, so no multiply-add is padding. The 27 taps'
// weights stay in shared memory for the whole (persistent) block: 124 KB + the 96 KB halo. Shared memory rows
// are 96 bytes (48 channels); the 16-byte unit u of row v is stored at unit u ^ ((v >> 2) & 1), which makes
// any 8 consecutive rows fall into 8 different bank groups, so every ldmatrix (8 rows of 16 bytes) is free of
// bank conflicts.
//
// conv3x3x3_c4, 4 -> 48 channels (the network input), and with RES the 1x1x1 4 -> 48 convolution of a
// residual branch from the same halo. A K step of 16 is one (kz, ky) filter row: the three x taps' 4
// channels (12 values, contiguous in the NDHWC halo) and 4 values of a fourth voxel that meet zero weights,
// so 9 steps cover the 27 taps (cuDNN pads the input to 8 channels and runs at 70 TFLOP/s). A row of 16
// values starts at any voxel, 8 bytes apart, but ldmatrix wants 16-byte rows: the halo is held twice, the
// second copy shifted by one voxel, and odd voxels are read from it. The 1x1 branch is the centre step with
// the 1x1 weights at the centre tap's place.
//
// Defines: HALF (1: fp16, 0: bf16), STATS (1: also write each tile's per-channel sum and sum of squares of
// its rounded outputs, for the instance norm that follows), RES (conv3x3x3_c4 only: also the 1x1 branch).

#define CI 48
#define CO 48
#define TZ 8
#define TY 8
#define TX 8
#define HZ (TZ + 2)
#define HY (TY + 2)
#define HX (TX + 2)
#define HALO (HZ * HY * HX)
#define UNITS (CI / 8)
#define ROW_BYTES (CI * 2)
#define W_ROWS (27 * CO)
#define THREADS 256
#define WARPS (THREADS / 32)

typedef unsigned short elem;

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Byte offset of 16-byte unit u of row v (the bank-conflict swizzle above).
__device__ __forceinline__ unsigned swz(int v, int u) {
    return (unsigned)(v * ROW_BYTES + ((u ^ ((v >> 2) & 1)) << 4));
}

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
#if HALF
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two floats rounded to the storage type, packed (lo at the lower address).
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
#if HALF
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

__device__ __forceinline__ float unpack_lo(unsigned p) {
#if HALF
    float f; asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l; }" : "=f"(f) : "r"(p)); return f;
#else
    return __uint_as_float(p << 16);
#endif
}

__device__ __forceinline__ float unpack_hi(unsigned p) {
#if HALF
    float f; asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "r"(p)); return f;
#else
    return __uint_as_float(p & 0xffff0000u);
#endif
}


// Each tile's per-channel sums of y and y^2 (s1, s2: this lane's columns 8j + 2cq + e) over the 8 lanes of
// a column group, then over the warps through shared memory; written to stats[(k * tiles + t) * 48 + c].
__device__ __forceinline__ void store_tile_stats(float (&s1)[6][2], float (&s2)[6][2], float* __restrict__ stats,
                                                 int tiles, int t, float (*s_red)[2][CO])
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, cq = lane & 3;
#pragma unroll
    for (int j = 0; j < 6; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) {
                s1[j][e] += __shfl_xor_sync(0xffffffffu, s1[j][e], o);
                s2[j][e] += __shfl_xor_sync(0xffffffffu, s2[j][e], o);
            }
    if (g == 0) {
#pragma unroll
        for (int j = 0; j < 6; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                s_red[warp][0][8 * j + 2 * cq + e] = s1[j][e];
                s_red[warp][1][8 * j + 2 * cq + e] = s2[j][e];
            }
    }
    __syncthreads();
    if (tid < 2 * CO) {
        const int k = tid / CO, c = tid - k * CO;
        float acc_s = 0.f;
#pragma unroll
        for (int v = 0; v < WARPS; ++v) acc_s += s_red[v][k][c];
        stats[((size_t)k * tiles + t) * CO + c] = acc_s;
    }
    __syncthreads();   // s_red is free again
}

// Stores MT m-tiles of accumulators (m-tile i covers rows y = 2(i0 + i), 2(i0 + i) + 1 of the warp's z-slice:
// row g -> x = g, row g + 8 -> the next y) at `out` (the warp's first voxel of the slice, column 2cq, x = g),
// and with STATS adds the rounded values to this lane's sums.
template <int MT>
__device__ __forceinline__ void store_rows(const float (&acc)[MT][6][4], elem* out, int i0, int W,
                                           float (&s1)[6][2], float (&s2)[6][2])
{
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            unsigned* row = (unsigned*)(out + (size_t)(2 * (i0 + i) + h) * W * CO);
#pragma unroll
            for (int j = 0; j < 6; ++j) {
                const unsigned v = pack2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                row[4 * j] = v;
#if STATS
                const float lo = unpack_lo(v), hi = unpack_hi(v);
                s1[j][0] += lo; s1[j][1] += hi; s2[j][0] += lo * lo; s2[j][1] += hi * hi;
#endif
            }
        }
}

__device__ __forceinline__ void zero_sums(float (&s1)[6][2], float (&s2)[6][2]) {
#pragma unroll
    for (int j = 0; j < 6; ++j) s1[j][0] = s1[j][1] = s2[j][0] = s2[j][1] = 0.f;
}

template <int MT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][6][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 6; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;
}

// acc[i][j] += A_i x B_j for MT m-tiles of 16 rows and the six n-tiles of 8 output channels (b[p] holds
// n-tiles 2p and 2p + 1, each as its two k halves).
template <int MT>
__device__ __forceinline__ void mma_tiles(float (&acc)[MT][6][4], const unsigned (&a)[MT][4], const unsigned (&b)[3][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < 6; ++j)
            mma16816(acc[i][j], a[i], b[j >> 1][(j & 1) * 2], b[j >> 1][(j & 1) * 2 + 1]);
}

// x: [N, D, H, W, 48]; w: [27 taps (kz, ky, kx), 48 out, 48 in]; y: [N, D, H, W, 48]; D, H, W multiples
// of 8. stats (STATS only): [2, tiles, 48] floats, per tile the sums of y and of y^2 over its 512 voxels
// (tiles are numbered sample-major, so [k, n * tiles_per_sample + i, c] are sample n's).
extern "C" __global__ void __launch_bounds__(THREADS, 1)
conv3x3x3_c48(const elem* __restrict__ x, const elem* __restrict__ w, elem* __restrict__ y,
              float* __restrict__ stats, int D, int H, int W, int tiles)
{
    extern __shared__ __align__(128) unsigned char smem[];
#if STATS
    __shared__ float s_red[WARPS][2][CO];
#endif
    const unsigned s_w = smem_u32(smem);
    const unsigned s_x = s_w + W_ROWS * ROW_BYTES;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    for (int c = tid; c < W_ROWS * UNITS; c += THREADS) {
        const int r = c / UNITS, u = c - r * UNITS;
        cp_async16(s_w + swz(r, u), w + (size_t)r * CI + u * 8, 16);
    }
    asm volatile("cp.async.commit_group;");

    // ldmatrix lane roles: matrix q = lane / 8, row r = lane % 8 of it.
    const int q = lane >> 3, r = lane & 7;
    // A (16 voxels x 16 channels) of m-tile i: rows y = 2i + (q & 1), x = r of z-slice `warp`; unit 2s + q / 2.
    const int a_row = (warp * HY + (q & 1)) * HX + r;
    // B (16 channels x 2 n-tiles of 8) of pair p: out channel 16p + 8(q / 2) + r, unit 2s + (q & 1).
    const int b_row = 8 * (q >> 1) + r;
    const int g = lane >> 2, cq = lane & 3;   // accumulator roles: row g (and g + 8), columns 2cq, 2cq + 1

    const int tw = W / TX, th = H / TY, td = D / TZ;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int tx = t % tw, ty = (t / tw) % th, tz = (t / (tw * th)) % td, n = t / (tw * th * td);
        const int z0 = tz * TZ, y0 = ty * TY, x0 = tx * TX;
        __syncthreads();   // the previous tile's reads of the halo are done
        for (int c = tid; c < HALO * UNITS; c += THREADS) {
            const int v = c / UNITS, u = c - v * UNITS;
            const int hz = v / (HY * HX), hy = (v / HX) % HY, hx = v % HX;
            const int gz = z0 + hz - 1, gy = y0 + hy - 1, gx = x0 + hx - 1;
            const bool in = (unsigned)gz < (unsigned)D && (unsigned)gy < (unsigned)H && (unsigned)gx < (unsigned)W;
            const elem* src = in ? x + ((((size_t)n * D + gz) * H + gy) * W + gx) * CI + u * 8 : x;
            cp_async16(s_x + swz(v, u), src, in ? 16 : 0);
        }
        asm volatile("cp.async.commit_group;");
        asm volatile("cp.async.wait_group 0;" ::: "memory");
        __syncthreads();

        float acc[4][6][4];
        zero_acc(acc);

#pragma unroll 1
        for (int dzy = 0; dzy < 9; ++dzy) {
            const int dz = dzy / 3, dy = dzy - dz * 3;
#pragma unroll
            for (int dx = 0; dx < 3; ++dx) {
                const int tap = dzy * 3 + dx;
                const int voff = (dz * HY + dy) * HX + dx;
#pragma unroll
                for (int s = 0; s < 3; ++s) {
                    unsigned a[4][4], b[3][4];
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        ldmatrix_x4(a[i], s_x + swz(a_row + voff + 2 * i * HX, 2 * s + (q >> 1)));
#pragma unroll
                    for (int p = 0; p < 3; ++p)
                        ldmatrix_x4(b[p], s_w + swz(tap * CO + 16 * p + b_row, 2 * s + (q & 1)));
                    mma_tiles(acc, a, b);
                }
            }
        }

        // Out: m-tile i, row g -> voxel (warp, 2i, g), row g + 8 -> (warp, 2i + 1, g); n-tile j -> 8j + 2cq.
        float s1[6][2], s2[6][2];
        zero_sums(s1, s2);
        const size_t plane = (size_t)H * W;
        store_rows<4>(acc, y + (((size_t)n * D + z0 + warp) * plane + (size_t)y0 * W + x0 + g) * CO + 2 * cq, 0, W,
                      s1, s2);
#if STATS
        store_tile_stats(s1, s2, stats, tiles, t, s_red);
#endif
    }
}

// conv3x3x3_c4. x: [N, D, H, W, 4]; w: [9 (kz, ky), 48 out, 16] with w[s, o, 4 kx + c] = weight[o, c, kz, ky, kx]
// and zeros at 12..15; w1 (RES): [48 out, 16] with w1[o, 4 + c] = the 1x1 weight[o, c], zeros elsewhere;
// y, y1: [N, D, H, W, 48]; stats (STATS): [2 outputs (y, y1), 2, tiles, 48].
#define C4_ROW 96                                  // a halo row: 12 voxels x 4 channels x 2 bytes
#define C4_HX 12
#define C4_ROWS (HZ * HY)
#define C4_COPY (C4_ROWS * C4_ROW + 64)            // the shifted copy starts 64 bytes off a 128-byte line
#define C4_W_BYTES ((9 + 1) * CO * 32)

__device__ __forceinline__ unsigned wswz(int v, int u) {   // 32-byte weight rows, 2 units, swizzled as above
    return (unsigned)(v * 32 + ((u ^ ((v >> 2) & 1)) << 4));
}

__device__ __forceinline__ void cp_async8(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" :: "r"(dst), "l"(src), "r"(src_bytes));
}

// One K step of 16 for m-tiles i = 0, 1: A rows from halo row `a_row` + 2i (the lane's address in `a_base`),
// B from the weight block starting at weight row `w_row`.
__device__ __forceinline__ void c4_step(float (&acc)[2][6][4], unsigned a_base, int a_row, unsigned s_w, int w_row,
                                        int b_row, int b_unit) {
    unsigned a[2][4], b[3][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) ldmatrix_x4(a[i], a_base + (a_row + 2 * i) * C4_ROW);
#pragma unroll
    for (int p = 0; p < 3; ++p) ldmatrix_x4(b[p], s_w + wswz(w_row + 16 * p + b_row, b_unit));
    mma_tiles(acc, a, b);
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
conv3x3x3_c4(const elem* __restrict__ x, const elem* __restrict__ w, const elem* __restrict__ w1,
             elem* __restrict__ y, elem* __restrict__ y1, float* __restrict__ stats, int D, int H, int W, int tiles)
{
    extern __shared__ __align__(128) unsigned char smem[];
#if STATS
    __shared__ float s_red[WARPS][2][CO];
#endif
    const unsigned s_w = smem_u32(smem);
    const unsigned s_x0 = s_w + C4_W_BYTES, s_x1 = s_x0 + C4_COPY;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    for (int c = tid; c < 9 * CO * 2; c += THREADS)
        cp_async16(s_w + wswz(c >> 1, c & 1), w + (size_t)c * 8, 16);
#if RES
    for (int c = tid; c < CO * 2; c += THREADS)
        cp_async16(s_w + wswz(9 * CO + (c >> 1), c & 1), w1 + (size_t)c * 8, 16);
#endif
    // Voxels 10 and 11 of copy 0's rows and 9..11 of copy 1's are never loaded; they meet zero weights but
    // must be finite.
    for (int c = tid; c < C4_ROWS * 5; c += THREADS) {
        const int v = c / 5, k = c - v * 5;
        const unsigned dst = k < 2 ? s_x0 + v * C4_ROW + (10 + k) * 8 : s_x1 + v * C4_ROW + (7 + k) * 8;
        asm volatile("st.shared.v2.u32 [%0], {%1, %1};" :: "r"(dst), "r"(0));
    }
    asm volatile("cp.async.commit_group;");

    const int q = lane >> 3, r = lane & 7;
    // A of m-tile i at step (kz, ky): voxel row (warp + kz, 2i + (q & 1) + ky), x = r, plus 2 voxels for q >= 2;
    // odd x read copy 1 (voxel v at position v - 1).
    const unsigned a_base = ((r & 1) ? s_x1 + (r - 1) * 8 : s_x0 + r * 8) + (q >> 1) * 16
                          + (warp * HY + (q & 1)) * C4_ROW;
    const int b_row = 8 * (q >> 1) + r, b_unit = q & 1;
    const int g = lane >> 2, cq = lane & 3;

    const int tw = W / TX, th = H / TY, td = D / TZ;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int tx = t % tw, ty = (t / tw) % th, tz = (t / (tw * th)) % td, n = t / (tw * th * td);
        const int z0 = tz * TZ, y0 = ty * TY, x0 = tx * TX;
        __syncthreads();
        for (int c = tid; c < C4_ROWS * 19; c += THREADS) {   // per halo row: 10 voxels to copy 0, 9 to copy 1
            const int v = c / 19, k = c - v * 19;
            const int hz = v / HY, hy = v - hz * HY, hx = k < 10 ? k : k - 9;
            const int gz = z0 + hz - 1, gy = y0 + hy - 1, gx = x0 + hx - 1;
            const bool in = (unsigned)gz < (unsigned)D && (unsigned)gy < (unsigned)H && (unsigned)gx < (unsigned)W;
            const elem* src = in ? x + ((((size_t)n * D + gz) * H + gy) * W + gx) * 4 : x;
            const unsigned dst = k < 10 ? s_x0 + v * C4_ROW + hx * 8 : s_x1 + v * C4_ROW + (hx - 1) * 8;
            cp_async8(dst, src, in ? 8 : 0);
        }
        asm volatile("cp.async.commit_group;");
        asm volatile("cp.async.wait_group 0;" ::: "memory");
        __syncthreads();

        const size_t plane = (size_t)H * W;
        const size_t first = (((size_t)n * D + z0 + warp) * plane + (size_t)y0 * W + x0 + g) * CO + 2 * cq;
        float s1[6][2], s2[6][2];
        zero_sums(s1, s2);
#pragma unroll 1
        for (int half = 0; half < 2; ++half) {   // m-tiles 2 half, 2 half + 1 (rows y 4 half .. 4 half + 3)
            float acc[2][6][4];
            zero_acc(acc);
#pragma unroll
            for (int s = 0; s < 9; ++s) {
                const int dz = s / 3, dy = s - dz * 3;
                c4_step(acc, a_base, dz * HY + dy + 4 * half, s_w, s * CO, b_row, b_unit);
            }
            store_rows<2>(acc, y + first, 2 * half, W, s1, s2);
        }
#if STATS
        store_tile_stats(s1, s2, stats, tiles, t, s_red);
#endif
#if RES
        zero_sums(s1, s2);
#pragma unroll 1
        for (int half = 0; half < 2; ++half) {
            float acc[2][6][4];
            zero_acc(acc);
            c4_step(acc, a_base, HY + 1 + 4 * half, s_w, 9 * CO, b_row, b_unit);   // the centre voxel
            store_rows<2>(acc, y1 + first, 2 * half, W, s1, s2);
        }
#if STATS
        store_tile_stats(s1, s2, stats + (size_t)2 * tiles * CO, tiles, t, s_red);
#endif
#endif
    }
}
