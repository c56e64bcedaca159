/* The mLSTM block's training path around the cell, forward and backward, included by kernels.c
 * once per scalar type (define SCALAR, TYPED(name), DOT, SQRT first; vec.h and mlstm_sequence.h
 * must come before it: vec.h's exp keeps the per-element SiLU and sigmoid loops vectorized).
 *
 * Beck et al. 2024, "xLSTM" (arXiv:2405.04517), Section 2.4 and Figure 10 (right); the PyTorch
 * definition is MLSTMBlock.forward in xlstm_rl/cores/mlstm_block.py, whose autograd the tests
 * compare this with. Between the up-projection (up = [xm | z], [B, T, 2 inner]) and the
 * down-projection, per batch row b and step t:
 *
 *   pre_t  = conv_b + sum_{d < K} conv_w[K-1-d] * x_{t-d}    x_s = xm_s (s >= 0), window[K-1+s]
 *            (s < 0); a tap with t - d before the latest reset at or before t reads 0
 *   xc_t   = silu(pre_t);  q, k = block-diagonal maps of xc_t;  v = block-diagonal map of xm_t
 *   [i; f] = gate_w [q; k; v] + gate_b                          (the "pre" part, BT_FWD_PRE)
 *   h      = the cell over the sequence (mlstm_sequence.h, not here)
 *   out_t  = (layernorm_per_head(h_t) * norm_w + skip * xc_t) * silu(z_t)   (BT_FWD_POST)
 *
 * and the new window: the last K - 1 of [window, xm_0 .. xm_{T-1}], zeros before the last
 * reset. The backward runs the post part (BT_BWD_POST: dh for the cell, the skip's share of dxc,
 * dz), then, after the cell's backward, the pre part (BT_BWD_PRE: gates, q/k/v maps, SiLU,
 * conv; dxm, the window's gradient). Both parallelize over batch rows; the weight gradients are
 * summed per thread and added up at the end (BT_PARAMS lists their layout).
 */

#define BT_ARGS TYPED(bt_args)
#define BT_FWD_PRE_ROW TYPED(bt_fwd_pre_row)
#define BT_FWD_POST_ROW TYPED(bt_fwd_post_row)
#define BT_BWD_POST_ROW TYPED(bt_bwd_post_row)
#define BT_BWD_PRE_ROW TYPED(bt_bwd_pre_row)
#define BT_SUM_PARTS TYPED(bt_sum_parts)
#define BT_SILU TYPED(bt_silu)
#define BT_X TYPED(bt_x)

typedef struct {
    int64_t T, H, Dh, K, bs;           /* inner = H * Dh; W = K - 1 window rows */
    const SCALAR *up;                  /* [B, T, 2 inner]: xm | z */
    const SCALAR *window;              /* [B, K-1, inner] */
    const uint8_t *reset;              /* [B, T] or NULL */
    const SCALAR *conv_w, *conv_b;     /* [K, inner], [inner] */
    const SCALAR *taps, *taps_t;       /* [3, bs, inner] each: the q, k, v maps by tap, below */
    const SCALAR *gate_w, *gate_b;     /* [2H, 3 inner], [2H] */
    const SCALAR *norm_w, *skip;       /* [inner], [inner] */
    SCALAR norm_eps;
    SCALAR *xc_pre;                    /* [B, T, inner]: the conv output before its SiLU */
    SCALAR *qkv;                       /* [B, T, 3 inner]: q | k | v */
    SCALAR *gates;                     /* [B, T, 2H]: i | f */
    SCALAR *window_out;                /* [B, K-1, inner] */
    const SCALAR *h;                   /* [B, H, T, Dh]: the cell's output */
    SCALAR *out;                       /* [B, T, inner] */
    const SCALAR *dout;                /* [B, T, inner] */
    const SCALAR *dwindow_out;         /* [B, K-1, inner] or NULL */
    SCALAR *dh;                        /* [B, H, T, Dh] */
    SCALAR *dxc;                       /* [B, T, inner]: the skip's share of d xc */
    const SCALAR *dq, *dk, *dv;        /* [B, H, T, Dh] */
    const SCALAR *di, *df;             /* [B, H, T] */
    SCALAR *dup;                       /* [B, T, 2 inner] */
    SCALAR *dwindow;                   /* [B, K-1, inner] or NULL */
} BT_ARGS;

/* Weight gradients, in this order in one vector (the post part's first, then the pre part's):
 *   post: norm_w [inner], skip [inner]
 *   pre:  conv_w [K * inner], conv_b [inner], taps [3 * bs * inner], then gate_w [2H * 3 inner]
 *         and gate_b [2H], which mlstm_block_train.py fills (one matrix product over all rows)
 *
 * The block-diagonal maps (blocks of bs) by tap, so their loops run over all inner channels:
 * with base(c) = c - c % bs, out[c] = sum_{d < bs} x[base(c) + d] taps[m, d, c] for the maps
 * m = q, k (x = xc) and v (x = xm), i.e. taps[m, d, j bs + o] = W_m[j, d, o]; the backward
 * reads taps_t[m, o, j bs + d] = W_m[j, d, o] (d x[c] = sum_o dm[base(c) + o] taps_t[m, o, c])
 * and sums the taps' gradient g[m, d, c] = x[base(c) + d] dm[c]. */

static inline SCALAR BT_SILU(SCALAR x) { return x / ((SCALAR)1 + VEXP(-x)); }

/* x_s of row b: xm at step s >= 0, else the carried window row K - 1 + s. */
static inline const SCALAR *BT_X(const BT_ARGS *a, int64_t b, int64_t s)
{
    const int64_t inner = a->H * a->Dh, W = a->K - 1;
    return s >= 0 ? a->up + (b * a->T + s) * 2 * inner : a->window + (b * W + W + s) * inner;
}

#include "mlstm_block_maps.h"

static void BT_FWD_PRE_ROW(const void *args, int64_t b, void *scratch)
{
    const BT_ARGS *a = args;
    const int64_t T = a->T, H = a->H, inner = H * a->Dh, K = a->K, W = K - 1, bs = a->bs;
    SCALAR *restrict xc = scratch;
    int32_t *restrict base = (int32_t *)(xc + inner);
    for (int64_t c = 0; c < inner; ++c)
        base[c] = (int32_t)(c - c % bs);
    int64_t start = -K;                                   /* latest reset at or before t */
    for (int64_t t = 0; t < T; ++t) {
        if (a->reset != NULL && a->reset[b * T + t])
            start = t;
        SCALAR *restrict pre = a->xc_pre + (b * T + t) * inner;
        for (int64_t c = 0; c < inner; ++c)
            pre[c] = a->conv_b[c];
        for (int64_t d = 0; d < K && t - d >= start; ++d) {
            const SCALAR *restrict x = BT_X(a, b, t - d);
            const SCALAR *restrict w = a->conv_w + (K - 1 - d) * inner;
            for (int64_t c = 0; c < inner; ++c)
                pre[c] += x[c] * w[c];
        }
        for (int64_t c = 0; c < inner; ++c)
            xc[c] = BT_SILU(pre[c]);
        const SCALAR *restrict xm = BT_X(a, b, t);
        SCALAR *restrict qkv = a->qkv + (b * T + t) * 3 * inner;
        TYPED(bt_maps_fwd)(a, inner, xc, xm, base, qkv);
        TYPED(gate_rows)(2 * H, 3 * inner, a->gate_w, a->gate_b, qkv,
                         a->gates + (b * T + t) * 2 * H);
    }
    for (int64_t w = 0; w < W; ++w) {
        const int64_t s = T - W + w;
        SCALAR *restrict dst = a->window_out + (b * W + w) * inner;
        if (s >= start)
            memcpy(dst, BT_X(a, b, s), sizeof(SCALAR) * (size_t)inner);
        else
            memset(dst, 0, sizeof(SCALAR) * (size_t)inner);
    }
}

static void BT_FWD_POST_ROW(const void *args, int64_t b, void *scratch)
{
    (void)scratch;
    const BT_ARGS *a = args;
    const int64_t T = a->T, H = a->H, Dh = a->Dh, inner = H * Dh;
    for (int64_t t = 0; t < T; ++t) {
        const SCALAR *z = a->up + (b * T + t) * 2 * inner + inner;
        const SCALAR *pre = a->xc_pre + (b * T + t) * inner;
        SCALAR *out = a->out + (b * T + t) * inner;
        for (int64_t head = 0; head < H; ++head) {
            const SCALAR *hv = a->h + ((b * H + head) * T + t) * Dh;
            SCALAR mean, rstd;
            TYPED(head_moments)(hv, Dh, a->norm_eps, &mean, &rstd);
            for (int64_t e = 0; e < Dh; ++e) {
                const int64_t c = head * Dh + e;
                out[c] = ((hv[e] - mean) * rstd * a->norm_w[c] + a->skip[c] * BT_SILU(pre[c]))
                         * BT_SILU(z[c]);
            }
        }
    }
}

static void BT_BWD_POST_ROW(const void *args, int64_t b, void *scratch)
{
    const BT_ARGS *a = args;
    const int64_t T = a->T, H = a->H, Dh = a->Dh, inner = H * Dh;
    SCALAR *restrict g_norm = scratch, *restrict g_skip = g_norm + inner;
    SCALAR *restrict dhn = g_skip + inner, *restrict y = dhn + Dh;
    SCALAR *restrict xs = y + Dh, *restrict szs = xs + Dh;
    const SCALAR *restrict norm_w = a->norm_w, *restrict skip = a->skip;
    for (int64_t t = 0; t < T; ++t) {
        const SCALAR *restrict z = a->up + (b * T + t) * 2 * inner + inner;
        const SCALAR *restrict pre = a->xc_pre + (b * T + t) * inner;
        const SCALAR *restrict dout = a->dout + (b * T + t) * inner;
        SCALAR *restrict dz = a->dup + (b * T + t) * 2 * inner + inner;
        SCALAR *restrict dxc = a->dxc + (b * T + t) * inner;
        for (int64_t head = 0; head < H; ++head) {
            const SCALAR *restrict hv = a->h + ((b * H + head) * T + t) * Dh;
            const int64_t o = head * Dh;
            SCALAR mean, rstd, sum = 0, sum_y = 0;
            TYPED(head_moments)(hv, Dh, a->norm_eps, &mean, &rstd);
            for (int64_t e = 0; e < Dh; ++e) {  /* the exponentials apart: this vectorizes */
                xs[e] = BT_SILU(pre[o + e]);
                szs[e] = (SCALAR)1 / ((SCALAR)1 + VEXP(-z[o + e]));
            }
            int64_t e0 = 0;
            VEC sum_v = {0}, sum_yv = {0};
            if (Dh % VEC_LANES == 0) {  /* in vector types: GCC left the plain loop scalar */
                for (; e0 < Dh; e0 += VEC_LANES) {
                    const int64_t c = o + e0;
                    const VEC x = VLOAD(xs + e0), sz = VLOAD(szs + e0);
                    const VEC yv = (VLOAD(hv + e0) - mean) * rstd;
                    const VEC zc = VLOAD(z + c), dc = VLOAD(dout + c);
                    const VEC nw = VLOAD(norm_w + c), sk = VLOAD(skip + c);
                    const VEC mixed = yv * nw + sk * x, dmixed = dc * zc * sz;
                    VSTORE(y + e0, yv);
                    VSTORE(dz + c, dc * mixed * sz * ((SCALAR)1 + zc * ((SCALAR)1 - sz)));
                    VSTORE(g_norm + c, VLOAD(g_norm + c) + dmixed * yv);
                    VSTORE(g_skip + c, VLOAD(g_skip + c) + dmixed * x);
                    const VEC dn = dmixed * nw;
                    VSTORE(dxc + c, dmixed * sk);
                    VSTORE(dhn + e0, dn);
                    sum_v += dn;
                    sum_yv += dn * yv;
                }
                sum = VSUM(sum_v);
                sum_y = VSUM(sum_yv);
            }
            for (int64_t e = e0; e < Dh; ++e) {
                const int64_t c = o + e;
                const SCALAR x = xs[e], sz = szs[e];
                y[e] = (hv[e] - mean) * rstd;
                const SCALAR mixed = y[e] * norm_w[c] + skip[c] * x;
                const SCALAR dmixed = dout[c] * z[c] * sz;
                dz[c] = dout[c] * mixed * sz * ((SCALAR)1 + z[c] * ((SCALAR)1 - sz));
                g_norm[c] += dmixed * y[e];
                g_skip[c] += dmixed * x;
                dxc[c] = dmixed * skip[c];
                dhn[e] = dmixed * norm_w[c];
                sum += dhn[e];
                sum_y += dhn[e] * y[e];
            }
            sum /= (SCALAR)Dh;
            sum_y /= (SCALAR)Dh;
            SCALAR *dh = a->dh + ((b * H + head) * T + t) * Dh;
            for (int64_t e = 0; e < Dh; ++e)
                dh[e] = rstd * (dhn[e] - sum - y[e] * sum_y);
        }
    }
}

/* Zeroes row b's xm gradient (dup's first half) and dwindow, then adds the gradient of the
 * new conv window: its rows came from xm or from the old window, unless a reset cut them. */
static void TYPED(bt_window_bwd)(const BT_ARGS *a, int64_t b)
{
    const int64_t T = a->T, inner = a->H * a->Dh, W = a->K - 1;
    int64_t last = -a->K;
    for (int64_t t = 0; t < T; ++t) {
        memset(a->dup + (b * T + t) * 2 * inner, 0, sizeof(SCALAR) * (size_t)inner);
        if (a->reset != NULL && a->reset[b * T + t])
            last = t;
    }
    if (a->dwindow != NULL)
        memset(a->dwindow + b * W * inner, 0, sizeof(SCALAR) * (size_t)(W * inner));
    if (a->dwindow_out == NULL)
        return;
    for (int64_t w = 0; w < W; ++w) {
        const int64_t s = T - W + w;
        if (s < last || (s < 0 && a->dwindow == NULL))
            continue;
        SCALAR *dst = s >= 0 ? a->dup + (b * T + s) * 2 * inner
                             : a->dwindow + (b * W + W + s) * inner;
        const SCALAR *src = a->dwindow_out + (b * W + w) * inner;
        for (int64_t c = 0; c < inner; ++c)
            dst[c] += src[c];
    }
}

/* Step t of row b: dqkv = gate_w^T [di; df] + the cell's dq, dk, dv (the gate weights'
 * gradients are one matrix product over all rows and steps, in mlstm_block_train.py). */
static void TYPED(bt_gates_bwd)(const BT_ARGS *a, int64_t b, int64_t t, SCALAR *restrict dg,
                                SCALAR *restrict dqkv)
{
    const int64_t T = a->T, H = a->H, Dh = a->Dh, inner = H * Dh, G = 3 * inner;
    const int64_t Gv = G - G % VLEN;
    for (int64_t r = 0; r < 2 * H; ++r)
        dg[r] = (r < H ? a->di : a->df)[(b * H + r % H) * T + t];
    for (int64_t c = 0; c < Gv; c += VLEN) {  /* dqkv in a register, read and written once */
        VEC acc = {0};
        for (int64_t r = 0; r < 2 * H; ++r)
            acc += dg[r] * VLOAD(a->gate_w + r * G + c);
        VSTORE(dqkv + c, acc);
    }
    for (int64_t c = Gv; c < G; ++c) {
        SCALAR acc = 0;
        for (int64_t r = 0; r < 2 * H; ++r)
            acc += dg[r] * a->gate_w[r * G + c];
        dqkv[c] = acc;
    }
    for (int64_t head = 0; head < H; ++head) {
        const int64_t at = ((b * H + head) * T + t) * Dh, o = head * Dh;
        for (int64_t e = 0; e < Dh; ++e) {
            dqkv[o + e] += a->dq[at + e];
            dqkv[inner + o + e] += a->dk[at + e];
            dqkv[2 * inner + o + e] += a->dv[at + e];
        }
    }
}

/* Step t of row b (latest reset at `start`): the causal conv's backward from dpre, the
 * gradient of its output before the SiLU, into xm's (or the old window's) gradient and the
 * conv weights'. */
static void TYPED(bt_conv_bwd)(const BT_ARGS *a, int64_t b, int64_t t, int64_t start,
                               const SCALAR *restrict dpre, SCALAR *restrict g_conv,
                               SCALAR *restrict g_conv_b)
{
    const int64_t T = a->T, inner = a->H * a->Dh, K = a->K, W = K - 1;
    for (int64_t c = 0; c < inner; ++c)
        g_conv_b[c] += dpre[c];
    for (int64_t d = 0; d < K && t - d >= start; ++d) {
        const SCALAR *restrict x = BT_X(a, b, t - d);
        const SCALAR *restrict w = a->conv_w + (K - 1 - d) * inner;
        SCALAR *restrict gw = g_conv + (K - 1 - d) * inner;
        for (int64_t c = 0; c < inner; ++c)
            gw[c] += dpre[c] * x[c];
        SCALAR *dst = t - d >= 0 ? a->dup + (b * T + t - d) * 2 * inner
                    : (a->dwindow != NULL ? a->dwindow + (b * W + W + t - d) * inner : NULL);
        if (dst != NULL)
            for (int64_t c = 0; c < inner; ++c)
                dst[c] += w[c] * dpre[c];
    }
}

static void BT_BWD_PRE_ROW(const void *args, int64_t b, void *scratch)
{
    const BT_ARGS *a = args;
    const int64_t T = a->T, H = a->H, inner = H * a->Dh, K = a->K;
    const int64_t bs = a->bs, G = 3 * inner;
    SCALAR *g_conv = scratch, *g_conv_b = g_conv + K * inner, *g_taps = g_conv_b + inner;
    SCALAR *restrict dqkv = g_taps + 3 * bs * inner, *restrict xc = dqkv + G;
    SCALAR *restrict dpre = xc + inner, *restrict dg = dpre + inner;
    int32_t *restrict base = (int32_t *)(dg + 2 * H);
    for (int64_t c = 0; c < inner; ++c)
        base[c] = (int32_t)(c - c % bs);
    TYPED(bt_window_bwd)(a, b);
    int64_t start = -K;
    for (int64_t t = 0; t < T; ++t) {
        if (a->reset != NULL && a->reset[b * T + t])
            start = t;
        const SCALAR *restrict pre = a->xc_pre + (b * T + t) * inner;
        TYPED(bt_gates_bwd)(a, b, t, dg, dqkv);
        for (int64_t c = 0; c < inner; ++c)
            xc[c] = BT_SILU(pre[c]);
        memcpy(dpre, a->dxc + (b * T + t) * inner, sizeof(SCALAR) * (size_t)inner);
        TYPED(bt_maps_bwd)(a, inner, xc, BT_X(a, b, t), base, dqkv, dpre,
                           a->dup + (b * T + t) * 2 * inner, g_taps);
        for (int64_t c = 0; c < inner; ++c) {  /* the SiLU, in a loop of its own: it vectorizes */
            const SCALAR s = (SCALAR)1 / ((SCALAR)1 + VEXP(-pre[c]));
            dpre[c] *= s * ((SCALAR)1 + pre[c] * ((SCALAR)1 - s));
        }
        TYPED(bt_conv_bwd)(a, b, t, start, dpre, g_conv, g_conv_b);
    }
}

/* Runs fn over B rows with `scratch` bytes per thread whose first `count` scalars are partial
 * sums, then adds every thread's sums into out. Returns 0, or 1 (no memory: nothing ran). */
static int BT_SUM_PARTS(row_task fn, int64_t B, const BT_ARGS *args, int threads,
                        size_t scratch, int64_t count, SCALAR *out)
{
    char *mem = NULL;
    int used = 0;
    if (parallel_rows(fn, args, B, threads, scratch, &mem, &used))
        return 1;
    const size_t stride = (scratch + 63) / 64 * 64;
    for (int w = 0; w < used; ++w) {
        const SCALAR *part = (const SCALAR *)(mem + stride * (size_t)w);
        for (int64_t c = 0; c < count; ++c)
            out[c] += part[c];
    }
    free(mem);
    return 0;
}

/* The pre part's forward (xc_pre, qkv, gates, window_out) over B rows. Returns 0, or 1 when
 * memory cannot be allocated. */
int TYPED(xlstm_mlstm_block_fwd_pre)(int64_t B, const BT_ARGS *args, int threads)
{
    const size_t scratch = (sizeof(SCALAR) + sizeof(int32_t)) * (size_t)(args->H * args->Dh);
    return parallel_rows(BT_FWD_PRE_ROW, args, B, threads, scratch, NULL, NULL);
}

/* The post part's forward (out) over B rows. */
int TYPED(xlstm_mlstm_block_fwd_post)(int64_t B, const BT_ARGS *args, int threads)
{
    return parallel_rows(BT_FWD_POST_ROW, args, B, threads, 0, NULL, NULL);
}

/* The post part's backward: dh, the skip's dxc, dz (into dup); adds the norm_w and skip
 * gradients to grads[0 .. 2 inner). */
int TYPED(xlstm_mlstm_block_bwd_post)(int64_t B, const BT_ARGS *args, int threads, SCALAR *grads)
{
    const int64_t inner = args->H * args->Dh, count = 2 * inner;
    const size_t scratch = sizeof(SCALAR) * (size_t)(count + 4 * args->Dh);
    return BT_SUM_PARTS(BT_BWD_POST_ROW, B, args, threads, scratch, count, grads);
}

/* The pre part's backward: dxm (into dup), dwindow; adds the conv and q/k/v weight gradients
 * to grads (the pre layout above, up to the gate weights, which it leaves alone). */
int TYPED(xlstm_mlstm_block_bwd_pre)(int64_t B, const BT_ARGS *args, int threads, SCALAR *grads)
{
    const int64_t inner = args->H * args->Dh, K = args->K, bs = args->bs, G = 3 * inner;
    const int64_t count = K * inner + inner + 3 * bs * inner;
    const size_t scratch = sizeof(SCALAR) * (size_t)(count + G + 2 * inner + 2 * args->H)
                           + sizeof(int32_t) * (size_t)inner;
    return BT_SUM_PARTS(BT_BWD_PRE_ROW, B, args, threads, scratch, count, grads);
}

#undef BT_ARGS
#undef BT_FWD_PRE_ROW
#undef BT_FWD_POST_ROW
#undef BT_BWD_POST_ROW
#undef BT_BWD_PRE_ROW
#undef BT_SUM_PARTS
#undef BT_SILU
#undef BT_X
