/* The mLSTM cell over a sequence, forward and exact backward, included by kernels.c once per
 * scalar type (define SCALAR, TYPED(name) (the name with the type's suffix), CELL_HEAD, EXP,
 * LOG1P, FABS first; mlstm_cell.h and vec.h must come before it).
 *
 * The recurrent form of Beck et al. 2024, "xLSTM" (arXiv:2405.04517), Section 2.3 and Appendix
 * A (the step is CELL_HEAD of mlstm_cell.h), one (batch row, head) pair per task, the pairs
 * spread over threads. The backward is the exact gradient of that step loop as autograd takes
 * it through the PyTorch reference (xlstm_rl/kernels/reference/mlstm_recurrent.py), with
 * torch's tie rules: torch.maximum gives half the gradient to each side of a tie, |x| at 0
 * gives none, and clamp_max passes the gradient where its input is <= the bound. Per step t
 * (entering state C, n, m; a reset makes them 0 and stops every gradient into them):
 *
 *   a = logsigmoid(f) + m,  m' = max(a, i),  f' = exp(a - m'),  i' = exp(i - m')
 *   C' = f' C + i' k v^T,   n' = f' n + i' k,   qn = q~ . n',   g = exp(min(-m', max_exp))
 *   den = max(|qn|, g) + eps,   h = C'^T q~ / den,   q~ = q * scale
 *
 * backward, given dh and the gradients dC', dn', dm' flowing back into the new state:
 *
 *   dden = -(dh . h) / den;  its share s of the max goes to |qn| (dqn = s dden sign(qn)), the
 *   rest to g (dm' -= (1 - s) dden g);  dC' += q~ (dh / den)^T;  dn' += dqn q~
 *   dq~ = C' (dh / den) + dqn n';  df' = <dC', C> + dn' . n;  u = dC' v
 *   di' = k . (u + dn');  dk = i' (u + dn');  dv = i' dC'^T k
 *   dm' -= f' df' + i' di';  da = f' df' + s2 dm';  di = i' di' + (1 - s2) dm'  (s2: a's share)
 *   df = da sigmoid(-f);  dC = f' dC';  dn = f' dn';  dm = da
 *
 * The forward keeps the state entering every CKPT-th step and the stabilizer m of every step;
 * the backward rebuilds the matrix memories of one CKPT-step segment at a time from there (the
 * same operations as the forward, so the same values) and walks it backwards: one pass over
 * C', C and dC' per step. Memory: CKPT matrices per thread, one per CKPT steps per pair kept.
 * The backward's inner loop is written in the vector types of vec.h, so its three reductions
 * stay in registers: plain loops left them to the auto-vectorizer, which spilled them every
 * iteration.
 */

#define SEQ_ARGS TYPED(seq_args)
#define SEQ_FWD_ROW TYPED(seq_fwd_row)
#define SEQ_BWD_ROW TYPED(seq_bwd_row)
#define SEQ_GATES TYPED(seq_gates)
#define GATE_PARTS TYPED(gate_parts)
#define SEQ_REBUILD TYPED(seq_rebuild)
#define SEQ_RUN_BYTES TYPED(seq_run_bytes)
#define SEQ_RUN_SETUP TYPED(seq_run_setup)
#define SEQ_ROW_GATES TYPED(seq_row_gates)
#define SEQ_BWD_STEP TYPED(seq_bwd_step)
#define SEQ_BWD_PASS TYPED(seq_bwd_pass)
#define SEQ_ROWS TYPED(seq_rows)
#define SEQ_FWD TYPED(xlstm_mlstm_seq_fwd)
#define SEQ_BWD TYPED(xlstm_mlstm_seq_bwd)
#define SEQ_FRESH TYPED(seq_fresh)

typedef struct {
    int64_t H, S, dk, dv;
    const SCALAR *q, *k, *v, *ig, *fg;       /* q, k [.., dk], v [.., dv], gates: strided */
    int64_t q_s[3], k_s[3], v_s[3], g_s[3];  /* (batch, head, time) strides, in elements */
    const uint8_t *reset;                    /* [B, S] or NULL */
    const SCALAR *C0, *n0, *m0;              /* [B,H,dk,dv], [B,H,dk], [B,H] or NULL (zeros) */
    SCALAR scale, eps, max_exp;
    SCALAR *h;                               /* [B, H, S, dv] */
    SCALAR *C, *n, *m;                       /* final state (forward) */
    SCALAR *ck_C, *ck_n, *m_all;             /* [B,H,nseg-1,dk,dv], [B,H,nseg-1,dk], [B,H,S] */
    const SCALAR *dh;                        /* [B, H, S, dv] (backward) or NULL (zeros) */
    int64_t dh_s[3];
    const SCALAR *dC, *dn, *dm;              /* gradients of the final state or NULL */
    SCALAR *dq, *dkk, *dvv, *di, *df;        /* [B,H,S,dk], [B,H,S,dk], [B,H,S,dv], [B,H,S] */
    SCALAR *dC0, *dn0, *dm0;                 /* or NULL (not wanted) */
} SEQ_ARGS;

/* True when step t of `row` starts from the zero state: a reset, or t = 0 without C0. */
static inline int SEQ_FRESH(const SEQ_ARGS *a, int64_t row, int64_t t)
{
    return (a->reset != NULL && a->reset[(row / a->H) * a->S + t] != 0)
           || (t == 0 && a->C0 == NULL);
}

/* Bytes of SEQ_RUN step arrays for S steps (SEQ_RUN_SETUP lays them out). */
static size_t SEQ_RUN_BYTES(int64_t S, int64_t dk)
{
    return sizeof(SCALAR) * (size_t)(4 * S + 2 * S * dk) + (size_t)S;
}

/* Points r at one pair's inputs and at its step arrays in `scratch`, and marks its fresh steps.
 * Returns the step arrays' den [S] (the forward's read-out denominators). */
static SCALAR *SEQ_RUN_SETUP(const SEQ_ARGS *a, int64_t row, void *scratch, SEQ_RUN *r)
{
    const int64_t b = row / a->H, hd = row % a->H, S = a->S, dk = a->dk;
    SCALAR *arr = scratch;
    r->dk = dk;
    r->dv = a->dv;
    r->q = a->q + b * a->q_s[0] + hd * a->q_s[1];
    r->k = a->k + b * a->k_s[0] + hd * a->k_s[1];
    r->v = a->v + b * a->v_s[0] + hd * a->v_s[1];
    r->q_t = a->q_s[2];
    r->k_t = a->k_s[2];
    r->v_t = a->v_s[2];
    r->scale = a->scale;
    r->fa = arr;
    r->ia = arr + S;
    r->floor_ = arr + 2 * S;
    r->qs = arr + 4 * S;
    r->ks = r->qs + S * dk;
    r->fresh = (uint8_t *)(r->ks + S * dk);
    for (int64_t t = 0; t < S; ++t)
        r->fresh[t] = (uint8_t)SEQ_FRESH(a, row, t);
    return arr + 3 * S;
}

/* The gates of `row`'s steps [t0, t1) (see SEQ_GATE_RUN; m_in: the forward's m_all or NULL). */
static SCALAR SEQ_ROW_GATES(const SEQ_ARGS *a, SEQ_RUN *r, int64_t row, int64_t t0, int64_t t1,
                            const SCALAR *m_in, SCALAR *m_out)
{
    const int64_t b = row / a->H, hd = row % a->H, g = b * a->g_s[0] + hd * a->g_s[1];
    const SCALAR m0 = a->C0 != NULL ? a->m0[row] : 0;
    return SEQ_GATE_RUN(r, t0, t1, a->ig + g, a->fg + g, a->g_s[2], m0, m_in, m_out,
                        a->max_exp);
}

/* The forward of one pair: gates, normalizer, then the matrix memory by register tiles
 * (mlstm_tile.h), keeping the state entering every CKPT-th step when ck_C is given. */
static void SEQ_FWD_ROW(const void *args, int64_t row, void *scratch)
{
    const SEQ_ARGS *a = args;
    const int64_t dk = a->dk, dv = a->dv, S = a->S, mat = dk * dv;
    const int64_t nseg = (S + CKPT - 1) / CKPT;
    SEQ_RUN r;
    SCALAR *den = SEQ_RUN_SETUP(a, row, scratch, &r);
    SCALAR *C = a->C + row * mat, *n = a->n + row * dk, *h = a->h + row * S * dv;
    const SCALAR *C0 = a->C0 == NULL ? NULL : a->C0 + row * mat;
    if (C0 != NULL)
        memcpy(n, a->n0 + row * dk, sizeof(SCALAR) * (size_t)dk);
    else
        memset(n, 0, sizeof(SCALAR) * (size_t)dk);
    a->m[row] = SEQ_ROW_GATES(a, &r, row, 0, S, NULL,
                              a->m_all == NULL ? NULL : a->m_all + row * S);
    SEQ_NORM_RUN(&r, 0, S, n, a->eps, den, NULL,
                 a->ck_n == NULL ? NULL : a->ck_n + row * (nseg - 1) * dk);
    if (a->ck_C == NULL) {
        SEQ_MEMORY_RUN(&r, 0, S, C0, C, h, NULL);
    } else {
        SCALAR *ck = a->ck_C + row * (nseg - 1) * mat;
        for (int64_t seg = 0; seg < nseg; ++seg) {
            const int64_t t0 = seg * CKPT, t1 = t0 + CKPT < S ? t0 + CKPT : S;
            SEQ_MEMORY_RUN(&r, t0, t1, seg == 0 ? C0 : ck + (seg - 1) * mat,
                           seg == nseg - 1 ? C : ck + seg * mat, h, NULL);
        }
    }
    for (int64_t t = 0; t < S; ++t)
        for (int64_t j = 0; j < dv; ++j)
            h[t * dv + j] /= den[t];
}

/* The step's gates as the forward computed them (CELL_GATES, so rebuilt states equal the
 * forward's), the floor's clamp mask, and the shares of the two maxima's gradients. */
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

/* Rebuilds C_t, n_t for t in [t0, t1) into Cb, nb from the state entering t0 (ck_C, ck_n;
 * not read when t0 is fresh) with the forward's own code, so the values are the forward's. */
static void SEQ_REBUILD(const SEQ_ARGS *a, SEQ_RUN *r, int64_t row, int64_t t0, int64_t t1,
                        const SCALAR *ck_C, const SCALAR *ck_n, SCALAR *Cb, SCALAR *nb,
                        SCALAR *n_work)
{
    SEQ_ROW_GATES(a, r, row, t0, t1, a->m_all + row * a->S, NULL);
    memcpy(n_work, ck_n, sizeof(SCALAR) * (size_t)a->dk);
    SEQ_NORM_RUN(r, t0, t1, n_work, a->eps, NULL, nb, NULL);
    SEQ_MEMORY_RUN(r, t0, t1, r->fresh[t0] ? NULL : ck_C, NULL, NULL, Cb);
}

/* What one backward step's pass over the matrix memory reads. */
typedef struct {
    int64_t dk, dv;
    int fresh;                       /* the step started from the zero state */
    SCALAR scale, fa, ia, dqn;       /* q scale, f', i', the gradient of q~ . n' */
    const SCALAR *q, *k, *v;         /* the step's q, k [dk], v [dv] */
    const SCALAR *Ct, *nt, *Cp, *np; /* the new state and the entering one */
    const SCALAR *dnum;              /* dh / den [dv] */
} SEQ_ROWS;

/* The pass over the rows of C' and dC' for one step: adds q~ dnum^T to dC', writes dq, dk,
 * accumulates dv (times 1 / i') in dvacc, turns dC', dn' into the entering state's gradients,
 * and returns df' = <dC', C> + dn' . n and di' = k . (dC' v + dn'). Two rows at a time where
 * the vector loop covers the row: the dv accumulator is read and written once per pair, and
 * the loads of dnum and v are shared. */
static void SEQ_BWD_PASS(const SEQ_ROWS *w, SCALAR *dC, SCALAR *dn, SCALAR *dvacc,
                         SCALAR *dqb, SCALAR *dkb, SCALAR *dfa_out, SCALAR *dia_out)
{
    const int64_t dk = w->dk, dv = w->dv;
    const int fresh = w->fresh;
    const SCALAR scale = w->scale, fa = w->fa, ia = w->ia, dqn = w->dqn;
    const SCALAR *qb = w->q, *kb = w->k, *vb = w->v, *Ct = w->Ct, *nt = w->nt, *Cp = w->Cp;
    const SCALAR *np = w->np, *dnum = w->dnum;
    SCALAR dfa = 0, dia = 0;
    VEC f_acc = {0};
    const int64_t dv_vec = dv - dv % VLEN;
    int64_t r = 0;
    for (; dv_vec == dv && r + 2 <= dk; r += 2) {
        const SCALAR q0 = qb[r] * scale, q1 = qb[r + 1] * scale;
        const SCALAR k0 = kb[r], k1 = kb[r + 1];
        const SCALAR *restrict C0 = Ct + r * dv, *restrict C1 = C0 + dv;
        const SCALAR *restrict P0 = Cp + r * dv, *restrict P1 = P0 + dv;
        SCALAR *restrict D0 = dC + r * dv, *restrict D1 = D0 + dv;
        VEC qa0 = {0}, qa1 = {0}, ua0 = {0}, ua1 = {0};
        for (int64_t j = 0; j < dv; j += VLEN) {
            const VEC g_num = VLOAD(dnum + j), vv = VLOAD(vb + j);
            const VEC d0 = VLOAD(D0 + j) + q0 * g_num, d1 = VLOAD(D1 + j) + q1 * g_num;
            qa0 += VLOAD(C0 + j) * g_num;
            qa1 += VLOAD(C1 + j) * g_num;
            if (!fresh)
                f_acc += d0 * VLOAD(P0 + j) + d1 * VLOAD(P1 + j);
            ua0 += d0 * vv;
            ua1 += d1 * vv;
            VSTORE(dvacc + j, VLOAD(dvacc + j) + k0 * d0 + k1 * d1);
            VSTORE(D0 + j, d0 * fa);
            VSTORE(D1 + j, d1 * fa);
        }
        const SCALAR sq[2] = {VSUM(qa0), VSUM(qa1)}, su[2] = {VSUM(ua0), VSUM(ua1)};
        for (int e = 0; e < 2; ++e) {
            const SCALAR qr = e ? q1 : q0, kr = e ? k1 : k0;
            const SCALAR dnr = dn[r + e] + dqn * qr;
            dqb[r + e] = (sq[e] + dqn * nt[r + e]) * scale;
            dfa += fresh ? 0 : dnr * np[r + e];
            dia += kr * (su[e] + dnr);
            dkb[r + e] = ia * (su[e] + dnr);
            dn[r + e] = dnr * fa;
        }
    }
    for (; r < dk; ++r) {
        const SCALAR qr = qb[r] * scale, kr = kb[r];
        const SCALAR *restrict Crow = Ct + r * dv;
        const SCALAR *restrict Prow = Cp + r * dv;
        SCALAR *restrict Drow = dC + r * dv;
        VEC q_acc = {0}, u_acc = {0};
        for (int64_t j = 0; j < dv_vec; j += VLEN) {
            const VEC g_num = VLOAD(dnum + j);
            const VEC d = VLOAD(Drow + j) + qr * g_num;
            q_acc += VLOAD(Crow + j) * g_num;
            if (!fresh)
                f_acc += d * VLOAD(Prow + j);
            u_acc += d * VLOAD(vb + j);
            VSTORE(dvacc + j, VLOAD(dvacc + j) + kr * d);
            VSTORE(Drow + j, d * fa);
        }
        SCALAR sq = VSUM(q_acc), su = VSUM(u_acc);
        for (int64_t j = dv_vec; j < dv; ++j) {
            const SCALAR d = Drow[j] + qr * dnum[j];
            sq += Crow[j] * dnum[j];
            dfa += fresh ? 0 : d * Prow[j];
            su += d * vb[j];
            dvacc[j] += kr * d;
            Drow[j] = d * fa;
        }
        const SCALAR dnr = dn[r] + dqn * qr;
        dqb[r] = (sq + dqn * nt[r]) * scale;
        dfa += fresh ? 0 : dnr * np[r];
        dia += kr * (su + dnr);
        dkb[r] = ia * (su + dnr);
        dn[r] = dnr * fa;
    }
    *dfa_out = dfa + VSUM(f_acc);
    *dia_out = dia;
}

/* One backward step at t: dC, dn hold the gradient of the new state (updated in place to that
 * of the entering state); Ct, nt the new state, Cp, np the entering one (ignored after a reset).
 * Returns the gradient of the entering stabilizer. */
static SCALAR SEQ_BWD_STEP(const SEQ_ARGS *a, int64_t row, int64_t t, const SCALAR *Ct,
                           const SCALAR *nt, const SCALAR *Cp, const SCALAR *np, SCALAR *dC,
                           SCALAR *dn, SCALAR dm_new, SCALAR *dnum, SCALAR *dvacc)
{
    const int64_t b = row / a->H, hd = row % a->H, dk = a->dk, dv = a->dv, S = a->S;
    const int fresh = SEQ_FRESH(a, row, t);
    const SCALAR m_old = fresh ? 0 : (t == 0 ? a->m0[row] : a->m_all[row * S + t - 1]);
    const int64_t g = b * a->g_s[0] + hd * a->g_s[1] + t * a->g_s[2];
    const GATE_PARTS p = SEQ_GATES(a->ig[g], a->fg[g], m_old, a->max_exp);
    const SCALAR *qb = a->q + b * a->q_s[0] + hd * a->q_s[1] + t * a->q_s[2];
    const SCALAR *kb = a->k + b * a->k_s[0] + hd * a->k_s[1] + t * a->k_s[2];
    const SCALAR *vb = a->v + b * a->v_s[0] + hd * a->v_s[1] + t * a->v_s[2];
    const SCALAR *hb = a->h + (row * S + t) * dv;
    const SCALAR *dhb = a->dh == NULL ? NULL
        : a->dh + b * a->dh_s[0] + hd * a->dh_s[1] + t * a->dh_s[2];
    const SCALAR qn = SEQ_QN(dk, qb, a->scale, nt);
    const SCALAR mag = FABS(qn), den = (mag > p.floor_ ? mag : p.floor_) + a->eps;
    SCALAR dh_h = 0;
    for (int64_t j = 0; j < dv; ++j) {
        dnum[j] = dhb == NULL ? 0 : dhb[j] / den;
        dh_h += dhb == NULL ? 0 : dhb[j] * hb[j];
        dvacc[j] = 0;
    }
    const SCALAR dden = -dh_h / den;
    const SCALAR s_mag = mag > p.floor_ ? 1 : (mag == p.floor_ ? (SCALAR)0.5 : 0);
    const SCALAR dqn = s_mag * dden * (qn > 0 ? 1 : (qn < 0 ? -1 : 0));
    dm_new -= (1 - s_mag) * dden * p.floor_ * p.floor_live;
    SCALAR *dqb = a->dq + (row * S + t) * dk, *dkb = a->dkk + (row * S + t) * dk;
    const SEQ_ROWS rows = {dk, dv, fresh, a->scale, p.fa, p.ia, dqn, qb, kb, vb, Ct, nt, Cp, np,
                           dnum};
    SCALAR dfa = 0, dia = 0;
    SEQ_BWD_PASS(&rows, dC, dn, dvacc, dqb, dkb, &dfa, &dia);
    SCALAR *dvb = a->dvv + (row * S + t) * dv;
    for (int64_t j = 0; j < dv; ++j)
        dvb[j] = p.ia * dvacc[j];
    dm_new -= p.fa * dfa + p.ia * dia;
    const SCALAR da = p.fa * dfa + p.s_a * dm_new;
    a->di[row * S + t] = p.ia * dia + (1 - p.s_a) * dm_new;
    a->df[row * S + t] = da * p.dlog_f;
    if (fresh) {
        memset(dC, 0, sizeof(SCALAR) * (size_t)(dk * dv));
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
    SCALAR *Cb = scratch, *nb = Cb + CKPT * mat, *dC = nb + CKPT * dk, *dn = dC + mat;
    SCALAR *dnum = dn + dk, *dvacc = dnum + dv, *n_work = dvacc + dv;
    SEQ_RUN r;
    SEQ_RUN_SETUP(a, row, n_work + dk, &r);
    SCALAR dm = a->dm != NULL ? a->dm[row] : 0;
    if (a->dC != NULL) {
        memcpy(dC, a->dC + row * mat, sizeof(SCALAR) * (size_t)mat);
        memcpy(dn, a->dn + row * dk, sizeof(SCALAR) * (size_t)dk);
    } else {
        memset(dC, 0, sizeof(SCALAR) * (size_t)mat);
        memset(dn, 0, sizeof(SCALAR) * (size_t)dk);
    }
    for (int64_t seg = nseg - 1; seg >= 0; --seg) {
        const int64_t t0 = seg * CKPT, t1 = t0 + CKPT < S ? t0 + CKPT : S;
        /* The state entering the segment (never read when its first step is fresh). */
        const SCALAR *ck_C = seg > 0 ? a->ck_C + (row * (nseg - 1) + seg - 1) * mat
                                     : (a->C0 != NULL ? a->C0 + row * mat : Cb);
        const SCALAR *ck_n = seg > 0 ? a->ck_n + (row * (nseg - 1) + seg - 1) * dk
                                     : (a->C0 != NULL ? a->n0 + row * dk : nb);
        SEQ_REBUILD(a, &r, row, t0, t1, ck_C, ck_n, Cb, nb, n_work);
        for (int64_t t = t1 - 1; t >= t0; --t) {
            const SCALAR *Cp = t == t0 ? ck_C : Cb + (t - t0 - 1) * mat;
            const SCALAR *np = t == t0 ? ck_n : nb + (t - t0 - 1) * dk;
            dm = SEQ_BWD_STEP(a, row, t, Cb + (t - t0) * mat, nb + (t - t0) * dk, Cp, np,
                              dC, dn, dm, dnum, dvacc);
        }
    }
    if (a->dC0 != NULL) {
        memcpy(a->dC0 + row * mat, dC, sizeof(SCALAR) * (size_t)mat);
        memcpy(a->dn0 + row * dk, dn, sizeof(SCALAR) * (size_t)dk);
        a->dm0[row] = dm;
    }
}

/* Forward over B * H (row, head) pairs on `threads` threads. ck_C == NULL: keep nothing for a
 * backward. Returns 0, or 1 when a thread cannot be started or memory allocated. */
int SEQ_FWD(int64_t B, const SEQ_ARGS *args, int threads)
{
    return parallel_rows(SEQ_FWD_ROW, args, B * args->H, threads,
                         SEQ_RUN_BYTES(args->S, args->dk), NULL, NULL);
}

/* Backward of SEQ_FWD (which must have kept its checkpoints in args). */
int SEQ_BWD(int64_t B, const SEQ_ARGS *args, int threads)
{
    const int64_t mat = args->dk * args->dv;
    const size_t scratch = sizeof(SCALAR) * (size_t)(CKPT * (mat + args->dk) + mat
                                                     + 2 * args->dk + 2 * args->dv)
                           + SEQ_RUN_BYTES(args->S, args->dk);
    return parallel_rows(SEQ_BWD_ROW, args, B * args->H, threads, scratch, NULL, NULL);
}

#undef SEQ_ARGS
#undef SEQ_FWD_ROW
#undef SEQ_BWD_ROW
#undef SEQ_GATES
#undef GATE_PARTS
#undef SEQ_REBUILD
#undef SEQ_RUN_BYTES
#undef SEQ_RUN_SETUP
#undef SEQ_ROW_GATES
#undef SEQ_BWD_STEP
#undef SEQ_BWD_PASS
#undef SEQ_ROWS
#undef SEQ_FWD
#undef SEQ_BWD
#undef SEQ_FRESH
#undef SEQ_RUN
#undef SEQ_QN
#undef SEQ_GATE_RUN
#undef SEQ_NORM_RUN
#undef SEQ_MEMORY_RUN
#undef TILE_ROWS
