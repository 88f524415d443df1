"""Per-rank memory of data-parallel (DDP) and sharded (FSDP2) training, on one CPU, for any
world size: PyTorch's own wrappers traced on a fake process group.

The wrappers are PyTorch's: `DistributedDataParallel` (its C++ Reducer buckets the gradients)
and FSDP2's `fully_shard` (it shards, all-gathers and reduce-scatters). They run on a process
group of the `fake` backend (`FakeStore`, as PyTorch's own estimators in
`torch.distributed._tools` use it): rank 0 of `world_size` ranks, alone in this process, whose
collectives move no data. DDP runs on meta tensors; FSDP2 shards meta parameters and then
trains fake CPU tensors (`FakeTensorMode`, as PyTorch's estimators do: it refuses to train
meta parameters). Nothing of a shard's or a batch's size is allocated, and no process is
started for the other ranks: a world size of 1,024 costs what 8 does.

The buckets, the all-gather and reduce-scatter buffers, the sharded and the gathered
parameters, the gradients and the optimizer state, and when each is alive, are what the
wrappers allocate and free, seen op by op by the single-process tracer
(tracing.StepTracer over memory.AllocationLog), from the wrapping on, through warm-up steps,
so that whatever a wrapper keeps from one step to the next is there when the measured step
begins. Where PyTorch does not run on these tensors as it is, the trace steps in, only there:

- DDP: `init_sync=False`, because verifying the parameters' shapes across ranks reads a value
  (`.item()`), which a meta tensor has not; that check allocates nothing.
- DDP: the fake group's work carries no tensor, and DDP's built-in all-reduce hook insists on
  one (an INTERNAL ASSERT in c10d/comm.cpp), so the trace registers a communication hook that
  does what the built-in one does: an in-place all-reduce of the bucket on the group (the fake
  one: nothing moves), then the bucket as its result.
- DDP: rebuilding the buckets in gradient order after the first step broadcasts rank 0's order
  and copies it back from the parameters' device to the CPU; a meta tensor has nothing to copy.
  Rank 0 keeps its own order, so that copy is left out (`_Rank0KeepsItsOrder`).
- DDP: its usage logger times iterations with a device timer the meta device lacks (and warns
  on stderr); the trace runs without that logger, which allocates nothing.
- FSDP2 frees and re-allocates a gathered parameter by resizing its storage in place
  (`UntypedStorage.resize_`), which no dispatch mode sees; the trace follows those resizes.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nin_profile.engine.analysis import (
    AnalysisConfig,
    _ForwardRecorder,
    _hold_workspaces,
    build_on_meta,
    model_config,
)
from nin_profile.engine.kernels import DeviceKernels
from nin_profile.engine.layer_stack import LayerStack, naming_failures, tensors_in
from nin_profile.engine.memory import TRACE_DEVICE, AllocationLog, Event, peak_breakdown, round_up
from nin_profile.engine.tracing import LOSS, FusedDropout, StepTracer, saved_in_backward
from nin_profile.engine.training import (
    TrainingLoss,
    make_batch,
    make_optimizer,
    optimizer_state,
    training_step,
)
from nin_profile.errors import ProfileError
from nin_profile.parallel_results import RankProfile, ZeroEstimates
from nin_profile.results import MemoryBreakdown, MemoryCategory, PeakSite

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

STRATEGIES = ("none", "ddp", "fsdp")
# The dtypes of FSDP2's MixedPrecisionPolicy by name (--fsdp-param-dtype, --fsdp-reduce-dtype)
FSDP_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The optimizer state and FSDP2's lazy state come with the first step; DDP's buckets are
# rebuilt in gradient order after it, and the second step's hook sees the new ones.
WARMUP_STEPS = 2


@dataclass(frozen=True)
class Parallel:
    """How the model is replicated or sharded over `world_size` ranks, with the options that
    change memory. bucket_cap_mb (DDP): its bucket size in MiB; None is DDP's default (25 MiB,
    and a first bucket of 1 MiB). gradient_as_bucket_view (DDP): gradients are views into the
    buckets instead of tensors of their own. reshard_after_forward (FSDP2): free each block's
    gathered parameters after its forward and gather them again in backward (the root's are
    kept: FSDP2 never reshards the root after forward). param_dtype, reduce_dtype (FSDP2): its
    mixed-precision policy by name (FSDP_DTYPES); None is FSDP2's default (the model's dtype;
    for reduce_dtype, param_dtype's)."""

    strategy: str
    world_size: int
    bucket_cap_mb: float | None = None
    gradient_as_bucket_view: bool = False
    reshard_after_forward: bool = True
    param_dtype: str | None = None
    reduce_dtype: str | None = None


def mp_policy(param_dtype: str | None, reduce_dtype: str | None) -> MixedPrecisionPolicy:
    """FSDP2's MixedPrecisionPolicy for dtypes by name (None: FSDP2's default). The shards stay
    in the model's dtype (the optimizer steps them); each block is gathered, and its forward
    and backward computed, in param_dtype (its inputs cast to it); gradients are reduced in
    reduce_dtype and kept sharded in the model's dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(
        param_dtype=FSDP_DTYPES[param_dtype] if param_dtype else None,
        reduce_dtype=FSDP_DTYPES[reduce_dtype] if reduce_dtype else None,
    )


# A storage in several categories belongs to the first of these; in none, to the trace's
# default (transient in training, activations in inference).
PRIORITY = (
    MemoryCategory.PARAMS,
    MemoryCategory.UNSHARDED_PARAMS,
    MemoryCategory.BUFFERS,
    MemoryCategory.INPUT,
    MemoryCategory.OPTIMIZER,
    MemoryCategory.WORKSPACE,
    MemoryCategory.GRADS,
    MemoryCategory.COMMUNICATION,
    MemoryCategory.ACTIVATIONS,
)


@dataclass
class RankTrace:
    """Rank 0's allocations and frees, from the wrapping on; the event where the traced step
    or pass began (those before it are setup and warm-up) and each category's storages."""

    log: AllocationLog
    start: int
    owners: dict[MemoryCategory, set[int]] = field(default_factory=dict)
    collective_bytes: int = 0
    default: MemoryCategory = MemoryCategory.TRANSIENT


def analyse_rank(
    name: str, cfg: AnalysisConfig, parallel: Parallel, classes: int | None
) -> RankProfile:
    """Rank 0 of `parallel.world_size` ranks, each with `cfg.batch` examples: its training
    step and inference pass traced through the wrapper, and the estimators' rules beside."""
    model = build_on_meta(name, model_config(cfg))
    estimates = zero_estimates(model, parallel.world_size)
    train, inference = trace_rank(model, cfg, parallel, classes)
    assert inference is not None
    return RankProfile(
        world_size=parallel.world_size,
        batch=cfg.batch,
        train=breakdown(train, cfg),
        inference=breakdown(inference, cfg),
        collective_bytes=train.collective_bytes,
        estimators=estimates,
    )


def zero_estimates(model: nn.Module, world_size: int) -> ZeroEstimates:
    """DeepSpeed's and accelerate's figures for `model` on `world_size` ranks, by their own
    formulas (deepspeed/runtime/zero/stage_1_and_2.py and stage3.py without offload;
    accelerate/commands/estimate.py for float32)."""
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest_layer = max(
        (sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0
    )
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return ZeroEstimates(
        zero2=2 * params + int(18 * params / world_size),
        zero3=4 * largest_layer + int(18 * params / world_size),
        accelerate=4 * size,
    )


def trace_rank(
    model: nn.Module,
    cfg: AnalysisConfig,
    parallel: Parallel,
    classes: int | None,
    inference: bool = True,
) -> tuple[RankTrace, RankTrace | None]:
    """Rank 0's training step (after warm-up steps) and then, with `inference`, its
    inference pass (eval mode, no_grad, as a rank evaluates between epochs), traced through
    the wrapper. `model` has meta parameters; it is wrapped (changed)."""
    with (
        _quiet_fsdp(),
        _chunks_on_demand(),
        fake_group(parallel.world_size),
        _rank_tensors(parallel.strategy) as device,
    ):
        if parallel.strategy == "fsdp":
            wrapped = _wrap_fsdp(model, parallel)
        else:
            wrapped = _wrap_ddp(model, parallel)
        train = _trace_training(wrapped, cfg, classes, device)
        passed = _trace_inference(wrapped, cfg, device) if inference else None
    return train, passed


def rank_train_peak(name: str, cfg: AnalysisConfig, parallel: Parallel, classes: int | None) -> int:
    """Rank 0's predicted training peak alone (a --memory-budget search probes many): on
    CUDA what the caching allocator reserves (within `cfg.memory_limit`), else the peak."""
    train, _ = trace_rank(build_on_meta(name, model_config(cfg)), cfg, parallel, classes, False)
    b = breakdown(train, cfg)
    return b.peak if b.reserved is None else b.reserved


@contextlib.contextmanager
def _quiet_fsdp() -> Iterator[None]:
    """FSDP2 warns that a module returning a view (a Flatten at the end) would lose its
    backward hook to an in-place op on that view; the step makes none."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        yield


class _Chunks(Sequence[torch.Tensor]):
    """`torch.chunk(tensor, n, dim)` padded with empty tensors to n chunks, as FSDP2's
    `_chunk_with_empty` returns it, each chunk made when asked for: FSDP2 asks for its rank's
    and the first (its padded size), and n views a parameter cost time in proportion to the
    world size (0.2 s at 1,024 ranks for VGG-11, 19 s at 65,536)."""

    def __init__(self, tensor: torch.Tensor, n: int, dim: int) -> None:
        self.tensor, self.n, self.dim = tensor, n, dim
        self.rows = tensor.size(dim)
        self.step = max(1, -(-self.rows // n))  # torch.chunk's: ⌈rows / n⌉

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, index: slice) -> list[torch.Tensor]: ...
    def __getitem__(self, index: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        i = range(self.n)[index]  # IndexError as a list's
        start = i * self.step
        if start < self.rows or i == 0:
            return self.tensor.narrow(self.dim, start, min(self.step, self.rows - start))
        return self[0].new_empty(0)


@contextlib.contextmanager
def _chunks_on_demand() -> Iterator[None]:
    """FSDP2's `_chunk_with_empty` (a chunk per rank of each parameter) as `_Chunks`: what a
    world size costs the trace stops growing with it."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param

    original = _fsdp_param._chunk_with_empty
    _fsdp_param._chunk_with_empty = _Chunks  # type: ignore[assignment]
    try:
        yield
    finally:
        _fsdp_param._chunk_with_empty = original


def breakdown(trace: RankTrace, cfg: AnalysisConfig | None = None) -> MemoryBreakdown:
    """The peak of the traced step, by category, with what was held when it began; for a
    CUDA `cfg`, what the caching allocator reserves as the step repeats."""
    held = _held_at_start(trace)
    setup = PeakSite("setup", "", "")
    events = [Event(key, size, setup) for key, size in held.items() if size]
    events += trace.log.events[trace.start :]
    category: dict[int, MemoryCategory] = {}
    for cat in reversed(PRIORITY):
        category.update(dict.fromkeys(trace.owners.get(cat, ()), cat))
    peak = peak_breakdown(events, lambda key: category.get(key, trace.default))
    if cfg is None or cfg.rules.name != "cuda":
        return peak
    return replace(peak, reserved=reserved(trace, cfg.memory_limit))


def _held_at_start(trace: RankTrace) -> dict[int, int]:
    held: dict[int, int] = {}
    for event in trace.log.events[: trace.start]:
        held[event.key] = held.get(event.key, 0) + event.delta
    return held


def reserved(trace: RankTrace, limit: int | None) -> int:
    """CUDA's caching allocator (allocator.py) over the traced step as a run repeats it, as
    for one process: what was alive when the step began allocated first and held, then the
    step's allocations and frees (FSDP2's resizes among them), repeated until the allocator
    stops growing. A free of something held from the start is not replayed (it stays held):
    an over-estimate where the step frees what an earlier one made."""
    from nin_profile.engine.allocator import OutOfMemory, steady_reserved

    first = [size for size in _held_at_start(trace).values() if size > 0]
    step = [(e.key, e.delta) for e in trace.log.events[trace.start :]]
    try:
        return steady_reserved(first, step, None, limit).peak_reserved
    except OutOfMemory as exc:
        return exc.needed


# ---- the fake group and the rank's tensors ------------------------------------------------


@contextlib.contextmanager
def fake_group(world_size: int) -> Iterator[None]:
    """This process as rank 0 of `world_size` on the `fake` backend: no other process starts,
    no collective moves data."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise ProfileError(
            "a torch.distributed process group is already initialized in this process; "
            "per-rank estimates make their own (a fake one): run them in a fresh process"
        )
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _rank_tensors(strategy: str) -> Iterator[str]:
    """The device of the batch: meta for DDP; for FSDP2 fake CPU tensors, under a
    FakeTensorMode that lasts the whole trace."""
    if strategy != "fsdp":
        yield "meta"
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        yield "cpu"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _is_fake(tensor: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


class RankLog(AllocationLog):
    """An AllocationLog over meta and fake tensors (a fake tensor's storage is a meta one),
    DTensors by their local shard, that also follows storages resized in place."""

    def key_of(self, tensor: torch.Tensor, device: str = TRACE_DEVICE) -> int | None:
        if device != TRACE_DEVICE:  # a real CPU tensor a CPU step holds (tracing.py)
            return super().key_of(tensor, device)
        tensor = _local(tensor)
        if tensor.device.type != "meta" and not _is_fake(tensor):
            return None
        storage = tensor.untyped_storage()
        key = self._keys.get(id(storage))
        if key is None and storage.nbytes() > 0:
            key = self.follow(storage)
            self.nbytes[key] = storage.nbytes()
            self._record(key, +1)
        return key

    def key_of_storage(self, storage: torch.UntypedStorage) -> int:
        """The key of `storage`, followed from now on if it was not (0 bytes until resized)."""
        key = self._keys.get(id(storage))
        return self.follow(storage) if key is None else key

    def follow(self, storage: torch.UntypedStorage) -> int:
        """A new key for `storage`, of 0 bytes; its free is recorded when it dies."""
        key = len(self.nbytes)
        self._keys[id(storage)] = key
        self.nbytes[key] = 0
        self._finalizers.append(weakref.finalize(storage, self._free, id(storage), key))
        return key

    def resized(self, storage: torch.UntypedStorage, old: int, new: int) -> None:
        key = self.key_of_storage(storage)
        delta = round_up(new, self.block_bytes) - round_up(old, self.block_bytes)
        if delta:
            self.events.append(Event(key, delta, self.site))
        self.nbytes[key] = new

    def _record(self, key: int, sign: int) -> None:
        if self.nbytes[key]:  # a storage resized to 0 bytes frees nothing when it dies
            super()._record(key, sign)


@contextlib.contextmanager
def following_resizes(log: RankLog) -> Iterator[None]:
    """Record every in-place resize of a traced storage: FSDP2 frees a gathered parameter by
    resizing its storage to 0 bytes, and allocates it again by resizing it back."""
    original = torch.UntypedStorage.resize_

    def resize_(storage: torch.UntypedStorage, size: int) -> Any:
        old = storage.nbytes()
        out = original(storage, size)
        if storage.device.type == "meta":
            log.resized(storage, old, storage.nbytes())
        return out

    torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]


class RankTracer(StepTracer):
    """The single-process tracer, also noting the storages each collective reads or writes
    and what it moves (its largest buffer)."""

    def __init__(self, stack: LayerStack, log: AllocationLog, scratch: bool = False) -> None:
        super().__init__(stack, log, scratch)
        self.collective_keys: set[int] = set()
        self.collective_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace in ("c10d", "_c10d_functional"):
            buffers = [_local(t) for t in tensors_in((args, kwargs))]
            self.collective_keys |= self.log.keys_of(buffers)
            self.collective_bytes += max((t.numel() * t.element_size() for t in buffers), default=0)
        return super().__torch_dispatch__(func, types, args, kwargs)


# ---- the wrappers ---------------------------------------------------------------------------


class _Wrapped:
    """The model inside its wrapper, and what the wrapper holds that the trace must know."""

    def __init__(self, module: nn.Module, model: nn.Module) -> None:
        self.module = module  # what the step calls: DDP(model), or the model fully_shard made
        self.model = model
        self.buckets: dict[int, torch.Tensor] = {}  # DDP: each bucket its hook has seen
        self.rebuild: Any = None  # DDP: its reducer's bucket rebuild

    def held(self) -> list[torch.Tensor]:
        """What the wrapper keeps between steps besides parameters and optimizer state."""
        return list(self.buckets.values())


class _NoUsageLogger:
    """DDP's usage logger, less its device timer: nothing it does allocates."""

    def set_runtime_stats_and_log(self) -> None:
        pass


def _wrap_ddp(model: nn.Module, parallel: Parallel) -> _Wrapped:
    """DDP around `model` (meta), with a hook that all-reduces each bucket in place and gives
    the bucket back, as DDP's own does."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(
        model,
        init_sync=False,
        bucket_cap_mb=parallel.bucket_cap_mb,
        gradient_as_bucket_view=parallel.gradient_as_bucket_view,
    )
    wrapped = _Wrapped(ddp, model)
    wrapped.rebuild = ddp.reducer._rebuild_buckets

    def all_reduce(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        wrapped.buckets[bucket.index()] = buffer
        dist.all_reduce(buffer)
        future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        future.set_result(buffer)
        return future

    # DDP checks the hook's annotations as objects; this module's are strings (postponed)
    all_reduce.__annotations__ = {
        "state": object,
        "bucket": dist.GradBucket,
        "return": torch.futures.Future[torch.Tensor],
    }
    ddp.register_comm_hook(None, all_reduce)
    ddp.logger = _NoUsageLogger()  # type: ignore[assignment]
    return wrapped


class _Rank0KeepsItsOrder(TorchDispatchMode):
    """DDP's bucket rebuild broadcasts rank 0's order through a tensor on the parameters'
    device and copies it back to the CPU; from meta there is nothing to copy, and rank 0 keeps
    its own order: that copy is left out."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.copy_.default:
            dst, src = args[0], args[1]
            if dst.device.type == "cpu" and src.device.type == "meta":
                return dst
        return func(*args, **(kwargs or {}))


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """FSDP2's units by default: each direct child of the model that holds parameters (its
    blocks); the model itself is the last unit (its parameters outside those blocks)."""
    return [child for child in model.children() if any(True for _ in child.parameters())]


def _wrap_fsdp(model: nn.Module, parallel: Parallel) -> _Wrapped:
    """`fully_shard` on each block, then on the model, over a CPU mesh of the fake group, each
    with the run's mixed-precision policy.

    Sharding happens on the meta parameters (a few meta ops a rank; on fake tensors it took
    7 s at 1,024 ranks for VGG-11, FSDP2 making a view per rank); then the shards become fake
    CPU tensors as FSDP2's meta-device initialization makes them real ones: `to_empty`, which
    pads each shard again as FSDP2 pads it."""
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _check_shardable(model)
    with unset_fake_temporarily():
        mesh = init_device_mesh("cpu", (parallel.world_size,))
        policy = mp_policy(parallel.param_dtype, parallel.reduce_dtype)
        for block in [*default_blocks(model), model]:
            fully_shard(
                block,
                mesh=mesh,
                reshard_after_forward=parallel.reshard_after_forward,
                mp_policy=policy,
            )
    mode = torch._guards.active_fake_mode()
    assert isinstance(mode, FakeTensorMode)
    mode.allow_non_fake_inputs = True  # the meta shards are what to_empty makes them like
    try:
        model.to_empty(device="cpu")
    finally:
        mode.allow_non_fake_inputs = False
    return _Wrapped(model, model)


def _check_shardable(model: nn.Module) -> None:
    """One line where the default wrapping cannot shard `model`: a parameter shared by two
    blocks (tied weights), which FSDP2 would need in one `fully_shard` group."""
    owner: dict[int, str] = {}
    names = {id(child): name for name, child in model.named_children()}
    for block in default_blocks(model):
        for param_name, param in block.named_parameters():
            if (first := owner.setdefault(id(param), names[id(block)])) != names[id(block)]:
                raise ProfileError(
                    f"parameter {names[id(block)]}.{param_name} is shared by blocks {first} and "
                    f"{names[id(block)]}: FSDP2 is applied to each top-level block on its own "
                    "here, and a tied parameter needs its blocks in one fully_shard group; "
                    "profile it with --parallel ddp"
                )


def gathered_storages(model: nn.Module) -> list[torch.UntypedStorage]:
    """The storages FSDP2 gathers each parameter into (resized to 0 bytes while sharded)."""
    from torch.distributed.fsdp import FSDPModule

    storages = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            for fsdp_param in group.fsdp_params if group is not None else ():
                storages += [t.untyped_storage() for t in fsdp_param.all_gather_outputs]
    return storages


# ---- the traced step and pass ---------------------------------------------------------------


@contextlib.contextmanager
def _as_device(cfg: AnalysisConfig) -> Iterator[None]:
    """Dropout and the kernels as the target device runs them (as the analysis does)."""
    with (
        FusedDropout() if cfg.rules.fused_dropout else contextlib.nullcontext(),
        DeviceKernels(cfg.device),
    ):
        yield


def _trace_training(
    wrapped: _Wrapped, cfg: AnalysisConfig, classes: int | None, device: str
) -> RankTrace:
    """Warm-up steps, then the traced one; one log from before the first."""
    model = wrapped.model
    model.train()
    x, y = make_batch(cfg.batch, cfg.inputs, classes or 1, device)
    loss_fn = TrainingLoss(classes, cfg.inputs.token_steps)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.rules.foreach_optimizer)
    log = RankLog(cfg.rules.block_bytes)
    owners = {
        MemoryCategory.PARAMS: log.keys_of(model.parameters()),
        MemoryCategory.BUFFERS: log.keys_of(model.buffers()),
        MemoryCategory.INPUT: log.keys_of([x, y]),
    }
    recorder = _ForwardRecorder(log)  # tags autograd nodes: the layer of a backward op
    stack = recorder.stack = LayerStack(
        model, extra={LOSS: loss_fn}, on_enter=recorder.enter, on_exit=recorder.exit
    )
    tracer = RankTracer(stack, log, scratch=cfg.device == "cpu")
    saved: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not saved_in_backward() and (key := log.key_of(tensor)) is not None:
            saved.add(key)
        return tensor

    try:
        with naming_failures(stack), _as_device(cfg), following_resizes(log):
            for step in range(WARMUP_STEPS if wrapped.rebuild is not None else 1):
                with tracer:
                    training_step(wrapped.module, loss_fn, optimizer, x, y)
                optimizer.zero_grad(set_to_none=True)
                if step == 0 and wrapped.rebuild is not None:
                    with _Rank0KeepsItsOrder(), tracer:
                        wrapped.rebuild()
                    wrapped.buckets.clear()  # the next step's hook sees the new ones
            held = log.keys_of(wrapped.held())
            gathered = {log.key_of_storage(s) for s in gathered_storages(model)}
            start = len(log.events)
            tracer.collective_bytes = 0
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), tracer:
                training_step(wrapped.module, loss_fn, optimizer, x, y, on_phase=tracer.set_phase)
        owners |= {
            MemoryCategory.UNSHARDED_PARAMS: gathered,
            MemoryCategory.OPTIMIZER: log.keys_of(optimizer_state(optimizer)),
            MemoryCategory.GRADS: log.keys_of(
                p.grad for p in model.parameters() if p.grad is not None
            ),
            MemoryCategory.COMMUNICATION: held | tracer.collective_keys,
            MemoryCategory.ACTIVATIONS: saved,
        }
        workspaces = _hold_workspaces(log, cfg.rules, tracer)  # events put first
        owners[MemoryCategory.WORKSPACE] = workspaces
    finally:
        log.close()
    optimizer.zero_grad(set_to_none=True)
    return RankTrace(log, start + len(workspaces), owners, tracer.collective_bytes)


def _trace_inference(wrapped: _Wrapped, cfg: AnalysisConfig, device: str) -> RankTrace:
    """One forward in eval mode under no_grad through the wrapper."""
    model = wrapped.model
    model.eval()
    x, _ = make_batch(cfg.batch, cfg.inputs, 1, device)
    log = RankLog(cfg.rules.block_bytes)
    owners = {
        MemoryCategory.PARAMS: log.keys_of(model.parameters()),
        MemoryCategory.BUFFERS: log.keys_of(model.buffers()),
        MemoryCategory.INPUT: log.keys_of([x]),
        MemoryCategory.UNSHARDED_PARAMS: {log.key_of_storage(s) for s in gathered_storages(model)},
    }
    held = log.keys_of(wrapped.held())
    tracer = RankTracer(LayerStack(model), log, scratch=cfg.device == "cpu")
    try:
        with (
            naming_failures(tracer.stack),
            _as_device(cfg),
            following_resizes(log),
            torch.no_grad(),
            tracer,
        ):
            wrapped.module(x)
        owners[MemoryCategory.COMMUNICATION] = held | tracer.collective_keys
        owners[MemoryCategory.WORKSPACE] = _hold_workspaces(log, cfg.rules, tracer)
    finally:
        log.close()
    return RankTrace(log, 0, owners, tracer.collective_bytes, MemoryCategory.ACTIVATIONS)


def held_bytes(trace: RankTrace, categories: Iterable[MemoryCategory]) -> int:
    """Bytes of `categories` held when the traced step began."""
    keys = set().union(*(trace.owners.get(c, set()) for c in categories))
    live: dict[int, int] = {}
    for event in trace.log.events[: trace.start]:
        if event.key in keys:
            live[event.key] = live.get(event.key, 0) + event.delta
    return sum(live.values())
