"""Chunkwise mLSTM backward kernels: exact gradients of the stabilized map (arXiv:2405.04517).

Notation per chunk ``c`` (entering state ``C_c, n_c, m_c``; ``q̂ = q / sqrt(Dk)``):
``num_t, qn_t, den_t = max(|qn_t|, exp(-m_t)) + eps``, ``h_t = num_t / den_t``, and
``δnum_t = δh_t / den_t``; ``δqn_t`` and ``δm_out_t`` (the gradient of ``m_t`` at fixed decay
logits, normalizer branch included: ``δm_out = δm_direct - δh·h - δqn qn``) are per-step scalars
computed by the caller. The stabilizer is a max, so the gradient of every ``m_t`` goes to the
argument attaining it: the carry (``cw_t``) or one entry of row ``t`` of ``logD``.

``chunk_states_bwd_kernel`` (grid ``[B*H, tiles]``, chunks in reverse) runs the adjoint of the
chunk recurrence, which does not involve the ``m`` gradients:

    δC_c = [no reset] u_c δC_{c+1} + Σ_t w_t q̂_t δnum_tᵀ,
    δn_c = [no reset] u_c δn_{c+1} + Σ_t w_t δqn_t q̂_t

and the scalar recurrence ``ρ_c = γ_c + β_c ρ_{c+1}`` for the stabilizer gradient that crosses
chunk boundaries: ``ρ_c = dL/dm_c - <C_c, δC_c> - n_c·δn_c`` (the gradient of ``m_c`` with the
unscaled state ``C_c exp(m_c)`` held fixed), ``γ_c = Σ_{t first, cw_t} δm_out_t``,
``β_c = [no reset in c and cw_{L-1}]``, seeded with ``ρ_NC = δm_N - <C_N, δC_N> - n_N·δn_N``.

``chunk_grads_bwd_kernel`` (grid ``[NC, B*H]``) then gives every chunk's ``dq, dk, dv, di, df̂``
in parallel: explicit gradients of ``logD`` (through ``S`` and through the end-of-chunk state) and
of ``carry`` (through ``w`` and ``u``), plus the routed stabilizer gradients (``δm_out_t``, and
``ρ_{c+1}`` on row ``L-1``, whose max is ``m_{c+1}``), reduced onto the gates:
``di_s = Σ_t dlogD[t,s]``,
``df̂_j = Σ_{t>=j} Σ_{s<j} dlogD[t,s] + Σ_{t: j in seg(t), j<=t} dcarry_t``,
and ``dm_c = Σ_{t first} dcarry_t`` (used for the initial state).
"""
import triton
import triton.language as tl

from .mlstm_common import chunk_decay, last_of, load_chunk_gates


@triton.jit
def chunk_states_bwd_kernel(
        q_ptr, dh_ptr, fl_ptr, r_ptr, ms_ptr, mt_ptr, cw_ptr, den_ptr, dqn_ptr, dmo_ptr,
        dCN_ptr, dnN_ptr, rhoN_ptr, dCs_ptr, dns_ptr, rho_ptr, S, NC, H, scale,
        DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
        NVB: tl.constexpr, HAS_RESET: tl.constexpr, PS: tl.constexpr):
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
    dC = tl.load(dCN_ptr + bh * DK * DV + c_off, mask=mkv, other=0.0)
    dn = tl.load(dnN_ptr + bh * DK + ok, mask=mk, other=0.0)
    rho = tl.load(rhoN_ptr + bh)
    st_C = dCs_ptr + bh * (NC + 1) * DK * DV
    st_n = dns_ptr + bh * (NC + 1) * DK
    tl.store(st_C + NC * DK * DV + c_off, dC, mask=mkv)
    tl.store(st_n + NC * DK + ok, dn, mask=mk & (vb == 0))
    tl.store(rho_ptr + bh * (NC + 1) + NC, rho, mask=tile == 0)
    for cc in range(NC):
        c = NC - 1 - cc
        pos = c * L + t
        valid = pos < S
        fl = tl.load(fl_ptr + bh * S + pos, mask=valid, other=0.0)
        if HAS_RESET:
            rs = tl.load(r_ptr + b * S + pos, mask=valid, other=0).to(tl.int32)
        else:
            rs = tl.zeros([L], dtype=tl.int32)
        first = tl.cumsum(rs, axis=0) == 0
        keep = tl.sum(rs, axis=0) == 0
        m_c = tl.load(ms_ptr + bh * (NC + 1) + c)
        m_next = tl.load(ms_ptr + bh * (NC + 1) + c + 1)
        st = bh * NC * L + pos
        mt = tl.load(mt_ptr + st)
        cwt = tl.load(cw_ptr + st) > 0.5
        den = tl.load(den_ptr + st)
        dqn = tl.load(dqn_ptr + st)
        dmo = tl.load(dmo_ptr + st)
        cum = tl.cumsum(fl, axis=0)
        w = tl.where(first & valid, tl.exp(cum + m_c - mt), 0.0)
        u = tl.exp(tl.sum(fl, axis=0) + m_c - m_next)
        qt = tl.load(q_ptr + bh * S * DK + pos[:, None] * DK + ok[None, :],
                     mask=valid[:, None] & mk[None, :], other=0.0).to(tl.float32)
        dht = tl.load(dh_ptr + bh * S * DV + pos[:, None] * DV + ov[None, :],
                      mask=valid[:, None] & mv[None, :], other=0.0).to(tl.float32)
        qw = qt * (w * scale)[:, None]
        dC = tl.where(keep, u * dC, 0.0) + tl.dot(tl.trans(qw), dht / den[:, None],
                                                  input_precision=PS)
        dn = tl.where(keep, u * dn, 0.0) + tl.sum(qw * dqn[:, None], axis=0)
        gamma = tl.sum(tl.where(first & cwt, dmo, 0.0), axis=0)
        beta = keep & (last_of(cwt.to(tl.int32), L) > 0)
        rho = gamma + tl.where(beta, rho, 0.0)
        tl.store(st_C + c * DK * DV + c_off, dC, mask=mkv)
        tl.store(st_n + c * DK + ok, dn, mask=mk & (vb == 0))
        tl.store(rho_ptr + bh * (NC + 1) + c, rho, mask=tile == 0)


@triton.jit
def chunk_grads_bwd_kernel(
        q_ptr, k_ptr, v_ptr, i_ptr, fl_ptr, r_ptr, dh_ptr, Cs_ptr, ns_ptr, ms_ptr, dCs_ptr,
        dns_ptr, rho_ptr, den_ptr, dqn_ptr, dmo_ptr, dq_ptr, dk_ptr, dv_ptr, di_ptr, df_ptr,
        dM_ptr, S, NC, H, scale, DK: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
        BK: tl.constexpr, BV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
        HAS_RESET: tl.constexpr, DT: tl.constexpr, PA: tl.constexpr, PS: tl.constexpr):
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
    u = last_of(w, L)
    is_last = t == L - 1
    p_end = tl.sum(tl.where(is_last[:, None], P, 0.0), axis=0)
    st = bh * NC * L + pos
    den = tl.load(den_ptr + st)
    dqn = tl.load(dqn_ptr + st)
    rho_next = tl.load(rho_ptr + bh * (NC + 1) + c + 1)
    dm_all = tl.load(dmo_ptr + st) + tl.where(is_last, rho_next, 0.0)
    qk_base = bh * S * DK + pos[:, None] * DK
    vh_base = bh * S * DV + pos[:, None] * DV
    C_base = Cs_ptr + (bh * (NC + 1) + c) * DK * DV
    n_base = ns_ptr + (bh * (NC + 1) + c) * DK
    dC_base = dCs_ptr + (bh * (NC + 1) + c + 1) * DK * DV
    dn_base = dns_ptr + (bh * (NC + 1) + c + 1) * DK
    QK = tl.zeros([L, L], dtype=tl.float32)
    for kb in tl.static_range(DKP // BK):
        ok = kb * BK + tl.arange(0, BK)
        mq = valid[:, None] & (ok[None, :] < DK)
        qt = tl.load(q_ptr + qk_base + ok[None, :], mask=mq, other=0.0)
        kt = tl.load(k_ptr + qk_base + ok[None, :], mask=mq, other=0.0)
        QK += tl.dot(qt.to(DT), tl.trans(kt.to(DT)), input_precision=PA)
    Sm = QK * scale * P
    dSv = tl.zeros([L, L], dtype=tl.float32)
    for vb in tl.static_range(DVP // BV):
        ov = vb * BV + tl.arange(0, BV)
        mv = valid[:, None] & (ov[None, :] < DV)
        dnum = tl.load(dh_ptr + vh_base + ov[None, :], mask=mv, other=0.0).to(tl.float32)
        vt = tl.load(v_ptr + vh_base + ov[None, :], mask=mv, other=0.0)
        dSv += tl.dot((dnum / den[:, None]).to(DT), tl.trans(vt.to(DT)), input_precision=PA)
    dS = dSv + dqn[:, None]
    dSP = (dS * P * scale).to(DT)
    dlogD = dS * Sm
    # Stabilizer gradients: to the carry where it won the max, else to the row's argmax.
    amax = tl.argmax(logD, axis=1)
    dlogD += tl.where((t[None, :] == amax[:, None]) & (~cw)[:, None], dm_all[:, None], 0.0)
    dcarry = tl.where(cw, dm_all, 0.0)
    dlog_end = tl.zeros([L], dtype=tl.float32)
    y_end = tl.sum(tl.zeros([L], dtype=tl.float32), axis=0)
    for kb in tl.static_range(DKP // BK):
        ok = kb * BK + tl.arange(0, BK)
        okm = ok < DK
        mq = valid[:, None] & okm[None, :]
        qt = tl.load(q_ptr + qk_base + ok[None, :], mask=mq, other=0.0)
        kt = tl.load(k_ptr + qk_base + ok[None, :], mask=mq, other=0.0)
        inter = tl.zeros([L, BK], dtype=tl.float32)
        end_k = tl.zeros([L, BK], dtype=tl.float32)
        for vb in tl.static_range(DVP // BV):
            ov = vb * BV + tl.arange(0, BV)
            mv = valid[:, None] & (ov[None, :] < DV)
            mkv = okm[:, None] & (ov[None, :] < DV)
            dnum = tl.load(dh_ptr + vh_base + ov[None, :], mask=mv, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + vh_base + ov[None, :], mask=mv, other=0.0).to(tl.float32)
            Ct = tl.load(C_base + ok[:, None] * DV + ov[None, :], mask=mkv, other=0.0)
            dCt = tl.load(dC_base + ok[:, None] * DV + ov[None, :], mask=mkv, other=0.0)
            inter += tl.dot(dnum / den[:, None], tl.trans(Ct), input_precision=PS)
            end_k += tl.dot(vt, tl.trans(dCt), input_precision=PS)
            y_end += tl.sum(tl.sum(tl.where(mkv, Ct * dCt, 0.0), axis=1), axis=0)
        nv = tl.load(n_base + ok, mask=okm, other=0.0)
        dnv = tl.load(dn_base + ok, mask=okm, other=0.0)
        y_end += tl.sum(tl.where(okm, nv * dnv, 0.0), axis=0)
        inter = tl.where(first[:, None], w[:, None] * (inter + dqn[:, None] * nv[None, :]), 0.0)
        dcarry += tl.where(first, tl.sum(qt.to(tl.float32) * inter, axis=1) * scale, 0.0)
        dq = tl.dot(dSP, kt.to(DT), input_precision=PA) + scale * inter
        tl.store(dq_ptr + qk_base + ok[None, :], dq, mask=mq)
        end_k = p_end[:, None] * (end_k + dnv[None, :])
        dlog_end += tl.sum(kt.to(tl.float32) * end_k, axis=1)
        dk = tl.dot(tl.trans(dSP), qt.to(DT), input_precision=PA) + end_k
        tl.store(dk_ptr + qk_base + ok[None, :], dk, mask=mq)
    for vb in tl.static_range(DVP // BV):
        ov = vb * BV + tl.arange(0, BV)
        ovm = ov < DV
        mv = valid[:, None] & ovm[None, :]
        dnum = tl.load(dh_ptr + vh_base + ov[None, :], mask=mv, other=0.0).to(tl.float32)
        dv = tl.dot(tl.trans(Sm.to(DT)), (dnum / den[:, None]).to(DT), input_precision=PA)
        end_v = tl.zeros([L, BV], dtype=tl.float32)
        for kb in tl.static_range(DKP // BK):
            ok = kb * BK + tl.arange(0, BK)
            kt = tl.load(k_ptr + qk_base + ok[None, :], mask=valid[:, None] & (ok[None, :] < DK),
                         other=0.0).to(tl.float32)
            dCt = tl.load(dC_base + ok[:, None] * DV + ov[None, :],
                          mask=(ok[:, None] < DK) & ovm[None, :], other=0.0)
            end_v += tl.dot(kt, dCt, input_precision=PS)
        dv += p_end[:, None] * end_v
        tl.store(dv_ptr + vh_base + ov[None, :], dv, mask=mv)
    dlogD += tl.where(is_last[:, None], dlog_end[None, :], 0.0)
    dcarry += tl.where(is_last & first, u * y_end, 0.0)
    di = tl.sum(dlogD, axis=0)
    # df̂_j = Σ_{t >= j} Σ_{s < j} dlogD[t, s] + Σ_{t: j in seg(t), j <= t} dcarry_t
    excl = tl.cumsum(dlogD, axis=1) - dlogD
    df = tl.sum(tl.where(t[:, None] >= t[None, :], excl, 0.0), axis=0)
    df += tl.sum(tl.where(mask, dcarry[:, None], 0.0), axis=0)
    tl.store(di_ptr + bh * S + pos, di, mask=valid)
    tl.store(df_ptr + bh * S + pos, df, mask=valid)
    tl.store(dM_ptr + bh * NC + c, tl.sum(tl.where(first, dcarry, 0.0), axis=0))
