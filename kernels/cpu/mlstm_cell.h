/* The fused mLSTM cell step, included by kernels.c once per scalar type.
 *
 * Before inclusion define: SCALAR (float / double), DOT, CELL_GATES, CELL_GATES_T, CELL_HEAD
 * and FN (the names), EXP, LOG1P, FABS (the math functions of that type).
 *
 * One step of the stabilized mLSTM cell, Beck et al. 2024, "xLSTM: Extended Long Short-Term
 * Memory" (arXiv:2405.04517), eqs. (19)-(27) with the stabilizer of eqs. (15)-(17):
 *
 *   f~ = logsigmoid(f) + m            m' = max(f~, i)
 *   i' = exp(i - m')                  f' = exp(f~ - m')          (arguments clamped at max_exp)
 *   C' = f' C + i' k v^T              n' = f' n + i' k
 *   h  = C'^T q~ / (max(|n'^T q~|, exp(-m')) + eps),   q~ = q * scale
 *
 * per batch row b and head. A row whose reset flag is set starts from C = 0, n = 0, m = 0 (its
 * stored state is never read, so a NaN there cannot leak). Each C' row is produced and read back
 * for the output in the same pass, so the matrix memory is streamed once.
 */

#define DOT_LANES 16
/* sum_c a[c] * b[c] in DOT_LANES interleaved partial sums: a single running sum would wait on
 * each add's latency (the compiler may not reorder float sums itself). */
static SCALAR DOT(int64_t len, const SCALAR *restrict a, const SCALAR *restrict b)
{
    SCALAR part[DOT_LANES] = {0};
    int64_t c = 0;
    for (; c + DOT_LANES <= len; c += DOT_LANES)
        for (int l = 0; l < DOT_LANES; ++l)
            part[l] += a[c + l] * b[c + l];
    SCALAR sum = 0;
    for (; c < len; ++c)
        sum += a[c] * b[c];
    for (int l = 0; l < DOT_LANES; ++l)
        sum += part[l];
    return sum;
}
#undef DOT_LANES

/* The step's gates from the entering stabilizer m_old: f~ = logsigmoid(f) + m_old, the new
 * stabilizer m' = max(f~, i), i' = exp(i - m'), f' = exp(f~ - m') and the normalizer floor
 * exp(-m') (arguments clamped at max_exp). The sequence kernel's backward rebuilds states with
 * this same function, so they equal the forward's. */
typedef struct { SCALAR f_tilde, m, i_act, f_act, floor_; } CELL_GATES_T;

static inline CELL_GATES_T CELL_GATES(SCALAR i, SCALAR f, SCALAR m_old, SCALAR max_exp)
{
    CELL_GATES_T g;
    g.f_tilde = (f < 0 ? f : (SCALAR)0) - LOG1P(EXP(-FABS(f))) + m_old;
    /* Written so that NaN propagates, as torch.maximum and clamp_max do (a plain `a > b ? a :
     * b` drops a NaN a; a clamp that dropped NaN would turn it into exp(max_exp)). */
    g.m = (g.f_tilde > i || g.f_tilde != g.f_tilde) ? g.f_tilde : i;
    SCALAR a_i = i - g.m, a_f = g.f_tilde - g.m, a_floor = (SCALAR)0 - g.m;
    a_i = a_i > max_exp ? max_exp : a_i;
    a_f = a_f > max_exp ? max_exp : a_f;
    a_floor = a_floor > max_exp ? max_exp : a_floor;
    g.i_act = EXP(a_i);
    g.f_act = EXP(a_f);
    g.floor_ = EXP(a_floor);
    return g;
}

/* One batch row, one head: q, k [dk], v [dv], C [dk, dv], n [dk] (ignored when fresh).
 * Co may be Cb (the update in place: each element is read before it is written), else the
 * two do not overlap; the same for no / nb and m_out / the stabilizer passed in. */
static void CELL_HEAD(int64_t dk, int64_t dv, const SCALAR *restrict qb,
                      const SCALAR *restrict kb, const SCALAR *restrict vb, SCALAR i, SCALAR f,
                      const SCALAR *Cb, const SCALAR *nb, SCALAR m_old,
                      int fresh, SCALAR scale, SCALAR eps, SCALAR max_exp,
                      SCALAR *restrict hb, SCALAR *Co, SCALAR *no, SCALAR *m_out)
{
    const CELL_GATES_T g = CELL_GATES(i, f, fresh ? 0 : m_old, max_exp);
    const SCALAR m_new = g.m, i_act = g.i_act, f_act = g.f_act, floor_ = g.floor_;

    for (int64_t j = 0; j < dv; ++j)
        hb[j] = 0;
    SCALAR qn = 0;
    for (int64_t a = 0; a < dk; ++a) {
        const SCALAR qa = qb[a] * scale;
        const SCALAR ik = kb[a] * i_act;
        const SCALAR na = fresh ? ik : ik + f_act * nb[a];
        no[a] = na;
        qn += qa * na;
        if (fresh) {
            SCALAR *restrict Orow = Co + a * dv;
            for (int64_t j = 0; j < dv; ++j) {
                Orow[j] = ik * vb[j];
                hb[j] += qa * Orow[j];
            }
        } else if (Co == Cb) {
            SCALAR *restrict Orow = Co + a * dv;
            for (int64_t j = 0; j < dv; ++j) {
                Orow[j] = Orow[j] * f_act + ik * vb[j];
                hb[j] += qa * Orow[j];
            }
        } else {
            const SCALAR *restrict Crow = Cb + a * dv;
            SCALAR *restrict Orow = Co + a * dv;
            for (int64_t j = 0; j < dv; ++j) {
                Orow[j] = Crow[j] * f_act + ik * vb[j];
                hb[j] += qa * Orow[j];
            }
        }
    }
    const SCALAR mag = FABS(qn);
    const SCALAR den = (mag > floor_ || mag != mag ? mag : floor_) + eps; /* NaN propagates */
    for (int64_t j = 0; j < dv; ++j)
        hb[j] /= den;
    *m_out = m_new;
}

void FN(int64_t B, int64_t H, int64_t dk, int64_t dv,
        const SCALAR *q, int64_t q_bstride,
        const SCALAR *k, int64_t k_bstride,
        const SCALAR *v, int64_t v_bstride,
        const SCALAR *ig, const SCALAR *fg, int64_t gate_bstride,
        const SCALAR *C, const SCALAR *n, const SCALAR *m,
        const uint8_t *reset,
        SCALAR scale, SCALAR eps, SCALAR max_exp,
        SCALAR *h, SCALAR *C_out, SCALAR *n_out, SCALAR *m_out)
{
    for (int64_t b = 0; b < B; ++b) {
        const int fresh = reset != NULL && reset[b] != 0;
        for (int64_t head = 0; head < H; ++head) {
            const int64_t bh = b * H + head;
            CELL_HEAD(dk, dv, q + b * q_bstride + head * dk, k + b * k_bstride + head * dk,
                      v + b * v_bstride + head * dv, ig[b * gate_bstride + head],
                      fg[b * gate_bstride + head], C + bh * dk * dv, n + bh * dk,
                      fresh ? (SCALAR)0 : m[bh], fresh, scale, eps, max_exp,
                      h + bh * dv, C_out + bh * dk * dv, n_out + bh * dk, m_out + bh);
        }
    }
}
