"""How autograd's engine adds up the gradients of a tensor used more than once, and how a
dispatch mode changes it.

Where a tensor feeds two ops (a residual connection, a feature map that feeds two heads), the
engine adds the second gradient to the first as it arrives (InputBuffer::add and
`accumulate`, torch/csrc/autograd/input_buffer.cpp): into the gradient it holds where that
one can take it (`old.add_(new)`), else into the new one, else into a new tensor;
`can_accumulate_inplace` asks for a dense tensor that nothing else holds, and not a tensor
subclass. While any dispatch mode is active, every tensor counts as a subclass
(`isTensorSubclassLike`), so the engine adds out of place and holds a third gradient for a
moment. The trace and the measurements of the peak between ops run under dispatch modes: each
hooks the graph (`summing_in_place`) and turns the engine's out-of-place add back into the
in-place one a step without a mode runs (`in_place_sum`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn
from torch._prims_common import is_non_overlapping_and_dense_or_false
from torch.autograd.graph import Node

_HOOKED = "nin_profile.sums"


class _Engine:
    """Whether the engine is between nodes: a node has run (its post-hook said so) and the
    next has not begun (its pre-hook): what runs then is the engine adding up gradients."""

    def __init__(self) -> None:
        self.summing = False

    def node_starts(self, grad_outputs: Any) -> None:
        self.summing = False

    def node_done(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self.summing = True


ENGINE = _Engine()


def metadata(node: Node) -> dict[str, Any]:
    """The node's metadata dict (a property on autograd nodes, typed as a method in torch)."""
    return cast(dict[str, Any], node.metadata)


def mark_graph(tensors: list[torch.Tensor], key: str, value: object) -> Iterator[Node]:
    """Each autograd node behind `tensors` whose metadata has no `key` yet, given `key` =
    `value` (so each is met once, however many walks pass it)."""
    pending: list[Node | None] = [t.grad_fn for t in tensors]
    while pending:
        node = pending.pop()
        if node is None or key in metadata(node):
            continue
        metadata(node)[key] = value
        yield node
        pending.extend(next_node for next_node, _ in node.next_functions)


def hook_graph(tensors: list[torch.Tensor]) -> None:
    """Hook every autograd node behind `tensors` not hooked yet (once each)."""
    for node in mark_graph(tensors, _HOOKED, True):
        node.register_prehook(ENGINE.node_starts)
        node.register_hook(ENGINE.node_done)


@contextlib.contextmanager
def summing_in_place() -> Iterator[None]:
    """While a step runs: the graph behind each module's output is hooked as the forward
    builds it (a global forward hook), so that `in_place_sum` knows the engine's sums."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        leaves = torch.utils._pytree.tree_leaves(output)
        hook_graph([t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad])

    handle = nn.modules.module.register_module_forward_hook(hook)
    ENGINE.summing = False
    try:
        yield
    finally:
        handle.remove()
        ENGINE.summing = False


def as_without_a_mode(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...]]:
    """The op and arguments a dispatch mode runs for `func(*args, **kwargs)`: the in-place add
    a step without a mode runs where `func` is the engine adding two gradients out of place
    (`in_place_sum`), else `func` and `args` as they are."""
    if in_place := in_place_sum(func, args, kwargs):
        return torch.ops.aten.add_.Tensor, in_place
    return func, args


def in_place_sum(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Where `func(*args)` is the engine adding two gradients out of place under a dispatch
    mode, the arguments of the in-place add a step without a mode runs (the gradient that
    takes the other first); else ()."""
    if func is not torch.ops.aten.add.Tensor or kwargs or len(args) != 2:
        return ()
    if not ENGINE.summing or torch._C._current_autograd_node() is None:
        return ()
    old, new = args
    if not isinstance(old, torch.Tensor) or not isinstance(new, torch.Tensor):
        return ()
    if old.shape != new.shape or old.dtype != new.dtype or old.device != new.device:
        return ()
    for target, other in ((old, new), (new, old)):
        if _held_once(target):
            return target, other
    return ()


def _held_once(t: torch.Tensor) -> bool:
    """Dense, and its storage held by this tensor alone, as a fresh tensor's is (the engine
    also asks that nothing else hold the tensor itself, which Python cannot see)."""
    if t.layout != torch.strided or not is_non_overlapping_and_dense_or_false(t):
        return False
    return _storage_uses(t) == _storage_uses(torch.empty(0, device=t.device))


def _storage_uses(t: torch.Tensor) -> int:
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))
