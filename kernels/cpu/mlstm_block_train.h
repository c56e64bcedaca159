/* The mLSTM block's training path around the cell, forward and backward, included by kernels.c
 * once per scalar type (define SCALAR, TYPED(name), DOT, EXP, SQRT first).
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
    const SCALAR *qk_w, *v_w;          /* [nb, bs, 2 bs], [nb, bs, bs] */
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
 *   pre:  conv_w [K * inner], conv_b [inner], qk_w [inner * 2 bs], v_w [inner * bs],
 *         gate_w [2H * 3 inner], gate_b [2H] */

static inline SCALAR BT_SILU(SCALAR x) { return x / ((SCALAR)1 + EXP(-x)); }

/* x_s of row b: xm at step s >= 0, else the carried window row K - 1 + s. */
static inline const SCALAR *BT_X(const BT_ARGS *a, int64_t b, int64_t s)
{
    const int64_t inner = a->H * a->Dh, W = a->K - 1;
    return s >= 0 ? a->up + (b * a->T + s) * 2 * inner : a->window + (b * W + W + s) * inner;
}

static void BT_FWD_PRE_ROW(const void *args, int64_t b, void *scratch)
{
    const BT_ARGS *a = args;
    const int64_t T = a->T, H = a->H, inner = H * a->Dh, K = a->K, W = K - 1, bs = a->bs;
    const int64_t nb = inner / bs;
    SCALAR *xc = scratch;
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
        for (int64_t j = 0; j < nb; ++j) {
            SCALAR *restrict qj = qkv + j * bs, *restrict kj = qkv + inner + j * bs;
            SCALAR *restrict vj = qkv + 2 * inner + j * bs;
            for (int64_t o = 0; o < bs; ++o)
                qj[o] = kj[o] = vj[o] = 0;
            for (int64_t d = 0; d < bs; ++d) {
                const SCALAR xcd = xc[j * bs + d], xmd = xm[j * bs + d];
                const SCALAR *restrict wqk = a->qk_w + (j * bs + d) * 2 * bs;
                const SCALAR *restrict wv = a->v_w + (j * bs + d) * bs;
                for (int64_t o = 0; o < bs; ++o) {
                    qj[o] += xcd * wqk[o];
                    kj[o] += xcd * wqk[bs + o];
                    vj[o] += xmd * wv[o];
                }
            }
        }
        SCALAR *gates = a->gates + (b * T + t) * 2 * H;
        for (int64_t r = 0; r < 2 * H; ++r)
            gates[r] = DOT(3 * inner, a->gate_w + r * 3 * inner, qkv) + a->gate_b[r];
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

/* Mean and 1 / std of one head's cell output (biased variance, as layer_norm). */
static inline void TYPED(bt_moments)(const SCALAR *h, int64_t Dh, SCALAR eps, SCALAR *mean,
                                     SCALAR *rstd)
{
    SCALAR mu = 0, var = 0;
    for (int64_t e = 0; e < Dh; ++e)
        mu += h[e];
    mu /= (SCALAR)Dh;
    for (int64_t e = 0; e < Dh; ++e)
        var += (h[e] - mu) * (h[e] - mu);
    *mean = mu;
    *rstd = (SCALAR)1 / SQRT(var / (SCALAR)Dh + eps);
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
            TYPED(bt_moments)(hv, Dh, a->norm_eps, &mean, &rstd);
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
    SCALAR *g_norm = scratch, *g_skip = g_norm + inner, *dhn = g_skip + inner;
    for (int64_t t = 0; t < T; ++t) {
        const SCALAR *z = a->up + (b * T + t) * 2 * inner + inner;
        const SCALAR *pre = a->xc_pre + (b * T + t) * inner;
        const SCALAR *dout = a->dout + (b * T + t) * inner;
        SCALAR *dz = a->dup + (b * T + t) * 2 * inner + inner;
        SCALAR *dxc = a->dxc + (b * T + t) * inner;
        for (int64_t head = 0; head < H; ++head) {
            const SCALAR *hv = a->h + ((b * H + head) * T + t) * Dh;
            SCALAR mean, rstd, sum = 0, sum_y = 0;
            TYPED(bt_moments)(hv, Dh, a->norm_eps, &mean, &rstd);
            for (int64_t e = 0; e < Dh; ++e) {
                const int64_t c = head * Dh + e;
                const SCALAR y = (hv[e] - mean) * rstd, x = BT_SILU(pre[c]);
                const SCALAR sz = (SCALAR)1 / ((SCALAR)1 + EXP(-z[c]));
                const SCALAR mixed = y * a->norm_w[c] + a->skip[c] * x;
                const SCALAR dmixed = dout[c] * z[c] * sz;
                dz[c] = dout[c] * mixed * sz * ((SCALAR)1 + z[c] * ((SCALAR)1 - sz));
                g_norm[c] += dmixed * y;
                g_skip[c] += dmixed * x;
                dxc[c] = dmixed * a->skip[c];
                dhn[e] = dmixed * a->norm_w[c];
                sum += dhn[e];
                sum_y += dhn[e] * y;
            }
            sum /= (SCALAR)Dh;
            sum_y /= (SCALAR)Dh;
            SCALAR *dh = a->dh + ((b * H + head) * T + t) * Dh;
            for (int64_t e = 0; e < Dh; ++e)
                dh[e] = rstd * (dhn[e] - sum - (hv[e] - mean) * rstd * sum_y);
        }
    }
}

static void BT_BWD_PRE_ROW(const void *args, int64_t b, void *scratch)
{
    const BT_ARGS *a = args;
    const int64_t T = a->T, H = a->H, Dh = a->Dh, inner = H * Dh, K = a->K, W = K - 1;
    const int64_t bs = a->bs, nb = inner / bs, G = 3 * inner;
    SCALAR *g_conv = scratch, *g_conv_b = g_conv + K * inner, *g_qk = g_conv_b + inner;
    SCALAR *g_v = g_qk + inner * 2 * bs, *g_gate = g_v + inner * bs, *g_gate_b = g_gate + 2 * H * G;
    SCALAR *dqkv = g_gate_b + 2 * H, *xc = dqkv + G, *dpre = xc + inner;
    int64_t last = -K;
    for (int64_t t = 0; t < T; ++t) {
        memset(a->dup + (b * T + t) * 2 * inner, 0, sizeof(SCALAR) * (size_t)inner);
        if (a->reset != NULL && a->reset[b * T + t])
            last = t;
    }
    if (a->dwindow != NULL)
        memset(a->dwindow + b * W * inner, 0, sizeof(SCALAR) * (size_t)(W * inner));
    if (a->dwindow_out != NULL) {
        for (int64_t w = 0; w < W; ++w) {
            const int64_t s = T - W + w;
            if (s < last || (s < 0 && a->dwindow == NULL))
                continue;
            SCALAR *dst = s >= 0 ? a->dup + (b * T + s) * 2 * inner : a->dwindow + (b * W + W + s) * inner;
            const SCALAR *src = a->dwindow_out + (b * W + w) * inner;
            for (int64_t c = 0; c < inner; ++c)
                dst[c] += src[c];
        }
    }
    int64_t start = -K;
    for (int64_t t = 0; t < T; ++t) {
        if (a->reset != NULL && a->reset[b * T + t])
            start = t;
        const SCALAR *qkv = a->qkv + (b * T + t) * G;
        const SCALAR *pre = a->xc_pre + (b * T + t) * inner;
        const SCALAR *xm = BT_X(a, b, t);
        /* gates: dqkv = gate_w^T [di; df], and their weight gradients */
        for (int64_t c = 0; c < G; ++c)
            dqkv[c] = 0;
        for (int64_t r = 0; r < 2 * H; ++r) {
            const int64_t head = r % H;
            const SCALAR dg = (r < H ? a->di : a->df)[(b * H + head) * T + t];
            const SCALAR *restrict gw = a->gate_w + r * G;
            SCALAR *restrict gg = g_gate + r * G;
            g_gate_b[r] += dg;
            for (int64_t c = 0; c < G; ++c) {
                dqkv[c] += dg * gw[c];
                gg[c] += dg * qkv[c];
            }
        }
        for (int64_t head = 0; head < H; ++head) {
            const int64_t at = ((b * H + head) * T + t) * Dh, o = head * Dh;
            for (int64_t e = 0; e < Dh; ++e) {
                dqkv[o + e] += a->dq[at + e];
                dqkv[inner + o + e] += a->dk[at + e];
                dqkv[2 * inner + o + e] += a->dv[at + e];
            }
        }
        /* block-diagonal maps: d xc, d xm and their weight gradients */
        for (int64_t c = 0; c < inner; ++c)
            xc[c] = BT_SILU(pre[c]);
        SCALAR *dxm = a->dup + (b * T + t) * 2 * inner;
        const SCALAR *dxc_skip = a->dxc + (b * T + t) * inner;
        for (int64_t j = 0; j < nb; ++j) {
            const SCALAR *dq = dqkv + j * bs, *dk = dqkv + inner + j * bs;
            const SCALAR *dv = dqkv + 2 * inner + j * bs;
            for (int64_t d = 0; d < bs; ++d) {
                const int64_t c = j * bs + d;
                const SCALAR *restrict wqk = a->qk_w + c * 2 * bs;
                const SCALAR *restrict wv = a->v_w + c * bs;
                SCALAR *restrict gqk = g_qk + c * 2 * bs, *restrict gv = g_v + c * bs;
                SCALAR sum_c = 0, sum_m = 0;
                for (int64_t o = 0; o < bs; ++o) {
                    sum_c += dq[o] * wqk[o] + dk[o] * wqk[bs + o];
                    sum_m += dv[o] * wv[o];
                    gqk[o] += xc[c] * dq[o];
                    gqk[bs + o] += xc[c] * dk[o];
                    gv[o] += xm[c] * dv[o];
                }
                dxm[c] += sum_m;
                const SCALAR s = (SCALAR)1 / ((SCALAR)1 + EXP(-pre[c]));
                dpre[c] = (sum_c + dxc_skip[c]) * s * ((SCALAR)1 + pre[c] * ((SCALAR)1 - s));
            }
        }
        /* the causal conv */
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
}

/* Adds the per-thread partial sums (count scalars at the start of each thread's scratch) into
 * out. */
static void BT_SUM_PARTS(const char *mem, size_t stride, int used, int64_t count, SCALAR *out)
{
    for (int w = 0; w < used; ++w) {
        const SCALAR *part = (const SCALAR *)(mem + stride * (size_t)w);
        for (int64_t c = 0; c < count; ++c)
            out[c] += part[c];
    }
}

/* The pre part's forward (xc_pre, qkv, gates, window_out) over B rows. Returns 0, or 1 when
 * memory cannot be allocated. */
int TYPED(xlstm_mlstm_block_fwd_pre)(int64_t B, const BT_ARGS *args, int threads)
{
    const size_t scratch = sizeof(SCALAR) * (size_t)(args->H * args->Dh);
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
    const size_t scratch = sizeof(SCALAR) * (size_t)(count + args->Dh);
    char *mem = NULL;
    int used = 0;
    if (parallel_rows(BT_BWD_POST_ROW, args, B, threads, scratch, &mem, &used))
        return 1;
    BT_SUM_PARTS(mem, (scratch + 63) / 64 * 64, used, count, grads);
    free(mem);
    return 0;
}

/* The pre part's backward: dxm (into dup), dwindow; adds the conv, q/k/v and gate weight
 * gradients to grads (the pre layout above). */
int TYPED(xlstm_mlstm_block_bwd_pre)(int64_t B, const BT_ARGS *args, int threads, SCALAR *grads)
{
    const int64_t inner = args->H * args->Dh, K = args->K, bs = args->bs, G = 3 * inner;
    const int64_t count = K * inner + inner + inner * 2 * bs + inner * bs + 2 * args->H * G
                          + 2 * args->H;
    const size_t scratch = sizeof(SCALAR) * (size_t)(count + G + 2 * inner);
    char *mem = NULL;
    int used = 0;
    if (parallel_rows(BT_BWD_PRE_ROW, args, B, threads, scratch, &mem, &used))
        return 1;
    BT_SUM_PARTS(mem, (scratch + 63) / 64 * 64, used, count, grads);
    free(mem);
    return 0;
}

#undef BT_ARGS
#undef BT_FWD_PRE_ROW
#undef BT_FWD_POST_ROW
#undef BT_BWD_POST_ROW
#undef BT_BWD_PRE_ROW
#undef BT_SUM_PARTS
#undef BT_SILU
#undef BT_X
