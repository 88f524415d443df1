"""Autocast during a trace, as the target device's autocast runs it.

Autocast is a dispatch key above autograd (`AutocastCPU`, `AutocastCUDA`): its kernel for an op
in its lists casts the op's floating-point inputs (`cached_cast` in
aten/src/ATen/autocast_mode.cpp) and calls the op below it, so autograd records the casts and
saves the cast tensors; an op in no list falls through. A kernel acts only on tensors of its
own device (`is_autocast_eligible`), so on meta tensors autocast does nothing. An AMP trace
therefore runs on PyTorch's fake tensors (`FakeTensorMode`: meta storage, a device of their
own), whose device is the CPU, and:

- for `--device cpu`, under `torch.autocast("cpu")` itself: every cast is PyTorch's own.
- for `--device cuda`, under `CudaAutocast`: CUDA's autocast cannot run with autograd in a
  CPU-only build (autograd asks the CUDA device guard for a stream, and the build has none),
  so CUDA's kernels are asked what they do and their casts are applied on the CPU tensors.
  While the block runs, every op with an autocast kernel for either device gets a Python
  kernel at `AutocastCPU`. An op CUDA has a kernel for is first run once, for each new
  combination of input dtypes and other arguments, on fake CUDA twins of its inputs (no grad)
  under CUDA's autocast, with the op's next kernel (`AutogradCUDA`) replaced by one that
  records the arguments CUDA's autocast kernel passes on and stops. Those arguments, mapped
  back onto the CPU inputs (a twin replaced by a tensor of another dtype: that input cast to
  it; `softmax`'s `dtype` set to float32: the same), are what the op then runs on, below
  autocast. An op CUDA has no kernel for falls through, as it does on CUDA (CPU's own kernel
  for it is skipped). Casts of float32 leaves that require grad to the autocast dtype are
  kept until the block exits, as `cached_cast` keeps them (the weight-cast cache). CUDA's
  autocast state is on too, as Python asks it (`torch.is_autocast_enabled()`): on a GPU,
  `nn.MultiheadAttention` under autocast leaves its inference fast path for the slow one.

The op lists themselves are never copied here: which ops have an autocast kernel is asked of
PyTorch's dispatcher (`_dispatch_has_kernel_for_dispatch_key`), and what each kernel does, of
the kernel. For torch 2.13 they are (autocast_mode.cpp and autocast_mode.h): on CUDA,
convolutions, `linear`, `matmul`, `mm`, `bmm`, `addmm`, `baddbmm`, `prelu`, the RNN cells and
attention in the lower precision; `exp`, `log`, `pow`, `softplus`, `layer_norm`,
`group_norm`, `rms_norm`, the norms and nearly every loss (`nll_loss`, `mse_loss`, ...) in
float32; `softmax`, `log_softmax`, `sum`, `prod`, `cumsum` with an output dtype of float32;
`cat`-like `addcmul`, `addcdiv`, `index_put`, `scatter_add`, `dot` promoted to the widest
input. On the CPU, convolutions, `linear`, the products, `prelu`, SDPA and oneDNN's LSTM layer
in the lower precision; many losses (`cross_entropy_loss` among them), 3-D pooling, padding
and linear algebra in float32; `cat`, `stack`, `index_copy` promoted. Everything else (ReLU,
max-pooling, dropout, BatchNorm, adaptive pooling, `view`s) runs in its inputs' dtype.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch._C import DispatchKey, DispatchKeySet
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


@functools.cache
def autocast_ops(device: str) -> tuple[str, ...]:
    """The aten ops (`aten::softmax.int`) with an autocast kernel for `device`, as registered."""
    key = AUTOCAST_KEYS[device]
    names = torch._C._dispatch_get_all_op_names()
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    return tuple(sorted(n for n in names if n.startswith("aten::") and has_kernel(n, key)))


def op_overload(name: str) -> torch._ops.OpOverload:
    """`aten::softmax.int` → torch.ops.aten.softmax.int; no overload → `.default`."""
    op, _, overload = name.removeprefix("aten::").partition(".")
    overload_packet = getattr(torch.ops.aten, op)
    return getattr(overload_packet, overload or "default")


def traced_autocast(
    device: str, dtype: torch.dtype, cache: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """Autocast for a trace on fake CPU tensors, as `device` runs it. `cache=False` for a pass
    that stands for one under inference_mode, where `cached_cast` keeps no weight copies
    (`!c10::InferenceMode::is_enabled()`, PyTorch #158232): the trace itself runs under
    no_grad, where autocast would keep them."""
    if device == "cpu":
        return torch.autocast("cpu", dtype=dtype, cache_enabled=cache)
    return CudaAutocast(dtype, cache)


class _Passed(Exception):
    """Raised by the recording kernel: the arguments an autocast kernel passed on."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.passed = (args, kwargs)


def _qualified(op: torch._ops.OpOverload) -> str:
    """`softmax.int` as torch.library names an overload (`conv2d` for the default)."""
    name = op._schema.name.removeprefix("aten::")
    return name if op._overloadname == "default" else f"{name}.{op._overloadname}"


def full_arguments(
    op: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Every argument of the op's schema, defaults filled in: a call from Python passes only
    what it was given, one from C++ (what an autocast kernel passes on) every argument."""
    full, named = list(args), dict(kwargs)
    for index, argument in enumerate(op._schema.arguments):
        if argument.kwarg_only:
            if argument.name not in named and argument.has_default_value():
                named[argument.name] = argument.default_value
        elif index >= len(full):
            if argument.name in named:
                full.append(named.pop(argument.name))
            elif argument.has_default_value():
                full.append(argument.default_value)
    return tuple(full), named


def _twin(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="cuda")
    return value


def cuda_autocast_call(
    op: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
) -> tuple[Any, Any] | None:
    """(twins, passed): fake CUDA twins of (args, kwargs) and what CUDA's autocast kernel for
    `op` passes on for them, with `dtype` as the autocast dtype; None where the call got
    past the op's next kernel without reaching it (the kernel called another op)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    library = torch.library.Library("aten", "IMPL")

    def record(*passed_args: Any, **passed_kwargs: Any) -> Any:
        raise _Passed(passed_args, passed_kwargs)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            library.impl(_qualified(op), record, "AutogradCUDA")
        with (
            _disable_current_modes(),
            FakeTensorMode(),
            torch.no_grad(),
            autocast_state("cuda", dtype),
        ):
            twins = tree_map(_twin, (args, kwargs))
            try:
                op(*twins[0], **twins[1])
            except _Passed as passed:
                return twins, passed.passed
    finally:
        library._destroy()
    return None


@contextlib.contextmanager
def autocast_state(device: str, dtype: torch.dtype) -> Iterator[None]:
    """A device's autocast state, on, in `dtype` (torch.autocast refuses "cuda" where CUDA is
    not available); the state only: which kernels run is the dispatcher's business."""
    enabled, previous = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
    torch.set_autocast_enabled(device, True)
    torch.set_autocast_dtype(device, dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, previous)


# One leaf of an op's arguments as CUDA's autocast kernel passes it on: for a tensor, the dtype
# it is cast to (None: passed as it is); for anything else, the value passed.
_Plan = tuple[Any, list[Any]]


def _signature(leaves: list[Any]) -> tuple[Any, ...]:
    """What a cast decision can depend on: the dtype of each tensor, every other value."""
    return tuple(
        ("tensor", leaf.dtype) if isinstance(leaf, torch.Tensor) else (type(leaf), repr(leaf))
        for leaf in leaves
    )


class CudaAutocast:
    """CUDA's autocast applied to a trace on fake CPU tensors (see the module's docstring)."""

    def __init__(self, dtype: torch.dtype, cache: bool = True) -> None:
        self.dtype = dtype
        self.cache = cache
        self._plans: dict[tuple[str, str, tuple[Any, ...]], _Plan | None] = {}
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(leaf) → (leaf, cast)
        self._library: torch.library.Library | None = None
        self._state: contextlib.ExitStack | None = None

    def __enter__(self) -> CudaAutocast:
        cuda_ops = set(autocast_ops("cuda"))
        library = torch.library.Library("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            for name in sorted(cuda_ops | set(autocast_ops("cpu"))):
                op = op_overload(name)
                kernel = self._cast_kernel(op) if name in cuda_ops else self._fallthrough(op)
                library.impl(_qualified(op), kernel, "AutocastCPU", with_keyset=True)
        self._library = library
        with contextlib.ExitStack() as state:
            state.enter_context(autocast_state("cpu", self.dtype))
            state.enter_context(autocast_state("cuda", self.dtype))
            self._state = state.pop_all()
        torch.autocast_increment_nesting()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._state is not None and self._library is not None
        torch.autocast_decrement_nesting()
        self._state.close()
        self._state = None
        self._cache.clear()  # the weight-cast cache lives as long as the region
        self._library._destroy()
        self._library = None

    @staticmethod
    def _fallthrough(op: torch._ops.OpOverload) -> Any:
        below = torch._C._dispatch_keyset_full_after(DispatchKey.AutocastCPU)

        def kernel(keyset: DispatchKeySet, *args: Any, **kwargs: Any) -> Any:
            return op.redispatch(keyset & below, *args, **kwargs)

        return kernel

    def _cast_kernel(self, op: torch._ops.OpOverload) -> Any:
        fallthrough = self._fallthrough(op)

        def kernel(keyset: DispatchKeySet, *args: Any, **kwargs: Any) -> Any:
            plan = self._plan(op, args, kwargs)
            if plan is None:
                return fallthrough(keyset, *args, **kwargs)
            with torch._C._ExcludeDispatchKeyGuard(DispatchKeySet(DispatchKey.AutocastCPU)):
                cast_args, cast_kwargs = self._apply(plan, op, args, kwargs)
                return op(*cast_args, **cast_kwargs)

        return kernel

    def _plan(self, op: torch._ops.OpOverload, args: Any, kwargs: Any) -> _Plan | None:
        args, kwargs = full_arguments(op, args, kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        key = (_qualified(op), repr(spec), _signature(leaves))
        if key not in self._plans:
            self._plans[key] = self._ask_cuda(op, args, kwargs, leaves, spec)
        return self._plans[key]

    def _ask_cuda(
        self, op: torch._ops.OpOverload, args: Any, kwargs: Any, leaves: list[Any], spec: Any
    ) -> _Plan | None:
        """The plan for a call of these argument dtypes, from CUDA's kernel (args and kwargs
        in full: see full_arguments)."""
        answer = cuda_autocast_call(op, args, kwargs, self.dtype)
        if answer is None:
            return None
        twins, passed = answer
        twin_leaves, _ = tree_flatten(twins)
        passed_leaves, passed_spec = tree_flatten(full_arguments(op, *passed))
        if passed_spec != spec:
            raise RuntimeError(
                f"CUDA's autocast kernel for {op} passed on arguments shaped {passed_spec}, "
                f"not {spec}: its casts cannot be mapped back"
            )
        plan: list[Any] = []
        for leaf, twin, out in zip(leaves, twin_leaves, passed_leaves, strict=True):
            if isinstance(leaf, torch.Tensor):
                plan.append(None if out is twin else out.dtype)
            else:
                plan.append(out)
        return spec, plan

    def _apply(self, plan: _Plan, op: Any, args: Any, kwargs: Any) -> tuple[Any, Any]:
        spec, decisions = plan
        leaves, _ = tree_flatten(full_arguments(op, args, kwargs))
        cast = [
            self._cast(leaf, decision)
            if isinstance(leaf, torch.Tensor) and decision is not None
            else (leaf if isinstance(leaf, torch.Tensor) else decision)
            for leaf, decision in zip(leaves, decisions, strict=True)
        ]
        cast_args, cast_kwargs = tree_unflatten(cast, spec)
        return cast_args, cast_kwargs

    def _cast(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`cached_cast`: a cast of a float32 leaf that requires grad (a weight) to the
        autocast dtype is made once per region and kept."""
        if tensor.dtype == dtype:
            return tensor
        cacheable = (
            self.cache
            and dtype == self.dtype
            and tensor.dtype == torch.float32
            and tensor.requires_grad
            and tensor.is_leaf
            and not tensor._is_view()
        )
        if not cacheable:
            return tensor.to(dtype)
        if id(tensor) not in self._cache:
            self._cache[id(tensor)] = (tensor, tensor.to(dtype))
        return self._cache[id(tensor)][1]
