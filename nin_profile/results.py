"""Results as numbers: frozen dataclasses with `to_dict`/`from_dict`, no formatting.

Units: counts are plain integers, memory is bytes, FLOPs count a multiply and an add as two
(FLOPs = 2 × MACs). Every figure is per batch unless its name says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from nin_profile.inputs import InputSpec

if TYPE_CHECKING:  # pandas is imported where a frame is made: the CLI never needs it
    import pandas as pd

    from nin_profile.parallel_results import ParallelProfile


class Phase(str, Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


class MemoryCategory(str, Enum):
    """What a byte alive at a peak is for; a storage belongs to the first category whose rule fits.

    PARAMS: the model's parameters. BUFFERS: its buffers (batch-norm statistics).
    INPUT: the batch and its targets. OPTIMIZER: optimizer state kept between steps (momentum
    buffers, Adam's moments). WORKSPACE: library workspaces held from one step to the next
    (cuBLAS and cuBLASLt, through the CUDA caching allocator).
    GRADS: the `.grad` of each trainable parameter.
    WEIGHT_COPIES: AMP: the lower-precision copies autocast makes of float32 parameters, kept
    until the autocast region exits (its weight-cast cache) and, in training, until backward
    has used them (autograd saves them: they are part of the bytes saved for backward).
    ACTIVATIONS: in training, storages autograd saved for backward; in inference, layer outputs.
    TRANSIENT: anything else alive at that moment: gradients flowing back, an op's temporaries.
    Per rank of a data-parallel or sharded run (parallel.py), two more: COMMUNICATION, the
    buffers collectives read or write (DDP's gradient buckets, FSDP2's all-gather and
    reduce-scatter buffers) beyond the gradients themselves; UNSHARDED_PARAMS, FSDP2's
    parameters gathered whole for a block's forward or backward (PARAMS: this rank's shards).
    """

    PARAMS = "params"
    BUFFERS = "buffers"
    INPUT = "input"
    OPTIMIZER = "optimizer"
    WORKSPACE = "workspace"
    GRADS = "grads"
    WEIGHT_COPIES = "weight_copies"
    ACTIVATIONS = "activations"
    TRANSIENT = "transient"
    COMMUNICATION = "communication"
    UNSHARDED_PARAMS = "unsharded_params"


@dataclass(frozen=True)
class PeakSite:
    """Where a memory peak happens: the phase, the layer and the aten op that allocated last."""

    phase: str
    layer: str
    op: str


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes alive at the peak of one phase, by category; the categories sum to `peak`.

    reserved: on CUDA, what the caching allocator holds once the step repeats (simulated, see
    allocator.py): the segments that `peak` lives in and that earlier steps left cached.
    Without cuDNN's workspaces, which only the GPU knows. None for other devices.
    between_ops: the highest the estimate holds between the device's ops, where that is below
    `peak`: where the estimate follows what happens inside an op (a kernel's scratch it knows,
    a fused kernel or a composite op the device runs whole, traced step by step), `peak`
    counts it and this does not, as a measurement between ops does not. None where equal.
    """

    peak: int
    by_category: Mapping[MemoryCategory, int]
    site: PeakSite
    reserved: int | None = None
    between_ops: int | None = None

    def __getitem__(self, category: MemoryCategory) -> int:
        return self.by_category.get(category, 0)

    @property
    def peak_between_ops(self) -> int:
        """The estimated peak between the device's ops (what a measurement between ops is
        held to)."""
        return self.peak if self.between_ops is None else self.between_ops

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {c.value: self[c] for c in MemoryCategory}
        out["peak"] = self.peak
        out["peak_at"] = asdict(self.site)
        out["reserved"] = self.reserved
        out["between_ops"] = self.between_ops
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemoryBreakdown:
        return cls(
            peak=d["peak"],
            by_category={c: d.get(c.value, 0) for c in MemoryCategory},  # 0: not in older files
            site=PeakSite(**d["peak_at"]),
            reserved=d.get("reserved"),  # not in older files
            between_ops=d.get("between_ops"),  # not in older files
        )


@dataclass(frozen=True)
class LayerStats:
    """One layer (a leaf module, or a container's own functional ops) over one training step.

    allocated_delta: bytes the allocator holds more after the layer's forward than before it,
    in a training step (what the layer's forward adds to the activation memory; predicted).
    input_bytes, param_bytes: what the forward reads (its input tensors, its own parameters).
    spec: the module's own description (`extra_repr`), e.g. "96, 96, kernel_size=(1, 1), ...".
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    trainable_params: int
    flops_forward: int
    flops_backward: int
    output_bytes: int
    saved_bytes: int
    calls: int = 1
    allocated_delta: int = 0
    input_bytes: int = 0
    param_bytes: int = 0
    spec: str = ""

    @property
    def bytes_moved(self) -> int:
        """The fewest bytes the forward must move: input and parameters read, output written."""
        return self.input_bytes + self.param_bytes + self.output_bytes

    @property
    def intensity(self) -> float:
        """Forward FLOPs per byte moved (arithmetic intensity; 0 for layers without FLOPs)."""
        return self.flops_forward / self.bytes_moved if self.bytes_moved else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape) if self.output_shape is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerStats:
        shape = d.get("output_shape")
        return cls(**{**d, "output_shape": tuple(shape) if shape is not None else None})


@dataclass(frozen=True)
class NotCounted:
    """An aten op that does arithmetic the FLOP counter has no formula for."""

    op: str
    phase: str
    calls: int


@dataclass(frozen=True)
class MeasuredMemory:
    """Memory of one phase as the device reports it, in bytes; None where it has no such figure.

    peak_allocated: CUDA `max_memory_allocated`; CPU, the allocator's peak from the profiler's
    allocation records plus what was held when the step began. peak_reserved: CUDA's caching
    allocator. nvml_process / nvml_device: what `nvidia-smi` shows for this process / the whole
    device, read after the phase (the allocator never returns memory by itself, so this is its
    peak). cuda_context: NVML's figure for the process right after the CUDA context was made,
    before any tensor. baseline_allocated: allocated when the measured step began.
    peak_between_ops (CUDA): the highest allocated before or after any aten op of the step,
    that is the peak without the scratch kernels allocate and free inside one op (cuDNN's
    workspace): the figure a trace of tensors can predict (the CPU: between the ops a dispatch
    mode sees). largest_scratch: the most one op held inside itself above both its ends (the
    CPU: the most it held of what it freed before returning).
    """

    peak_allocated: int
    peak_reserved: int | None
    nvml_process: int | None
    nvml_device: int | None
    cuda_context: int | None
    baseline_allocated: int
    peak_between_ops: int | None = None
    largest_scratch: int | None = None


# The start of a measurement's note that names the op with the most scratch inside it (the
# report's scratch column shows its figure): "largest scratch inside one op: 0.10 MiB in conv2d"
SCRATCH_NOTE = "largest scratch inside one op"


@dataclass(frozen=True)
class Timing:
    """Time per iteration (per batch): the median, and the interquartile range as its spread
    (0 with fewer than 2 samples) and as an interval [ms_q1, ms_q3] (None in profiles written
    before it was kept). interleaved: timed in rounds with the run's other models, in one
    process (the CPU); else in the measurement's own process, one iteration after another."""

    ms_per_iter: float
    ms_spread: float
    examples_per_s: float
    tflops: float | None
    iterations: int
    clock: str
    ms_q1: float | None = None
    ms_q3: float | None = None
    interleaved: bool = False

    @property
    def noise(self) -> float:
        """The spread relative to the median: 0.04 when the middle half of the iterations lies
        within a band 4% of the median wide."""
        return self.ms_spread / self.ms_per_iter if self.ms_per_iter else 0.0


@dataclass(frozen=True)
class Ceilings:
    """What the device sustains, measured once: the faster of a large float32 matrix product
    and a large convolution (FLOP/s; `kernel` says which), and a large copy (bytes read plus
    written per second). The roofline's two roofs.

    matmul_precision: "tf32" where the arithmetic ran on TF32 tensor cores, as cuDNN runs
    float32 convolutions by default (`torch.backends.cudnn.allow_tf32`); "fp32" for full float32
    arithmetic (and in profiles written before the field existed, whose products ran so).
    kernel: "matrix product" in profiles written before the convolution was timed too."""

    flops_per_s: float
    bytes_per_s: float
    matmul_precision: str = "fp32"
    kernel: str = "matrix product"

    @property
    def ridge(self) -> float:
        """The arithmetic intensity (FLOP/B) above which a layer can be bound by arithmetic."""
        return self.flops_per_s / self.bytes_per_s


@dataclass(frozen=True)
class PhaseMeasurement:
    """One phase of one model at one batch, measured in a process of its own.

    layer_deltas: allocator delta around each leaf module's forward (training, CUDA).
    layer_ms: median time each module spends in its own ops in a forward (inference): a
    leaf's whole forward, a container's own ops (its forward less its layers').
    """

    phase: str
    batch: int
    device_name: str
    total_memory: int | None
    memory: MeasuredMemory | None
    timing: Timing | None
    predicted: MemoryBreakdown | None = None
    layer_deltas: Mapping[str, int] = field(default_factory=dict)
    layer_ms: Mapping[str, float] = field(default_factory=dict)
    ceilings: Ceilings | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["predicted"] = self.predicted.to_dict() if self.predicted else None
        d["layer_deltas"] = dict(self.layer_deltas)
        d["layer_ms"] = dict(self.layer_ms)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhaseMeasurement:
        return cls(
            **{
                **d,
                "memory": MeasuredMemory(**d["memory"]) if d.get("memory") else None,
                "timing": Timing(**d["timing"]) if d.get("timing") else None,
                "predicted": MemoryBreakdown.from_dict(d["predicted"])
                if d.get("predicted")
                else None,
                "ceilings": Ceilings(**d["ceilings"]) if d.get("ceilings") else None,
                "notes": tuple(d.get("notes", ())),
            }
        )


# Kept under memory.<phase>.measured and timing.<phase> in profile.json, not repeated.
_FIGURES = ("memory", "timing")


@dataclass(frozen=True)
class BatchFit:
    """The largest batch that fits a memory size: measured by bisection, or predicted."""

    phase: str
    batch: int | None
    limit_bytes: int
    how: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PeerFigures:
    """Per batch of `batch`, as each tool reports it (its units converted to ours: bytes). A
    tool that failed on the model has None for its figures and its error, in one line."""

    batch: int
    torchinfo_params: int | None
    torchinfo_mult_adds: int | None
    torchinfo_input_bytes: int | None
    torchinfo_pass_bytes: int | None  # its "forward/backward pass size": every output, twice
    torchinfo_param_bytes: int | None
    fvcore_flops: int | None  # what fvcore calls flops: one per multiply-add
    fvcore_unsupported: dict[str, int] = field(default_factory=dict)  # op → calls it skipped
    fvcore_by_operator: dict[str, int] = field(default_factory=dict)  # op → its "flops"
    torchinfo_error: str | None = None
    fvcore_error: str | None = None

    @property
    def torchinfo_total_bytes(self) -> int | None:
        """torchinfo's "estimated total size": input + pass size + parameters."""
        parts = self.torchinfo_input_bytes, self.torchinfo_pass_bytes, self.torchinfo_param_bytes
        return None if None in parts else sum(p for p in parts if p is not None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PeerFigures:
        return cls(**d)


@dataclass(frozen=True)
class PrecisionProfile:
    """One model in one precision at the run's batch (--compare-precision): what autograd
    saves (in all, and by dtype), the estimated peaks, and where the run measured and fitted
    it, the measurements and the largest batch for --memory-budget."""

    precision: str
    activation_bytes_saved: int
    saved_bytes_by_dtype: Mapping[str, int]
    train: MemoryBreakdown
    inference: MemoryBreakdown
    measured: Mapping[str, PhaseMeasurement] = field(default_factory=dict)
    fits: tuple[BatchFit, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "activation_bytes_saved": self.activation_bytes_saved,
            "saved_bytes_by_dtype": dict(self.saved_bytes_by_dtype),
            "memory": {"train": self.train.to_dict(), "inference": self.inference.to_dict()},
            "measurements": {phase: m.to_dict() for phase, m in self.measured.items()},
            "fits": [f.to_dict() for f in self.fits],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionProfile:
        return cls(
            precision=d["precision"],
            activation_bytes_saved=d["activation_bytes_saved"],
            saved_bytes_by_dtype=dict(d.get("saved_bytes_by_dtype", {})),
            train=MemoryBreakdown.from_dict(d["memory"]["train"]),
            inference=MemoryBreakdown.from_dict(d["memory"]["inference"]),
            measured={p: PhaseMeasurement.from_dict(m) for p, m in d["measurements"].items()},
            fits=tuple(BatchFit(**f) for f in d.get("fits", ())),
        )


@dataclass(frozen=True)
class ModelProfile:
    """Static analysis of one model at one batch size: counts, FLOPs and predicted memory."""

    name: str
    description: str
    params: int
    trainable_params: int
    flops_forward: int
    flops_backward: int
    activation_bytes_saved: int
    layers: tuple[LayerStats, ...]
    train: MemoryBreakdown
    inference: MemoryBreakdown
    not_counted: tuple[NotCounted, ...] = ()
    # the classes of the model's output (None: no (batch, classes) output), and the training
    # step's loss over that output in words
    classes: int | None = None
    loss: str = ""
    measured: Mapping[str, PhaseMeasurement] = field(default_factory=dict)
    sweep: tuple[PhaseMeasurement, ...] = ()
    fits: tuple[BatchFit, ...] = ()
    peers: PeerFigures | None = None  # torchinfo's and fvcore's figures (--compare-peers)
    # bytes saved for backward by dtype ("float16", "int64"): which of them a precision halves
    saved_bytes_by_dtype: Mapping[str, int] = field(default_factory=dict)
    precisions: tuple[PrecisionProfile, ...] = ()  # --compare-precision: one per precision
    parallel: ParallelProfile | None = None  # per rank under DDP or FSDP2 (--parallel)
    # trainable parameters the training step gives no gradient (name → elements): the loss
    # does not reach them, so they get no .grad and no optimizer state
    without_grad: Mapping[str, int] = field(default_factory=dict)
    # for CUDA, the recurrent layers CUDA runs on cuDNN that the trace followed as their
    # composite cell, why in words ("LSTM under autocast"): their reserve is not predicted
    unpredicted: tuple[str, ...] = ()

    @property
    def macs_forward(self) -> int:
        return self.flops_forward // 2

    @property
    def macs_backward(self) -> int:
        return self.flops_backward // 2

    @property
    def flops_train_step(self) -> int:
        return self.flops_forward + self.flops_backward

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs_forward": self.macs_forward,
            "flops_forward": self.flops_forward,
            "macs_backward": self.macs_backward,
            "flops_backward": self.flops_backward,
            "flops_train_step": self.flops_train_step,
            "activation_bytes_saved": self.activation_bytes_saved,
            "saved_bytes_by_dtype": dict(self.saved_bytes_by_dtype),
            "classes": self.classes,
            "loss": self.loss,
            "memory": {
                phase: {"predicted": predicted.to_dict(), "measured": self._measured_memory(phase)}
                for phase, predicted in (("train", self.train), ("inference", self.inference))
            },
            "timing": {phase: self._timing(phase) for phase in ("train", "inference")},
            "measurements": {
                phase: {k: v for k, v in m.to_dict().items() if k not in _FIGURES}
                for phase, m in self.measured.items()
            },
            "sweep": [m.to_dict() for m in self.sweep],
            "fits": [f.to_dict() for f in self.fits],
            "peers": self.peers.to_dict() if self.peers else None,
            "precisions": [p.to_dict() for p in self.precisions],
            "parallel": self.parallel.to_dict() if self.parallel else None,
            "not_counted": [asdict(n) for n in self.not_counted],
            "params_without_grad": dict(self.without_grad),
            "unpredicted": list(self.unpredicted),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def _measured_memory(self, phase: str) -> dict[str, Any] | None:
        m = self.measured.get(phase)
        return asdict(m.memory) if m and m.memory else None

    def _timing(self, phase: str) -> dict[str, Any] | None:
        m = self.measured.get(phase)
        return asdict(m.timing) if m and m.timing else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelProfile:
        return cls(
            name=d["name"],
            description=d["description"],
            params=d["params"],
            trainable_params=d["trainable_params"],
            flops_forward=d["flops_forward"],
            flops_backward=d["flops_backward"],
            activation_bytes_saved=d["activation_bytes_saved"],
            layers=tuple(LayerStats.from_dict(x) for x in d["layers"]),
            train=MemoryBreakdown.from_dict(d["memory"]["train"]["predicted"]),
            inference=MemoryBreakdown.from_dict(d["memory"]["inference"]["predicted"]),
            not_counted=tuple(NotCounted(**n) for n in d.get("not_counted", ())),
            classes=d.get("classes"),  # not in older files
            loss=d.get("loss", ""),
            measured={
                phase: PhaseMeasurement.from_dict(
                    {**m, "memory": d["memory"][phase]["measured"], "timing": d["timing"][phase]}
                )
                for phase, m in d.get("measurements", {}).items()
            },
            sweep=tuple(PhaseMeasurement.from_dict(m) for m in d.get("sweep", ())),
            fits=tuple(BatchFit(**f) for f in d.get("fits", ())),
            peers=PeerFigures.from_dict(d["peers"]) if d.get("peers") else None,
            saved_bytes_by_dtype=dict(d.get("saved_bytes_by_dtype", {})),  # not in older files
            precisions=tuple(PrecisionProfile.from_dict(p) for p in d.get("precisions", ())),
            parallel=_parallel_from_dict(d.get("parallel")),
            without_grad=dict(d.get("params_without_grad", {})),  # not in older files
            unpredicted=tuple(d.get("unpredicted", ())),  # not in older files
        )


def _parallel_from_dict(d: Mapping[str, Any] | None) -> ParallelProfile | None:
    from nin_profile.parallel_results import ParallelProfile

    return ParallelProfile.from_dict(d) if d else None


@dataclass(frozen=True)
class RunConfig:
    """What the user asked for."""

    models: tuple[str, ...]
    batch: int
    device: str
    # square images (channels × image_size × image_size), the built-in models' input; None
    # where the input is given by `input_shape`
    image_size: int | None
    channels: int | None
    classes: int | None  # None: each model's own (read from its output)
    optimizer: str
    precision: str = "fp32"  # nin_profile.engine.precision: fp32, amp-fp16, amp-bf16, fp16, bf16
    channels_last: bool = False
    static: bool = False
    sweep_batches: tuple[int, ...] = ()
    max_batch: bool = False
    memory_budget: int | None = None
    cuda_context: int | None = None
    cpu_time_budget: float = 120.0
    warmup: int = 3
    iterations: int = 20
    compare_peers: bool = False
    compare_precisions: tuple[str, ...] = ()  # --compare-precision: each model in each of them
    # --parallel ddp|fsdp: per-rank memory at each of `world_sizes`, `batch` examples a rank
    parallel: str = "none"
    world_sizes: tuple[int, ...] = ()
    bucket_cap_mb: float | None = None  # DDP; None: DDP's default
    gradient_as_bucket_view: bool = False  # DDP
    reshard_after_forward: bool = True  # FSDP2
    # FSDP2's mixed-precision policy: "bf16", "fp16" (reduce also "fp32"); None: FSDP2's default
    # (the model's dtype; for the reduction, the param dtype). Files before it: None
    fsdp_param_dtype: str | None = None
    fsdp_reduce_dtype: str | None = None
    # --input-shape: one example's shape where the input is not a square image (a user's
    # model: sequences, token ids, other images); --token-ids: int64 ids for an embedding.
    # Files before them: None and False
    input_shape: tuple[int, ...] | None = None
    token_ids: bool = False
    batch_dim: int = 0  # --batch-dim: where the batch goes in the input (files before it: 0)

    @property
    def inputs(self) -> InputSpec:
        """One example of the input every model is profiled on."""
        if self.input_shape is not None:
            return InputSpec(self.input_shape, self.token_ids, self.batch_dim)
        assert self.channels is not None and self.image_size is not None
        return InputSpec.image(self.channels, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = list(self.models)
        d["input_shape"] = None if self.input_shape is None else list(self.input_shape)
        d["sweep_batches"] = list(self.sweep_batches)
        d["compare_precisions"] = list(self.compare_precisions)
        d["world_sizes"] = list(self.world_sizes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        d = dict(d)
        d.pop("dtype", None)  # files before precisions had "dtype": "float32", always
        return cls(
            **{
                **d,
                "models": tuple(d["models"]),
                "sweep_batches": tuple(d.get("sweep_batches", ())),
                "compare_precisions": tuple(d.get("compare_precisions", ())),
                "world_sizes": tuple(d.get("world_sizes", ())),
                "input_shape": None if d.get("input_shape") is None else tuple(d["input_shape"]),
            }
        )


@dataclass(frozen=True)
class Environment:
    """Versions and the device the figures come from."""

    python: str
    torch: str
    platform: str
    device_name: str
    cuda: str | None = None
    cudnn: str | None = None  # "9.19.0" from torch.backends.cudnn.version() 91900
    driver: str | None = None  # the NVIDIA driver, as nvidia-smi shows it (NVML)
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Environment:
        return cls(**d)


@dataclass(frozen=True)
class Profile:
    """Everything one run produced: the contract behind profile.json."""

    config: RunConfig
    environment: Environment
    models: tuple[ModelProfile, ...]
    notes: tuple[str, ...] = ()
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "config": self.config.to_dict(),
            "environment": self.environment.to_dict(),
            "notes": list(self.notes),
            "models": [m.to_dict() for m in self.models],
        }

    def __getitem__(self, name: str) -> ModelProfile:
        """The model of this name: `profile["nin"].params`."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in this profile; it has {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def models_frame(self) -> pd.DataFrame:
        """One row per model (pandas): counts, FLOPs, estimated and measured memory and time;
        units in the column names."""
        from nin_profile.frames import models_frame

        return models_frame(self)

    def layers_frame(self) -> pd.DataFrame:
        """One row per (model, layer) (pandas), the columns of layers.csv."""
        from nin_profile.frames import layers_frame

        return layers_frame(self)

    def report(self, charts: bool = False) -> str:
        """report.md as markdown text (`charts`: link the PNGs that `save` writes beside it)."""
        from nin_profile.render.markdown import render_report

        return render_report(self, charts)

    def save(self, folder: str | os.PathLike[str], charts: bool = True) -> list[str]:
        """Write what the command line writes (profile.json, layers.csv, report.md, the charts)
        into `folder`, replaced in one rename; the names of the files written."""
        from pathlib import Path

        from nin_profile.files import write_output_folder
        from nin_profile.report import chart_pngs, report_files

        files = report_files(self, chart_pngs(self) if charts else None)
        write_output_folder(Path(folder), files, replaces_measured=True, named="folder")
        return list(files)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """A profile from a profile.json (or the folder holding one) that `save` or the command
        line wrote."""
        from pathlib import Path

        from nin_profile.files import PROFILE_JSON, read_profile

        path = Path(path)
        return read_profile(path / PROFILE_JSON if path.is_dir() else path)

    def _repr_markdown_(self) -> str:
        """What a notebook cell shows: the conditions, the summary and the measurements."""
        from nin_profile.render.general import conditions, measured_section, summary_section

        parts = [conditions(self), summary_section(self, False)]
        if not self.config.static and any(m.measured for m in self.models):
            parts.append(measured_section(self, False))
        return "\n\n".join(parts)

    def __repr__(self) -> str:
        kind = "estimated" if self.config.static else "estimated and measured"
        return (
            f"Profile({', '.join(self.names)}; batch {self.config.batch}, "
            f"{self.config.device}, {kind}; .report(), .models_frame(), .layers_frame())"
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        return cls(
            config=RunConfig.from_dict(d["config"]),
            environment=Environment.from_dict(d["environment"]),
            models=tuple(ModelProfile.from_dict(m) for m in d["models"]),
            notes=tuple(d.get("notes", ())),
            schema_version=d.get("schema_version", 1),
        )
