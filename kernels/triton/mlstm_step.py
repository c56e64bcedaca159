"""Fused single mLSTM step (Beck et al. 2024, arXiv:2405.04517, Section 2.3 and Appendix A).

One program per ``(b, h)`` does gates, the state update and the output:

    m' = max(f̂ + m, i),  f' = exp(f̂ + m - m'),  i' = exp(i - m')
    C' = f' C + i' k vᵀ,  n' = f' n + i' k,  h = q̂ᵀC' / (max(|q̂·n'|, exp(-m')) + eps)

A reset row uses the zero state (``torch.where`` semantics: nothing of the old state, not even a
NaN, is read into the result). Each program reads and writes only its own ``(b, h)`` state, so
the new state may be written over the old one (in-place update).
"""
import triton
import triton.language as tl

from .mlstm_common import MAX_EXP_ARG, logsigmoid


@triton.jit
def mlstm_step_kernel(
        q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, r_ptr, C_ptr, n_ptr, m_ptr, h_ptr, Co_ptr, no_ptr,
        mo_ptr, H, scale, eps, DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr,
        BV: tl.constexpr, NVB: tl.constexpr, HAS_RESET: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    ok = tl.arange(0, DKP)
    mk = ok < DK
    ig = tl.load(i_ptr + bh).to(tl.float32)
    fl = logsigmoid(tl.load(f_ptr + bh).to(tl.float32))
    if HAS_RESET:
        rst = tl.load(r_ptr + b) != 0
    else:
        rst = bh < 0
    m = tl.where(rst, 0.0, tl.load(m_ptr + bh))
    m_new = tl.maximum(fl + m, ig)
    fa = tl.exp(fl + m - m_new)
    ia = tl.exp(ig - m_new)
    qv = tl.load(q_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32) * scale
    kv = tl.load(k_ptr + bh * DK + ok, mask=mk, other=0.0).to(tl.float32)
    n = tl.where(rst, 0.0, tl.load(n_ptr + bh * DK + ok, mask=mk, other=0.0))
    n_new = fa * n + ia * kv
    den = tl.maximum(tl.abs(tl.sum(qv * n_new, axis=0)),
                     tl.exp(tl.minimum(-m_new, MAX_EXP_ARG))) + eps
    for vb in tl.static_range(NVB):
        ov = vb * BV + tl.arange(0, BV)
        mv = ov < DV
        mkv = mk[:, None] & mv[None, :]
        vv = tl.load(v_ptr + bh * DV + ov, mask=mv, other=0.0).to(tl.float32)
        off = bh * DK * DV + ok[:, None] * DV + ov[None, :]
        C = tl.where(rst, 0.0, tl.load(C_ptr + off, mask=mkv, other=0.0))
        C = fa * C + ia * kv[:, None] * vv[None, :]
        h = tl.sum(qv[:, None] * C, axis=0) / den
        tl.store(h_ptr + bh * DV + ov, h.to(h_ptr.dtype.element_ty), mask=mv)
        tl.store(Co_ptr + off, C, mask=mkv)
    tl.store(no_ptr + bh * DK + ok, n_new, mask=mk)
    tl.store(mo_ptr + bh, m_new)
