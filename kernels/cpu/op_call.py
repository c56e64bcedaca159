"""How a wrapper calls a compiled kernel: through its registered PyTorch operator when
``torch.compile`` traces the call, directly otherwise.

The operators (:mod:`.operators`) make the kernels visible to ``torch.compile`` as single graph
nodes with shape-only (fake) implementations. The acting kernels run every env step on a few
rows, where the dispatcher's cost per operator call is a sizeable share of the step, so eager
calls go straight to the same implementation; the training kernels always go through their
operator, which also carries their autograd formula.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch


F = TypeVar("F", bound=Callable[..., Any])


def constant_for_compile(fn: F) -> F:
    """``torch.compiler.assume_constant_result(fn)`` (Dynamo calls ``fn`` once per trace and
    uses its result as a constant) without importing ``torch._dynamo`` when this package is
    imported: that imports triton, which ``import xlstm_rl.kernels`` must not. The decorator
    does no more than set this marker (torch 2.14); ``tests/test_cpu_compile.py`` checks it
    still does, and that a fresh process compiles without graph breaks."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def run_op(impl: Callable[..., Any], name: str, *args: Any) -> Any:
    """``impl(*args)``, or ``torch.ops.xlstm_rl.<name>(*args)`` while ``torch.compile`` traces
    (the operator's real implementation is ``impl``)."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.xlstm_rl, name)(*args)
    return impl(*args)
