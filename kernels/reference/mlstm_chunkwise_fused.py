"""Chunkwise mLSTM as one autograd node: no-grad forward, hand-written exact backward.

Same map, chunk layout and stabilizer ties as :func:`mlstm_chunkwise_reference` (Beck et al.
2024, "xLSTM", arXiv:2405.04517, Appendix A.3), which stays the readable version this one is
tested against. Per chunk (``t, s < L``, ``q̂ = q / sqrt(Dk)``, entering state ``C, n, m_c``)::

    logD[t,s] = E[t,s] + i_s  (start_t <= s <= t),  E[t,s] = Σ_{s<j<=t} f̂_j  (masked cumsum)
    carry_t   = Σ_{j=start_t..t} f̂_j + [first_t] m_c,    m_t = max(carry_t, max_s logD[t,s])
    P = exp(logD - m),  S = (q̂ kᵀ) ⊙ P,  w_t = [first_t] exp(carry_t - m_t)
    num = S v + w q̂ C,  qn = S 1 + w q̂ n,  h = num / (max(|qn|, exp(-m)) + eps)

and the chunk states come from the reference's chunk-level parallel form (no loop in time).

Backward. Every stabilized quantity is ``y = Σ_a exp(ℓ_a - m) x_a`` with ``m`` a max over its
logits, so ``dℓ_a = exp(ℓ_a - m) (dy·x_a) + [a attains m] ρ`` with the net stabilizer gradient
``ρ = dm_direct - dy·y`` (``m`` cancels out of ``y`` except through the normalizer's
``exp(-m)``): per step ``ρ_t = -dden [exp branch] exp(-m_t) - dh·h - dqn qn``, per chunk end
``ρ = dm - <dC, C> - dn·n``. ``ρ`` is routed with torch's tie rules (``maximum``: half to each
side; ``amax``: evenly among tied entries). With ``G = dlogD``: ``di_s = Σ_t G[t,s]`` and
``df̂_j = Σ_{t>=j} Σ_{s<j} G[t,s] + Σ_{t: start_t<=j<=t} dcarry_t``, as cumulative sums and
masked products, never differences of prefix sums, so no gradient crosses a reset, not even as
rounding. The chunk-local stabilizer terms of the state sums cancel exactly and are dropped.

Ties follow torch exactly (the chunk level mirrors the reference's nested maxima). One float
detail differs: ``exp`` runs on ``max(logD - m, log(tiny) + 1)`` and is then masked, so a weight
that would be subnormal or 0 (``logD - m < -86`` in float32, ``< -707`` in float64) is ``e·tiny``
(``~3e-38``, ``~6e-308``) instead, an absolute change at the subnormal scale that keeps CPU
``exp`` off its subnormal and ``-inf`` paths (5-50x slower).

Stored vs recomputed: on CPU one elementwise pass over the ``[L, L]`` blocks costs about as much
as one ``L·Dk·Dv`` matmul, and rebuilding ``P`` takes six passes, so the forward stores ``P``,
``S`` and the 0/1 argmax mask of every row (``3 L`` floats per step and head), the states entering
the chunks and the chunks' local sums (``2 Dk Dv / L`` floats per step and head), ``h`` (float32
for low-precision inputs) and per-step scalars; it keeps views of q, k, v, not copies. The
backward recomputes only per-step scalars (``exp(-m)``, the max's shares) and runs eight
``L·Dk·Dv`` matmuls per chunk (the forward four) plus a few elementwise passes; its temporaries
share four buffers.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.functional import logsigmoid

from .mlstm_chunkwise import _PAD_INPUT_GATE, _segments
from .mlstm_recurrent import MLSTMState, clear_rows, max_exp_arg, mlstm_zero_state, state_dtype

_NEG = float("-inf")


def _share(a: Tensor, b: Tensor) -> Tensor:
    """Fraction of the gradient of ``torch.maximum(a, b)`` that goes to ``a``: 1, ½ on a tie, 0
    (``a = -inf < b`` gives 0; both infinite on the same side never occurs here)."""
    return torch.heaviside(a - b, a.new_tensor(0.5))


def _slot(s: dict, j: int, *shape: int) -> Tensor:
    """View of the backward's reusable buffer ``j``: on CPU a fresh MB-sized tensor costs more
    in page faults than the op that fills it, so temporaries share four buffers."""
    return s["bufs"][j][:math.prod(shape)].view(shape)


def _dot(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """Dot product over the last dim (the elementwise product goes to ``out`` if given)."""
    if out is None:
        return torch.linalg.vecdot(a, b)
    return torch.mul(a, b, out=out).sum(dim=-1)


def _chunked(x: Tensor, nc: int, L: int, value: float, dtype) -> Tensor:
    """``[B, H, S, ...]`` -> ``[B, H, nc, L, ...]`` in ``dtype``, the tail filled with ``value``."""
    B, H, S = x.shape[:3]
    if S == nc * L:
        return x.to(dtype).reshape(B, H, nc, L, *x.shape[3:])
    out = x.new_empty((B, H, nc * L, *x.shape[3:]), dtype=dtype)
    out[:, :, :S] = x
    out[:, :, S:] = value
    return out.view(B, H, nc, L, *x.shape[3:])


def _logits(fl: Tensor, ii: Tensor, start: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``logD [B,H,nc,L,L]`` (-inf off the mask, the reference's floats: same masked cumsum),
    ``seg [B,H,nc,L] = Σ_{start_t..t} f̂`` and the 0/1 segment-causal mask ``[t, s]`` (``[L, L]``
    without resets, ``[B, 1, nc, L, L]`` with them)."""
    L = fl.shape[-1]
    idx = torch.arange(L, device=fl.device)
    keep = idx[None, :] <= idx[:, None]
    E = (fl[..., :, None] * (idx[None, :] < idx[:, None]).to(fl.dtype)).cumsum_(dim=-2)
    if start is None:
        seg = fl.cumsum(dim=-1)
    else:
        keep = keep & (idx[None, :] >= start[..., :, None])
        s_idx = start.expand(fl.shape)
        seg = E.gather(-1, s_idx[..., None]).squeeze(-1) + fl.gather(-1, s_idx)
    zero = torch.zeros((), device=fl.device, dtype=fl.dtype)
    return E.add_(ii[..., None, :]).add_(torch.where(keep, zero, _NEG)), seg, keep.to(fl.dtype)


def _chunk_weights(m_loc: Tensor, decay: Tensor, keep: Tensor, m0: Tensor) -> dict:
    """The reference's chunk-level stabilizers and weights: chunk ``j``'s local sum enters the
    state at the end of chunk ``c >= j`` with weight ``W[c, j]``, the initial state with
    ``w_init[c]`` (0 after a reset); ``m_end [B,H,nc]`` is the stabilizer there."""
    nc = m_loc.shape[-1]
    m_src = torch.where(keep, m_loc, torch.maximum(m_loc, decay))
    idx = torch.arange(nc, device=m_loc.device)
    Gm = torch.where(idx[:, None] > idx[None, :], decay[..., :, None], 0.0).cumsum(dim=-2)
    cut = torch.where(keep, 0, idx).cummax(dim=-1).values
    alive = (idx[None, :] <= idx[:, None]) & (idx[None, :] >= cut[..., :, None])
    from_init = keep.cummin(dim=-1).values                                  # [B,1,nc]
    init_log = torch.where(from_init, m0[..., None] + decay.cumsum(dim=-1), _NEG)
    Z = torch.where(alive, Gm + m_src[..., None, :], _NEG)
    z_max = Z.amax(dim=-1)
    m_end = torch.maximum(init_log, z_max)
    W = torch.exp(torch.where(alive, Gm + m_loc[..., None, :] - m_end[..., None], _NEG))
    return dict(m_loc=m_loc, decay=decay, keep=keep, alive=alive, from_init=from_init,
                init_log=init_log, Z=Z, z_max=z_max, m_end=m_end, W=W,
                w_init=torch.exp(init_log - m_end))


def _states_fwd(s: dict, last: Tensor, C0: Tensor, n0: Tensor) -> tuple[Tensor, ...]:
    """States entering every chunk (``C_in [B,H,nc,Dk,Dv]``, ``n_in``) and the final ones:
    ``W`` applied to the chunks' local sums plus the decayed initial state."""
    k, v, W, w_init = s["k"], s["v"], s["W"], s["w_init"]
    B, H, nc, _, dk = k.shape
    wl = torch.exp(last - s["m_loc"][..., None])                            # [B,H,nc,L]
    wk = wl[..., None] * k
    C_loc, n_loc = (wk.transpose(-1, -2) @ v).view(B, H, nc, -1), wk.sum(dim=-2)
    # Row c+1 is the state at the end of chunk c, which enters chunk c+1; row 0 first gets the
    # final state (W, w_init rolled down by one row), which is then swapped for the initial one.
    Wx, wx = W.roll(1, dims=-2), w_init.roll(1, dims=-1)[..., None]
    C_x, n_x = Wx @ C_loc, Wx @ n_loc
    C0f, n0f = C0.reshape(B, H, 1, -1), n0[:, :, None]
    if s["safe"]:
        C_x.addcmul_(wx, C0f), n_x.addcmul_(wx, n0f)
    else:  # a non-finite initial state must not reach chunks after a reset (0 * inf)
        live = s["from_init"].roll(1, dims=-1)[..., None]
        C_x, n_x = (torch.where(live, x + wx * y, x) for x, y in ((C_x, C0f), (n_x, n0f)))
    C_fin, n_fin = C_x[:, :, 0].clone(), n_x[:, :, 0].clone()
    C_x[:, :, 0], n_x[:, :, 0] = C0f[:, :, 0], n0
    s.update(wl=wl, C_loc=C_loc, n_loc=n_loc)
    return C_x.view(B, H, nc, dk, -1), n_x, C_fin.view(B, H, dk, -1), n_fin


def _outputs(s: dict, logD: Tensor, row: Tensor, carry: Tensor, eps: float) -> Tensor:
    """Chunk outputs ``h [B,H,nc*L,Dv]`` (float32/64) from the entering states; turns ``logD``
    into ``P`` (times ``1/sqrt(Dk)``: q stays unscaled) in place and stores in ``s`` what the
    backward needs."""
    q, k, v, C_in, n_in, first = (s[x] for x in ("q", "k", "v", "C_in", "n_in", "first"))
    B, H, nc, L, dv = v.shape
    m = torch.maximum(carry, row)
    Y = logD.sub_(m[..., None])                                             # <= 0, -inf masked
    if s["train"]:  # 1 at each row's argmax of logD (Y == 0 exactly there; m is the row max)
        arg = torch.heaviside(Y, Y.new_tensor(1.0))
        s.update(arg=arg, n_arg=arg.sum(dim=-1).clamp_min_(1.0))
    lo = math.log(torch.finfo(Y.dtype).tiny) + 1.0
    P = Y.clamp_min_(lo).exp_().mul_(s["mask"] * s["scale"])
    Sc = (q @ k.transpose(-1, -2)).mul_(P)
    w = torch.exp(carry - m).mul_(s["scale"])
    out = torch.empty(B, H, nc * L, dv, dtype=q.dtype, device=q.device)   # becomes h
    qC = torch.matmul(q, C_in, out=out.view(B, H, nc, L, dv))
    qn_in = (n_in[..., None, :] @ q.transpose(-1, -2)).squeeze(-2)
    if first is not None:
        w = torch.where(first, w, 0.0)
        if not s["safe"]:
            qC, qn_in = torch.where(first[..., None], qC, 0.0), torch.where(first, qn_in, 0.0)
    num = qC.mul_(w[..., None])
    num.view(-1, L, dv).baddbmm_(Sc.view(-1, L, L), v.reshape(-1, L, dv))
    qn = Sc.sum(dim=-1).add_(w * qn_in)
    e = torch.exp((-m).clamp_max(max_exp_arg(m.dtype)))
    den = torch.maximum(qn.abs(), e) + eps
    num.div_(den[..., None])
    s.update(P=P, Sc=Sc, wc=_share(carry, row), w=w, m=m, qn=qn, den=den)
    return out


def _step_grads(dh: Tensor, s: dict) -> tuple[Tensor, Tensor, Tensor]:
    """``dnum [B,H,nc,L,Dv]``, ``dqn`` and the net stabilizer gradient ``ρ [B,H,nc,L]``."""
    m, qn, den = s["m"], s["qn"], s["den"]
    hh = _dot(dh, s["h32"], _slot(s, 3, *dh.shape))
    neg_m, lim = -m, max_exp_arg(m.dtype)
    e = torch.exp(neg_m.clamp_max(lim))
    wq = _share(qn.abs(), e)
    dden = -hh / den
    dqn = dden * wq * torch.sign(qn)
    rho = torch.where(neg_m < lim, -dden * (1.0 - wq) * e, 0.0) - hh - dqn * qn
    return torch.div(dh, den[..., None], out=_slot(s, 0, *dh.shape)), dqn, rho


def _intra_bwd(s: dict, dnum: Tensor, dqn: Tensor, rho: Tensor) -> tuple[Tensor, ...]:
    """Gradients inside chunks: ``dq, dk, dv``, ``G`` (content part of dlogD), ``dcarry``,
    ``dC_in [B,H,nc,Dk,Dv]``, ``dn_in`` and ``drow`` (gradient of each row max of logD)."""
    q, k, v, C_in, n_in, w, Sc = (s[x] for x in ("q", "k", "v", "C_in", "n_in", "w", "Sc"))
    L, dk = q.shape[-2:]
    dv = Sc.transpose(-1, -2) @ dnum
    dS = torch.matmul(dnum, v.transpose(-1, -2), out=_slot(s, 1, *Sc.shape))
    dS.add_(dqn[..., None])
    G = torch.mul(dS, Sc, out=_slot(s, 2, *Sc.shape))
    dA = dS.mul_(s["P"])
    dk_ = dA.transpose(-1, -2) @ q
    wd, wq = dnum.mul_(w[..., None]), dqn * w
    dq = (wd @ C_in.transpose(-1, -2)).addcmul_(wq[..., None], n_in[..., None, :])
    if s["first"] is not None and not s["safe"]:  # rows after a reset: not even 0 * inf
        dq = torch.where(s["first"][..., None], dq, 0.0)
    d_w = _dot(q, dq, _slot(s, 3, *dq.shape))               # = w·(dnum·q̂C + dqn q̂·n)
    dq.view(-1, L, dk).baddbmm_(dA.view(-1, L, L), k.reshape(-1, L, dk))
    dC_in = torch.matmul(q.transpose(-1, -2), wd, out=_slot(s, 1, *C_in.shape))
    dn_in = (wq[..., None, :] @ q).squeeze(-2)
    wc = s["wc"]
    return dq, dk_, dv, G, d_w + wc * rho, dC_in, dn_in, (1.0 - wc) * rho


def _tri(n: int, device, dtype) -> tuple[Tensor, Tensor]:
    """``Low[c,l] = [l <= c]`` and ``Up[j,l] = [j < l]``."""
    low = torch.ones(n, n, device=device, dtype=dtype).tril_()
    return low, 1.0 - low


def _local_sums_bwd(s: dict, dk: Tensor, dv: Tensor, dC_loc: Tensor, dn_loc: Tensor) -> Tensor:
    """Backward of the local sums ``C_loc = Σ_s wl_s k_s v_sᵀ``, ``n_loc = Σ_s wl_s k_s``: adds
    to ``dk, dv`` in place and returns ``dlast = wl ⊙ dwl [B,H,nc,L]``."""
    k, v, wl = s["k"], s["v"], s["wl"][..., None]
    L, Dk = k.shape[-2:]
    X = torch.matmul(k, dC_loc, out=_slot(s, 3, *v.shape))
    dv.addcmul_(X, wl)
    dlast = X.mul_(v).sum(dim=-1).add_((dn_loc[..., None, :] @ k.transpose(-1, -2)).squeeze(-2))
    wv = torch.mul(v, wl, out=_slot(s, 3, *v.shape))
    dk.view(-1, L, Dk).baddbmm_(wv.flatten(0, 2), dC_loc.transpose(-1, -2).flatten(0, 2))
    dk.addcmul_(wl, dn_loc[..., None, :])
    return dlast.mul_(wl[..., 0])


def _states_bwd(s: dict, dk: Tensor, dv: Tensor, d_in: tuple[Tensor, ...],
                d_fin: tuple[Tensor | None, ...], need_init: bool
                ) -> tuple[Tensor | None, ...]:
    """Backward of the chunk states, given the gradients of the states entering every chunk
    (``d_in``) and of the final state (``d_fin``). Adds the chunk sums' parts to ``dk, dv`` in
    place; returns ``dlast [B,H,nc,L]``, ``dm_loc``, ``ddecay [B,H,nc]`` and the initial-state
    gradients ``dC0, dn0, dm0`` (all paths). A final-state gradient may be None (the loss does
    not use it: zero); ``need_init=False`` skips ``dC0, dn0`` (returned as None)."""
    (dC_in, dn_in, dm_in), (dC, dn, dm) = d_in, d_fin
    k, W, w_init, C_loc, n_loc = (s[x] for x in ("k", "W", "w_init", "C_loc", "n_loc"))
    B, H, nc, _, Dk = k.shape
    # Chunk-end gradients without a copy: row c+1 of dC_in is that of the end of chunk c; row 0
    # (the initial state's own part, taken out first) becomes the final state's, so the end-
    # indexed weights W and w_init are rolled down by one row to match ("x" rows).
    dC0, dn0 = (dC_in[:, :, 0].clone(), dn_in[:, :, 0].clone()) if need_init else (None, None)
    dCx, dnx = dC_in.view(B, H, nc, -1), dn_in
    for rows, d in ((dCx, dC), (dnx, dn)):
        if d is None:
            rows[:, :, 0].zero_()
        else:
            rows[:, :, 0] = d.reshape(rows[:, :, 0].shape)
    Wx, wx = W.roll(1, dims=-2), w_init.roll(1, dims=-1)
    dW = (dCx @ C_loc.transpose(-1, -2)).add_(dnx @ n_loc.transpose(-1, -2))
    dW = dW.roll(-1, dims=-2).mul_(W)                                    # <dC_end[c], C_loc[j]> W
    c0 = (s["C0"].reshape(B, H, 1, -1) @ dCx.transpose(-1, -2)).add_(
        s["n0"][:, :, None] @ dnx.transpose(-1, -2)).squeeze(-2).roll(-1, dims=-1)  # <dC_end, C0>
    c_init = torch.where(s["from_init"], w_init * c0, 0.0)
    dme = dm_in.roll(-1, dims=-1)
    dme[..., -1] = 0.0 if dm is None else dm
    rho = dme - dW.sum(dim=-1) - c_init
    wi = _share(s["init_log"], s["z_max"])
    d_init = torch.where(s["from_init"], wi * rho, 0.0) + c_init
    eqz = (s["Z"] == s["z_max"][..., None]).to(k.dtype)
    dZ = eqz * ((1.0 - wi) * rho / eqz.sum(-1))[..., None]
    dGm = torch.where(s["alive"], dW + dZ, 0.0)
    d_src = dZ.sum(dim=-2)
    ws = torch.where(s["keep"], 1.0, _share(s["m_loc"], s["decay"]))
    low, up = _tri(nc, k.device, k.dtype)
    ddecay = (dGm @ up).mul_(low).sum(dim=-2) + d_init @ low + (1.0 - ws) * d_src
    Wt = Wx.transpose(-1, -2)
    dC_loc = torch.matmul(Wt, dCx, out=_slot(s, 0, *dCx.shape)).view(B, H, nc, Dk, -1)
    dlast = _local_sums_bwd(s, dk, dv, dC_loc, Wt @ dnx)
    if dC0 is not None and dn0 is not None:
        dC0.add_((wx[..., None, :] @ dCx).view(B, H, Dk, -1))
        dn0.add_((wx[..., None, :] @ dnx).squeeze(-2))
    return dlast, ws * d_src, ddecay, dC0, dn0, dm_in[..., 0] + d_init.sum(-1)


def _gate_grads(s: dict, G: Tensor, drow: Tensor, dseg: Tensor) -> tuple[Tensor, Tensor]:
    """Route the row-max gradients into ``G`` (evenly among tied entries, as ``amax``), then
    ``di_s = Σ_t G[t,s]`` and ``df̂_j = Σ_{t>=j} Σ_{s<j} G[t,s] + Σ_{t: start_t<=j<=t} dseg_t``."""
    G.addcmul_(s["arg"], (drow / s["n_arg"])[..., None])
    di = G.sum(dim=-2)
    below = G.cumsum_(dim=-1).tril_(-1).sum(dim=-2)            # [j] = Σ_{t>j} Σ_{s<=j} G[t,s]
    df = torch.nn.functional.pad(below[..., :-1], (1, 0))
    if s["first"] is None:
        return di, df.add_(dseg @ _tri(G.shape[-1], G.device, G.dtype)[0])
    return di, df.add_(torch.einsum("bhct,bcts->bhcs", dseg, s["mask"][:, 0]))


class _ChunkwiseFused(torch.autograd.Function):
    """``(q, k, v, i, f, C0, n0, m0) -> (h, C, n, m)``; chunked tensors are ``[B,H,nc,L,...]``."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, reset, L, eps):
        """Runs under no_grad (as every ``Function.forward``); stores what ``backward`` needs.
        Unused outputs get no zero gradients (``backward`` skips their terms)."""
        ctx.set_materialize_grads(False)
        B, _, S, dk = q.shape
        sd, nc, dev = C0.dtype, -(-S // L), q.device
        s = dict(q=_chunked(q, nc, L, 0.0, sd), k=_chunked(k, nc, L, 0.0, sd),
                 v=_chunked(v, nc, L, 0.0, sd), scale=1.0 / math.sqrt(dk), C0=C0, n0=n0,
                 train=any(ctx.needs_input_grad[:8]),
                 safe=reset is None or bool(torch.isfinite(C0).all() & torch.isfinite(n0).all()))
        fl = _chunked(logsigmoid(f.to(sd)), nc, L, 0.0, sd)
        ii = _chunked(i, nc, L, _PAD_INPUT_GATE, sd)
        if reset is not None and nc * L > S:
            reset = torch.cat([reset, reset.new_zeros(B, nc * L - S)], dim=1)
        start, first = _segments(reset, B, nc, L, dev)
        s["first"] = first = None if reset is None else first
        logD, seg, s["mask"] = _logits(fl, ii, start)
        row = logD.amax(dim=-1)
        keep = first[..., -1] if first is not None else torch.ones(1, 1, nc, dtype=torch.bool,
                                                                    device=dev)
        s.update(_chunk_weights(row[..., -1], seg[..., -1], keep, m0))
        s["C_in"], s["n_in"], C_fin, n_fin = _states_fwd(s, logD[..., -1, :], C0, n0)
        m_in = torch.nn.functional.pad(s["m_end"][..., :-1], (1, 0))
        m_in[..., 0] = m0
        carry = seg + (m_in[..., None] if first is None else
                       torch.where(first, m_in[..., None], 0.0))
        h = _outputs(s, logD, row, carry, eps)
        h32, h = h, (h if nc * L == S else h[:, :, :S]).to(q.dtype)
        if s["train"]:  # h32 is saved as h itself where it is (its version counter guards it)
            s["h32"] = h32 if h.dtype != sd else None
            names = [x for x, y in s.items() if isinstance(y, Tensor)]
            ctx.names, ctx.meta = names, {x: y for x, y in s.items() if x not in names}
            ctx.S, ctx.dtypes = S, tuple(x.dtype for x in (q, k, v, i, f))
            ctx.save_for_backward(f, h, *(s[x] for x in names))
        return h, C_fin, n_fin, s["m_end"][..., -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dC, dn, dm):
        """Exact gradients of ``(q, k, v, i, f, C0, n0, m0)`` (not differentiable again)."""
        f, h, *saved = ctx.saved_tensors
        if dh is None:  # only the final state is used
            dh = torch.zeros_like(h)
        s = dict(zip(ctx.names, saved), **ctx.meta)
        B, H, nc, L, dk = s["q"].shape
        sd, dv = s["q"].dtype, s["v"].shape[-1]
        s["h32"] = _chunked(h if s["h32"] is None else s["h32"], nc, L, 0.0, sd)
        size = B * H * nc * max(L * L, L * dk, L * dv, dk * dv)
        s["bufs"] = [torch.empty(size, dtype=sd, device=f.device) for _ in range(4)]
        dnum, dqn, rho = _step_grads(_chunked(dh, nc, L, 0.0, sd), s)
        dq, dk_, dv, G, dcarry, dC_in, dn_in, drow = _intra_bwd(s, dnum, dqn, rho)
        first = s["first"]
        dm_in = (dcarry if first is None else torch.where(first, dcarry, 0.0)).sum(dim=-1)
        dlast, dm_loc, ddecay, dC0, dn0, dm0 = _states_bwd(
            s, dk_, dv, (dC_in, dn_in, dm_in),
            tuple(None if d is None else d.to(sd) for d in (dC, dn, dm)),
            need_init=ctx.needs_input_grad[5] or ctx.needs_input_grad[6])
        G[..., -1, :] += dlast
        drow[..., -1] += dm_loc
        dcarry[..., -1] += ddecay
        di, dfl = _gate_grads(s, G, drow, dcarry)

        def unpad(x: Tensor) -> Tensor:
            return x.reshape(B, H, nc * L, *x.shape[4:])[:, :, :ctx.S]
        df = unpad(dfl) * torch.sigmoid(-f.to(sd))
        grads = (unpad(dq), unpad(dk_), unpad(dv), unpad(di), df)
        return (*(g.to(t) for g, t in zip(grads, ctx.dtypes)), dC0, dn0, dm0,
                None, None, None)


def mlstm_chunkwise_fused(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, *,
                          state: MLSTMState | None = None, reset: Tensor | None = None,
                          chunk_size: int = 64, eps: float = 1e-6) -> tuple[Tensor, MLSTMState]:
    """mLSTM over a sequence, chunkwise, as one autograd node with an exact hand-written backward.

    Args:
        q, k: ``[B, H, S, Dk]``; v: ``[B, H, S, Dv]``; i, f: ``[B, H, S]`` gate pre-activations
            (float64 computes in float64, anything else in float32).
        state: optional initial ``(C [B,H,Dk,Dv], n [B,H,Dk], m [B,H])``; zeros when None.
        reset: optional ``[B, S]`` bool, True where the state is re-initialized before the step.
        chunk_size: steps per chunk, >= 1 (any S: the tail is padded with no-op steps).
        eps: normalizer epsilon.

    Returns:
        ``h [B, H, S, Dv]`` in the input dtype and the final state (float32; float64 for
        float64): the values and gradients of :func:`mlstm_chunkwise_reference` (first
        derivatives only: ``create_graph=True`` through it raises).
    """
    B, H, S, dk = q.shape
    sd = state_dtype(q.dtype)
    if state is None:
        state = mlstm_zero_state(B, H, dk, v.shape[-1], device=q.device, dtype=sd)
    elif reset is not None and bool(reset[:, 0].any()):
        state = clear_rows(state, reset[:, 0])  # discarded at t=0: not even a 0 * NaN gradient
    if reset is not None:
        reset = reset.to(device=q.device, dtype=torch.bool)
    C0, n0, m0 = (x.to(sd) for x in state)
    h, C, n, m = _ChunkwiseFused.apply(q, k, v, i, f, C0, n0, m0, reset, min(chunk_size, S),
                                       eps)
    return h, (C, n, m)
