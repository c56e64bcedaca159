"""Chunkwise mLSTM forward kernels (Beck et al. 2024, arXiv:2405.04517, Appendix A.3).

Two launches:

``chunk_states_fwd_kernel`` (grid ``[B*H, Dk-tiles * Dv-tiles]``) runs the recurrence between
chunks and writes the state entering every chunk plus the final one, ``C [B,H,NC+1,Dk,Dv]``,
``n [B,H,NC+1,Dk]``, ``m [B,H,NC+1]`` (float32). Per chunk, with ``lw_s = logD[L-1, s]`` and the
end-of-chunk carry ``g + [no reset] m_c`` (``g`` the decay of the chunk's last segment):

    m_{c+1} = max(carry_end, max_s lw_s)
    C_{c+1} = [no reset] exp(carry_end - m_{c+1}) C_c + Σ_s exp(lw_s - m_{c+1}) k_s v_sᵀ

(the zero state after a reset has content 0 but log weight ``g``, which enters the max).

``chunk_out_fwd_kernel`` (grid ``[NC, B*H]``) computes the outputs of every chunk in parallel
from its entering state:

    h_t = (Σ_s S[t,s] v_s + w_t q̂_tᵀ C_c) / (max(|Σ_s S[t,s] + w_t q̂_t·n_c|, exp(-m_t)) + eps)
    S[t,s] = q̂_t·k_s exp(logD[t,s] - m_t),   w_t = [first_t] exp(carry_t - m_t)

and saves per step ``m_t``, ``q̂·n_t`` and whether the carry won the stabilizer max (all the
backward needs besides the chunk states).
"""
import triton
import triton.language as tl

from .mlstm_common import MAX_EXP_ARG, chunk_decay, load_chunk_gates


@triton.jit
def chunk_states_fwd_kernel(
        k_ptr, v_ptr, i_ptr, fl_ptr, r_ptr, C0_ptr, n0_ptr, m0_ptr, Cs_ptr, ns_ptr, ms_ptr,
        S, NC, H, DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr,
        BV: tl.constexpr, NVB: tl.constexpr, HAS_RESET: tl.constexpr, PS: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    kb = tile // NVB
    vb = tile % NVB
    b = bh // H
    t = tl.arange(0, L)
    ok = kb * BK + tl.arange(0, BK)
    ov = vb * BV + tl.arange(0, BV)
    mk = ok < DK
    mv = ov < DV
    mkv = mk[:, None] & mv[None, :]
    c_off = ok[:, None] * DV + ov[None, :]
    C = tl.load(C0_ptr + bh * DK * DV + c_off, mask=mkv, other=0.0).to(tl.float32)
    n = tl.load(n0_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32)
    m = tl.load(m0_ptr + bh).to(tl.float32)
    st_C = Cs_ptr + bh * (NC + 1) * DK * DV
    st_n = ns_ptr + bh * (NC + 1) * DK
    st_m = ms_ptr + bh * (NC + 1)
    tl.store(st_C + c_off, C, mask=mkv)
    tl.store(st_n + ok, n, mask=mk & (vb == 0))
    tl.store(st_m, m, mask=tile == 0)
    for c in range(NC):
        fl, ig, rs, valid = load_chunk_gates(i_ptr, fl_ptr, r_ptr, bh, b, c, S, L, HAS_RESET)
        seg = tl.cumsum(rs, axis=0)
        seg_last = tl.sum(rs, axis=0)
        keep = seg_last == 0
        in_last = seg == seg_last
        # Σ_{j > s} f̂_j for every s (a masked sum, no prefix-sum difference).
        suffix = tl.sum(tl.where(t[None, :] > t[:, None], fl[None, :], 0.0), axis=1)
        g = tl.sum(tl.where(in_last, fl, 0.0), axis=0)
        lw = tl.where(in_last, suffix + ig, float("-inf"))
        carry = g + tl.where(keep, m, 0.0)
        m_new = tl.maximum(carry, tl.max(lw, axis=0))
        u = tl.exp(carry - m_new)
        p = tl.exp(lw - m_new)
        pos = c * L + t
        kt = tl.load(k_ptr + bh * S * DK + pos[:, None] * DK + ok[None, :],
                     mask=valid[:, None] & mk[None, :], other=0.0).to(tl.float32)
        vt = tl.load(v_ptr + bh * S * DV + pos[:, None] * DV + ov[None, :],
                     mask=valid[:, None] & mv[None, :], other=0.0).to(tl.float32)
        kp = kt * p[:, None]
        C = tl.where(keep, u * C, 0.0) + tl.dot(tl.trans(kp), vt, input_precision=PS)
        n = tl.where(keep, u * n, 0.0) + tl.sum(kp, axis=0)
        m = m_new
        tl.store(st_C + (c + 1) * DK * DV + c_off, C, mask=mkv)
        tl.store(st_n + (c + 1) * DK + ok, n, mask=mk & (vb == 0))
        tl.store(st_m + c + 1, m, mask=tile == 0)


@triton.jit
def chunk_out_fwd_kernel(
        q_ptr, k_ptr, v_ptr, i_ptr, fl_ptr, r_ptr, Cs_ptr, ns_ptr, ms_ptr, h_ptr,
        mt_ptr, qn_ptr, cw_ptr, S, NC, H, scale, eps, DK: tl.constexpr, DV: tl.constexpr,
        L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DKP: tl.constexpr,
        DVP: tl.constexpr, HAS_RESET: tl.constexpr, DT: tl.constexpr, PA: tl.constexpr,
        PS: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    t = tl.arange(0, L)
    pos = c * L + t
    fl, ig, rs, valid = load_chunk_gates(i_ptr, fl_ptr, r_ptr, bh, b, c, S, L, HAS_RESET)
    m_in = tl.load(ms_ptr + bh * (NC + 1) + c)
    logD, mask, first, carry, m, cw = chunk_decay(fl, ig, rs, m_in, L)
    P = tl.exp(logD - m[:, None])
    w = tl.where(first, tl.exp(carry - m), 0.0)
    q_base = q_ptr + bh * S * DK + pos[:, None] * DK
    k_base = k_ptr + bh * S * DK + pos[:, None] * DK
    C_base = Cs_ptr + (bh * (NC + 1) + c) * DK * DV
    n_base = ns_ptr + (bh * (NC + 1) + c) * DK
    QK = tl.zeros([L, L], dtype=tl.float32)
    qn_in = tl.zeros([L], dtype=tl.float32)
    for kb in tl.static_range(DKP // BK):
        ok = kb * BK + tl.arange(0, BK)
        mq = valid[:, None] & (ok[None, :] < DK)
        qt = tl.load(q_base + ok[None, :], mask=mq, other=0.0)
        kt = tl.load(k_base + ok[None, :], mask=mq, other=0.0)
        QK += tl.dot(qt.to(DT), tl.trans(kt.to(DT)), input_precision=PA)
        nv = tl.load(n_base + ok, mask=ok < DK, other=0.0)
        qn_in += tl.sum(qt.to(tl.float32) * nv[None, :], axis=1)
    Sm = QK * scale * P
    qn = tl.sum(Sm, axis=1) + tl.where(first, w * scale * qn_in, 0.0)
    den = tl.maximum(tl.abs(qn), tl.exp(tl.minimum(-m, MAX_EXP_ARG))) + eps
    for vb in tl.static_range(DVP // BV):
        ov = vb * BV + tl.arange(0, BV)
        mv = valid[:, None] & (ov[None, :] < DV)
        vt = tl.load(v_ptr + bh * S * DV + pos[:, None] * DV + ov[None, :], mask=mv, other=0.0)
        num = tl.dot(Sm.to(DT), vt.to(DT), input_precision=PA)
        inter = tl.zeros([L, BV], dtype=tl.float32)
        for kb in tl.static_range(DKP // BK):
            ok = kb * BK + tl.arange(0, BK)
            qt = tl.load(q_base + ok[None, :], mask=valid[:, None] & (ok[None, :] < DK), other=0.0)
            Ct = tl.load(C_base + ok[:, None] * DV + ov[None, :],
                         mask=(ok[:, None] < DK) & (ov[None, :] < DV), other=0.0)
            inter += tl.dot(qt.to(tl.float32), Ct, input_precision=PS)
        num += tl.where(first[:, None], (w * scale)[:, None] * inter, 0.0)
        h = num / den[:, None]
        tl.store(h_ptr + bh * S * DV + pos[:, None] * DV + ov[None, :],
                 h.to(h_ptr.dtype.element_ty), mask=mv)
    st = bh * NC * L + pos
    tl.store(mt_ptr + st, m)
    tl.store(qn_ptr + st, qn)
    tl.store(cw_ptr + st, cw.to(tl.float32))
