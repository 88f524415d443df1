"""Trace a step op by op on the meta device: FLOPs per layer and phase, allocations and frees.

FLOPs come from PyTorch's own per-op formulas (`torch.utils.flop_counter`), and ours where
PyTorch's are wrong or missing (`nin_profile.engine.flops`).
A backward op is charged to the layer whose forward built the autograd node running it: module
hooks tag each node's `metadata` during forward, and `torch._C._current_autograd_node()` names
the node during backward.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch._C import DispatchKey
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from nin_profile.engine.accumulation import (
    as_without_a_mode,
    mark_graph,
    metadata,
    summing_in_place,
)
from nin_profile.engine.autocast import op_overload
from nin_profile.engine.devices import BLAS_OPS, BLASLT_OPS
from nin_profile.engine.flops import flop_formula
from nin_profile.engine.kernels import (
    FUSED_ON_DEVICE,
    aten_kernels,
    cpu_outputs,
    kernel_outputs,
    kernel_scratch,
)
from nin_profile.engine.layer_stack import LayerStack, tensors_in
from nin_profile.engine.memory import AllocationLog, one_op
from nin_profile.results import PeakSite, Phase

LOSS = "loss"
OPTIMIZER = "(optimizer)"
_LAYER_KEY = "nin_profile.layer"

# Ops that move or create data without arithmetic: neither counted nor "not counted".
_NO_ARITHMETIC = frozenset(
    {
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "new_zeros",
        "zeros",
        "zeros_like",
        "ones",
        "ones_like",
        "full",
        "full_like",
        "fill_",
        "zero_",
        "clone",
        "copy_",
        "_to_copy",
        "lift_fresh",
        "_local_scalar_dense",
        "detach",
        "scalar_tensor",
        "_unsafe_view",
        "set_",
        "resize_",
        "_fused_sdp_choice",  # which attention kernel to run (kernels.py asks it on the CPU)
    }
)


def counts_arithmetic(func: torch._ops.OpOverload) -> bool:
    return (
        func.namespace == "aten"
        and not func.is_view
        and func.overloadpacket.__name__ not in _NO_ARITHMETIC
    )


class FusedDropout(TorchFunctionMode):
    """Dispatch dropout as CUDA does (`native_dropout` when training, out of place, 0 < p < 1)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.dropout:
            (x,) = args
            p, training = kwargs.get("p", 0.5), kwargs.get("training", True)
            if training and not kwargs.get("inplace", False) and 0 < p < 1 and x.numel() > 0:
                return torch.native_dropout(x, p, True)[0]
        return func(*args, **kwargs)


def tag_graph(tensors: list[torch.Tensor], layer: str) -> None:
    """Mark every autograd node behind `tensors` not yet marked as built by `layer`."""
    for _ in mark_graph(tensors, _LAYER_KEY, layer):
        pass


def saved_in_backward() -> bool:
    """Whether a tensor being saved for backward is saved inside backward itself: by a forward
    run again there (reentrant checkpointing), inside an autograd node, which uses what it
    saves at once. What the forward saves, and the loss's scaling before backward, is not."""
    return torch._C._current_autograd_node() is not None


def current_backward_layer() -> str:
    node = torch._C._current_autograd_node()
    if node is None:  # the seed gradient of loss.backward() is made before any node runs
        return LOSS
    layer = metadata(node).get(_LAYER_KEY, LOSS)
    assert isinstance(layer, str)
    return layer


class CpuTensorsJoinTheTrace(TorchDispatchMode):
    """For a CPU target: a tensor the user's forward makes on the CPU (`torch.ones(3)` without
    `device=`) meets the trace's meta tensors as, in the real step, it meets the CPU's. An op
    that refuses the mix (arithmetic; indexing takes CPU indices as they are), or whose output
    would be a floating-point or complex CPU tensor (a matrix product's meta kernel may give
    it its CPU operand's device), runs again with it as a meta tensor of its shape: its
    values decide no size there. An op that would write into it is refused in one line (the
    copy would take the write). It is CPU memory of the step: what autograd saves of it
    counts as saved (analysis.py's `_saved_on`), and StepTracer records each such tensor the
    forward makes while it lives. (PyTorch lets a 0-dim CPU tensor join any device; a CUDA
    step refuses the others, as the trace does.)"""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat = [*tensors_in(args), *tensors_in(kwargs)]
        if not any(t.device.type == "meta" for t in flat) or not any(map(_joins, flat)):
            return func(*args, **kwargs)
        if any(map(_joins, _written(func, args, kwargs))):  # a meta kernel would let it pass
            raise RuntimeError(
                "a tensor made on the CPU in the forward (without device=) is written in place "
                "with the model's tensors: make it on the input's device (device=x.device)"
            )
        try:
            out = func(*args, **kwargs)
        except RuntimeError:
            out = None
        # a product's meta kernel may take the device of its CPU operand (einsum's bmm); the
        # CPU's own bookkeeping stays there (a packed sequence's int64 batch sizes)
        if out is None or any(_joins(t) and _numbers(t) for t in tensors_in(out)):
            args, kwargs = tree_map(_as_meta, (args, kwargs))
            return func(*args, **kwargs)
        return out


def _written(func: Any, args: Any, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors `func` writes into (its schema's mutable arguments)."""
    written = []
    for index, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[index] if index < len(args) else kwargs.get(argument.name)
        written += tensors_in(value)
    return written


def _joins(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dim() > 0 and type(t) is torch.Tensor


def _numbers(t: torch.Tensor) -> bool:
    """A floating-point or complex tensor: a computed value, not the CPU's int64 bookkeeping."""
    return t.is_floating_point() or t.is_complex()


def _as_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and _joins(value):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return value


def _composite(func: Any) -> bool:
    """Whether `func` is one PyTorch composes of other ops (a CompositeImplicitAutograd
    kernel: `linear`, `einsum`, `rms_norm`, `cosine_similarity`, `layer_norm`...)."""
    return func.namespace == "aten" and torch._C._dispatch_has_kernel_for_dispatch_key(
        func.name(), "CompositeImplicitAutograd"
    )


@contextlib.contextmanager
def composites_whole() -> Iterator[None]:
    """While an AMP inference pass is traced: every op PyTorch composes of others runs as one
    op, as under the inference_mode the pass is measured in. That pass is traced under
    no_grad (autocast's casts are applied above autograd), where a composite is taken apart
    above the trace's dispatch mode (its kernel is autograd's), so its parts would be ops of
    their own: a kernel at the autograd keys of the trace's tensors (fake CPU ones under AMP,
    meta) runs the composite inside one op (VGG-11's AMP inference between ops read 5.3%
    high on an H200: max-pooling's int64 indices, made and dropped inside `max_pool2d`)."""
    composites = torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")
    impls = [
        (short, _whole(op_overload(name)), key)
        for name in composites
        if name.startswith("aten::")
        and (short := name.removeprefix("aten::")) not in FUSED_ON_DEVICE
        for key in ("AutogradCPU", "AutogradMeta")
    ]
    with aten_kernels(impls):
        yield


def _whole(op: Any) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        with one_op():
            return op._op_dk(DispatchKey.CompositeImplicitAutograd, *args, **kwargs)

    return kernel


def cpu_tensors_join(device: str) -> contextlib.AbstractContextManager[Any]:
    """`CpuTensorsJoinTheTrace` where the target is the CPU."""
    return CpuTensorsJoinTheTrace() if device == "cpu" else contextlib.nullcontext()


class StepTracer(TorchDispatchMode):
    """Sees every aten op of a step: charges its FLOPs and allocations to the running layer."""

    def __init__(
        self, stack: LayerStack, log: AllocationLog, cpu: bool = False, inference: bool = False
    ) -> None:
        super().__init__()
        self.stack = stack
        self.log = log
        # an inference pass, traced under inference_mode as it is measured: a composite op
        # is one op (`__torch_dispatch__`)
        self.inference = inference
        # the CPU's kernels: the scratch they allocate inside, the outputs they allocate
        # (kernels.py)
        self.cpu = cpu
        self.phase = Phase.FORWARD
        self.flops: Counter[tuple[str, Phase]] = Counter()
        self.not_counted: Counter[tuple[str, Phase]] = Counter()
        # (thread, library) that ran a matrix product → how many allocations the log had
        # recorded when it first did (its output's included): where its workspace is allocated
        self.blas_first_use: dict[tuple[str, str], int] = {}
        # the storages of the model's parameters, and of the copies casts made of them (AMP)
        self.weights: set[int] = set()
        self.weight_copies: set[int] = set()
        self._depth = 0

    def __enter__(self) -> StepTracer:
        super().__enter__()
        self._depth += 1  # entered again inside its own dispatch: a composite op's parts
        if self._depth == 1:
            self._sums = summing_in_place()
            self._sums.__enter__()
        if self.cpu and self._depth == 1:  # the CPU RNG states a CPU step keeps (devices.py)
            self._get_rng_state = torch.get_rng_state
            self._fork_rng = torch.random.fork_rng
            torch.get_rng_state = self._rng_state_held
            torch.random.fork_rng = self._fork_rng_on_cpu
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self.cpu and self._depth == 0:
            torch.get_rng_state = self._get_rng_state
            torch.random.fork_rng = self._fork_rng
        if self._depth == 0:
            self._sums.__exit__(*exc)
        super().__exit__(*exc)

    def _rng_state_held(self) -> torch.Tensor:
        state = self._get_rng_state()
        self.log.key_of(state, device="cpu")
        return state

    @contextlib.contextmanager
    def _fork_rng_on_cpu(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """`torch.random.fork_rng` as a CPU step runs it: checkpointing's recompute forks the
        RNG of the device it infers from its tensors, "meta" in the trace, for which PyTorch
        forks nothing; on the CPU it saves the CPU state for the recompute's length."""
        if kwargs.get("device_type") != "meta" or not kwargs.get("enabled", True):
            with self._fork_rng(*args, **kwargs):
                yield
            return
        state = torch.get_rng_state()
        try:
            yield
        finally:
            torch.set_rng_state(state)

    @property
    def blas_users(self) -> set[tuple[str, str]]:
        return set(self.blas_first_use)

    def set_phase(self, phase: Phase) -> None:
        self.phase = phase

    def layer(self) -> str:
        if self.phase is Phase.BACKWARD:
            return self._recomputing() or current_backward_layer()
        if self.phase is Phase.OPTIMIZER:
            return OPTIMIZER
        return self.stack.current

    def _recomputing(self) -> str | None:
        """The layer whose forward runs again inside the running autograd node (activation
        checkpointing recomputes a block in backward), if one does. A frame left by a
        recompute that stopped early (non-reentrant checkpointing stops it by an exception,
        past the forward hooks) belongs to a node that no longer runs."""
        node = torch._C._current_autograd_node()
        frames = self.stack.frames
        if node is None or not frames or frames[-1].node is None:
            return None
        return frames[-1].name if frames[-1].node == node else None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.inference and _composite(func):
            # under inference_mode an op PyTorch composes of others reaches the device's
            # allocator whole, one op: its parts are followed inside it
            with self.log.one_op(), self:  # the C++ composite, not a Python decomposition
                return func._op_dk(DispatchKey.CompositeImplicitAutograd, *args, **kwargs)
        func, args = as_without_a_mode(func, args, kwargs)  # the engine's sums, in place
        layer = self.layer()
        self.log.site = PeakSite(self.phase.value, layer, func.overloadpacket.__name__)
        out = kernel_outputs(func, args, func(*args, **kwargs), "cpu" if self.cpu else "cuda")
        formula = flop_formula(func.overloadpacket)
        if formula is not None:
            self.flops[layer, self.phase] += formula(*args, **kwargs, out_val=out)
        elif counts_arithmetic(func):
            self.not_counted[func.overloadpacket.__name__, self.phase] += 1
        outputs = tensors_in(out)
        if self.cpu:
            outputs = cpu_outputs(func, args, outputs)
        for tensor in outputs:
            self.log.key_of(tensor)
            if self.cpu and self.phase is Phase.FORWARD and _joins(tensor):
                self.log.key_of(tensor, device="cpu")  # a forward's own CPU tensor
        if func is torch.ops.aten._to_copy.default and self.log.key_of(args[0]) in self.weights:
            self.weight_copies.add(cast(int, self.log.key_of(out)))
        if self.cpu:
            self.log.scratch(kernel_scratch(func, args, out))
        self._note_blas(func.overloadpacket.__name__)
        return out

    def _note_blas(self, op: str) -> None:
        thread = "autograd" if self.phase is Phase.BACKWARD else "caller"
        libraries = (("cuBLAS",) if op in BLAS_OPS else ()) + (
            ("cuBLASLt",) if op in BLASLT_OPS else ()
        )
        for library in libraries:
            self.blas_first_use.setdefault((thread, library), len(self.log.events))
