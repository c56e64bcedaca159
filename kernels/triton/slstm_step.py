"""Fused single sLSTM step (Beck et al. 2024, arXiv:2405.04517, Section 2.2 and Appendix A.2).

Grid ``[batch tiles, H, Dh tiles]``: each program computes, for ``BB`` batch rows and ``BE``
output units of one head, the four recurrent pre-activations
``wx_g + h_{t-1} R[g, head] + b_g`` (gates z, i, f, o; the block-diagonal matmul as ``tl.dot``
over the head's ``Dh`` inputs) and the pointwise stabilized update:

    m' = max(f̂ + m, ĩ) (ĩ while n = 0),  i' = exp(ĩ - m'),  f' = exp(f̂ + m - m')
    c' = f' c + i' tanh(z̃),  n' = f' n + i',  h' = sigmoid(õ) c' / max(n', 1e-30)

Programs read the whole previous ``h`` of their rows, so the new state goes to new buffers.
"""
import triton
import triton.language as tl

from .mlstm_common import logsigmoid


@triton.jit
def _tanh(x):
    """tanh, accurate near 0 (odd series) and saturating without overflow."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = a * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    r = tl.where(a < 0.05, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def _gate_pre(wx_ptr, R_ptr, b_ptr, hp, g: tl.constexpr, hd, ob, oe, rows, cols, H, DH,
              BD: tl.constexpr, PS: tl.constexpr):
    """``wx[:, g, hd, oe] + h_prev @ R[g, hd][:, oe] + bias[g, hd, oe]`` for a ``[BB, BE]`` tile."""
    od = tl.arange(0, BD)
    R = tl.load(R_ptr + ((g * H + hd) * DH + od[:, None]) * DH + oe[None, :],
                mask=(od[:, None] < DH) & cols[None, :], other=0.0).to(tl.float32)
    wx = tl.load(wx_ptr + ((ob[:, None] * 4 + g) * H + hd) * DH + oe[None, :],
                 mask=rows[:, None] & cols[None, :], other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + (g * H + hd) * DH + oe, mask=cols, other=0.0).to(tl.float32)
    return wx + tl.dot(hp, R, input_precision=PS) + bias[None, :]


@triton.jit
def slstm_step_kernel(
        wx_ptr, R_ptr, b_ptr, r_ptr, h_ptr, c_ptr, n_ptr, m_ptr, ho_ptr, hs_ptr, co_ptr,
        no_ptr, mo_ptr, B, H, DH, BB: tl.constexpr, BD: tl.constexpr, BE: tl.constexpr,
        HAS_RESET: tl.constexpr, PS: tl.constexpr):
    ob = tl.program_id(0).to(tl.int64) * BB + tl.arange(0, BB)
    hd = tl.program_id(1)
    oe = tl.program_id(2) * BE + tl.arange(0, BE)
    od = tl.arange(0, BD)
    rows = ob < B
    cols = oe < DH
    if HAS_RESET:
        keep = tl.load(r_ptr + ob, mask=rows, other=1) == 0
    else:
        keep = rows
    hp = tl.load(h_ptr + (ob[:, None] * H + hd) * DH + od[None, :],
                 mask=rows[:, None] & (od[None, :] < DH), other=0.0)
    hp = tl.where(keep[:, None], hp, 0.0)
    z = _gate_pre(wx_ptr, R_ptr, b_ptr, hp, 0, hd, ob, oe, rows, cols, H, DH, BD, PS)
    ig = _gate_pre(wx_ptr, R_ptr, b_ptr, hp, 1, hd, ob, oe, rows, cols, H, DH, BD, PS)
    fg = _gate_pre(wx_ptr, R_ptr, b_ptr, hp, 2, hd, ob, oe, rows, cols, H, DH, BD, PS)
    og = _gate_pre(wx_ptr, R_ptr, b_ptr, hp, 3, hd, ob, oe, rows, cols, H, DH, BD, PS)
    off = (ob[:, None] * H + hd) * DH + oe[None, :]
    msk = rows[:, None] & cols[None, :]
    c = tl.where(keep[:, None], tl.load(c_ptr + off, mask=msk, other=0.0), 0.0)
    n = tl.where(keep[:, None], tl.load(n_ptr + off, mask=msk, other=0.0), 0.0)
    m = tl.where(keep[:, None], tl.load(m_ptr + off, mask=msk, other=0.0), 0.0)
    fl = logsigmoid(fg)
    fresh = n == 0.0                        # zero state: m starts at the input gate, f' = 0
    m_new = tl.where(fresh, ig, tl.maximum(fl + m, ig))
    ia = tl.exp(ig - m_new)
    fa = tl.where(fresh, 0.0, tl.exp(tl.where(fresh, 0.0, fl + m - m_new)))
    c = fa * c + ia * _tanh(z)
    n = fa * n + ia
    h = tl.sigmoid(og) * c / tl.maximum(n, 1e-30)
    tl.store(ho_ptr + off, h.to(ho_ptr.dtype.element_ty), mask=msk)
    tl.store(hs_ptr + off, h, mask=msk)
    tl.store(co_ptr + off, c, mask=msk)
    tl.store(no_ptr + off, n, mask=msk)
    tl.store(mo_ptr + off, m_new, mask=msk)
