"""Which layer is running: a stack of module names kept by forward hooks, removed on exit."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from nin_profile.engine._lazy_imports import without_heavy_imports
from nin_profile.errors import (
    LayerFailed,
    NeedsValues,
    ProfileError,
    StepFailed,
    first_line,
    needs_values,
    raised_in_torch,
    user_error,
    values_reason,
)

ROOT = "(root)"


@dataclass
class Frame:
    """A running module. `children`: how many forwards of other modules ran inside it so far;
    a module none ran inside is a leaf of the run (nn.MultiheadAttention, whose out_proj it
    uses as weights only, is one), and the ops it runs are its own. `node`: the autograd node
    running when the forward began (None but for a forward run again inside backward, as
    activation checkpointing does). `input_shape`: the first tensor's shape its forward is
    called with, once the user's forward pre-hooks have run."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    children: int = 0
    node: object = None


def tensors_in(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def layer_names(model: nn.Module) -> dict[nn.Module, str]:
    """Dotted name of each module, the root called ROOT (first name wins for shared modules)."""
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        names.setdefault(module, name or ROOT)
    return names


class ParamCount(NamedTuple):
    total: int
    trainable: int
    nbytes: int


def params_by_layer(model: nn.Module, ran: Collection[str] = ()) -> dict[str, ParamCount]:
    """Parameters owned directly by each module. A parameter shared by several counts once,
    for the first of them whose forward ran (`ran`, the names of the modules that did), else
    for the first."""
    owners: dict[int, list[str]] = {}
    held: dict[int, nn.Parameter] = {}
    for module, name in layer_names(model).items():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
            held[id(p)] = p
    by_owner: dict[str, list[nn.Parameter]] = {}
    for key, names in owners.items():
        owner = next((n for n in names if n in ran), names[0])
        by_owner.setdefault(owner, []).append(held[key])
    order = {name: i for i, name in enumerate(layer_names(model).values())}
    return {
        name: ParamCount(
            sum(p.numel() for p in own),
            sum(p.numel() for p in own if p.requires_grad),
            sum(p.numel() * p.element_size() for p in own),
        )
        for name, own in sorted(by_owner.items(), key=lambda item: order[item[0]])
    }


Hook = Callable[[Frame, Any], None]


class LayerStack:
    """Keeps the stack of running modules; a failing forward leaves its innermost layer on top.

    `on_enter(frame, (args, kwargs))` runs as a module is called, before the user's forward
    pre-hooks (what they run belongs to the module: old-style weight_norm computes its
    weight there), `on_call(frame, (args, kwargs))` after them, with the arguments its
    forward gets, `on_exit(frame, output)` after its forward and the user's forward hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        extra: dict[str, nn.Module] | None = None,
        on_enter: Hook | None = None,
        on_exit: Hook | None = None,
        on_call: Hook | None = None,
    ) -> None:
        self.names = layer_names(model)
        for name, module in (extra or {}).items():
            self.names[module] = name
        self.frames: list[Frame] = []
        self.forward_done = False  # the root's forward returned: backward or an optimizer next
        self._on_enter = on_enter
        self._on_exit = on_exit
        self._on_call = on_call
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def current(self) -> str:
        return self.frames[-1].name if self.frames else ROOT

    def __enter__(self) -> LayerStack:
        for module in self.names:
            self._handles.append(
                module.register_forward_pre_hook(self._enter, prepend=True, with_kwargs=True)
            )
            self._handles.append(
                module.register_forward_pre_hook(self._called_with, with_kwargs=True)
            )
            self._handles.append(module.register_forward_hook(self._exit))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self.forward_done = False
        inputs = tensors_in((args, kwargs))
        frame = Frame(self.names[module], module, tuple(inputs[0].shape) if inputs else ())
        frame.node = torch._C._current_autograd_node()
        if self.frames:
            self.frames[-1].children += 1
        if self._on_enter:
            self._on_enter(frame, (args, kwargs))
        self.frames.append(frame)

    def _called_with(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        frame = self.frames[-1]
        inputs = tensors_in((args, kwargs))
        frame.input_shape = tuple(inputs[0].shape) if inputs else ()
        if self._on_call:
            self._on_call(frame, (args, kwargs))

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        frame = self.frames[-1]
        empty = [t for t in tensors_in(output) if t.numel() == 0]
        if empty:
            shape = "×".join(map(str, empty[0].shape))
            raise LayerFailed(
                frame.name,
                type(module).__name__,
                frame.input_shape,
                f"its output {shape} would be empty",
            )
        if self._on_exit:
            self._on_exit(frame, output)
        self.frames.pop()
        self.forward_done = not self.frames

    def failure(self, exc: BaseException) -> ProfileError:
        """Name the innermost layer that was running when `exc` was raised; an error raised
        outside torch (the user's own `assert` in a forward) says what it was and where. A
        forward that reads a tensor's values, and a step that fails once no forward runs
        (backward, the optimizer), each say so instead."""
        if isinstance(exc, LayerFailed):
            return exc
        frame = self.frames[-1] if self.frames else None
        values = needs_values(exc)
        reason = first_line(exc) or type(exc).__name__
        if values:
            reason = values_reason(exc)
        elif not raised_in_torch(exc):
            reason = user_error(exc)
        if frame is None:
            return (
                StepFailed(reason) if self.forward_done else LayerFailed(ROOT, "model", (), reason)
            )
        if values:
            return NeedsValues(frame.name, type(frame.module).__name__, reason)
        return LayerFailed(
            frame.name,
            type(frame.module).__name__,
            frame.input_shape,
            reason,
            expected_channels(frame.module, frame.input_shape),
        )


def expected_channels(module: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The input channels `module` wants, where it says (`in_channels`) and gets others."""
    wanted = getattr(module, "in_channels", None)
    if isinstance(wanted, int) and len(input_shape) >= 2 and input_shape[1] != wanted:
        return wanted
    return None


T = TypeVar("T")


def leaf_spans(
    model: nn.Module, read: Callable[[], T], run: Callable[[], object]
) -> list[tuple[str, T, T]]:
    """Run `run`; for each forward of a module none ran inside (a leaf of the run), in order,
    `read()` just before and just after."""
    spans: list[tuple[str, T, T]] = []
    starts: list[T] = []

    def enter(frame: Frame, args: object) -> None:
        starts.append(read())

    def leave(frame: Frame, output: object) -> None:
        start = starts.pop()
        if not frame.children:
            spans.append((frame.name, start, read()))

    with LayerStack(model, on_enter=enter, on_exit=leave):
        run()
    return spans


Span = tuple[str, T, T, list[tuple[T, T]]]


def nested_spans(
    model: nn.Module, read: Callable[[], T], run: Callable[[], object]
) -> list[Span[T]]:
    """Run `run`; for each module's forward, in the order they end: its name, `read()` just
    before and just after it, and those pairs of the forwards that ran directly inside it."""
    spans: list[Span[T]] = []
    open_spans: list[tuple[T, list[tuple[T, T]]]] = []

    def enter(frame: Frame, args: object) -> None:
        open_spans.append((read(), []))

    def leave(frame: Frame, output: object) -> None:
        start, inside = open_spans.pop()
        end = read()
        spans.append((frame.name, start, end, inside))
        if open_spans:
            open_spans[-1][1].append((start, end))

    with LayerStack(model, on_enter=enter, on_exit=leave):
        run()
    return spans


@contextmanager
def naming_failures(stack: LayerStack) -> Iterator[LayerStack]:
    """Turn an error inside a forward into a LayerFailed naming the layer."""
    with stack:
        try:
            yield stack
        except ProfileError:
            raise
        except Exception as exc:  # whatever a forward raises: torch's kernels or the user's code
            raise stack.failure(exc) from exc


def forward_on_meta(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """Run `model` (with meta parameters) on a meta input, naming the layer that cannot run;
    its output as the model returns it (a tensor, a tuple, a dict...)."""
    with naming_failures(LayerStack(model)), torch.no_grad(), without_heavy_imports():
        return model(torch.empty(input_shape, device="meta"))
