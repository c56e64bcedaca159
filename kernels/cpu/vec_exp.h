/* exp in plain arithmetic, so loops that call it vectorize (a libm call per element does not),
 * included by kernels.c once per scalar type (define SCALAR, TYPED(name) first).
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
static inline float TYPED(vexp)(float x)
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
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - 0x4B400000 + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
#else
static inline double TYPED(vexp)(double x)
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
    int64_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - 0x4338000000000000LL + 1023) * ((int64_t)1 << 52);
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
#endif
