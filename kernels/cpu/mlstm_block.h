/* The mLSTM block's step between its up- and down-projections, included by kernels.c once per
 * scalar type (define SCALAR, BLOCK_FN, CELL_HEAD, DOT, EXP, LOG1P, FABS, SQRT first;
 * mlstm_cell.h and vec.h must come before it).
 *
 * Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), Section 2.4 and
 * Figure 10 (right); the PyTorch definition is MLSTMBlock.step in xlstm_rl/cores/mlstm_block.py.
 * Per batch row, from the up-projection's two halves xm, z [inner]:
 *
 *   xc   = silu(sum_k window'[k] * conv_w[k] + conv_b)     window' = [window, xm] (zeros before
 *                                                          a reset), the causal depthwise conv
 *   q, k = block-diagonal maps of xc;  v = block-diagonal map of xm   (blocks of bs features)
 *   i, f = gate_w [q; k; v] + gate_b                       (H each)
 *   h    = the mLSTM cell per head (mlstm_cell.h)
 *   out  = (groupnorm_per_head(h) * norm_w + skip * xc) * silu(z)
 *
 * and the new conv window is the last K - 1 rows of window'. The outputs window_out, C_out, n_out
 * and m_out may be the inputs window, C, n and m themselves (the state updated in place), else
 * they do not overlap them. Returns 0, or 1 when the scratch memory cannot be allocated
 * (nothing is written then).
 */

/* Mean and 1 / std of one head's cell output h [Dh] (biased variance, as layer_norm and
 * group_norm), in vector lanes when Dh is whole vectors: a scalar sum is a chain of Dh
 * dependent adds. The training kernels (mlstm_block_train.h) use it too. */
static inline void TYPED(head_moments)(const SCALAR *h, int64_t Dh, SCALAR eps, SCALAR *mean,
                                       SCALAR *rstd)
{
    SCALAR mu = 0, var = 0;
    if (Dh % VLEN == 0) {
        VEC sum = {0}, sq = {0};
        for (int64_t e = 0; e < Dh; e += VLEN)
            sum += VLOAD(h + e);
        mu = VSUM(sum) / (SCALAR)Dh;
        for (int64_t e = 0; e < Dh; e += VLEN) {
            const VEC d = VLOAD(h + e) - mu;
            sq += d * d;
        }
        var = VSUM(sq);
    } else {
        for (int64_t e = 0; e < Dh; ++e)
            mu += h[e];
        mu /= (SCALAR)Dh;
        for (int64_t e = 0; e < Dh; ++e)
            var += (h[e] - mu) * (h[e] - mu);
    }
    *mean = mu;
    *rstd = (SCALAR)1 / SQRT(var / (SCALAR)Dh + eps);
}

#define GATE_GROUP 8
/* out[r] = w[r] . x + bias[r] for R rows of length G: GATE_GROUP rows at a time, one vector
 * accumulator each, so each vector of x is loaded once per group (one dot product per row
 * read x R times, each a chain of dependent adds); rows past the last whole group and
 * elements past the last whole vector in scalars. */
static void TYPED(gate_rows)(int64_t R, int64_t G, const SCALAR *restrict w,
                             const SCALAR *restrict bias, const SCALAR *restrict x,
                             SCALAR *restrict out)
{
    const int64_t Gv = G - G % VLEN;
    int64_t r = 0;
    for (; r + GATE_GROUP <= R; r += GATE_GROUP) {
        const SCALAR *restrict wr = w + r * G;
        VEC acc[GATE_GROUP] = {{0}};
        for (int64_t c = 0; c < Gv; c += VLEN) {
            const VEC xv = VLOAD(x + c);
#pragma GCC unroll 8
            for (int j = 0; j < GATE_GROUP; ++j)
                acc[j] += xv * VLOAD(wr + j * G + c);
        }
        for (int j = 0; j < GATE_GROUP; ++j) {
            SCALAR sum = VSUM(acc[j]);
            for (int64_t c = Gv; c < G; ++c)
                sum += x[c] * wr[j * G + c];
            out[r + j] = sum + bias[r + j];
        }
    }
    for (; r < R; ++r)
        out[r] = DOT(G, w + r * G, x) + bias[r];
}
#undef GATE_GROUP

int BLOCK_FN(int64_t B, int64_t H, int64_t Dh, int64_t K, int64_t bs,
             const SCALAR *xm, const SCALAR *z, int64_t up_bstride,
             const SCALAR *window, const uint8_t *reset,
             const SCALAR *conv_w, const SCALAR *conv_b,
             const SCALAR *qk_w, const SCALAR *v_w,
             const SCALAR *gate_w, const SCALAR *gate_b,
             const SCALAR *C, const SCALAR *n, const SCALAR *m,
             const SCALAR *norm_w, SCALAR norm_eps, const SCALAR *skip,
             SCALAR eps, SCALAR max_exp,
             SCALAR *out, SCALAR *window_out, SCALAR *C_out, SCALAR *n_out, SCALAR *m_out)
{
    const int64_t inner = H * Dh, nb = inner / bs, W = K - 1;
    SCALAR *scratch = malloc(sizeof(SCALAR) * (size_t)(5 * inner + 2 * H));
    if (scratch == NULL)
        return 1;
    SCALAR *xc = scratch, *qkv = scratch + inner, *hc = scratch + 4 * inner;
    SCALAR *gates = scratch + 5 * inner;
    const SCALAR scale = (SCALAR)1 / SQRT((SCALAR)Dh);

    for (int64_t b = 0; b < B; ++b) {
        const int fresh = reset != NULL && reset[b] != 0;
        const SCALAR *restrict xmb = xm + b * up_bstride;
        const SCALAR *restrict zb = z + b * up_bstride;
        const SCALAR *wb = window + b * W * inner;  /* wob may be wb: row t - 1 is written */
        SCALAR *wob = window_out + b * W * inner;    /* only after row t - 1 was read */

        /* causal conv + SiLU, and the shifted window */
        for (int64_t c = 0; c < inner; ++c)
            xc[c] = 0;
        for (int64_t t = 0; t < W; ++t) {
            const SCALAR *row = wb + t * inner;
            const SCALAR *restrict w = conv_w + t * inner;
            if (!fresh)
                for (int64_t c = 0; c < inner; ++c)
                    xc[c] += row[c] * w[c];
            if (t > 0)
                for (int64_t c = 0; c < inner; ++c)
                    wob[(t - 1) * inner + c] = fresh ? (SCALAR)0 : row[c];
        }
        for (int64_t c = 0; c < inner; ++c) {
            const SCALAR pre = xc[c] + xmb[c] * conv_w[W * inner + c] + conv_b[c];
            xc[c] = pre / ((SCALAR)1 + VEXP(-pre));  /* VEXP: the loop vectorizes */
            if (W > 0)
                wob[(W - 1) * inner + c] = xmb[c];
        }

        /* block-diagonal q, k (from xc) and v (from xm) into qkv = [q | k | v] */
        for (int64_t j = 0; j < nb; ++j) {
            SCALAR *restrict qj = qkv + j * bs, *restrict kj = qkv + inner + j * bs;
            SCALAR *restrict vj = qkv + 2 * inner + j * bs;
            for (int64_t o = 0; o < bs; ++o)
                qj[o] = kj[o] = vj[o] = 0;
            for (int64_t d = 0; d < bs; ++d) {
                const SCALAR xcd = xc[j * bs + d], xmd = xmb[j * bs + d];
                const SCALAR *restrict wqk = qk_w + (j * bs + d) * 2 * bs;
                const SCALAR *restrict wv = v_w + (j * bs + d) * bs;
                for (int64_t o = 0; o < bs; ++o) {
                    qj[o] += xcd * wqk[o];
                    kj[o] += xcd * wqk[bs + o];
                    vj[o] += xmd * wv[o];
                }
            }
        }

        /* input and forget gate pre-activations (i: rows 0..H-1, f: rows H..2H-1) */
        TYPED(gate_rows)(2 * H, 3 * inner, gate_w, gate_b, qkv, gates);

        /* the cell, then the per-head norm, the skip and the output gate */
        for (int64_t head = 0; head < H; ++head) {
            const int64_t bh = b * H + head, o = head * Dh;
            CELL_HEAD(Dh, Dh, qkv + o, qkv + inner + o, qkv + 2 * inner + o, gates[head],
                      gates[H + head], C + bh * Dh * Dh, n + bh * Dh, m[bh], fresh, scale, eps,
                      max_exp, hc + o, C_out + bh * Dh * Dh, n_out + bh * Dh, m_out + bh);
            SCALAR mean, rstd;
            TYPED(head_moments)(hc + o, Dh, norm_eps, &mean, &rstd);
            for (int64_t c = o; c < o + Dh; ++c) {
                const SCALAR gate = zb[c] / ((SCALAR)1 + VEXP(-zb[c]));
                out[b * inner + c] = ((hc[c] - mean) * rstd * norm_w[c] + skip[c] * xc[c]) * gate;
            }
        }
    }
    free(scratch);
    return 0;
}
