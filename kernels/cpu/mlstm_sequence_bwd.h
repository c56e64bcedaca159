/* The backward of the mLSTM cell over a sequence (SEQ_FWD of mlstm_sequence.h, whose comment
 * gives the step's gradient), included by kernels.c right after mlstm_sequence.h.
 *
 * Per segment of CKPT steps, newest first, the matrix memories are rebuilt from the kept state
 * with the forward's own arithmetic (SEQ_MEMORY_RUN_T of mlstm_tile.h) and walked backwards.
 * The rebuilt memories and the gradient dC' are held transposed, [dv, dk]: the pass over one
 * step then runs over j with vectors along k, so the sums over j (C dnum and dC' v, one value per
 * row of C) accumulate in vector lanes, and only dC'^T k needs a sum across lanes, one per j.
 * The pass reads only the entering state C: the read-out's gradient uses
 * C' dnum = f' (C dnum) + (i' k) (v . dnum), which is C' dnum up to rounding.
 */

#define SEQ_GATES TYPED(seq_gates)
#define GATE_PARTS TYPED(gate_parts)
#define SEQ_TRANSPOSE TYPED(seq_transpose)
#define SEQ_REBUILD TYPED(seq_rebuild)
#define SEQ_PASS TYPED(seq_pass)
#define SEQ_BWD_COLUMNS TYPED(seq_bwd_columns)
#define SEQ_BWD_MATRIX TYPED(seq_bwd_matrix)
#define SEQ_BWD_VECTORS TYPED(seq_bwd_vectors)
#define SEQ_BWD_STEP TYPED(seq_bwd_step)
#define SEQ_BWD_ROW TYPED(seq_bwd_row)
#define SEQ_BWD TYPED(xlstm_mlstm_seq_bwd)
#define SEQ_LOAD TYPED(seq_load)
#define SEQ_STORE TYPED(seq_store)
#define PASS_VECS 4

/* The step's gates as the forward computed them (CELL_GATES), the floor's clamp mask, and the
 * shares of the two maxima's gradients. */
typedef struct { SCALAR fa, ia, floor_, s_a, dlog_f, floor_live; } GATE_PARTS;

static GATE_PARTS SEQ_GATES(SCALAR i, SCALAR f, SCALAR m_old, SCALAR max_exp)
{
    const CELL_GATES_T g = CELL_GATES(i, f, m_old, max_exp);
    const SCALAR z = EXP(-FABS(f));
    GATE_PARTS p;
    p.fa = g.f_act;
    p.ia = g.i_act;
    p.floor_ = g.floor_;
    p.floor_live = -g.m <= max_exp ? 1 : 0;
    p.s_a = g.f_tilde > i ? 1 : (g.f_tilde == i ? (SCALAR)0.5 : 0);
    p.dlog_f = f < 0 ? (SCALAR)1 / (1 + z) : z / (1 + z);    /* sigmoid(-f) */
    return p;
}

/* dst [cols, rows] = src [rows, cols] transposed. */
static void SEQ_TRANSPOSE(int64_t rows, int64_t cols, const SCALAR *src, SCALAR *dst)
{
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
            dst[j * rows + i] = src[i * cols + j];
}

/* Rebuilds n_t (into nb) and C_t transposed (into CbT) for t in [t0, t1) from the state entering
 * t0 (ck_C [dk, dv], ck_n; not read when t0 is fresh), and that state transposed into ckT. */
static void SEQ_REBUILD(const SEQ_ARGS *a, SEQ_RUN *r, int64_t row, int64_t t0, int64_t t1,
                        const SCALAR *ck_C, const SCALAR *ck_n, SCALAR *ckT, SCALAR *CbT,
                        SCALAR *nb, SCALAR *n_work)
{
    SEQ_ROW_GATES(a, r, row, t0, t1, a->m_all + row * a->S, NULL);
    memcpy(n_work, ck_n, sizeof(SCALAR) * (size_t)a->dk);
    SEQ_NORM_RUN(r, t0, t1, n_work, a->eps, NULL, nb, NULL);
    if (!r->fresh[t0])
        SEQ_TRANSPOSE(a->dk, a->dv, ck_C, ckT);
    SEQ_MEMORY_RUN_T(r, t0, t1, r->fresh[t0] ? NULL : ckT, CbT);
}

/* What one step's pass over the matrices reads and writes. */
typedef struct {
    int64_t dk, dv;
    int fresh;                        /* the step started from the zero state: C unread */
    SCALAR fa;
    const SCALAR *qs, *k, *v, *dnum;  /* q~ [dk], k [dk], v [dv], dh / den [dv] */
    const SCALAR *CT;                 /* the entering state, transposed [dv, dk] */
    SCALAR *dCT;                      /* dC' in, f' dC' out (transposed) */
    SCALAR *dv_sum;                   /* [dv] sum over k of dC'[k, j] k[k], summed over blocks */
} SEQ_PASS;

static inline __attribute__((always_inline)) VEC SEQ_LOAD(const SCALAR *p, int64_t lanes)
{
    return lanes == VLEN ? VLOAD(p) : (lanes > 0 ? VLOAD_PART(p, lanes) : (VEC){0});
}

static inline __attribute__((always_inline)) void SEQ_STORE(SCALAR *p, VEC x, int64_t lanes)
{
    if (lanes == VLEN)
        VSTORE(p, x);
    else if (lanes > 0)
        VSTORE_PART(p, x, lanes);
}

/* The pass over j for k in [a0, a0 + PASS_VECS VLEN) (`full`: all those lanes exist, a constant
 * where inlined): dC' += dnum q~^T, the sums over j of C dnum (into sq) and dC' v (into su),
 * dv_sum, and dC' <- f' dC'. Returns this block's <dC', C>. */
static inline __attribute__((always_inline)) SCALAR SEQ_BWD_COLUMNS(
    const SEQ_PASS *w, int64_t a0, int full, SCALAR *sq_out, SCALAR *su_out)
{
    const int64_t dk = w->dk;
    int64_t ln[PASS_VECS];
    VEC q[PASS_VECS], k[PASS_VECS], sq[PASS_VECS], su[PASS_VECS], fc[PASS_VECS];
    for (int x = 0; x < PASS_VECS; ++x) {
        const int64_t left = dk - a0 - x * VLEN;
        ln[x] = full ? VLEN : (left >= VLEN ? VLEN : (left > 0 ? left : 0));
        q[x] = SEQ_LOAD(w->qs + a0 + x * VLEN, ln[x]);
        k[x] = SEQ_LOAD(w->k + a0 + x * VLEN, ln[x]);
        sq[x] = su[x] = fc[x] = (VEC){0};
    }
    for (int64_t j = 0; j < w->dv; ++j) {
        const SCALAR g = w->dnum[j], vj = w->v[j];
        SCALAR *D = w->dCT + j * dk + a0;
        const SCALAR *P = w->CT + j * dk + a0;
        VEC kd[PASS_VECS];
        for (int x = 0; x < PASS_VECS; ++x) {
            const VEC d = SEQ_LOAD(D + x * VLEN, ln[x]) + g * q[x];
            if (!w->fresh) {
                const VEC c = SEQ_LOAD(P + x * VLEN, ln[x]);
                sq[x] += c * g;
                fc[x] += d * c;
            }
            su[x] += d * vj;
            kd[x] = d * k[x];
            SEQ_STORE(D + x * VLEN, d * w->fa, ln[x]);
        }
        const SCALAR dvj = VSUM((kd[0] + kd[1]) + (kd[2] + kd[3]));
        w->dv_sum[j] = a0 == 0 ? dvj : w->dv_sum[j] + dvj;
    }
    for (int x = 0; x < PASS_VECS; ++x) {
        SEQ_STORE(sq_out + a0 + x * VLEN, sq[x], ln[x]);
        SEQ_STORE(su_out + a0 + x * VLEN, su[x], ln[x]);
    }
    return VSUM((fc[0] + fc[1]) + (fc[2] + fc[3]));
}

/* The pass over all of k; returns <dC', C> (0 when fresh). */
static SCALAR SEQ_BWD_MATRIX(const SEQ_PASS *w, SCALAR *sq, SCALAR *su)
{
    SCALAR f_mat = 0;
    for (int64_t a0 = 0; a0 < w->dk; a0 += PASS_VECS * VLEN) {
        if (a0 + PASS_VECS * VLEN <= w->dk)
            f_mat += SEQ_BWD_COLUMNS(w, a0, 1, sq, su);
        else
            f_mat += SEQ_BWD_COLUMNS(w, a0, 0, sq, su);
    }
    return f_mat;
}

/* The per-k part of a step: dq, dk, the normalizer's gradient (dn' += dqn q~, then f' dn'),
 * and the sums n . dn' (into *dfa) and k . (dC' v + dn') (returned). sq holds C dnum. */
static SCALAR SEQ_BWD_VECTORS(const SEQ_RUN *r, int64_t t, const GATE_PARTS *p, int fresh,
                              SCALAR dqn, SCALAR v_dnum, const SCALAR *kb, const SCALAR *nt,
                              const SCALAR *np, const SCALAR *sq, const SCALAR *su,
                              SCALAR *dn, SCALAR *dqb, SCALAR *dkb, SCALAR *dfa)
{
    const int64_t dk = r->dk, whole = dk - dk % VLEN;
    const SCALAR *qs = r->qs + t * dk, *ks = r->ks + t * dk;
    const SCALAR fa = p->fa, ia = p->ia;
    VEC f_vec = {0}, i_vec = {0};
    for (int64_t x = 0; x < whole; x += VLEN) {  /* the loop below, in vectors */
        const VEC dnr = VLOAD(dn + x) + dqn * VLOAD(qs + x), kv = VLOAD(ks + x) * v_dnum;
        const VEC cq = fresh ? kv : fa * VLOAD(sq + x) + kv;
        const VEC u = VLOAD(su + x) + dnr;
        VSTORE(dqb + x, (cq + dqn * VLOAD(nt + x)) * r->scale);
        if (!fresh)
            f_vec += dnr * VLOAD(np + x);
        i_vec += VLOAD(kb + x) * u;
        VSTORE(dkb + x, ia * u);
        VSTORE(dn + x, dnr * fa);
    }
    SCALAR f_sum = VSUM(f_vec), i_sum = VSUM(i_vec);
    for (int64_t x = whole; x < dk; ++x) {
        const SCALAR dnr = dn[x] + dqn * qs[x];
        const SCALAR cq = fresh ? ks[x] * v_dnum : fa * sq[x] + ks[x] * v_dnum; /* C' dnum */
        dqb[x] = (cq + dqn * nt[x]) * r->scale;
        f_sum += fresh ? 0 : dnr * np[x];
        i_sum += kb[x] * (su[x] + dnr);
        dkb[x] = ia * (su[x] + dnr);
        dn[x] = dnr * fa;
    }
    *dfa += f_sum;
    return i_sum;
}

/* One backward step at t: dCT, dn hold the gradient of the new state (updated in place to that
 * of the entering state); nt the new normalizer, CT, np the entering state (unread after a
 * reset). work: [dv + 2 dk]. Returns the gradient of the entering stabilizer. */
static SCALAR SEQ_BWD_STEP(const SEQ_ARGS *a, const SEQ_RUN *r, int64_t row, int64_t t,
                           const SCALAR *CT, const SCALAR *nt, const SCALAR *np, SCALAR *dCT,
                           SCALAR *dn, SCALAR dm_new, SCALAR *work)
{
    const int64_t b = row / a->H, hd = row % a->H, dk = a->dk, dv = a->dv, S = a->S;
    const int fresh = r->fresh[t];
    const SCALAR m_old = fresh ? 0 : (t == 0 ? a->m0[row] : a->m_all[row * S + t - 1]);
    const int64_t g = b * a->g_s[0] + hd * a->g_s[1] + t * a->g_s[2];
    const GATE_PARTS p = SEQ_GATES(a->ig[g], a->fg[g], m_old, a->max_exp);
    const SCALAR *kb = r->k + t * r->k_t, *vb = r->v + t * r->v_t;
    const SCALAR *hb = a->h + (row * S + t) * dv;
    const SCALAR *dhb = a->dh == NULL ? NULL
        : a->dh + b * a->dh_s[0] + hd * a->dh_s[1] + t * a->dh_s[2];
    const SCALAR qn = DOT(dk, r->qs + t * dk, nt);  /* as the forward's denominator took it */
    const SCALAR mag = FABS(qn), den = (mag > p.floor_ ? mag : p.floor_) + a->eps;
    SCALAR *dnum = work, *sq = work + dv, *su = sq + dk;
    SCALAR dh_h = 0, v_dnum = 0;
    for (int64_t j = 0; j < dv; ++j) {
        dnum[j] = dhb == NULL ? 0 : dhb[j] / den;
        dh_h += dhb == NULL ? 0 : dhb[j] * hb[j];
        v_dnum += vb[j] * dnum[j];
    }
    const SCALAR dden = -dh_h / den;
    const SCALAR s_mag = mag > p.floor_ ? 1 : (mag == p.floor_ ? (SCALAR)0.5 : 0);
    const SCALAR dqn = s_mag * dden * (qn > 0 ? 1 : (qn < 0 ? -1 : 0));
    dm_new -= (1 - s_mag) * dden * p.floor_ * p.floor_live;
    SCALAR *dvb = a->dvv + (row * S + t) * dv;
    const SEQ_PASS w = {dk, dv, fresh, p.fa, r->qs + t * dk, kb, vb, dnum, CT, dCT, dvb};
    SCALAR dfa = SEQ_BWD_MATRIX(&w, sq, su);
    for (int64_t j = 0; j < dv; ++j)
        dvb[j] *= p.ia;
    const SCALAR dia = SEQ_BWD_VECTORS(r, t, &p, fresh, dqn, v_dnum, kb, nt, np, sq, su, dn,
                                       a->dq + (row * S + t) * dk,
                                       a->dkk + (row * S + t) * dk, &dfa);
    dm_new -= p.fa * dfa + p.ia * dia;
    const SCALAR da = p.fa * dfa + p.s_a * dm_new;
    a->di[row * S + t] = p.ia * dia + (1 - p.s_a) * dm_new;
    a->df[row * S + t] = da * p.dlog_f;
    if (fresh) {
        memset(dCT, 0, sizeof(SCALAR) * (size_t)(dk * dv));
        memset(dn, 0, sizeof(SCALAR) * (size_t)dk);
        return 0;
    }
    return da;
}

static void SEQ_BWD_ROW(const void *args, int64_t row, void *scratch)
{
    const SEQ_ARGS *a = args;
    const int64_t dk = a->dk, dv = a->dv, S = a->S, mat = dk * dv;
    const int64_t nseg = (S + CKPT - 1) / CKPT;
    SCALAR *CbT = scratch, *ckT = CbT + CKPT * mat, *nb = ckT + mat, *dCT = nb + CKPT * dk;
    SCALAR *dn = dCT + mat, *work = dn + dk, *n_work = work + dv + 2 * dk;
    SEQ_RUN r;
    SEQ_RUN_SETUP(a, row, n_work + dk, &r);
    SCALAR dm = a->dm != NULL ? a->dm[row] : 0;
    if (a->dC != NULL) {
        SEQ_TRANSPOSE(dk, dv, a->dC + row * mat, dCT);
        memcpy(dn, a->dn + row * dk, sizeof(SCALAR) * (size_t)dk);
    } else {
        memset(dCT, 0, sizeof(SCALAR) * (size_t)mat);
        memset(dn, 0, sizeof(SCALAR) * (size_t)dk);
    }
    for (int64_t seg = nseg - 1; seg >= 0; --seg) {
        const int64_t t0 = seg * CKPT, t1 = t0 + CKPT < S ? t0 + CKPT : S;
        /* The state entering the segment (never read when its first step is fresh). */
        const SCALAR *ck_C = seg > 0 ? a->ck_C + (row * (nseg - 1) + seg - 1) * mat
                                     : (a->C0 != NULL ? a->C0 + row * mat : NULL);
        const SCALAR *ck_n = seg > 0 ? a->ck_n + (row * (nseg - 1) + seg - 1) * dk
                                     : (a->C0 != NULL ? a->n0 + row * dk : nb);
        SEQ_REBUILD(a, &r, row, t0, t1, ck_C, ck_n, ckT, CbT, nb, n_work);
        for (int64_t t = t1 - 1; t >= t0; --t) {
            const SCALAR *CT = t == t0 ? ckT : CbT + (t - t0 - 1) * mat;
            const SCALAR *np = t == t0 ? ck_n : nb + (t - t0 - 1) * dk;
            dm = SEQ_BWD_STEP(a, &r, row, t, CT, nb + (t - t0) * dk, np, dCT, dn, dm, work);
        }
    }
    if (a->dC0 != NULL) {
        SEQ_TRANSPOSE(dv, dk, dCT, a->dC0 + row * mat);
        memcpy(a->dn0 + row * dk, dn, sizeof(SCALAR) * (size_t)dk);
        a->dm0[row] = dm;
    }
}

/* Backward of SEQ_FWD (which must have kept its checkpoints in args). Returns 0, or 1 when
 * memory cannot be allocated. */
int SEQ_BWD(int64_t B, const SEQ_ARGS *args, int threads)
{
    const int64_t dk = args->dk, dv = args->dv, mat = dk * dv;
    const size_t scratch = sizeof(SCALAR) * (size_t)((CKPT + 2) * mat + (CKPT + 4) * dk + dv)
                           + SEQ_RUN_BYTES(args->S, dk);
    return parallel_rows(SEQ_BWD_ROW, args, B * args->H, threads, scratch, NULL, NULL);
}

#undef SEQ_GATES
#undef GATE_PARTS
#undef SEQ_TRANSPOSE
#undef SEQ_REBUILD
#undef SEQ_PASS
#undef SEQ_BWD_COLUMNS
#undef SEQ_BWD_MATRIX
#undef SEQ_BWD_VECTORS
#undef SEQ_BWD_STEP
#undef SEQ_BWD_ROW
#undef SEQ_BWD
#undef PASS_VECS
#undef SEQ_LOAD
#undef SEQ_STORE
#undef VLOAD_PART
#undef VSTORE_PART
#undef SEQ_ARGS
#undef SEQ_FWD_ROW
#undef SEQ_RUN_BYTES
#undef SEQ_RUN_SETUP
#undef SEQ_ROW_GATES
#undef SEQ_FWD
#undef SEQ_FRESH
#undef SEQ_RUN
#undef SEQ_GATE_RUN
#undef SEQ_NORM_RUN
#undef SEQ_MEMORY_RUN
#undef SEQ_MEMORY_RUN_T
#undef TILE_ROWS
