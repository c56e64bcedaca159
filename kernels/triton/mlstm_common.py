"""Helpers shared by the chunkwise mLSTM kernels (Beck et al. 2024, arXiv:2405.04517, App. A.3).

Inside one chunk of ``L`` steps (``t, s, j`` index steps of the chunk), with ``f̂ = logsigmoid(f)``:

    logD[t, s] = Σ_{j=s+1..t} f̂_j + i_s          (s <= t, s and t in the same reset segment)
    carry_t    = Σ_{j=start(t)..t} f̂_j + [first_t] m_in
    m_t        = max(carry_t, max_s logD[t, s])

``carry_t`` is the log weight of the state entering ``t``'s segment: the chunk's entering state
(log weight ``m_in``) while no reset has happened in the chunk (``first_t``), the zero state
(log weight 0) after one. ``Σ_{j=s+1..t}`` is a masked cumulative sum started at ``s + 1`` (never
a difference of prefix sums), exactly as the reference does, so a very negative forget gate
cannot cancel digits elsewhere.
"""
import triton
import triton.language as tl

# exp(-m) in the normalizer is taken at min(-m, MAX_EXP_ARG), as the reference does
# (log(float32 max) - 1): past it exp overflows and the backward would form 0 * inf.
MAX_EXP_ARG = tl.constexpr(87.72283905206835)


@triton.jit
def logsigmoid(x):
    """``log(sigmoid(x))`` without overflow, accurate for large ``x`` (log1p by a short series)."""
    e = tl.exp(-tl.abs(x))
    return tl.minimum(x, 0.0) - tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))


@triton.jit
def load_chunk_gates(i_ptr, fl_ptr, r_ptr, bh, b, c, S, L: tl.constexpr, HAS_RESET: tl.constexpr):
    """Gates of chunk ``c`` of row ``bh``: ``(f̂ [L], i [L], reset [L] int32, valid [L])``.

    Steps past ``S`` are no-op padding: ``f̂ = 0``, ``i = -1e30`` (adds nothing, keeps ``m``).
    """
    t = tl.arange(0, L)
    pos = c * L + t
    valid = pos < S
    fl = tl.load(fl_ptr + bh * S + pos, mask=valid, other=0.0).to(tl.float32)
    ig = tl.load(i_ptr + bh * S + pos, mask=valid, other=-1e30).to(tl.float32)
    if HAS_RESET:
        rs = tl.load(r_ptr + b * S + pos, mask=valid, other=0).to(tl.int32)
    else:
        rs = tl.zeros([L], dtype=tl.int32)
    return fl, ig, rs, valid


@triton.jit
def chunk_decay(fl, ig, rs, m_in, L: tl.constexpr):
    """Decay matrix and stabilizer of one chunk.

    Args:
        fl, ig: ``[L]`` float32 ``f̂`` and ``i``; rs: ``[L]`` int32 reset flags.
        m_in: scalar stabilizer of the state entering the chunk.

    Returns:
        ``logD [L, L]`` (-inf where masked), ``mask [L, L]`` (same segment and ``s <= t``),
        ``first [L]`` (no reset in ``[0, t]``), ``carry [L]``, ``m [L]`` and ``cw [L]`` (True
        where ``carry_t`` attains the maximum, i.e. the stabilizer's gradient goes to it).
    """
    t = tl.arange(0, L)
    seg = tl.cumsum(rs, axis=0)
    mask = (t[:, None] >= t[None, :]) & (seg[:, None] == seg[None, :])
    first = seg == 0
    # E[t, s] = Σ_{s < j <= t} f̂_j: a cumulative sum over j of the column-masked gates.
    E = tl.cumsum(tl.where(t[:, None] > t[None, :], fl[:, None], 0.0), axis=0)
    logD = tl.where(mask, E + ig[None, :], float("-inf"))
    seg_decay = tl.sum(tl.where(mask, fl[None, :], 0.0), axis=1)
    carry = seg_decay + tl.where(first, m_in, 0.0)
    rowmax = tl.max(logD, axis=1)
    cw = carry >= rowmax
    m = tl.maximum(carry, rowmax)
    return logD, mask, first, carry, m, cw


@triton.jit
def last_of(x, L: tl.constexpr):
    """The last entry ``x[L - 1]`` of an ``[L]`` vector, as a scalar."""
    t = tl.arange(0, L)
    return tl.sum(tl.where(t == L - 1, x, tl.zeros_like(x)), axis=0)
