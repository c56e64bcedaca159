/* The backward of the mLSTM cell over a sequence (SEQ_FWD of mlstm_sequence.h, whose comment
 * gives the step's gradient), included by kernels.c right after mlstm_sequence.h.
 *
 * The recursion of the memory's gradient, dC = f' (dC' + q~ dnum^T) with dnum = dh / den, reads
 * only forward values, so it runs apart from the scalar chains, one tile of it at a time in
 * registers, like the forward (mlstm_tile.h). Per segment of CKPT steps, newest first:
 *
 *   1. the gates, the normalizers and, per step, dnum and the read-out's scalar gradients
 *      (SEQ_BWD_PREP), from the kept state;
 *   2. per tile of TILE_ROWS rows j x one vector of k lanes of the memory held transposed
 *      ([dv, dk]), the memories entering each step are rebuilt into a small buffer with the
 *      forward's arithmetic (SEQ_TILE_T), then the tile of dC walks the steps backwards in
 *      registers, adding each step's sums into step buffers: C dnum and dC' v (sums over j, in
 *      lanes), dC'^T k (sums over k: a butterfly over the tile's rows, VSUM_ROWS) and <dC', C>
 *      (SEQ_BWD_TILE);
 *   3. per step, newest first, the per-k part (dq, dk, the normalizer's gradient) and the
 *      stabilizer's chain (SEQ_BWD_STEP).
 *
 * The read-out's gradient uses C' dnum = f' (C dnum) + (i' k) (v . dnum), which is C' dnum up to
 * rounding; only the entering memories are rebuilt.
 */

#define SEQ_GATES TYPED(seq_gates)
#define GATE_PARTS TYPED(gate_parts)
#define STEP_PREP TYPED(step_prep)
#define SEQ_SEG TYPED(seq_seg)
#define SEQ_BWD_PREP TYPED(seq_bwd_prep)
#define SEQ_BWD_TILE TYPED(seq_bwd_tile)
#define SEQ_BWD_MATRICES TYPED(seq_bwd_matrices)
#define SEQ_BWD_KD_SUMS TYPED(seq_bwd_kd_sums)
#define SEQ_BWD_VECTORS TYPED(seq_bwd_vectors)
#define SEQ_BWD_STEP TYPED(seq_bwd_step)
#define SEQ_BWD_ROW TYPED(seq_bwd_row)
#define SEQ_BWD TYPED(xlstm_mlstm_seq_bwd)

/* The step's gates as the forward computed them, the floor's clamp mask, and the shares of
 * the two maxima's gradients. */
typedef struct { SCALAR fa, ia, floor_, s_a, dlog_f, floor_live; } GATE_PARTS;

/* Step t's GATE_PARTS: f', i' and the floor from the gate run of this segment (r), the new
 * stabilizer m' as the forward stored it; a = logsigmoid(f) + m_old as CELL_GATES forms it,
 * for a's share of the maximum. */
static GATE_PARTS SEQ_GATES(const SEQ_RUN *r, int64_t t, SCALAR i, SCALAR f, SCALAR m_old,
                            SCALAR m_new, SCALAR max_exp)
{
    const SCALAR z = EXP(-FABS(f));
    const SCALAR f_tilde = (f < 0 ? f : (SCALAR)0) - LOG1P(z) + m_old;
    GATE_PARTS p;
    p.fa = r->fa[t];
    p.ia = r->ia[t];
    p.floor_ = r->floor_[t];
    p.floor_live = -m_new <= max_exp ? 1 : 0;
    p.s_a = f_tilde > i ? 1 : (f_tilde == i ? (SCALAR)0.5 : 0);
    p.dlog_f = f < 0 ? (SCALAR)1 / (1 + z) : z / (1 + z);    /* sigmoid(-f) */
    return p;
}

/* A step's values that only need the forward and dh: its gates, the read-out's gradient share
 * of |q~ . n'| (dqn) and of the floor (dm_floor, subtracted from the stabilizer's gradient),
 * and v . dnum. */
typedef struct { GATE_PARTS p; SCALAR dqn, dm_floor, v_dnum; } STEP_PREP;

/* One segment's step buffers (CKPT steps, indexed by t - t0). */
typedef struct {
    STEP_PREP *prep;      /* [CKPT] */
    SCALAR *dnum;         /* [CKPT, dv] dh / den */
    SCALAR *sq, *su;      /* [CKPT, dk] C dnum (entering C) and dC' v */
    SCALAR *dvs;          /* [CKPT, dv] dC'^T k */
    SCALAR *fc;           /* [CKPT, VLEN] <dC', C>, in lanes */
    SCALAR *kd;           /* [CKPT, TILE_ROWS, VLEN] one row tile's dC'^T k, in lanes */
    SCALAR *cbuf;         /* [CKPT, TILE_ROWS, VLEN] one tile's entering memories */
} SEQ_SEG;

/* Step t's STEP_PREP and dnum, from nt, the normalizer after the step. */
static void SEQ_BWD_PREP(const SEQ_ARGS *a, const SEQ_RUN *r, int64_t row, int64_t t,
                         const SCALAR *nt, STEP_PREP *out, SCALAR *dnum)
{
    const int64_t b = row / a->H, hd = row % a->H, dk = a->dk, dv = a->dv, S = a->S;
    const SCALAR m_old = r->fresh[t] ? 0 : (t == 0 ? a->m0[row] : a->m_all[row * S + t - 1]);
    const int64_t g = b * a->g_s[0] + hd * a->g_s[1] + t * a->g_s[2];
    const GATE_PARTS p = SEQ_GATES(r, t, a->ig[g], a->fg[g], m_old, a->m_all[row * S + t],
                                   a->max_exp);
    const SCALAR *vb = r->v + t * r->v_t, *hb = a->h + (row * S + t) * dv;
    const SCALAR *dhb = a->dh == NULL ? NULL
        : a->dh + b * a->dh_s[0] + hd * a->dh_s[1] + t * a->dh_s[2];
    const SCALAR qn = DOT(dk, r->qs + t * dk, nt);  /* as the forward's denominator took it */
    const SCALAR mag = FABS(qn), den = (mag > p.floor_ || mag != mag ? mag : p.floor_) + a->eps;
    SCALAR dh_h = 0, v_dnum = 0;
    int64_t j = 0;
    if (dhb == NULL) {
        memset(dnum, 0, sizeof(SCALAR) * (size_t)dv);
        j = dv;
    } else {  /* dh . h and v . dnum in vector lanes (scalar sums are chains of dependent adds) */
        VEC s_h = {0}, s_v = {0};
        for (; j + VLEN <= dv; j += VLEN) {
            const VEC d = VLOAD(dhb + j), g = d / den;
            VSTORE(dnum + j, g);
            s_h += d * VLOAD(hb + j);
            s_v += VLOAD(vb + j) * g;
        }
        dh_h = VSUM(s_h);
        v_dnum = VSUM(s_v);
    }
    for (; j < dv; ++j) {
        dnum[j] = dhb[j] / den;
        dh_h += dhb[j] * hb[j];
        v_dnum += vb[j] * dnum[j];
    }
    const SCALAR dden = -dh_h / den;
    const SCALAR s_mag = mag > p.floor_ ? 1 : (mag == p.floor_ ? (SCALAR)0.5 : 0);
    out->p = p;
    out->dqn = s_mag * dden * (qn > 0 ? 1 : (qn < 0 ? -1 : 0));
    out->dm_floor = (1 - s_mag) * dden * p.floor_ * p.floor_live;
    out->v_dnum = v_dnum;
}

/* One tile of dC^T, rows [j0, j0 + rows) x lanes [a0, a0 + lanes), over steps [t0, t1): the
 * entering memories rebuilt into w->cbuf from CT_in (NULL: zeros), then dC walked backwards
 * from dCT (updated in place to the gradient entering t0): per step, d = dC' + dnum q~^T is the
 * full gradient of C', the tile adds C dnum and d v into sq, su (first_j: stores), d * k into
 * the row tile's kd lanes and d . C into fc (first_j and first_a: stores), and dC <- f' d (0
 * before a fresh step). rows and lanes are constants where it is inlined, so the tile lives in registers. */
static inline __attribute__((always_inline)) void SEQ_BWD_TILE(
    const SEQ_RUN *r, const SEQ_SEG *w, int rows, int64_t lanes, int64_t j0, int64_t a0,
    int64_t t0, int64_t t1, const SCALAR *CT_in, SCALAR *dCT, int first_j, int first_a)
{
    const int64_t dk = r->dk, dv = r->dv;
    SEQ_TILE_T(r, rows, lanes, j0, a0, t0, t1, CT_in, w->cbuf, TILE_ROWS * VLEN, VLEN);
    VEC dc[TILE_ROWS];
    for (int e = 0; e < rows; ++e)
        dc[e] = VLOAD_PART(dCT + (j0 + e) * dk + a0, lanes);
    for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t s = t - t0;
        const VEC q = VLOAD_PART(r->qs + t * dk + a0, lanes);
        const VEC k = VLOAD_PART(r->k + t * r->k_t + a0, lanes);
        const SCALAR *g = w->dnum + s * dv + j0, *vb = r->v + t * r->v_t + j0;
        const SCALAR *cb = w->cbuf + s * TILE_ROWS * VLEN, fa = r->fa[t];
        SCALAR *kd = w->kd + s * TILE_ROWS * VLEN;
        VEC sq = {0}, su = {0}, fc = {0};
        if (r->fresh[t]) {  /* C unread; no gradient flows into it */
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e) {
                const VEC d = dc[e] + g[e] * q;
                su += d * vb[e];
                VSTORE(kd + e * VLEN, VLOAD(kd + e * VLEN) + d * k);
                dc[e] = (VEC){0};
            }
        } else {
#pragma GCC unroll 16
            for (int e = 0; e < rows; ++e) {
                const VEC d = dc[e] + g[e] * q, c = VLOAD(cb + e * VLEN);
                sq += c * g[e];
                fc += d * c;
                su += d * vb[e];
                VSTORE(kd + e * VLEN, VLOAD(kd + e * VLEN) + d * k);
                dc[e] = d * fa;
            }
        }
        SCALAR *sq_s = w->sq + s * dk + a0, *su_s = w->su + s * dk + a0;
        VSTORE_PART(sq_s, first_j ? sq : sq + VLOAD_PART(sq_s, lanes), lanes);
        VSTORE_PART(su_s, first_j ? su : su + VLOAD_PART(su_s, lanes), lanes);
        VSTORE(w->fc + s * VLEN, first_j && first_a ? fc : fc + VLOAD(w->fc + s * VLEN));
    }
    for (int e = 0; e < rows; ++e)
        VSTORE_PART(dCT + (j0 + e) * dk + a0, dc[e], lanes);
}

/* dC'^T k of rows [j0, j0 + rows) for steps [0, L): the sums of their kd lanes (a butterfly
 * per VLEN rows). */
static inline __attribute__((always_inline)) void SEQ_BWD_KD_SUMS(const SEQ_SEG *w, int rows,
                                                                  int64_t dv, int64_t j0,
                                                                  int64_t L)
{
    for (int64_t s = 0; s < L; ++s) {
        const SCALAR *kd = w->kd + s * TILE_ROWS * VLEN;
        SCALAR *dvs = w->dvs + s * dv + j0;
        int e = 0;
        for (; e + VEC_LANES <= rows; e += VEC_LANES) {
            VEC x[VEC_LANES];
            for (int l = 0; l < VEC_LANES; ++l)
                x[l] = VLOAD(kd + (e + l) * VLEN);
            VSTORE(dvs + e, VSUM_ROWS(x));
        }
        for (; e < rows; ++e)
            dvs[e] = VSUM(VLOAD(kd + e * VLEN));
    }
}

/* Every tile of the memory over steps [t0, t1) (SEQ_BWD_TILE), by row tiles (whole tiles of
 * TILE_ROWS rows, then single rows), each over all lane blocks (the last may be partial), so
 * a row tile's dC'^T k is summed across lanes once. */
static void SEQ_BWD_MATRICES(const SEQ_RUN *r, const SEQ_SEG *w, int64_t t0, int64_t t1,
                             const SCALAR *CT_in, SCALAR *dCT)
{
    const int64_t dk = r->dk, dv = r->dv, whole = dk - dk % VLEN;
    const size_t kd_bytes = sizeof(SCALAR) * (size_t)((t1 - t0) * TILE_ROWS * VLEN);
    int64_t j0 = 0;
    for (; j0 + TILE_ROWS <= dv; j0 += TILE_ROWS) {
        memset(w->kd, 0, kd_bytes);  /* the tiles add into it (a branch per row cost more) */
        for (int64_t a0 = 0; a0 < whole; a0 += VLEN)
            SEQ_BWD_TILE(r, w, TILE_ROWS, VLEN, j0, a0, t0, t1, CT_in, dCT, j0 == 0, a0 == 0);
        if (whole < dk)
            SEQ_BWD_TILE(r, w, TILE_ROWS, dk - whole, j0, whole, t0, t1, CT_in, dCT, j0 == 0,
                         whole == 0);
        SEQ_BWD_KD_SUMS(w, TILE_ROWS, dv, j0, t1 - t0);
    }
    for (; j0 < dv; ++j0) {
        memset(w->kd, 0, kd_bytes);
        for (int64_t a0 = 0; a0 < whole; a0 += VLEN)
            SEQ_BWD_TILE(r, w, 1, VLEN, j0, a0, t0, t1, CT_in, dCT, j0 == 0, a0 == 0);
        if (whole < dk)
            SEQ_BWD_TILE(r, w, 1, dk - whole, j0, whole, t0, t1, CT_in, dCT, j0 == 0,
                         whole == 0);
        SEQ_BWD_KD_SUMS(w, 1, dv, j0, t1 - t0);
    }
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

/* The rest of step t's backward after the matrix pass filled w's sums: dv, dq, dk, di, df and
 * the normalizer's gradient dn (updated in place to that of the entering state); nt the new
 * normalizer, np the entering one (unread after a reset). Returns the gradient of the entering
 * stabilizer, given dm_new, that of the new one. */
static SCALAR SEQ_BWD_STEP(const SEQ_ARGS *a, const SEQ_RUN *r, const SEQ_SEG *w, int64_t row,
                           int64_t t, int64_t s, const SCALAR *nt, const SCALAR *np, SCALAR *dn,
                           SCALAR dm_new)
{
    const int64_t dk = a->dk, dv = a->dv, S = a->S;
    const int fresh = r->fresh[t];
    const STEP_PREP *sp = w->prep + s;
    const GATE_PARTS p = sp->p;
    SCALAR *dvb = a->dvv + (row * S + t) * dv;
    for (int64_t j = 0; j < dv; ++j)
        dvb[j] = p.ia * w->dvs[s * dv + j];
    SCALAR dfa = fresh ? 0 : VSUM(VLOAD(w->fc + s * VLEN));
    const SCALAR dia = SEQ_BWD_VECTORS(r, t, &p, fresh, sp->dqn, sp->v_dnum,
                                       r->k + t * r->k_t, nt, np, w->sq + s * dk,
                                       w->su + s * dk, dn, a->dq + (row * S + t) * dk,
                                       a->dkk + (row * S + t) * dk, &dfa);
    dm_new -= sp->dm_floor;
    dm_new -= p.fa * dfa + p.ia * dia;
    const SCALAR da = p.fa * dfa + p.s_a * dm_new;
    a->di[row * S + t] = p.ia * dia + (1 - p.s_a) * dm_new;
    a->df[row * S + t] = da * p.dlog_f;
    if (fresh) {
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
    SEQ_SEG w;
    w.prep = scratch;
    SCALAR *ckT = (SCALAR *)(w.prep + CKPT), *dCT = ckT + mat, *nb = dCT + mat;
    SCALAR *dn = nb + CKPT * dk, *n_work = dn + dk;
    w.dnum = n_work + dk;
    w.sq = w.dnum + CKPT * dv;
    w.su = w.sq + CKPT * dk;
    w.dvs = w.su + CKPT * dk;
    w.fc = w.dvs + CKPT * dv;
    w.cbuf = w.fc + CKPT * VLEN;
    w.kd = w.cbuf + CKPT * TILE_ROWS * VLEN;
    SEQ_RUN r;
    SEQ_RUN_SETUP(a, row, w.kd + CKPT * TILE_ROWS * VLEN, &r);
    SCALAR dm = a->dm != NULL ? a->dm[row] : 0;
    if (a->dC != NULL) {
        MAT_TRANSPOSE(dk, dv, a->dC + row * mat, dCT);
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
        SEQ_ROW_GATES(a, &r, row, t0, t1, a->m_all + row * S, NULL);
        memcpy(n_work, ck_n, sizeof(SCALAR) * (size_t)dk);
        SEQ_NORM_RUN(&r, t0, t1, n_work, a->eps, NULL, nb, NULL);
        for (int64_t t = t0; t < t1; ++t)
            SEQ_BWD_PREP(a, &r, row, t, nb + (t - t0) * dk, w.prep + t - t0,
                         w.dnum + (t - t0) * dv);
        const int entering = !r.fresh[t0];
        if (entering)
            MAT_TRANSPOSE(dk, dv, ck_C, ckT);
        SEQ_BWD_MATRICES(&r, &w, t0, t1, entering ? ckT : NULL, dCT);
        for (int64_t t = t1 - 1; t >= t0; --t) {
            const SCALAR *np = t == t0 ? ck_n : nb + (t - t0 - 1) * dk;
            dm = SEQ_BWD_STEP(a, &r, &w, row, t, t - t0, nb + (t - t0) * dk, np, dn, dm);
        }
    }
    if (a->dC0 != NULL) {
        MAT_TRANSPOSE(dv, dk, dCT, a->dC0 + row * mat);
        memcpy(a->dn0 + row * dk, dn, sizeof(SCALAR) * (size_t)dk);
        a->dm0[row] = dm;
    }
}

/* Backward of SEQ_FWD (which must have kept its checkpoints in args). Returns 0, or 1 when
 * memory cannot be allocated. */
int SEQ_BWD(int64_t B, const SEQ_ARGS *args, int threads)
{
    const int64_t dk = args->dk, dv = args->dv, mat = dk * dv;
    const int64_t scalars = 2 * mat + CKPT * (3 * dk + 2 * dv + VLEN + 2 * TILE_ROWS * VLEN)
                            + 2 * dk;
    const size_t scratch = sizeof(STEP_PREP) * CKPT + sizeof(SCALAR) * (size_t)scalars
                           + SEQ_RUN_BYTES(args->S, dk);
    return parallel_rows(SEQ_BWD_ROW, args, B * args->H, threads, scratch, NULL, NULL);
}

#undef SEQ_GATES
#undef GATE_PARTS
#undef STEP_PREP
#undef SEQ_SEG
#undef SEQ_BWD_PREP
#undef SEQ_BWD_TILE
#undef SEQ_BWD_MATRICES
#undef SEQ_BWD_KD_SUMS
#undef SEQ_BWD_VECTORS
#undef SEQ_BWD_STEP
#undef SEQ_BWD_ROW
#undef SEQ_BWD
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
#undef SEQ_TILE_T
#undef TILE_ROWS
