"""One measurement in a process of its own: `python -m nin_profile.measure.worker REQUEST_JSON`.

A fresh process per (model, phase, batch) keeps the caching allocator's and the CUDA context's
state from leaking between measurements. The worker writes JSON lines on stdout:
`{"progress": {...}}` while it works, then one `{"result": {...}}`. An out-of-memory error or
any other exception becomes a result; only a crash (a signal, the OOM killer) leaves none.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nin_profile.engine.accumulation import as_without_a_mode, summing_in_place
from nin_profile.engine.layer_stack import Frame, LayerStack, leaf_spans, nested_spans
from nin_profile.engine.precision import get_precision
from nin_profile.engine.training import (
    Amp,
    TrainingLoss,
    forward,
    make_batch,
    make_optimizer,
    optimizer_state,
    scaler_state,
    token_vocabulary,
    training_step,
)
from nin_profile.errors import user_error
from nin_profile.inputs import IMAGES_224, InputSpec
from nin_profile.measure.cpu_memory import cpu_peak_between_dispatched_ops, cpu_peak_during
from nin_profile.measure.nvml import Nvml
from nin_profile.models import DEFAULT_CLASSES, ModelConfig, get_model
from nin_profile.results import SCRATCH_NOTE

# the request line's entry for the folders the requesting process imports from
SYS_PATH = "sys_path"


@dataclass(frozen=True)
class Request:
    model: str
    phase: str  # "train" or "inference"
    batch: int
    device: str  # "cuda" or "cpu"
    input_shape: tuple[int, ...] = IMAGES_224.shape  # one example's (InputSpec.shape)
    token_ids: bool = False
    batch_dim: int = 0  # InputSpec.batch_dim
    classes: int | None = DEFAULT_CLASSES  # the model's, as the analysis read them from its output
    optimizer: str = "sgd"
    warmup: int = 3
    iterations: int = 20
    per_layer: bool = True
    time_limit_s: float | None = None  # stop adding timed iterations after this (at least one)
    memory_history: str | None = None  # CUDA: write the allocator's history of the step here
    scratch: bool = True  # one more step to find the peak between ops (KernelScratch on CUDA)
    precision: str = "fp32"  # nin_profile.engine.precision
    channels_last: bool = False

    @property
    def inputs(self) -> InputSpec:
        return InputSpec(self.input_shape, self.token_ids, self.batch_dim)


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def progress(stage: str, done: int, total: int) -> None:
    emit({"progress": {"stage": stage, "done": done, "total": total}})


def storages_of(tensors: Iterable[torch.Tensor]) -> set[int]:
    """The addresses of the storages behind `tensors` (a figure that counts them takes their
    frees off)."""
    return {p for t in tensors if (p := t.untyped_storage().data_ptr())}


def held_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


_received = time.monotonic()  # when the request came; reset by main()


def _deadline(req: Request) -> float | None:
    """When the worker should stop starting timed iterations (counted from its request)."""
    return _received + req.time_limit_s if req.time_limit_s else None


def _discard(value: object) -> None:
    pass


class Device:
    """The device under measurement: its memory statistics, its clock, and NVML beside it."""

    def __init__(self, kind: str, memory_history: str | None = None) -> None:
        self.kind = kind
        self.memory_history = memory_history
        self.context: int | None = None
        self.nvml: Nvml | None = None
        self.notes: list[str] = []
        if kind == "cuda":
            torch.cuda.init()
            torch.cuda.synchronize()  # the context exists now, and no tensor yet
            self.nvml = Nvml(torch.cuda.current_device())
            reading = self.nvml.read()
            self.context = reading.process_bytes
            self._note(reading.note)

    def _note(self, note: str | None) -> None:
        if note and note not in self.notes:
            self.notes.append(note)

    @property
    def name(self) -> str:
        if self.kind == "cuda":
            return torch.cuda.get_device_name()
        return f"CPU ({torch.get_num_threads()} threads)"

    @property
    def total_memory(self) -> int | None:
        return torch.cuda.get_device_properties(0).total_memory if self.kind == "cuda" else None

    def memory_during(
        self, work: Callable[[], object], held: Iterable[torch.Tensor]
    ) -> dict[str, Any]:
        """Peak memory of one run of `work`; `held` are the tensors alive before it (CPU)."""
        if self.kind != "cuda":
            held = list(held)
            baseline = held_bytes(held)
            peak = baseline + cpu_peak_during(lambda: _discard(work()), storages_of(held))
            return {
                "peak_allocated": peak,
                "peak_reserved": None,
                "nvml_process": None,
                "nvml_device": None,
                "cuda_context": None,
                "baseline_allocated": baseline,
            }
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        with recording_history(self.memory_history):
            work()
            torch.cuda.synchronize()
        assert self.nvml is not None
        reading = self.nvml.read()  # reserved memory never shrinks by itself: this is its peak
        self._note(reading.note)
        return {
            "peak_allocated": torch.cuda.max_memory_allocated(),
            "peak_reserved": torch.cuda.max_memory_reserved(),
            "nvml_process": reading.process_bytes,
            "nvml_device": reading.device_bytes,
            "cuda_context": self.context,
            "baseline_allocated": baseline,
        }

    def milliseconds(
        self, work: Callable[[], object], iterations: int, deadline: float | None = None
    ) -> list[float]:
        """Time each of `iterations` runs: CUDA events on the GPU, a monotonic clock on the CPU.
        Past `deadline` (a time.monotonic() value) no further run starts, after the first."""
        times: list[float] = []
        for i in range(iterations):
            if times and deadline is not None and time.monotonic() > deadline:
                break
            if self.kind == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                work()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                work()
                times.append((time.perf_counter() - t0) * 1e3)
            progress("timing", i + 1, iterations)
        return times

    def mark(self) -> Any:
        """A point in the device's timeline: a recorded CUDA event, or the monotonic clock."""
        if self.kind != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def wait(self) -> None:
        if self.kind == "cuda":
            torch.cuda.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        if self.kind == "cuda":
            return float(start.elapsed_time(end))
        return (end - start) * 1e3

    @property
    def clock(self) -> str:
        return "CUDA events" if self.kind == "cuda" else "time.perf_counter"

    def allocated(self) -> int:
        return torch.cuda.memory_allocated()


@contextlib.contextmanager
def recording_history(path: str | None) -> Iterator[None]:
    """Record every allocation and free of the caching allocator, with Python stacks, into a
    snapshot at `path` (open it at https://pytorch.org/memory_viz); nothing when `path` is None.
    Recording changes no allocation, only the time the step takes."""
    if path is None:
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    try:
        yield
        torch.cuda.memory._dump_snapshot(path)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


class KernelScratch(TorchDispatchMode):
    """Per aten op on CUDA: what the allocator held before, at its highest inside, and after.

    What an op allocates and frees before it returns (cuDNN's convolution workspace, a
    reduction's buffer) shows as its peak inside above both ends. The step's peak between ops
    is the figure a trace of tensors alone can predict; the rest is kernel scratch."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_between_ops = 0
        self.largest_scratch = 0
        self.largest_scratch_op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        func, args = as_without_a_mode(func, args, kwargs)  # the engine's sums, in place
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = func(*args, **kwargs)
        inside, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        held = max(before, after)
        self.peak_between_ops = max(self.peak_between_ops, held)
        if inside - held > self.largest_scratch:
            where = "backward" if torch._C._current_autograd_node() is not None else "forward"
            self.largest_scratch = inside - held
            self.largest_scratch_op = f"{func.overloadpacket.__name__} ({where})"
        return out


def kernel_scratch(work: Callable[[], object]) -> KernelScratch:
    """One more run of `work` (after the measured one: the mode resets the peak statistics)."""
    torch.cuda.synchronize()
    with summing_in_place(), KernelScratch() as scratch:
        work()
    torch.cuda.synchronize()
    return scratch


def with_scratch(
    memory: dict[str, Any],
    work: Callable[[], object],
    device: Device,
    held: Callable[[], list[torch.Tensor]] = list,
) -> None:
    """Add the kernel-scratch figures of one more run of `work` to a memory result: on CUDA
    the peak between ops and the largest scratch, with a note naming the op; on the CPU the
    peak between the ops a dispatch mode sees (cpu_peak_between_dispatched_ops, the
    allocator's records without what a kernel frees inside its op: im2col buffers, oneDNN's
    reorders). A pass that fails leaves the figures out and says why (the measurement
    stands)."""
    notes = device.notes
    if device.kind != "cuda":
        try:
            between = cpu_peak_between_dispatched_ops(lambda: _discard(work()), storages_of(held()))
        except Exception as exc:  # a diagnostic pass, as on CUDA
            notes.append(f"no peak between ops: {type(exc).__name__}: {exc}".splitlines()[0])
            return
        memory["peak_between_ops"] = memory["baseline_allocated"] + between.peak
        memory["largest_scratch"] = between.largest_scratch
        if between.largest_scratch:
            notes.append(
                f"{SCRATCH_NOTE}: {between.largest_scratch / 2**20:,.2f} MiB in "
                f"{between.largest_scratch_op}"
            )
        return
    try:
        scratch = kernel_scratch(work)
    except Exception as exc:  # a diagnostic pass: its failure must not cost the measurement
        notes.append(f"no kernel-scratch figures: {type(exc).__name__}: {exc}".splitlines()[0])
        return
    memory["peak_between_ops"] = scratch.peak_between_ops
    memory["largest_scratch"] = scratch.largest_scratch
    if scratch.largest_scratch:
        notes.append(
            f"{SCRATCH_NOTE}: {scratch.largest_scratch / 2**20:,.1f} MiB in "
            f"{scratch.largest_scratch_op}"
        )


def layer_deltas(model: nn.Module, forward: Callable[[], object], device: Device) -> dict[str, int]:
    """Bytes the allocator holds more after each leaf module's forward than before it."""
    deltas: dict[str, int] = {}
    for name, before, after in leaf_spans(model, device.allocated, forward):
        deltas[name] = deltas.get(name, 0) + after - before
    return deltas


def timing(
    times: list[float], batch: int, clock: str, interleaved: bool = False
) -> dict[str, Any] | None:
    """Median and interquartile range (q1, q3) of the iteration times; None when none were
    timed. `interleaved`: timed in rounds with the run's other models (see TimingRequest)."""
    if not times:
        return None
    median = statistics.median(times)
    q1 = q3 = median
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {
        "ms_per_iter": median,
        "ms_spread": q3 - q1,
        "examples_per_s": batch / (median / 1e3),
        "tflops": None,
        "iterations": len(times),
        "clock": clock,
        "ms_q1": q1,
        "ms_q3": q3,
        "interleaved": interleaved,
    }


def batch_of(req: Request, classes: int, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The request's batch for `model`, in its precision's dtype and its memory format."""
    dtype = get_precision(req.precision).model_dtype()
    vocabulary = token_vocabulary(model)
    return make_batch(
        req.batch, req.inputs, classes, req.device, dtype, req.channels_last, vocabulary
    )


def amp_of(req: Request, training: bool) -> Amp | None:
    """`torch.autocast` on the request's device for AMP, and a GradScaler for fp16 training."""
    precision = get_precision(req.precision)
    if not precision.amp:
        return None
    dtype, device = precision.autocast_dtype(), req.device
    scaler = torch.amp.GradScaler(device) if precision.grad_scaler and training else None
    return Amp(lambda: torch.autocast(device_type=device, dtype=dtype), scaler)


@dataclass
class TrainingStep:
    """A model in train mode with its batch, loss and optimizer: one training step per call
    (under autocast and with a GradScaler where the precision asks)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    amp: Amp | None = None

    @classmethod
    def of(cls, model: nn.Module, req: Request) -> TrainingStep:
        x, y = batch_of(req, req.classes or 1, model)
        model.train()
        optimizer = make_optimizer(req.optimizer, model.parameters())  # torch's default kernels
        return cls(
            model,
            x,
            y,
            TrainingLoss(req.classes, req.inputs.token_steps),
            optimizer,
            amp_of(req, training=True),
        )

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.run()

    def run(self) -> None:
        """The step alone, on whatever gradients are there (none after zero_grad)."""
        training_step(self.model, self.loss_fn, self.optimizer, self.x, self.y, amp=self.amp)

    def forward_and_loss(self) -> object:
        """The step's forward and loss, as the step runs them (per-layer deltas)."""
        with self.amp.autocast() if self.amp else contextlib.nullcontext():
            return self.loss_fn(self.model(self.x), self.y)

    def held(self) -> list[torch.Tensor]:
        """What lives between steps: parameters, buffers, optimizer state (and a GradScaler's),
        the batch."""
        m, state = self.model, [*optimizer_state(self.optimizer), *scaler_state(self.amp)]
        return [*m.parameters(), *m.buffers(), *state, self.x, self.y]


@dataclass
class InferencePass:
    """A model in eval mode with its batch: one forward pass under inference_mode per call
    (under autocast for AMP)."""

    model: nn.Module
    x: torch.Tensor
    amp: Amp | None = None

    @classmethod
    def of(cls, model: nn.Module, req: Request) -> InferencePass:
        x, _ = batch_of(req, 1, model)
        model.eval()
        return cls(model, x, amp_of(req, training=False))

    def __call__(self) -> object:
        with torch.inference_mode():
            return forward(self.model, self.x, self.amp)

    def held(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers(), self.x]


def measure_training(model: nn.Module, req: Request, device: Device) -> dict[str, Any]:
    step = TrainingStep.of(model, req)
    for i in range(req.warmup):  # cuDNN/cuBLAS handles, optimizer state
        step()
        progress("warm-up", i + 1, req.warmup)
    step.optimizer.zero_grad(set_to_none=True)
    memory = device.memory_during(step.run, step.held())
    progress("memory", 1, 1)
    if req.scratch:
        step.optimizer.zero_grad(set_to_none=True)
        with_scratch(memory, step.run, device, step.held)
    deltas: dict[str, int] = {}
    if req.per_layer and device.kind == "cuda":
        step.optimizer.zero_grad(set_to_none=True)
        deltas = layer_deltas(model, step.forward_and_loss, device)
    times = device.milliseconds(step, req.iterations, _deadline(req))
    return {
        "memory": memory,
        "timing": timing(times, req.batch, device.clock),
        "layer_deltas": deltas,
    }


def measure_inference(model: nn.Module, req: Request, device: Device) -> dict[str, Any]:
    forward = InferencePass.of(model, req)
    for i in range(req.warmup):
        forward()
        progress("warm-up", i + 1, req.warmup)
    memory = device.memory_during(forward, forward.held())
    progress("memory", 1, 1)
    if req.scratch:
        with_scratch(memory, forward, device, forward.held)
    times = device.milliseconds(forward, req.iterations, _deadline(req))
    per_layer = layer_times(model, forward, device) if req.per_layer and times else {}
    return {
        "memory": memory,
        "timing": timing(times, req.batch, device.clock),
        "layer_deltas": {},
        "layer_ms": per_layer,
        "ceilings": measure_ceilings(device, compute_dtype(req)) if times else None,
    }


def layer_times(
    model: nn.Module, forward: Callable[[], object], device: Device, repeats: int = 5
) -> dict[str, float]:
    """Median time each module spends in its own ops, in ms, so that an op's time belongs to
    the module that called it and the times add up to the forward's.

    A leaf of the run (a module none ran inside) is timed alone on its own input: during one
    forward pass it runs once untimed, then `repeats` times back to back, before the pass goes
    on. Timed inside the whole pass instead, a small layer after a large one measured 15-25 ms
    where it takes 0.1 ms alone on the project's 2-core machine: the pass's other OpenMP thread
    had gone to sleep and waited for a core (with `OMP_NUM_THREADS=1` the gap was gone). A leaf
    must give the same result when run again on its input (true of eval-mode layers; an
    in-place ReLU is idempotent). A container's own time (what it runs itself: timm's Attention
    calls SDPA between its two Linear layers) is its forward less the forwards inside it, over
    `repeats` passes."""
    spans = nested_spans(model, device.mark, lambda: [forward() for _ in range(repeats)])
    device.wait()
    samples: dict[str, list[float]] = {}
    for name, start, end, inside in spans:
        own = device.elapsed_ms(start, end) - sum(device.elapsed_ms(a, b) for a, b in inside)
        samples.setdefault(name, []).append(max(0.0, own))  # clock noise can go below 0
    alone = _leaves_alone(model, forward, device, repeats)
    return {name: statistics.median(alone.get(name) or ms) for name, ms in samples.items()}


def _leaves_alone(
    model: nn.Module, forward: Callable[[], object], device: Device, repeats: int
) -> dict[str, list[float]]:
    """The median of `repeats` back-to-back runs of each leaf of the run on its own input."""
    samples: dict[str, list[float]] = {}
    entered: list[object] = []
    inputs: list[tuple[Any, object, object]] = []

    def enter(frame: Frame, args: object) -> None:
        entered.append(device.mark())

    def keep(frame: Frame, args: object) -> None:  # as the user's forward pre-hooks leave them
        inputs.append((args, entered.pop(), device.mark()))

    def time_alone(frame: Frame, output: object) -> None:
        (args, kwargs), start_hooks, end_hooks = inputs.pop()
        if frame.children or not isinstance(args, tuple):
            return
        call = partial(frame.module.forward, *args, **kwargs)
        call()
        times = []
        for _ in range(repeats):
            start = device.mark()
            call()
            end = device.mark()
            device.wait()
            times.append(device.elapsed_ms(start, end))
        # the user's forward pre-hooks, as they ran (the layer stack's own two are not timed)
        users = len(frame.module._forward_pre_hooks) > 2
        hooks = device.elapsed_ms(start_hooks, end_hooks) if users else 0.0
        samples.setdefault(frame.name, []).append(statistics.median(times) + hooks)

    with LayerStack(model, on_enter=enter, on_call=keep, on_exit=time_alone):
        forward()
    progress("layers", 1, 1)
    return samples


def compute_dtype(req: Request) -> torch.dtype:
    """The dtype the request's convolutions and matrix products run in."""
    dtype = getattr(torch, get_precision(req.precision).compute)
    assert isinstance(dtype, torch.dtype)
    return dtype


PRECISION_WORDS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def measure_ceilings(
    device: Device, dtype: torch.dtype = torch.float32, repeats: int = 3
) -> dict[str, Any]:
    """The device's two roofs, each the best of `repeats` after a warm-up, on random data: the
    arithmetic one is the fastest of a large matrix product and large 3×3 and 5×5
    convolutions in `dtype`, the dtype the run's convolutions and matrix products run in (on
    the project's CPU, oneDNN's float32 convolutions ran at up to 235 GFLOP/s where a 2048²
    product ran at 170: a product alone put the layers above the roof), the memory one a
    large copy (bytes read plus written per second). On CUDA float32 runs in the precision
    cuDNN runs float32 convolutions in (TF32 unless `torch.backends.cudnn.allow_tf32` is
    off); fp16 and bf16 on the tensor cores."""
    cuda = device.kind == "cuda"
    n, nbytes = (8192, 2**30) if cuda else (2048, 2**27)
    batch, channels, side = (64, 512, 28) if cuda else (16, 256, 28)
    if not cuda and dtype in (torch.float16, torch.bfloat16):
        # a CPU without 16-bit arithmetic ran the float32 sizes for minutes (fp16 on this
        # project's machine: 4 minutes for a 5k-parameter model): an eighth of the product's
        # work and a sixteenth of the convolutions', still larger than a small model's layers
        n, batch, channels = 1024, 4, 128
    tf32 = cuda and torch.backends.cudnn.allow_tf32 and dtype == torch.float32
    kind = device.kind
    a, b = (torch.randn(n, n, device=kind, dtype=dtype) for _ in range(2))
    convs = [
        nn.Conv2d(channels, channels, k, padding=k // 2, bias=False, device=kind, dtype=dtype)
        for k in (3, 5)
    ]
    x = torch.randn(batch, channels, side, side, device=kind, dtype=dtype)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device.kind)
    dst = torch.empty_like(src)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with torch.inference_mode():
            matmul_ms = min(device.milliseconds(lambda: a @ b, repeats + 1)[1:])
            conv_ms = [min(device.milliseconds(partial(c, x), repeats + 1)[1:]) for c in convs]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    copy_ms = min(device.milliseconds(lambda: dst.copy_(src), repeats + 1)[1:])
    progress("ceilings", 1, 1)
    matmul = 2 * n**3 / (matmul_ms / 1e3)
    convolution = max(
        2 * batch * channels * channels * c.kernel_size[0] ** 2 * side * side / (ms / 1e3)
        for c, ms in zip(convs, conv_ms, strict=True)
    )
    return {
        "flops_per_s": max(matmul, convolution),
        "bytes_per_s": 2 * nbytes / (copy_ms / 1e3),
        "matmul_precision": "tf32" if tf32 else PRECISION_WORDS.get(dtype, "fp32"),
        "kernel": "convolution" if convolution > matmul else "matrix product",
    }


# How a library that allocates outside the caching allocator says the device is full. Seen on an
# H100 at AlexNet's training batch 17,625: "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling
# `cublasCreate(handle)`" (the backward thread's first cuBLAS handle, with the card full).
_LIBRARY_ALLOC_FAILED = (
    "can't allocate memory",  # the CPU allocator
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "CUDA error: out of memory",  # cudaErrorMemoryAllocation outside the caching allocator
)


def build(req: Request) -> nn.Module:
    """The request's model with its real weights (seed 0), on the request's device, in its
    precision's dtype where that is a 16-bit one (`model.to(dtype)`; for fp32 and AMP the
    model's own dtypes, as the analysis keeps them: a float64 or complex layer stays one) and
    memory format."""
    torch.manual_seed(0)
    model = get_model(req.model, **vars(ModelConfig.of(req.inputs, req.classes)))
    model.to(req.device)
    dtype = get_precision(req.precision).model_dtype()
    if dtype != torch.float32:
        model.to(dtype)
    if req.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@dataclass(frozen=True)
class TimingRequest:
    """Every (model, phase) of a run timed in one process, interleaved: each round runs each in
    turn (A B C A B C ...), so that a change in the machine's speed while they run (another
    process, the clock, the temperature) hits all of them alike; a fast one runs a few
    iterations a round (balanced_repeats). At most `rounds`; after at least `min_rounds`, no
    round starts past `time_limit_s`. Then each model's layers are timed
    (its inference entry) and the device's two roofs measured, in the same process and with the
    same threads as the layers."""

    entries: tuple[Request, ...]  # a (model, phase, precision) each
    rounds: int
    min_rounds: int = 3
    time_limit_s: float | None = None
    per_layer: bool = True


def time_interleaved(req: TimingRequest) -> dict[str, Any]:
    device = Device(req.entries[0].device)
    result: dict[str, Any] = {"device_name": device.name, "pid": os.getpid()}
    try:
        result |= _time_interleaved(req, device)
    except Exception as exc:  # the run keeps the memory measurements and says why no times
        result["error"] = {"kind": "failed", "message": user_error(exc)}
    result["notes"] = device.notes
    return result


# A round gives each (model, phase) about a quarter of the slowest one's iteration, in whole
# iterations: a model 12× faster than VGG-11 runs 3 a round, and its median rests on 3× the
# samples, where a verdict between two fast models needs them most.
ROUND_SHARE = 0.25
MAX_REPEATS = 16


def balanced_repeats(ms: list[float]) -> list[int]:
    """Iterations a round gives each entry, from one timed iteration of each."""
    share = ROUND_SHARE * max(ms, default=0.0)
    return [max(1, min(MAX_REPEATS, round(share / t))) if t > 0 else 1 for t in ms]


def _time_interleaved(req: TimingRequest, device: Device) -> dict[str, Any]:
    result: dict[str, Any] = {}
    steps: list[TrainingStep | InferencePass] = []
    for entry in req.entries:
        model = build(entry)
        steps.append(
            TrainingStep.of(model, entry)
            if entry.phase == "train"
            else InferencePass.of(model, entry)
        )
    warm: list[float] = []
    for done, (entry, step) in enumerate(zip(req.entries, steps, strict=True)):
        for _ in range(max(0, entry.warmup - 1)):
            step()
        warm += device.milliseconds(step, 1)  # the last warm-up, timed: how many a round
        progress("warm-up", done + 1, len(steps))
    repeats = balanced_repeats(warm)
    samples: list[list[float]] = [[] for _ in steps]
    deadline = _received + req.time_limit_s if req.time_limit_s else None
    for done in range(req.rounds):
        if done >= req.min_rounds and deadline is not None and time.monotonic() > deadline:
            break
        for times, step, n in zip(samples, steps, repeats, strict=True):
            times += device.milliseconds(step, n)
        progress("timing rounds", done + 1, req.rounds)
    result["timings"] = [
        timing(times, entry.batch, device.clock, interleaved=True)
        for entry, times in zip(req.entries, samples, strict=True)
    ]
    if req.per_layer:  # one per entry: each inference entry's layers (None for training)
        result["layer_ms"] = [
            layer_times(step.model, step, device) if entry.phase == "inference" else None
            for entry, step in zip(req.entries, steps, strict=True)
        ]
    # the roofs of each dtype the entries' convolutions and products run in ("float32": ...)
    dtypes = {str(compute_dtype(e)).removeprefix("torch."): compute_dtype(e) for e in req.entries}
    result["ceilings"] = {name: measure_ceilings(device, dtype) for name, dtype in dtypes.items()}
    return result


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _LIBRARY_ALLOC_FAILED)


def measure(req: Request) -> dict[str, Any]:
    device = Device(req.device, req.memory_history)
    result: dict[str, Any] = {
        "device_name": device.name,
        "total_memory": device.total_memory,
        "pid": os.getpid(),
    }
    try:
        model = build(req)
        work = measure_training if req.phase == "train" else measure_inference
        result |= work(model, req, device)
    except Exception as exc:
        kind = "out_of_memory" if is_out_of_memory(exc) else "failed"
        # what was raised and where: the user's line, where the error came from their forward
        result["error"] = {"kind": kind, "message": user_error(exc)}
    result["notes"] = device.notes
    return result


def main(argv: list[str]) -> int:
    """`worker REQUEST_JSON`, or `worker --stdin`: import everything, then wait for the request
    as one line on stdin (how the runner starts the next worker while this one measures)."""
    global _received
    text = sys.stdin.readline() if argv[1] == "--stdin" else argv[1]
    if not text.strip():
        return 0  # let go unused: the run ended before a request came
    _received = time.monotonic()
    payload = json.loads(text)
    callers = list(payload.pop(SYS_PATH, ()))  # first, in the caller's order: its modules win
    sys.path[:] = callers + [entry for entry in sys.path if entry not in callers]
    if "world_size" in payload:  # real ranks, started from here (measure/ranks.py)
        from nin_profile.measure.ranks import RankRequest, measure_ranks

        emit({"result": measure_ranks(RankRequest(**payload))})
        return 0
    if "entries" in payload:
        timing_request = TimingRequest(
            **{**payload, "entries": tuple(Request(**e) for e in payload["entries"])}
        )
        emit({"result": time_interleaved(timing_request)})
        return 0
    request = Request(**payload)
    emit({"result": measure(request), "request": asdict(request)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
