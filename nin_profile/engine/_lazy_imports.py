"""Trace on the meta device without importing torch._dynamo, torch's symbolic shapes or sympy.

Three modules are imported on first use by torch code a meta trace runs, and together cost
more than the whole analysis (on two cores):

- `torch._dynamo` (about 1.5 s). Many of torch's Python kernels (the meta implementations in
  torch._refs) and torch.optim's methods are wrapped in `torch._disable_dynamo`, whose wrapper
  imports torch._dynamo the first time it runs and caches `torch._dynamo.disable(fn)` on
  `fn.__dynamo_disable`. Outside torch.compile that cached function behaves exactly as `fn`,
  and `graph_break()` does nothing.
- `torch.fx.experimental.symbolic_shapes` (about 0.03 s). `torch._check`, which every meta
  kernel calls to check its shapes, imports it for `expect_true`; meta kernels ask it
  `guard_or_false`, `sym_eq` and a few more. With plain `bool`s and `int`s (a meta tensor's
  sizes are plain ints unless torch.compile made them symbolic) each of these returns its
  argument or a comparison of it.
- `sympy` (about 0.2 s), which symbolic_shapes imports, and which `elementwise_dtypes` (type
  promotion in torch._refs) imports to ask `isinstance(x, sympy.Basic)`. While sympy is not
  imported no object is a `sympy.Basic`, so the stand-in's `Basic` answers that question
  with False until the real sympy is imported, and then with the real answer.

While a trace runs, a stand-in module takes the place of each: the dynamo one answers
`disable(fn)` with `fn` itself and `graph_break()` with nothing; the shapes one answers its
functions for plain values exactly as torch's own code does for them (see each function); the
sympy one has `Basic`.
Anything else asked of a stand-in, and any symbolic argument, retires all three stand-ins and
imports the real module: slower, never different numbers. Afterwards the stand-ins and every
cache entry they caused are removed, so torch is left as it was. A user's model module is
imported before the stand-ins go in (the model is built outside the block). A module first
imported during a trace may keep a reference to a stand-in: its functions give torch's answers
(for symbolic values, from the real module), and the dynamo stand-in hands over to the real
`disable` once the block has ended. One thread traces at a time: another thread importing
these modules during a trace would get the stand-ins.
"""

from __future__ import annotations

import functools
import importlib
import operator
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

_DYNAMO = "torch._dynamo"
_SLOT = "__dynamo_disable"
_SHAPES = "torch.fx.experimental.symbolic_shapes"
_SYMPY = "sympy"


class _StandIn(types.ModuleType):
    """A module in a real one's place; whatever it does not answer comes from the real one."""

    def in_place(self) -> bool:
        """Whether it still stands in (a reference kept past the block outlives that)."""
        return _IN_PLACE.get(self.__name__, (None, None))[0] is self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # `from m import x` asks for __path__: not a package
            raise AttributeError(name)
        return getattr(_real(self), name)


# Stand-ins in place, with the package each is an attribute of (None: a top-level module).
_IN_PLACE: dict[str, tuple[_StandIn, types.ModuleType | None]] = {}


def _retire(name: str) -> None:
    """Take the stand-in for `name` out of sys.modules and off its package, if it is there."""
    stand_in, parent = _IN_PLACE.pop(name, (None, None))
    if stand_in is None:
        return
    if sys.modules.get(name) is stand_in:
        del sys.modules[name]
    attr = name.rsplit(".", 1)[-1]
    if parent is not None and vars(parent).get(attr) is stand_in:
        delattr(parent, attr)


def _real(stand_in: types.ModuleType) -> types.ModuleType:
    """The real module, imported now if it was not. Every stand-in is retired first: the real
    modules import one another (symbolic_shapes imports sympy), and one that bound a stand-in
    at its import would keep it."""
    for name in list(_IN_PLACE):
        _retire(name)
    return importlib.import_module(stand_in.__name__)


class _DynamoStandIn(_StandIn):
    def __init__(self) -> None:
        super().__init__(_DYNAMO)
        self.disabled: list[Callable[..., Any]] = []

    def disable(self, fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
        """`fn` itself while standing in; the real `disable` for a reference kept past it."""
        if not self.in_place():
            return _real(self).disable(fn, recursive=recursive, **kwargs)
        if fn is None:
            return self.disable
        self.disabled.append(fn)
        return fn

    def graph_break(self, *args: Any, **kwargs: Any) -> None:
        """A no-op outside torch.compile (torch.optim calls it around each step)."""
        if not self.in_place():
            _real(self).graph_break(*args, **kwargs)


def _is_bool(a: object) -> bool:
    return type(a) is bool


def _is_int(a: object) -> bool:
    return type(a) is int or type(a) is bool


class _ShapesStandIn(_StandIn):
    """symbolic_shapes' answers for plain values; each method follows torch's own plain path."""

    def __init__(self) -> None:
        super().__init__(_SHAPES)

    def expect_true(self, a: Any, skip: int = 0) -> Any:
        return a if _is_bool(a) else _real(self).expect_true(a, skip + 1)

    def guard_or_false(self, a: Any) -> Any:
        return a if _is_bool(a) else _real(self).guard_or_false(a)

    def guard_or_true(self, a: Any) -> Any:
        return a if _is_bool(a) else _real(self).guard_or_true(a)

    def guard_size_oblivious(self, a: Any) -> Any:
        return a if _is_bool(a) else _real(self).guard_size_oblivious(a)

    def statically_known_true(self, a: Any) -> Any:
        return a if _is_bool(a) else _real(self).statically_known_true(a)

    def sym_and(self, x: Any, *others: Any) -> Any:
        if _is_bool(x) and all(map(_is_bool, others)):
            return functools.reduce(operator.and_, others, x)
        return _real(self).sym_and(x, *others)

    def sym_or(self, x: Any, *others: Any) -> Any:
        if _is_bool(x) and all(map(_is_bool, others)):
            return functools.reduce(operator.or_, others, x)
        return _real(self).sym_or(x, *others)

    def sym_eq(self, x: Any, y: Any) -> Any:
        if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
            if all(map(_is_int, x)) and all(map(_is_int, y)):
                return len(x) == len(y) and all(map(operator.eq, x, y))
        elif _is_int(x) and _is_int(y):
            return x == y
        return _real(self).sym_eq(x, y)

    def is_nested_int(self, s: Any) -> Any:
        return False if type(s) in (int, float, bool) else _real(self).is_nested_int(s)

    def has_guarding_hint(self, a: Any) -> Any:
        return True if type(a) in (int, float, bool) else _real(self).has_guarding_hint(a)

    def guarding_hint_or_throw(self, a: Any) -> Any:
        return a if _is_int(a) else _real(self).guarding_hint_or_throw(a)


def _real_sympy_basic() -> type | None:
    module = sys.modules.get(_SYMPY)
    return None if module is None or isinstance(module, _SympyStandIn) else module.Basic


class _SympyBasicMeta(type):
    """isinstance/issubclass against the real sympy.Basic once sympy is imported, else False."""

    def __instancecheck__(cls, obj: object) -> bool:
        basic = _real_sympy_basic()
        return basic is not None and isinstance(obj, basic)

    def __subclasscheck__(cls, sub: type) -> bool:
        basic = _real_sympy_basic()
        return basic is not None and issubclass(sub, basic)


class _SympyStandIn(_StandIn):
    class Basic(metaclass=_SympyBasicMeta):
        """No object is a sympy expression while sympy has not been imported."""

    def __init__(self) -> None:
        super().__init__(_SYMPY)


@contextmanager
def _standing_in(stand_in: _StandIn, parent: types.ModuleType | None) -> Iterator[None]:
    """`stand_in` in sys.modules (and on its parent package), unless the real one is imported."""
    name = stand_in.__name__
    if name in sys.modules:  # imported already, or a stand-in is in place: nothing to do
        yield
        return
    sys.modules[name] = stand_in
    if parent is not None:
        setattr(parent, name.rsplit(".", 1)[-1], stand_in)
    _IN_PLACE[name] = (stand_in, parent)
    try:
        yield
    finally:
        if _IN_PLACE.get(name, (None, None))[0] is stand_in:
            _retire(name)


@contextmanager
def without_heavy_imports() -> Iterator[None]:
    """Inside the block, torch._dynamo, torch's symbolic shapes and sympy are not imported."""
    dynamo = _DynamoStandIn()
    with ExitStack() as stack:
        stack.enter_context(_standing_in(dynamo, torch))
        stack.enter_context(_standing_in(_ShapesStandIn(), torch.fx.experimental))
        stack.enter_context(_standing_in(_SympyStandIn(), None))
        try:
            yield
        finally:
            for fn in dynamo.disabled:
                if getattr(fn, _SLOT, None) is fn:
                    delattr(fn, _SLOT)
