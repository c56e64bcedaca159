/* The mLSTM block's block-diagonal q/k/v maps by tap, forward and backward; included by
 * mlstm_block_train.h (which defines BT_ARGS and the layout of the taps) once per scalar type.
 */

/* The block-diagonal maps, vectorized where a vector of VEC_LANES channels holds whole blocks
 * (bs divides VEC_LANES, and inner is a multiple of it: the default bs = 4 does): the input
 * x[base(c) + d] of tap d, for a vector's channels, is one lane permutation of the vector's own
 * inputs (GCC's __builtin_shuffle; other compilers take the per-channel loops). */
#define BT_SPREAD VEC_SHUFFLE

#if BT_SPREAD
/* masks[d], d < bs: lane l -> (l / bs) * bs + d, so every lane of a block reads the block's
 * input d. Built once per call: built per tap inside the channel loop, the integer arithmetic
 * cost more than the maps' multiply-adds. */
static inline void TYPED(spread_masks)(int64_t bs, VEC_INDEX *masks)
{
    for (int64_t d = 0; d < bs; ++d)
        for (int l = 0; l < VEC_LANES; ++l)
            masks[d][l] = (l / bs) * bs + d;
}
#endif

static inline int TYPED(bt_spreads)(int64_t bs, int64_t inner)
{
    return BT_SPREAD && bs <= VEC_LANES && VEC_LANES % bs == 0 && inner % VEC_LANES == 0;
}

/* qkv = the three maps of (xc, xc, xm), by tap. */
static void TYPED(bt_maps_fwd)(const BT_ARGS *a, int64_t inner, const SCALAR *restrict xc,
                               const SCALAR *restrict xm, const int32_t *restrict base,
                               SCALAR *restrict qkv)
{
    const int64_t bs = a->bs;
    const SCALAR *taps = a->taps;
#if BT_SPREAD
    if (TYPED(bt_spreads)(bs, inner)) {
        VEC_INDEX masks[VEC_LANES];
        TYPED(spread_masks)(bs, masks);
        for (int64_t o = 0; o < inner; o += VEC_LANES) {
            const VEC x = VLOAD(xc + o), y = VLOAD(xm + o);
            VEC q = {0}, k = {0}, v = {0};
            for (int64_t d = 0; d < bs; ++d) {
                const VEC_INDEX m = masks[d];
                const VEC xd = __builtin_shuffle(x, m), yd = __builtin_shuffle(y, m);
                q += xd * VLOAD(taps + d * inner + o);
                k += xd * VLOAD(taps + (bs + d) * inner + o);
                v += yd * VLOAD(taps + (2 * bs + d) * inner + o);
            }
            VSTORE(qkv + o, q);
            VSTORE(qkv + inner + o, k);
            VSTORE(qkv + 2 * inner + o, v);
        }
        return;
    }
#endif
    memset(qkv, 0, sizeof(SCALAR) * (size_t)(3 * inner));
    for (int64_t d = 0; d < bs; ++d) {
        const SCALAR *restrict tq = taps + d * inner, *restrict tk = taps + (bs + d) * inner;
        const SCALAR *restrict tv = taps + (2 * bs + d) * inner;
        for (int64_t c = 0; c < inner; ++c) {
            qkv[c] += xc[base[c] + d] * tq[c];
            qkv[inner + c] += xc[base[c] + d] * tk[c];
        }
        for (int64_t c = 0; c < inner; ++c)
            qkv[2 * inner + c] += xm[base[c] + d] * tv[c];
    }
}

/* Backward of the maps: dpre += d xc, dxm += d xm, and the taps' gradients g. */
static void TYPED(bt_maps_bwd)(const BT_ARGS *a, int64_t inner, const SCALAR *restrict xc,
                               const SCALAR *restrict xm, const int32_t *restrict base,
                               const SCALAR *restrict dqkv, SCALAR *restrict dpre,
                               SCALAR *restrict dxm, SCALAR *restrict g)
{
    const int64_t bs = a->bs;
    const SCALAR *taps = a->taps_t;
#if BT_SPREAD
    if (TYPED(bt_spreads)(bs, inner)) {
        VEC_INDEX masks[VEC_LANES];
        TYPED(spread_masks)(bs, masks);
        for (int64_t o = 0; o < inner; o += VEC_LANES) {
            const VEC x = VLOAD(xc + o), y = VLOAD(xm + o);
            const VEC dq = VLOAD(dqkv + o), dk = VLOAD(dqkv + inner + o);
            const VEC dv = VLOAD(dqkv + 2 * inner + o);
            VEC dx = VLOAD(dpre + o), dy = VLOAD(dxm + o);
            for (int64_t d = 0; d < bs; ++d) {
                const VEC_INDEX m = masks[d];
                const VEC xd = __builtin_shuffle(x, m), yd = __builtin_shuffle(y, m);
                dx += __builtin_shuffle(dq, m) * VLOAD(taps + d * inner + o)
                      + __builtin_shuffle(dk, m) * VLOAD(taps + (bs + d) * inner + o);
                dy += __builtin_shuffle(dv, m) * VLOAD(taps + (2 * bs + d) * inner + o);
                SCALAR *gq = g + d * inner + o, *gk = g + (bs + d) * inner + o;
                SCALAR *gv = g + (2 * bs + d) * inner + o;
                VSTORE(gq, VLOAD(gq) + xd * dq);
                VSTORE(gk, VLOAD(gk) + xd * dk);
                VSTORE(gv, VLOAD(gv) + yd * dv);
            }
            VSTORE(dpre + o, dx);
            VSTORE(dxm + o, dy);
        }
        return;
    }
#endif
    for (int64_t d = 0; d < bs; ++d) {
        const SCALAR *restrict tq = taps + d * inner, *restrict tk = taps + (bs + d) * inner;
        const SCALAR *restrict tv = taps + (2 * bs + d) * inner;
        SCALAR *restrict gq = g + d * inner, *restrict gk = g + (bs + d) * inner;
        SCALAR *restrict gv = g + (2 * bs + d) * inner;
        for (int64_t c = 0; c < inner; ++c)
            dpre[c] += dqkv[base[c] + d] * tq[c] + dqkv[inner + base[c] + d] * tk[c];
        for (int64_t c = 0; c < inner; ++c)
            dxm[c] += dqkv[2 * inner + base[c] + d] * tv[c];
        for (int64_t c = 0; c < inner; ++c) {
            gq[c] += xc[base[c] + d] * dqkv[c];
            gk[c] += xc[base[c] + d] * dqkv[inner + c];
        }
        for (int64_t c = 0; c < inner; ++c)
            gv[c] += xm[base[c] + d] * dqkv[2 * inner + c];
    }
}

#undef BT_SPREAD
