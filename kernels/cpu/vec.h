/* Vector helpers of the compiled kernels, included by kernels.c once per scalar type (define
 * SCALAR, VEC_LANES (lanes of 64 bytes) and TYPED(name) first): GCC/Clang vector types, which
 * the compiler lowers to whatever SIMD the target has, their unaligned load and store, the sum
 * of their lanes (one vector, or VEC_LANES at once by a butterfly), a transpose in registers,
 * and an exp that vectorizes.
 */

#define VEC TYPED(vec)
#define VEC_HALF TYPED(vec_half)
#define VEC_QUARTER TYPED(vec_quarter)
#define VLOAD TYPED(vload)
#define VSTORE TYPED(vstore)
#define VSUM TYPED(vsum)
#define VEXP TYPED(vexp)
#define VLEN ((int64_t)VEC_LANES)

typedef SCALAR VEC __attribute__((vector_size(64)));
typedef SCALAR VEC_HALF __attribute__((vector_size(32)));
typedef SCALAR VEC_QUARTER __attribute__((vector_size(16)));

/* Unaligned vector load and store (memcpy: no alignment or aliasing assumption). */
static inline VEC VLOAD(const SCALAR *p)
{
    VEC x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline void VSTORE(SCALAR *p, VEC x) { memcpy(p, &x, sizeof x); }

/* The sum of a vector's lanes by halving (register shuffles and adds; a lane loop or a memcpy
 * made GCC keep the loop's accumulators in memory). */
static inline SCALAR VSUM(VEC x)
{
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#if VEC_LANES == 16
    const VEC_HALF h = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7)
                       + __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    const VEC_QUARTER q = __builtin_shufflevector(h, h, 0, 1, 2, 3)
                          + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return (q[0] + q[2]) + (q[1] + q[3]);
#else
    const VEC_HALF h = __builtin_shufflevector(x, x, 0, 1, 2, 3)
                       + __builtin_shufflevector(x, x, 4, 5, 6, 7);
    const VEC_QUARTER q = __builtin_shufflevector(h, h, 0, 1) + __builtin_shufflevector(h, h, 2, 3);
    return q[0] + q[1];
#endif
#else
    SCALAR sum = 0;
    for (int l = 0; l < VEC_LANES; ++l)
        sum += x[l];
    return sum;
#endif
}

/* VEC_INDEX: lane indices for GCC's __builtin_shuffle (VEC_SHUFFLE is 1 where it exists). */
#define VEC_INDEX TYPED(vec_index)
#define VSUM_ROWS TYPED(vsum_rows)
#if defined(__GNUC__) && !defined(__clang__)
#define VEC_SHUFFLE 1
#if VEC_LANES == 16
typedef int32_t VEC_INDEX __attribute__((vector_size(64)));
#else
typedef int64_t VEC_INDEX __attribute__((vector_size(64)));
#endif
#else
#define VEC_SHUFFLE 0
#endif

#define VEC_INTERLEAVE TYPED(vec_interleave)
#define VEC_TRANSPOSE TYPED(vec_transpose)
#define MAT_TRANSPOSE TYPED(mat_transpose)

#if VEC_SHUFFLE
/* One level of the lane butterflies below, h = VEC_LANES / 2, ..., 2, 1: lo takes the first h
 * lanes of every 2h-lane block of a, then of b, block by block; hi takes the second h lanes. */
static inline __attribute__((always_inline)) void VEC_INTERLEAVE(VEC a, VEC b, int h, VEC *lo,
                                                                 VEC *hi)
{
#if VEC_LANES == 16
    const VEC_INDEX lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const VEC_INDEX lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    const VEC_INDEX lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const VEC_INDEX lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    const VEC_INDEX m = h == 8 ? lo8 : (h == 4 ? lo4 : (h == 2 ? lo2 : lo1));
#else
    const VEC_INDEX lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, lo2 = {0, 1, 8, 9, 4, 5, 12, 13};
    const VEC_INDEX lo1 = {0, 8, 2, 10, 4, 12, 6, 14};
    const VEC_INDEX m = h == 4 ? lo4 : (h == 2 ? lo2 : lo1);
#endif
    *lo = __builtin_shuffle(a, b, m);
    *hi = __builtin_shuffle(a, b, m + h);
}
#endif

/* The sums of the lanes of VEC_LANES vectors at once: lane i of the result is the sum of x[i]'s
 * lanes. A butterfly: each level adds the two halves of every lane block of a pair of vectors
 * (VEC_INTERLEAVE's lo + hi), so VEC_LANES - 1 pairs in all, against a shuffle tree per vector
 * for VSUM. */
static inline __attribute__((always_inline)) VEC VSUM_ROWS(const VEC *x)
{
#if VEC_SHUFFLE
    VEC s[VEC_LANES];
    for (int p = 0; p < VEC_LANES; ++p)
        s[p] = x[p];
#pragma GCC unroll 16
    for (int n = VEC_LANES / 2; n >= 1; n /= 2) {
#pragma GCC unroll 16
        for (int p = 0; p < n; ++p) {
            VEC lo, hi;
            VEC_INTERLEAVE(s[p], s[p + n], n, &lo, &hi);
            s[p] = lo + hi;
        }
    }
    return s[0];
#else
    VEC out;
    for (int l = 0; l < VEC_LANES; ++l)
        out[l] = VSUM(x[l]);
    return out;
#endif
}

/* Transposes VEC_LANES x VEC_LANES values in registers (x[i] lane l <- x[l] lane i): the same
 * butterfly as VSUM_ROWS, keeping both halves; pairing row p with row p + VEC_LANES / 2 into
 * rows 2p and 2p + 1 at every level gives the transpose in order. */
#if VEC_SHUFFLE
static inline __attribute__((always_inline)) void VEC_TRANSPOSE(VEC *x)
{
#pragma GCC unroll 16
    for (int h = VEC_LANES / 2; h >= 1; h /= 2) {
        VEC y[VEC_LANES];
#pragma GCC unroll 16
        for (int p = 0; p < VEC_LANES / 2; ++p)
            VEC_INTERLEAVE(x[p], x[p + VEC_LANES / 2], h, y + 2 * p, y + 2 * p + 1);
        for (int p = 0; p < VEC_LANES; ++p)
            x[p] = y[p];
    }
}
#endif

/* dst [cols, rows] = src [rows, cols] transposed: by VLEN x VLEN blocks in registers where
 * both sizes are whole vectors (GCC), else element by element (the sequence backward's kept
 * states and gradients). */
static void MAT_TRANSPOSE(int64_t rows, int64_t cols, const SCALAR *src, SCALAR *dst)
{
#if VEC_SHUFFLE
    if (rows % VLEN == 0 && cols % VLEN == 0) {
        for (int64_t i0 = 0; i0 < rows; i0 += VLEN)
            for (int64_t j0 = 0; j0 < cols; j0 += VLEN) {
                VEC x[VEC_LANES];
                for (int e = 0; e < VEC_LANES; ++e)
                    x[e] = VLOAD(src + (i0 + e) * cols + j0);
                VEC_TRANSPOSE(x);
                for (int e = 0; e < VEC_LANES; ++e)
                    VSTORE(dst + (j0 + e) * rows + i0, x[e]);
            }
        return;
    }
#endif
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
            dst[j * rows + i] = src[i * cols + j];
}

/* VEXP: exp in plain arithmetic, so loops that call it vectorize (a libm call per element does
 * not).
 *
 * exp(x) = 2^n exp(r),  n = round(x / ln 2),  r = x - n ln 2 (ln 2 split in a high part exact in
 * the scalar type and a low part, Cody and Waite 1980), |r| <= ln(2) / 2, and exp(r) by its
 * Taylor polynomial (degree 7 for float, 13 for double: truncation below 3e-9 and 2e-17
 * relative), 2^n built in the exponent bits. x is clamped to the range where 2^n stays a normal
 * number (about [-87, 88] for float, [-708, 709] for double): below it the result is the
 * smallest such value instead of a subnormal or 0, which only the kernels' SiLU and sigmoid
 * read, as 1 + exp(-x), where the difference vanishes. NaN in gives NaN out.
 */

#if VEC_LANES == 16
static inline float VEXP(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits */
    const float shifted = x * 1.44269504088896341f + 12582912.0f;
    const float n = shifted - 12582912.0f;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* Unsigned: for NaN (which the clamp passes through, so NaN comes out) the bits are no
     * small integer, and signed arithmetic on them would overflow (undefined behaviour). */
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
#else
static inline double VEXP(double x)
{
    x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
    const double shifted = x * 1.4426950408889634074 + 6755399441055744.0;  /* 1.5 * 2^52 */
    const double n = shifted - 6755399441055744.0;
    const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t bits; /* unsigned, as in the float version */
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - 0x4338000000000000ULL + 1023u) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
#endif
