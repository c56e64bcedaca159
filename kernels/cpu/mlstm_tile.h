/* The mLSTM cell's recurrence over a run of steps for one (batch row, head) pair, with the
 * matrix memory held in registers, included by kernels.c once per scalar type (after vec.h and
 * mlstm_cell.h; the forward of mlstm_sequence.h and the rebuild of mlstm_sequence_bwd.h use it).
 *
 * The step (Beck et al. 2024, "xLSTM", arXiv:2405.04517, eqs. (19)-(27); see mlstm_cell.h):
 *
 *   C' = f' C + (i' k) v^T,   n' = f' n + i' k,   h = C'^T q~ / (max(|q~ . n'|, exp(-m')) + eps)
 *
 * Stepping C' one step at a time streams the whole dk x dv matrix through memory every step (a
 * load and a store per element). Here the work is split the other way: the gates and the
 * normalizer run first, over all the steps (they are small), and then each tile of TILE_ROWS
 * rows x one vector of columns of C walks all the steps in registers. Per element and step
 * that is a multiply and two fused multiply-adds (decay, rank-1 update, read-out) and no memory
 * traffic; a step's read-out is summed over the tiles of a column block in the output row.
 *
 * The arithmetic per element is the step's, in the same order: (i' k[a]) v[j] added to f' C,
 * then q~[a] times the result added into the read-out. The backward's rebuild (SEQ_TILE_T, the
 * same walk with the memory transposed, for mlstm_sequence_bwd.h) writes the same per-element
 * expression, so it rebuilds the forward's states; the tests compare every gradient with the
 * reference's.
 */

#define TILE_ROWS 16
#define SEQ_RUN TYPED(seq_run)
#define SEQ_GATE_RUN TYPED(seq_gate_run)
#define SEQ_NORM_RUN TYPED(seq_norm_run)
#define SEQ_TILE TYPED(seq_tile)
#define SEQ_TILE_COLUMNS TYPED(seq_tile_columns)
#define SEQ_MEMORY_RUN TYPED(seq_memory_run)
#define SEQ_TILE_T TYPED(seq_tile_t)
#define VLOAD_PART TYPED(vload_part)
#define VSTORE_PART TYPED(vstore_part)

/* One pair's steps [t0, t1): inputs, and per-step values the gate and normalizer runs fill.
 * Step arrays are indexed by the absolute step t (length S). */
typedef struct {
    int64_t dk, dv;
    const SCALAR *q, *k, *v;        /* the pair's vectors at step 0 */
    int64_t q_t, k_t, v_t;          /* their strides between steps */
    SCALAR scale;
    uint8_t *fresh;                 /* [S] the step starts from the zero state */
    SCALAR *fa, *ia, *floor_;       /* [S] f', i' and exp(-m') (clamped) */
    SCALAR *qs, *ks;                /* [S, dk] q~ = q * scale and i' k */
} SEQ_RUN;

/* The first `lanes` lanes of p (the rest 0; lanes <= VLEN), and their store: a whole vector,
 * or the columns past the last whole vector of a row. lanes is a constant where the tiles
 * inline them, so the choice vanishes. */
static inline __attribute__((always_inline)) VEC VLOAD_PART(const SCALAR *p, int64_t lanes)
{
    if (lanes == VLEN)
        return VLOAD(p);
    VEC x = {0};
    memcpy(&x, p, sizeof(SCALAR) * (size_t)lanes);
    return x;
}

static inline __attribute__((always_inline)) void VSTORE_PART(SCALAR *p, VEC x, int64_t lanes)
{
    if (lanes == VLEN)
        VSTORE(p, x);
    else
        memcpy(p, &x, sizeof(SCALAR) * (size_t)lanes);
}

/* The gates of steps [t0, t1) (CELL_GATES, as the acting step takes them) from the stabilizer
 * entering t0; fresh[t] must be set. With m_in == NULL the chain runs from m0 and the new
 * stabilizers go to m_out[t] (when not NULL); with m_in, step t enters from m_in[t - 1] (the
 * forward's m_all; m0 at t = 0). Returns the last stabilizer. */
static SCALAR SEQ_GATE_RUN(SEQ_RUN *r, int64_t t0, int64_t t1, const SCALAR *ig,
                           const SCALAR *fg, int64_t g_t, SCALAR m0, const SCALAR *m_in,
                           SCALAR *m_out, SCALAR max_exp)
{
    SCALAR m = m0;
    for (int64_t t = t0; t < t1; ++t) {
        const SCALAR m_old = m_in == NULL ? m : (t == 0 ? m0 : m_in[t - 1]);
        const CELL_GATES_T g = CELL_GATES(ig[t * g_t], fg[t * g_t], r->fresh[t] ? 0 : m_old,
                                          max_exp);
        r->fa[t] = g.f_act;
        r->ia[t] = g.i_act;
        r->floor_[t] = g.floor_;
        m = g.m;
        if (m_out != NULL)
            m_out[t] = m;
    }
    return m;
}

/* The normalizer over steps [t0, t1) from n (updated in place to the state after t1 - 1), and
 * the scaled q and gated k of each step for the tiles. With den: the read-out's denominator of
 * each step; with each_n: n after step t at each_n + (t - t0) dk; with ck_n: n entering every
 * CKPT-th step t > 0 at ck_n + (t / CKPT - 1) dk. */
static void SEQ_NORM_RUN(SEQ_RUN *r, int64_t t0, int64_t t1, SCALAR *n, SCALAR eps,
                         SCALAR *den, SCALAR *each_n, SCALAR *ck_n)
{
    const int64_t dk = r->dk;
    for (int64_t t = t0; t < t1; ++t) {
        if (ck_n != NULL && t > 0 && t % CKPT == 0)
            memcpy(ck_n + (t / CKPT - 1) * dk, n, sizeof(SCALAR) * (size_t)dk);
        const SCALAR *qb = r->q + t * r->q_t, *kb = r->k + t * r->k_t;
        SCALAR *qs = r->qs + t * dk, *ks = r->ks + t * dk;
        const SCALAR fa = r->fa[t], ia = r->ia[t];
        const int fresh = r->fresh[t];
        for (int64_t a = 0; a < dk; ++a) {
            const SCALAR ik = kb[a] * ia;
            n[a] = fresh ? ik : ik + fa * n[a];
            qs[a] = qb[a] * r->scale;
            ks[a] = ik;
        }
        if (den != NULL) {
            const SCALAR mag = FABS(DOT(dk, qs, n));   /* the backward takes it the same way */
            den[t] = (mag > r->floor_[t] || mag != mag ? mag : r->floor_[t]) + eps;
        }
        if (each_n != NULL)
            memcpy(each_n + (t - t0) * dk, n, sizeof(SCALAR) * (size_t)dk);
    }
}

/* Rows [a0, a0 + rows) x columns [j0, j0 + lanes) of C over steps [t0, t1), from C_in (NULL:
 * zeros) to C_out (rows of length dv; NULL: not stored). With hnum, adds each step's read-out
 * of these rows into hnum + t dv (or stores it there when `first`); with each, stores the tile
 * after step t at each + (t - t0) dk dv. rows, lanes, hnum and each are constants where it is
 * inlined, so the tile lives in registers and the unused parts vanish. */
static inline __attribute__((always_inline)) void SEQ_TILE(
    const SEQ_RUN *r, int rows, int64_t lanes, int64_t a0, int64_t j0, int64_t t0, int64_t t1,
    const SCALAR *C_in, SCALAR *C_out, SCALAR *hnum, int first, SCALAR *each)
{
    const int64_t dk = r->dk, dv = r->dv;
    VEC c[TILE_ROWS];
    for (int e = 0; e < rows; ++e)
        c[e] = C_in == NULL ? (VEC){0}
             : VLOAD_PART(C_in + (a0 + e) * dv + j0, lanes);
    for (int64_t t = t0; t < t1; ++t) {
        const SCALAR *vb = r->v + t * r->v_t + j0, *ks = r->ks + t * dk + a0;
        const VEC vv = VLOAD_PART(vb, lanes);
        if (r->fresh[t]) {
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e)
                c[e] = ks[e] * vv;
        } else {
            const SCALAR fa = r->fa[t];
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e)
                c[e] = c[e] * fa + ks[e] * vv;
        }
        if (hnum != NULL) {
            const SCALAR *qs = r->qs + t * dk + a0;
            SCALAR *ht = hnum + t * dv + j0;
            VEC part[4] = {{0}, {0}, {0}, {0}};   /* four chains: an add's latency each */
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e)
                part[e % 4] += qs[e] * c[e];
            VEC acc = (part[0] + part[1]) + (part[2] + part[3]);
            if (!first)
                acc += VLOAD_PART(ht, lanes);
            VSTORE_PART(ht, acc, lanes);
        }
        if (each != NULL) {
            SCALAR *out = each + (t - t0) * dk * dv + a0 * dv + j0;
            for (int e = 0; e < rows; ++e)
                VSTORE_PART(out + e * dv, c[e], lanes);
        }
    }
    for (int e = 0; e < rows && C_out != NULL; ++e)
        VSTORE_PART(C_out + (a0 + e) * dv + j0, c[e], lanes);
}

/* All tiles of one column block [j0, j0 + lanes): full TILE_ROWS tiles, then single rows. */
static inline __attribute__((always_inline)) void SEQ_TILE_COLUMNS(
    const SEQ_RUN *r, int64_t lanes, int64_t j0, int64_t t0, int64_t t1, const SCALAR *C_in,
    SCALAR *C_out, SCALAR *hnum, SCALAR *each)
{
    int64_t a0 = 0;
    for (; a0 + TILE_ROWS <= r->dk; a0 += TILE_ROWS) {
        if (hnum != NULL)
            SEQ_TILE(r, TILE_ROWS, lanes, a0, j0, t0, t1, C_in, C_out, hnum, a0 == 0, NULL);
        else
            SEQ_TILE(r, TILE_ROWS, lanes, a0, j0, t0, t1, C_in, C_out, NULL, 0, each);
    }
    for (; a0 < r->dk; ++a0) {
        if (hnum != NULL)
            SEQ_TILE(r, 1, lanes, a0, j0, t0, t1, C_in, C_out, hnum, a0 == 0, NULL);
        else
            SEQ_TILE(r, 1, lanes, a0, j0, t0, t1, C_in, C_out, NULL, 0, each);
    }
}

/* C over steps [t0, t1) from C_in (NULL: zeros) into C_out (which may be C_in; NULL: not
 * stored), after the gate
 * and normalizer runs filled those steps. Either hnum (the read-out's numerators, [S, dv]) or
 * each (C after every step, [t1 - t0, dk, dv]) is given. */
static void SEQ_MEMORY_RUN(const SEQ_RUN *r, int64_t t0, int64_t t1, const SCALAR *C_in,
                           SCALAR *C_out, SCALAR *hnum, SCALAR *each)
{
    const int64_t dv_vec = r->dv - r->dv % VLEN;
    for (int64_t j0 = 0; j0 < dv_vec; j0 += VLEN) {
        if (hnum != NULL)
            SEQ_TILE_COLUMNS(r, VLEN, j0, t0, t1, C_in, C_out, hnum, NULL);
        else
            SEQ_TILE_COLUMNS(r, VLEN, j0, t0, t1, C_in, C_out, NULL, each);
    }
    if (dv_vec < r->dv)
        SEQ_TILE_COLUMNS(r, r->dv - dv_vec, dv_vec, t0, t1, C_in, C_out, hnum, each);
}

/* The backward's rebuild: C^T (rows j of [dv, dk], lanes along k) for lanes [a0, a0 + lanes)
 * and rows [j0, j0 + rows) over steps [t0, t1) from CT_in (NULL: zeros): the memory entering
 * each step t goes to each + (t - t0) step_stride + e row_stride (row j0 + e). Per element the
 * same product (i' k[a]) v[j] and update as SEQ_TILE, so the values are the forward's; the
 * layout lets the backward keep its sums over j in vector lanes. */
static inline __attribute__((always_inline)) void SEQ_TILE_T(
    const SEQ_RUN *r, int rows, int64_t lanes, int64_t j0, int64_t a0, int64_t t0, int64_t t1,
    const SCALAR *CT_in, SCALAR *each, int64_t step_stride, int64_t row_stride)
{
    const int64_t dk = r->dk;
    VEC c[TILE_ROWS];
    for (int e = 0; e < rows; ++e)
        c[e] = CT_in == NULL ? (VEC){0}
             : VLOAD_PART(CT_in + (j0 + e) * dk + a0, lanes);
    for (int64_t t = t0; t < t1; ++t) {
        SCALAR *out = each + (t - t0) * step_stride;
        for (int e = 0; e < rows; ++e)
            VSTORE(out + e * row_stride, c[e]);
        if (t == t1 - 1)
            break;
        const SCALAR *vb = r->v + t * r->v_t + j0, *ks = r->ks + t * dk + a0;
        const VEC kv = VLOAD_PART(ks, lanes);
        if (r->fresh[t]) {
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e)
                c[e] = kv * vb[e];
        } else {
            const SCALAR fa = r->fa[t];
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e)
                c[e] = c[e] * fa + kv * vb[e];
        }
    }
}

#undef SEQ_TILE
#undef SEQ_TILE_COLUMNS
