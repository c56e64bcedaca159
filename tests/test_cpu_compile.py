"""The compiled CPU kernels as PyTorch operators: ``torch.compile(fullgraph=True)`` of a network
holding an mLSTM core runs them as graph nodes, forward and backward, equal to eager; and
``torch.library.opcheck`` passes on every operator (schema, fake implementation, autograd)."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from xlstm_rl.cores import make_core
from xlstm_rl.cores.mlstm_block import STATE_KEYS, MLSTMBlock
from xlstm_rl.cores.config import CoreConfig
from xlstm_rl.kernels import cpu as cpu_kernels
from xlstm_rl.kernels.cpu.mlstm_block import WEIGHTS

pytestmark = pytest.mark.skipif(cpu_kernels.load_library() is None,
                                reason="no compiled CPU kernels here")
TOL = 1e-10
"""float64, relative to each tensor's largest value (the kernels' float64 tolerance)."""


class _Net(nn.Module):
    """Encoder, mLSTM core, head: the shape of a recurrent policy's torso."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 8)
        self.core = make_core("mlstm", 8, hidden_size=16, num_heads=2)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor, state, reset: Tensor):  # noqa: ANN001, ANN201
        y, new = self.core(torch.tanh(self.enc(x)), state, reset)
        return self.head(y), new


def _values_and_grads(net: _Net, fn, x: Tensor, state, reset: Tensor) -> list[Tensor]:  # noqa: ANN001
    net.zero_grad(set_to_none=True)
    y, new = fn(x, state, reset)
    leaves = list(new.values(True, True))
    loss = y.square().sum() + sum(t.square().sum() for t in leaves)
    loss.backward()
    return [y.detach(), *(t.detach() for t in leaves),
            *(p.grad.clone() for p in net.parameters() if p.grad is not None)]


def test_fullgraph_compile_runs_the_kernels_and_matches_eager() -> None:
    torch.manual_seed(0)
    net = _Net().double()
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    state = net.core.initial_state(4).apply(lambda t: torch.randn_like(t, dtype=torch.float64))
    state["block0", "m"] = state["block0", "m"].abs()
    reset = torch.zeros(4, 6, dtype=torch.bool)
    reset[1, 3] = reset[2, 0] = True
    explained = torch._dynamo.explain(net)(x, state, reset)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    targets = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert any("mlstm_block_train" in target for target in targets), targets
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True)
    got = _values_and_grads(net, compiled, x, state, reset)
    want = _values_and_grads(net, net, x, state, reset)
    assert len(got) == len(want) == 1 + 4 + len(list(net.parameters()))
    for a, b in zip(got, want):
        scale = max(b.abs().max().item(), 1e-300)
        assert (a - b).abs().max().item() <= TOL * scale


def _block_inputs(dtype: torch.dtype, B: int = 2, T: int = 5, grad: bool = False) -> dict:
    """Inputs of the block operators from a small block (heads 2, head dim 4, conv 3)."""
    torch.manual_seed(1)
    cfg = CoreConfig(hidden_size=8, num_heads=2, conv_kernel=3, qkv_block_size=4)
    block = MLSTMBlock(8, cfg).to(dtype)
    state = block.initial_state(B).apply(lambda t: torch.rand_like(t, dtype=dtype))
    weights = [block._kernel_weights()[name].detach().clone().requires_grad_(grad)
               for name in WEIGHTS]
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 2] = True
    return {"up": torch.randn(B, T, 2 * block.inner, dtype=dtype, requires_grad=grad),
            "window": state["conv"].clone().requires_grad_(grad),
            "state": [state[key].clone().requires_grad_(grad) for key in STATE_KEYS[:3]],
            "weights": weights, "reset": reset, "heads": 2}


def _cell_inputs(dtype: torch.dtype, step: bool, grad: bool = False) -> list:
    g = torch.Generator().manual_seed(2)
    B, H, S, dk, dv = 2, 2, 5, 4, 3
    lead = (B, H) if step else (B, H, S)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)

    state = [rand(B, H, dk, dv), rand(B, H, dk), rand(B, H).detach().abs().requires_grad_(grad)]
    reset = torch.tensor([False, True]) if step else torch.rand(B, S, generator=g) < 0.3
    return [rand(*lead, dk), rand(*lead, dk), rand(*lead, dv), rand(*lead), rand(*lead),
            *state, reset, 1e-6]


def _opcheck(op: object, args: list) -> None:
    torch.library.opcheck(op, tuple(args))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_opcheck_passes_on_every_operator(dtype: torch.dtype) -> None:
    ops = torch.ops.xlstm_rl
    b = _block_inputs(dtype)
    step_up = b["up"][:, 0].contiguous()
    step_args = [step_up, b["window"], b["reset"][:, 0], *b["weights"], *b["state"], b["heads"],
                 1e-5, 1e-6]
    _opcheck(ops.mlstm_cell_step, _cell_inputs(dtype, step=True))
    _opcheck(ops.mlstm_block_step, step_args)
    _opcheck(ops.mlstm_block_step_, [t.clone() if isinstance(t, Tensor) else t
                                                   for t in step_args])
    _opcheck(ops.mlstm_block_pre, [b["up"], b["window"], b["reset"], *b["weights"],
                                                b["heads"]])
    for grad in (False, True):
        cell = _cell_inputs(dtype, step=False, grad=grad)
        _opcheck(ops.mlstm_sequence, [*cell, grad])
        t = _block_inputs(dtype, grad=grad)
        _opcheck(ops.mlstm_block_train, [
            t["up"], t["window"], *t["state"], t["reset"], *t["weights"], t["heads"], 1e-5,
            1e-6, grad])


def test_operators_refuse_bad_shapes_in_one_line() -> None:
    """Called directly, an operator checks its inputs as the wrappers do."""
    cell = _cell_inputs(torch.float64, step=True)
    cell[5] = cell[5][:1]  # C for one row, q for two
    with pytest.raises(ValueError, match=r"mlstm cell step: C must have shape \[2, 2, 4, 3\]"):
        torch.ops.xlstm_rl.mlstm_cell_step(*cell)
    b = _block_inputs(torch.float64)
    with pytest.raises(ValueError, match="window must have shape"):
        torch.ops.xlstm_rl.mlstm_block_train(b["up"], b["window"][:1], *b["state"], b["reset"],
                                             *b["weights"], b["heads"], 1e-5, 1e-6, False)


def test_bench_compile_writes_its_report(tmp_path) -> None:  # noqa: ANN001
    from xlstm_rl.bench_compile import VARIANTS, bench_compile

    out = tmp_path / "bench.json"
    report = bench_compile(out, rounds=1, calls={"acting_step": 2, "update": 1}, hidden=8,
                           heads=2, envs=2, batch=2, steps=3, backend="eager")
    assert out.is_file() and set(report["seconds"]) == {"acting_step", "update"}
    for workload, times in report["seconds"].items():
        assert set(times) == set(VARIANTS)
        assert all(t["cold"] > 0 and t["warm"] > 0 for t in times.values())
        assert all(r > 0 for r in report["ratios"][workload].values())
    with pytest.raises(ValueError, match="CPU only"):
        bench_compile(None, device="cuda")


def test_the_constant_marker_is_what_torch_sets_and_a_fresh_process_has_no_break() -> None:
    """``constant_for_compile`` stands in for ``torch.compiler.assume_constant_result`` (which
    would import triton on ``import xlstm_rl.kernels``): it must stay what that sets."""
    import subprocess
    import sys

    marked = torch.compiler.assume_constant_result(lambda: 0)
    assert dict(vars(marked)) == {"_dynamo_marked_constant": True}
    code = ("import torch; from xlstm_rl.cores import make_core\n"
            "core = make_core('mlstm', 8, hidden_size=16, num_heads=2)\n"
            "e = torch._dynamo.explain(core)(torch.randn(2, 3, 8), core.initial_state(2))\n"
            "print(e.graph_count, e.graph_break_count)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert done.stdout.split() == ["1", "0"], done.stderr[-2000:]
