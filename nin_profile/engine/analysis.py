"""Static analysis on the meta device: per-layer counts, FLOPs, saved bytes, memory peaks.

Nothing of batch size is allocated: every tensor is a meta tensor, so a batch of 1024 costs
what a batch of 1 does.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from nin_profile.engine._lazy_imports import without_heavy_imports
from nin_profile.engine.allocator import OutOfMemory, steady_reserved
from nin_profile.engine.autocast import traced_autocast
from nin_profile.engine.devices import DEVICE_RULES, DeviceRules, workspace_size, workspace_sizes
from nin_profile.engine.kernels import DeviceKernels
from nin_profile.engine.layer_stack import (
    Frame,
    LayerStack,
    ParamCount,
    forward_on_meta,
    layer_names,
    naming_failures,
    params_by_layer,
    tensors_in,
)
from nin_profile.engine.memory import TRACE_DEVICE, AllocationLog, log_breakdown
from nin_profile.engine.precision import Precision, get_precision
from nin_profile.engine.tracing import (
    LOSS,
    FusedDropout,
    StepTracer,
    composites_whole,
    cpu_tensors_join,
    saved_in_backward,
    tag_graph,
)
from nin_profile.engine.training import (
    Amp,
    TracedGradScaler,
    TrainingLoss,
    class_widths,
    describe_loss,
    floating_outputs,
    forward,
    is_logits,
    make_batch,
    make_optimizer,
    optimizer_state,
    output_classes,
    scaler_state,
    training_step,
)
from nin_profile.errors import InvalidConfig, LayerFailed, ProfileError, UserCodeFailed
from nin_profile.inputs import IMAGES_224, InputSpec
from nin_profile.models import (
    ModelConfig,
    build_target,
    describe_model,
    get_model,
    instance,
    is_built_in,
    resolve_import_path,
)
from nin_profile.results import (
    LayerStats,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    NotCounted,
    PeakSite,
    Phase,
)


@dataclass(frozen=True)
class AnalysisConfig:
    batch: int = 128
    inputs: InputSpec = IMAGES_224  # one example
    classes: int | None = None  # None: the model's own (read from its output)
    optimizer: str = "sgd"
    device: str = "cuda"  # the device whose memory is predicted; the trace itself runs on meta
    # CUDA: the bytes the caching allocator may reserve (device memory less the context); with
    # it, `reserved` is what the allocator holds within it, or what it would have needed
    # (more than the limit) where it runs out
    memory_limit: int | None = None
    precision: str = "fp32"  # nin_profile.engine.precision.PRECISIONS
    channels_last: bool = False  # the model and the batch in torch.channels_last

    @property
    def rules(self) -> DeviceRules:
        return DEVICE_RULES[self.device]


@dataclass
class _LayerRecord:
    """What the forward hooks learn about a leaf module while the step runs."""

    type: str
    spec: str = ""
    output_shape: tuple[int, ...] | None = None
    output_bytes: int = 0
    calls: int = 0
    allocated_delta: int = 0
    input_bytes: int = 0
    container: bool = False  # other modules' forwards ran inside it


class _ForwardRecorder:
    """Forward hooks of the traced step: tag autograd nodes with their layer, and note each leaf
    module's output and what the allocator holds more after its forward than before."""

    def __init__(self, log: AllocationLog) -> None:
        self.log = log
        self.records: dict[str, _LayerRecord] = {}
        self.stack: LayerStack | None = None
        self._starts: list[tuple[int, int]] = []  # (first event, input bytes) per running module

    def enter(self, frame: Frame, args: object) -> None:
        assert self.stack is not None
        inputs = tensors_in(args)
        tag_graph(inputs, self.stack.current)
        self._starts.append((len(self.log.events), _nbytes(inputs)))

    def exit(self, frame: Frame, output: object) -> None:
        outputs = tensors_in(output)
        tag_graph(outputs, frame.name)
        start, input_bytes = self._starts.pop()
        record = self.records.setdefault(
            frame.name, _LayerRecord(type(frame.module).__name__, frame.module.extra_repr())
        )
        record.calls += 1
        if record.output_shape is None and outputs:
            record.output_shape = tuple(outputs[0].shape)
        if frame.children:  # a container: what it moves is its layers'
            record.container = True
            return
        record.output_bytes += _nbytes(outputs)
        record.input_bytes += input_bytes
        record.allocated_delta += sum(e.delta for e in self.log.events[start:])


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class _Loss:
    """The training step's loss for one model: its classes and how the loss takes the output."""

    classes: int | None
    description: str
    steps: int | None = None  # the tokens of an example, scored one by one (a language model)

    def module(self) -> TrainingLoss:
        return TrainingLoss(self.classes, self.steps)


@dataclass
class _TrainingTrace:
    tracer: StepTracer
    log: AllocationLog
    records: dict[str, _LayerRecord]
    saved_by: dict[int, str]
    owners: dict[MemoryCategory, set[int]] = field(default_factory=dict)
    saved_dtype: dict[int, str] = field(default_factory=dict)  # key → "float16", "int64"
    without_grad: dict[str, int] = field(default_factory=dict)  # name → numel, see below
    unpredicted: tuple[str, ...] = ()  # DeviceKernels.unpredicted: "LSTM under autocast"


def analyse_model(name: str, cfg: AnalysisConfig) -> ModelProfile:
    """Build a registered (or import-path) model with meta parameters and analyse it."""
    model = build_on_meta(name, model_config(cfg))
    return analyse(model, cfg, name=name, description=describe_model(name))


def model_config(cfg: AnalysisConfig) -> ModelConfig:
    return ModelConfig.of(cfg.inputs, cfg.classes)


def build_on_meta(name: str, cfg: ModelConfig) -> nn.Module:
    """The model with meta parameters. Built-in models are built on meta. A user's model is
    imported on the CPU and built on meta where its builder allows it; a builder that computes
    on tensors (`.tolist()` of a width) cannot run on meta, and is run on the CPU as written.
    What the user's code built is never changed: the analysis works on a meta copy."""
    if (module := instance(name)) is not None:  # handed to the Python API: never changed
        return meta_copy(module, always=True)
    if ":" not in name:
        with torch.device("meta"):
            return get_model(
                name, channels=cfg.channels, classes=cfg.classes, image_size=cfg.image_size
            )
    target = resolve_import_path(name)  # imported outside meta: module-level code runs on CPU
    try:
        with torch.device("meta"):
            model = build_target(name, target)
    except UserCodeFailed:  # it may need real tensors; on the CPU its own error, if any, shows
        model = build_target(name, target)
    return meta_copy(model)


def meta_copy(model: nn.Module, always: bool = False) -> nn.Module:
    """`model` itself where all its parameters and buffers are on meta (unless `always`: a
    module someone else holds, whose gradients and mode the analysis must not touch); else a
    copy whose parameters and buffers are meta tensors of the same shapes, strides and dtypes
    (nothing of their data is copied; `requires_grad` and sharing are kept)."""
    tensors = [*model.parameters(), *model.buffers()]
    if not always and all(t.device.type == "meta" for t in tensors):
        return model
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    for t in _computed_tensor_attributes(model):  # deepcopy refuses them
        memo.setdefault(id(t), torch.empty_like(t, device="meta"))
    copied = copy.deepcopy(model, memo)
    rebind_hooks(copied, memo)
    return copied


def rebind_hooks(copied: nn.Module, memo: dict[int, object]) -> None:
    """A hook the user wrote as a closure over their module (`lambda m, i, o:
    self.features.append(o)`) is shared by the copy as it is (deepcopy copies no function):
    it would write into the user's module. In the copy it closes over the copies instead
    (`memo`: deepcopy's, original id → copy); a variable two hooks share (one sets it, the
    other reads it) stays shared, one new cell for each old one."""
    cells: dict[int, types.CellType] = {}
    for module in copied.modules():
        for name, hooks in vars(module).items():
            if name.endswith("_hooks") and isinstance(hooks, dict):
                for key, hook in list(hooks.items()):
                    hooks[key] = _rebound(hook, memo, cells)


def _rebound(fn: object, memo: dict[int, object], cells: dict[int, types.CellType]) -> object:
    """`fn` with the variables it closes over that were copied replaced by their copies;
    `fn` itself where none was."""
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return fn
    if not any(id(_contents(cell)) in memo for cell in fn.__closure__):
        return fn
    new_cells = []
    for cell in fn.__closure__:
        if id(cell) not in cells:
            contents = _contents(cell)
            cells[id(cell)] = types.CellType(memo[id(contents)]) if id(contents) in memo else cell
        new_cells.append(cells[id(cell)])
    rebound = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(new_cells)
    )
    rebound.__kwdefaults__ = fn.__kwdefaults__
    rebound.__qualname__ = fn.__qualname__
    rebound.__dict__.update(fn.__dict__)
    return rebound


_UNBOUND = object()


def _contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # a variable not yet bound
        return _UNBOUND


def _computed_tensor_attributes(model: nn.Module) -> Iterator[torch.Tensor]:
    """Tensors a module holds as plain attributes that autograd computed (not leaves): the
    weight `torch.nn.utils.weight_norm` and `spectral_norm` compute from their parameters
    before each forward, and recompute in the copy's. (A constant the user keeps on the
    module, a leaf, is copied with its values: the forward may read them.)"""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                yield value


def analyse(
    model: nn.Module, cfg: AnalysisConfig, name: str, description: str = ""
) -> ModelProfile:
    """Trace one steady-state training step and one inference pass of `model` (meta parameters)."""
    sparse = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad
    ]
    if sparse:
        raise ProfileError(
            f"{name}: layer {sparse[0]!r} makes sparse gradients (sparse=True), which the "
            "analysis cannot follow (PyTorch has no meta kernels for them); profile it with "
            "sparse=False, whose gradient is the whole table"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ProfileError(
            f"{name} has no trainable parameters: there is no training step to "
            "profile (give a model with at least one parameter that requires grad)"
        )
    setup = TraceSetup.of(cfg)
    with (
        _restoring_mode(model),
        without_heavy_imports(),
        cpu_tensors_join(cfg.device),
        _quiet(FAKE_TENSOR_LOG),
    ):
        traced = setup.model(model, name)
        with setup.mode:
            loss = _loss(traced, cfg, name, setup)
            trace = _trace_training(traced, cfg, loss, setup)
            inference = _trace_inference(traced, cfg, setup)
    train = log_breakdown(trace.log, _categorizer(trace.owners))
    train = replace(
        train,
        reserved=_reserved(trace.log, trace.owners, cfg.rules, trace.tracer, cfg.memory_limit),
    )
    profile = _model_profile(traced, name, description, trace, train, inference)
    return replace(profile, classes=loss.classes, loss=loss.description)


@dataclass
class TraceSetup:
    """What a trace of `precision` and memory format runs on. fp32, fp16 and bf16 trace on meta
    tensors (a half model is a meta model cast to half); AMP traces on PyTorch's fake tensors
    with the CPU as their device, so that autocast acts on them (nin_profile/engine/autocast.py)."""

    precision: Precision
    channels_last: bool
    target: str  # the device whose autocast a trace follows
    device: str = TRACE_DEVICE  # where the trace's tensors are made: "meta", or "cpu" (fake)
    mode: contextlib.AbstractContextManager[Any] = field(default_factory=contextlib.nullcontext)

    @classmethod
    def of(cls, cfg: AnalysisConfig) -> TraceSetup:
        precision = get_precision(cfg.precision)
        if not precision.amp:
            return cls(precision, cfg.channels_last, cfg.device)
        from torch._subclasses.fake_tensor import FakeTensorMode  # imports what it needs now

        return cls(precision, cfg.channels_last, cfg.device, "cpu", FakeTensorMode())

    def model(self, model: nn.Module, name: str) -> nn.Module:
        """`model` itself for fp32 in the default layout; else a copy in the precision's dtype
        and layout (as `model.to(dtype)`, `model.to(memory_format=...)`), on fake tensors for
        AMP."""
        dtype = self.precision.model_dtype()
        if dtype == torch.float32 and not self.channels_last and self.device == TRACE_DEVICE:
            return model
        model = meta_copy(model, always=True)
        if dtype != torch.float32:
            model.to(dtype)
        if self.channels_last:
            try:
                model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            except RuntimeError as exc:
                raise ProfileError(
                    f"{name} cannot be put in channels_last: {str(exc).splitlines()[0]}"
                ) from exc
        return model if self.device == TRACE_DEVICE else fake_copy(model, self.mode)

    def batch(self, batch: int, inputs: InputSpec, classes: int) -> Batch:
        dtype = self.precision.model_dtype()
        return make_batch(batch, inputs, classes, self.device, dtype, self.channels_last)

    def amp(self, inference: bool = False) -> Amp | None:
        """Autocast as the target device runs it; a GradScaler for fp16 training (one per
        trace, as a training loop keeps one). `inference`: as under inference_mode, where the
        measured pass runs: autocast keeps no weight copies there."""
        if not self.precision.amp:
            return None
        dtype, target = self.precision.autocast_dtype(), self.target
        scaler = TracedGradScaler("cpu") if self.precision.grad_scaler and not inference else None
        return Amp(lambda: traced_autocast(target, dtype, cache=not inference), scaler)


Batch = tuple[torch.Tensor, torch.Tensor]


def fake_copy(model: nn.Module, mode: Any) -> nn.Module:
    """A copy of `model` whose parameters and buffers are fake CPU tensors of the same shapes,
    strides and dtypes, made in `mode` (a FakeTensorMode); sharing and requires_grad kept."""
    memo: dict[int, object] = {}
    with mode:
        for p in model.parameters():
            memo[id(p)] = nn.Parameter(_fake_like(p), p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = _fake_like(b)
    copied = copy.deepcopy(model, memo)
    rebind_hooks(copied, memo)
    return copied


def _fake_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")


def _loss(model: nn.Module, cfg: AnalysisConfig, name: str, setup: TraceSetup) -> _Loss:
    """The loss of the training step, from the output of one forward in train mode, in the
    precision the step runs in (a model built in bf16 runs under autocast as it is): the
    classes are the model's own; a `cfg.classes` given that disagrees is refused."""
    model.train()
    x, _ = setup.batch(cfg.batch, cfg.inputs, 1)
    with naming_failures(LayerStack(model)), torch.no_grad():
        output = forward(model, x, setup.amp(inference=True))
    steps = cfg.inputs.token_steps
    classes = output_classes(output, cfg.batch, steps, cfg.classes)
    if cfg.classes is not None and classes is not None and classes != cfg.classes:
        raise InvalidConfig(_classes_disagree(name, output, cfg, classes))
    if not floating_outputs(output):
        raise ProfileError(
            f"{name} returns no floating-point tensor: there is no loss to train it with "
            "(return logits, or any floating-point output to take the mean of)"
        )
    return _Loss(classes, describe_loss(output, cfg.batch, classes, steps), steps)


def _classes_disagree(name: str, output: Any, cfg: AnalysisConfig, classes: int) -> str:
    """The line refusing a --classes that none of the model's outputs has."""
    steps = cfg.inputs.token_steps
    widths = class_widths(output, cfg.batch, steps)
    if len(set(widths)) > 1:
        heads = ", ".join(
            f"{where or 'output'} {'×'.join(map(str, t.shape))}"
            for where, t in floating_outputs(output)
            if any(is_logits(t, cfg.batch, width, steps) for width in widths)
        )
        choices = " or ".join(map(str, dict.fromkeys(widths)))
        return (
            f"{name} has no output of {cfg.classes} classes (its outputs: {heads}), but "
            f"--classes {cfg.classes} was given; give --classes {choices} (the head trained "
            "on cross-entropy; the others on their mean), or leave it out for the first"
        )
    shape = next(
        "×".join(map(str, t.shape))
        for _, t in floating_outputs(output)
        if is_logits(t, cfg.batch, classes, steps)
    )
    return (
        f"{name} outputs {classes} classes (its output is {shape}), but "
        f"--classes {cfg.classes} was given; leave --classes out to use the model's "
        f"{classes}, or give --classes {classes}"
    )


# fake tensors (the AMP traces') log a traceback of an op that fails before raising: the
# failure is the user's, said in one line
FAKE_TENSOR_LOG = "torch._subclasses.fake_tensor"


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _restoring_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _trace_training(
    model: nn.Module, cfg: AnalysisConfig, loss: _Loss, setup: TraceSetup
) -> _TrainingTrace:
    model.train()
    x, y = setup.batch(cfg.batch, cfg.inputs, loss.classes or 1)
    loss_fn = loss.module()
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.rules.foreach_optimizer)
    amp = setup.amp()
    with naming_failures(LayerStack(model, extra={LOSS: loss_fn})):
        # warm-up: optimizer state (and the GradScaler's), as in step 2+
        training_step(model, loss_fn, optimizer, x, y, amp=amp)
    optimizer.zero_grad(set_to_none=True)

    log = AllocationLog(cfg.rules.block_bytes)
    owners = {
        MemoryCategory.PARAMS: log.keys_of(model.parameters()),
        MemoryCategory.BUFFERS: log.keys_of(model.buffers()),
        MemoryCategory.INPUT: log.keys_of([x, y]),
        MemoryCategory.OPTIMIZER: log.keys_of([*optimizer_state(optimizer), *scaler_state(amp)]),
    }
    persistent = set().union(owners[MemoryCategory.PARAMS], owners[MemoryCategory.BUFFERS])
    saved_by: dict[int, str] = {}
    saved_dtype: dict[int, str] = {}
    recorder = _ForwardRecorder(log)
    stack = recorder.stack = LayerStack(
        model, extra={LOSS: loss_fn}, on_enter=recorder.enter, on_exit=recorder.exit
    )
    tracer = StepTracer(stack, log, cpu=cfg.device == "cpu")
    tracer.weights = owners[MemoryCategory.PARAMS]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if saved_in_backward():
            return tensor
        key = log.key_of(tensor, device=_saved_on(tensor, cfg.device))
        if key is not None and key not in persistent:
            saved_by.setdefault(key, stack.current)
            saved_dtype.setdefault(key, str(tensor.dtype).removeprefix("torch."))
        return tensor

    kernels = DeviceKernels(cfg.device)
    try:
        with (
            naming_failures(stack),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            FusedDropout() if cfg.rules.fused_dropout else contextlib.nullcontext(),
            kernels,
            tracer,
        ):
            training_step(model, loss_fn, optimizer, x, y, on_phase=tracer.set_phase, amp=amp)
        owners[MemoryCategory.GRADS] = log.keys_of(
            p.grad for p in model.parameters() if p.grad is not None
        )
        without_grad = _without_grad(model)
        owners[MemoryCategory.WEIGHT_COPIES] = tracer.weight_copies
        owners[MemoryCategory.ACTIVATIONS] = set(saved_by)
        owners[MemoryCategory.WORKSPACE] = _hold_workspaces(log, cfg.rules, tracer)
    finally:
        log.close()
    return _TrainingTrace(
        tracer,
        log,
        recorder.records,
        saved_by,
        owners,
        saved_dtype,
        without_grad,
        tuple(sorted(kernels.unpredicted)),
    )


def _saved_on(tensor: torch.Tensor, target: str) -> str:
    """The device whose storages a save counts: the trace's, and for a CPU step also a real
    CPU tensor the forward made (tracing.py's `CpuTensorsJoinTheTrace`), which the CPU step
    keeps as it keeps the others."""
    real_cpu = tensor.device.type == "cpu" and type(tensor) is torch.Tensor
    return "cpu" if target == "cpu" and real_cpu else TRACE_DEVICE


def _without_grad(model: nn.Module) -> dict[str, int]:
    """The trainable parameters the step's backward gave no gradient (name → elements): the
    loss does not depend on them (a module the forward does not call, a branch cut off from
    the graph, a reentrant checkpoint whose inputs need no gradient). They get no `.grad` and
    no optimizer state, so the step's figures rightly leave them out; the report says so."""
    return {
        name: p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is None
    }


def _trace_inference(model: nn.Module, cfg: AnalysisConfig, setup: TraceSetup) -> MemoryBreakdown:
    """One forward pass in eval mode under inference_mode, as the worker measures it: an op
    PyTorch composes of others reaches the trace whole, which follows its parts inside one op
    (tracing.py's StepTracer), so that what it allocates inside (the int64 indices max_pool2d
    computes on CUDA, an RMSNorm's statistics) is in the peak and not between ops. Under AMP
    under no_grad, where the composite ops come apart before the trace sees them: autocast
    casts their parts as the device does (inside a dispatch mode's handler it casts nothing,
    and the CUDA target's casts are learnt from an autograd kernel, autocast.py)."""
    model.eval()
    x, _ = setup.batch(cfg.batch, cfg.inputs, 1)
    log = AllocationLog(cfg.rules.block_bytes)
    owners = {
        MemoryCategory.PARAMS: log.keys_of(model.parameters()),
        MemoryCategory.BUFFERS: log.keys_of(model.buffers()),
        MemoryCategory.INPUT: log.keys_of([x]),
    }
    stack = LayerStack(model)
    tracer = StepTracer(stack, log, cpu=cfg.device == "cpu", inference=True)
    tracer.weights = owners[MemoryCategory.PARAMS]
    try:
        amp = setup.amp(inference=True)
        grad_off = torch.no_grad() if amp else torch.inference_mode()
        whole = composites_whole() if amp else contextlib.nullcontext()
        with naming_failures(stack), grad_off, DeviceKernels(cfg.device), whole, tracer:
            forward(model, x, amp)
        owners[MemoryCategory.WORKSPACE] = _hold_workspaces(log, cfg.rules, tracer)
        owners[MemoryCategory.WEIGHT_COPIES] = tracer.weight_copies
    finally:
        log.close()
    categorize = _categorizer(owners, default=MemoryCategory.ACTIVATIONS)
    return replace(
        log_breakdown(log, categorize),
        reserved=_reserved(log, owners, cfg.rules, tracer, cfg.memory_limit),
    )


HELD_FROM_START = (MemoryCategory.PARAMS, MemoryCategory.BUFFERS, MemoryCategory.INPUT)


def _reserved(
    log: AllocationLog,
    owners: dict[MemoryCategory, set[int]],
    rules: DeviceRules,
    tracer: StepTracer,
    limit: int | None,
) -> int | None:
    """CUDA's caching allocator replayed over the step as a measurement repeats it.

    Parameters, buffers and the input are allocated before the first step. What the first
    step creates and later steps keep is allocated where the first step creates it: each
    library workspace where the library is first called (after that op's output), the
    optimizer state (momentum, Adam's moments) as the optimizer step begins. Whether these are
    carved out of blocks the step had cached decides what later steps can reuse."""
    if rules.name != "cuda":
        return None
    held = set().union(*(owners.get(cat, set()) for cat in HELD_FROM_START))
    state = owners.get(MemoryCategory.OPTIMIZER, set())
    workspaces = owners.get(MemoryCategory.WORKSPACE, set())
    traced = [e for e in log.events if e.key not in workspaces]  # as the tracer counted them
    blas_at: dict[int, list[int]] = {}
    for (_, library), at in sorted(tracer.blas_first_use.items(), key=lambda item: item[1]):
        if size := workspace_size(rules, library):
            blas_at.setdefault(at, []).append(size)
    first_step: dict[int, list[int]] = {}

    def first_allocates(at: int, sizes: list[int]) -> None:
        if sizes:
            first_step.setdefault(at, []).extend(sizes)

    step: list[tuple[int, int]] = []
    state_at = None
    for index, event in enumerate(traced):
        first_allocates(len(step), blas_at.get(index, []))
        if state_at is None and event.site.phase == Phase.OPTIMIZER.value:
            state_at = len(step)
        if event.key not in held and event.key not in state:
            step.append((event.key, event.delta))
    first_allocates(len(step), blas_at.get(len(traced), []))
    state_sizes = [e.delta for e in traced if e.key in state and e.delta > 0]
    first_allocates(len(step) if state_at is None else state_at, state_sizes)
    first = [e.delta for e in traced if e.key in held and e.delta > 0]
    try:
        return steady_reserved(first, step, first_step, limit).peak_reserved
    except OutOfMemory as exc:
        return exc.needed


def _hold_workspaces(log: AllocationLog, rules: DeviceRules, tracer: StepTracer) -> set[int]:
    """The matrix libraries' workspaces, held since an earlier step: allocated before the
    first event of this one."""
    sizes = workspace_sizes(rules, tracer.blas_users)
    return log.held_from_start(sizes, PeakSite("setup", "(cuBLAS workspace)", ""))


def _categorizer(
    owners: dict[MemoryCategory, set[int]], default: MemoryCategory = MemoryCategory.TRANSIENT
) -> Callable[[int], MemoryCategory]:
    """key → category; where a storage fits several, the first category in enum order wins."""
    category: dict[int, MemoryCategory] = {}
    for cat in reversed(MemoryCategory):
        category.update(dict.fromkeys(owners.get(cat, ()), cat))
    return lambda key: category.get(key, default)


def _layer_rows(model: nn.Module, trace: _TrainingTrace) -> tuple[LayerStats, ...]:
    """The leaves of the run (modules none ran inside) in the order they ran, then any module
    with parameters, FLOPs or saved bytes of its own: a container's own ops (timm's Attention
    calling SDPA between its two Linear layers) belong to it, with its calls and output shape."""
    ran = set(trace.records)
    params = _params_where_used(params_by_layer(model, ran), ran)
    flops = trace.tracer.flops
    saved: dict[str, int] = {}
    for key, layer in trace.saved_by.items():
        saved[layer] = saved.get(layer, 0) + trace.log.nbytes[key]
    types = {name: type(module).__name__ for module, name in layer_names(model).items()}
    leaves = [name for name, record in trace.records.items() if not record.container]
    names = [*leaves, *params, *saved, *(layer for layer, _ in flops)]
    rows = []
    for name in dict.fromkeys(names):
        record = trace.records.get(name) or _LayerRecord(types.get(name, name))
        count = params.get(name, ParamCount(0, 0, 0))
        rows.append(
            LayerStats(
                name=name,
                type=record.type,
                output_shape=record.output_shape,
                params=count.total,
                trainable_params=count.trainable,
                flops_forward=flops[name, Phase.FORWARD],
                flops_backward=flops[name, Phase.BACKWARD],
                output_bytes=record.output_bytes,
                saved_bytes=saved.get(name, 0),
                calls=record.calls,
                allocated_delta=record.allocated_delta,
                input_bytes=record.input_bytes,
                param_bytes=count.nbytes,
                spec=record.spec,
            )
        )
    return tuple(rows)


def _params_where_used(params: dict[str, ParamCount], ran: set[str]) -> dict[str, ParamCount]:
    """Parameters of a module whose forward never ran, counted with the nearest enclosing module
    that ran (below the root): `nn.MultiheadAttention` multiplies by its `out_proj`'s weight in
    its own forward and never calls `out_proj`, so its row holds the FLOPs and, now, the weight.
    A module with no enclosing module that ran keeps its own row (parameters, nothing else)."""
    moved: dict[str, ParamCount] = {}
    for name, count in params.items():
        owner = name
        while owner not in ran and "." in owner:
            owner = owner.rsplit(".", 1)[0]
        if owner not in ran:
            owner = name
        held = moved.get(owner, ParamCount(0, 0, 0))
        moved[owner] = ParamCount(*(a + b for a, b in zip(held, count, strict=True)))
    return moved


def _phase_total(counter: Counter[tuple[str, Phase]], phase: Phase) -> int:
    return sum(n for (_, p), n in counter.items() if p is phase)


def _model_profile(
    model: nn.Module,
    name: str,
    description: str,
    trace: _TrainingTrace,
    train: MemoryBreakdown,
    inference: MemoryBreakdown,
) -> ModelProfile:
    unique = {id(p): p for p in model.parameters()}.values()
    flops = trace.tracer.flops
    return ModelProfile(
        name=name,
        description=description,
        params=sum(p.numel() for p in unique),
        trainable_params=sum(p.numel() for p in unique if p.requires_grad),
        flops_forward=_phase_total(flops, Phase.FORWARD),
        flops_backward=_phase_total(flops, Phase.BACKWARD),
        activation_bytes_saved=sum(trace.log.nbytes[key] for key in trace.saved_by),
        saved_bytes_by_dtype=_by_dtype(trace),
        layers=_layer_rows(model, trace),
        train=train,
        inference=inference,
        not_counted=tuple(
            NotCounted(op, phase.value, calls)
            for (op, phase), calls in sorted(trace.tracer.not_counted.items())
        ),
        without_grad=trace.without_grad,
        unpredicted=trace.unpredicted,
    )


def _by_dtype(trace: _TrainingTrace) -> dict[str, int]:
    """Bytes saved for backward by dtype, largest first."""
    totals: Counter[str] = Counter()
    for key, dtype in trace.saved_dtype.items():
        totals[dtype] += trace.log.nbytes[key]
    return dict(totals.most_common())


def runs_at(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether `model` (meta parameters) runs a batch of `shape` as the step does: in train
    mode (BatchNorm refuses one value per channel there) and in eval mode."""
    try:
        with _restoring_mode(model):
            for training in (True, False):
                model.train(training)
                forward_on_meta(model, shape)
    except LayerFailed:
        return False
    return True


def fits(name: str, cfg: ModelConfig, batch: int) -> bool:
    """Whether the model builds and runs a batch of `batch` `cfg.image_size` images."""
    try:
        model = build_on_meta(name, cfg)
    except LayerFailed:
        return False
    return runs_at(model, (batch, cfg.channels, cfg.image_size, cfg.image_size))


def smallest_image_size(name: str, cfg: ModelConfig, batch: int, largest: int = 4096) -> int | None:
    """The smallest square image above `cfg.image_size` the model's step runs at, by bisection.

    A built-in model is rebuilt at each size (VGG's dense layer depends on it); a user's is
    built once (its builder takes no size)."""
    user_model = None if is_built_in(name) else build_on_meta(name, cfg)

    def runs(size: int) -> bool:
        if user_model is None:
            return fits(name, replace(cfg, image_size=size), batch)
        return runs_at(user_model, (batch, cfg.channels, size, size))

    too_small, big_enough = cfg.image_size, largest
    if not runs(big_enough):
        return None
    while big_enough - too_small > 1:
        middle = (too_small + big_enough) // 2
        if runs(middle):
            big_enough = middle
        else:
            too_small = middle
    return big_enough
