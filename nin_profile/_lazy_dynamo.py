"""Trace on the meta device without importing torch._dynamo.

Many of torch's Python kernels (the meta implementations in torch._refs) and torch.optim's
methods are wrapped in `torch._disable_dynamo`, whose wrapper imports torch._dynamo the first
time it runs (about 1.5 s on two cores, half of a whole `--static` run) and caches
`torch._dynamo.disable(fn)` on `fn.__dynamo_disable`. Outside torch.compile that cached
function behaves exactly as `fn`, and `graph_break()` does nothing. While a trace runs, a
stand-in module answers `disable(fn)` with `fn` itself and `graph_break()` with nothing;
afterwards the stand-in and every cache entry it caused are removed, so torch is left as it
was. Anything else asked of the stand-in imports the real torch._dynamo and carries on:
slower, never different numbers.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

_NAME = "torch._dynamo"
_SLOT = "__dynamo_disable"


class _DynamoStandIn(types.ModuleType):
    def __init__(self) -> None:
        super().__init__(_NAME)
        self.disabled: list[Callable[..., Any]] = []

    def disable(self, fn: Any = None, recursive: bool = True, **_: Any) -> Any:
        if fn is None:
            return self.disable
        self.disabled.append(fn)
        return fn

    def graph_break(self, *args: Any, **kwargs: Any) -> None:
        """A no-op outside torch.compile (torch.optim calls it around each step)."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(_NAME) is self:
            del sys.modules[_NAME]
        return getattr(importlib.import_module(_NAME), name)


@contextmanager
def without_dynamo_import() -> Iterator[None]:
    """Inside the block, torch._dynamo.disable(fn) is fn and torch._dynamo is not imported."""
    if _NAME in sys.modules:  # imported already, or a stand-in is in place: nothing to do
        yield
        return
    stand_in = _DynamoStandIn()
    sys.modules[_NAME] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_NAME) is stand_in:
            del sys.modules[_NAME]
        if vars(torch).get("_dynamo") is stand_in:
            delattr(torch, "_dynamo")
        for fn in stand_in.disabled:
            if getattr(fn, _SLOT, None) is fn:
                delattr(fn, _SLOT)
