/* The mLSTM cell over a sequence, forward and exact backward, included by kernels.c once per
 * scalar type (define SCALAR, TYPED(name) (the name with the type's suffix), EXP, LOG1P, FABS
 * first; mlstm_cell.h (CELL_GATES, DOT), vec.h and mlstm_tile.h must come before it).
 *
 * The recurrent form of Beck et al. 2024, "xLSTM" (arXiv:2405.04517), Section 2.3 and Appendix
 * A (the step of CELL_HEAD in mlstm_cell.h), one (batch row, head) pair per task, the pairs
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
 * The forward runs the gates and the normalizer over all steps first, then the matrix memory in
 * register tiles that each walk every step (mlstm_tile.h), keeping the state entering every
 * CKPT-th step and the stabilizer m of every step. The backward (mlstm_sequence_bwd.h) takes
 * one CKPT-step segment at a time from there, newest first: register tiles of the memory's
 * gradient walk it backwards over memories rebuilt with the same arithmetic. Memory: two
 * matrices and a few step buffers per thread, one matrix per CKPT steps per pair kept.
 */

#define SEQ_ARGS TYPED(seq_args)
#define SEQ_FWD_ROW TYPED(seq_fwd_row)
#define SEQ_RUN_BYTES TYPED(seq_run_bytes)
#define SEQ_RUN_SETUP TYPED(seq_run_setup)
#define SEQ_ROW_GATES TYPED(seq_row_gates)
#define SEQ_FWD TYPED(xlstm_mlstm_seq_fwd)
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

/* Forward over B * H (row, head) pairs on `threads` threads. ck_C == NULL: keep nothing for a
 * backward. Returns 0, or 1 when a thread cannot be started or memory allocated. */
int SEQ_FWD(int64_t B, const SEQ_ARGS *args, int threads)
{
    return parallel_rows(SEQ_FWD_ROW, args, B * args->H, threads,
                         SEQ_RUN_BYTES(args->S, args->dk), NULL, NULL);
}
