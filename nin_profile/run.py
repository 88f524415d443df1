"""One run: every requested model analysed, then measured, swept and fitted under one config.

Progress goes out as plain events (`on_progress`); printing them is the CLI's business.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from nin_profile.engine.analysis import AnalysisConfig, analyse_model, fits, smallest_image_size
from nin_profile.engine.layer_stack import ROOT
from nin_profile.engine.precision import cuda_amp_note, get_precision
from nin_profile.engine.tracing import LOSS
from nin_profile.environment import collect_environment
from nin_profile.errors import LayerFailed, NeedsValues, ProfileError, StepFailed
from nin_profile.files import save_for_worker
from nin_profile.measure.plan import (
    CPU_PLANNING_FLOPS_PER_THREAD,
    CPU_PLANNING_SLOWDOWN,
    MIN_ROUNDS,
    Plan,
    largest_fitting,
    plan_cpu,
    plan_cpu_run,
)
from nin_profile.measure.runner import run_worker, timing_of, to_measurement
from nin_profile.measure.worker import Request, TimingRequest
from nin_profile.models import DEFAULT_CLASSES, SAVED_PREFIX, ModelConfig, instance
from nin_profile.results import (
    BatchFit,
    Ceilings,
    MemoryBreakdown,
    ModelProfile,
    PeerFigures,
    PhaseMeasurement,
    PrecisionProfile,
    Profile,
    RunConfig,
)
from nin_profile.units import fmt_bytes

PHASES = ("train", "inference")
# Used by --memory-budget only when the context was neither measured nor given (--cuda-context).
ASSUMED_CUDA_CONTEXT = 512 * 2**20


@dataclass(frozen=True)
class ProgressEvent:
    """Where a run is: `task` (e.g. 'vgg11 · train · batch 128'), its stage and count."""

    task: str
    stage: str
    done: int
    total: int


ProgressSink = Callable[[ProgressEvent], None]


def _ignore(event: ProgressEvent) -> None:
    pass


def model_config(config: RunConfig) -> ModelConfig:
    return ModelConfig.of(config.inputs, config.classes)


def analysis_config(
    config: RunConfig,
    batch: int | None = None,
    memory_limit: int | None = None,
    precision: str | None = None,
) -> AnalysisConfig:
    return AnalysisConfig(
        batch=batch or config.batch,
        inputs=config.inputs,
        classes=config.classes,
        optimizer=config.optimizer,
        device=config.device,
        memory_limit=memory_limit,
        precision=precision or config.precision,
        channels_last=config.channels_last,
    )


def analyse_or_explain(
    name: str,
    config: RunConfig,
    batch: int | None = None,
    memory_limit: int | None = None,
    precision: str | None = None,
) -> ModelProfile:
    """Analyse one model; a layer that cannot run becomes one line naming model, layer and fix."""
    try:
        return analyse_model(name, analysis_config(config, batch, memory_limit, precision))
    except (NeedsValues, StepFailed) as exc:
        raise ProfileError(f"{name}: {exc}") from exc
    except LayerFailed as exc:
        if exc.layer == LOSS:
            raise ProfileError(
                f"{name}: the training loss cannot take the model's output ({exc.reason})"
            ) from exc
        precision = precision or config.precision
        # the precision where it is not the default: autocast can be what fails (a layer
        # whose inputs autocast casts to different dtypes)
        under = "" if precision == "fp32" else f" in {precision}"
        hint = _hint(name, config, exc, batch)
        raise ProfileError(f"{name} on {config.inputs.describe()}{under}: {exc}{hint}") from exc


# a forward that takes more than one input, called with the batch alone
_MORE_INPUTS = re.compile(r"forward\(\) missing \d+ required positional argument")

# a CPU tensor an op meets with the trace's (for a CUDA target: for the CPU it joins the trace),
# and the RNN layers' own check of their hidden state's device, which runs before any op
_CPU_TENSOR_MEETS_META = re.compile(
    r"Tensor on device cpu is not on the expected device meta|"
    r"found input tensor at meta and hidden tensor at cpu"
)

# the sizes of one example a convolution takes (the batch in front)
_EXAMPLE_SIZES = {
    f"{kind}{len(sizes) - 1}d": sizes
    for kind in ("Conv", "ConvTranspose")
    for sizes in (
        ("channels", "length"),
        ("channels", "height", "width"),
        ("channels", "depth", "height", "width"),
    )
}


def _hint(name: str, config: RunConfig, exc: LayerFailed, batch: int | None) -> str:
    """What would make the layer run: float input where the token ids reach another layer than
    an embedding; as many sizes an example as a convolution fed the batch takes; the channels
    the layer expects, where the batch's channels reach it and it wants others; token ids for
    an embedding fed floats; else the smallest image size the step runs at."""
    inputs, batch = config.inputs, batch or config.batch
    embedding = exc.layer_type in ("Embedding", "EmbeddingBag")
    fed_the_batch = exc.input_shape == inputs.batch_shape(batch)
    if inputs.token_ids and not embedding and fed_the_batch:
        return (
            f"; {name} takes the token ids into a {exc.layer_type}, not an embedding: "
            "leave out --token-ids for float input (token_ids=False from Python)"
        )
    sizes = _EXAMPLE_SIZES.get(exc.layer_type)
    if sizes and fed_the_batch and len(inputs.shape) != len(sizes):
        return (
            f"; a {exc.layer_type} takes examples of {len(sizes)} sizes ({', '.join(sizes)}): "
            f"give --input-shape {','.join(size.upper() for size in sizes)}"
        )
    if exc.expected_channels and exc.input_shape[1:2] == inputs.shape[:1]:
        wanted = (exc.expected_channels, *inputs.shape[1:])
        given = f"--input-shape {','.join(map(str, wanted))}, input_size={wanted} from Python"
        if inputs.square_image:
            given = f"--channels {exc.expected_channels} or {given}"
        return f"; {name} expects {exc.expected_channels} channels ({given})"
    if _CPU_TENSOR_MEETS_META.search(exc.reason):
        return (
            f"; a tensor {name} makes on the CPU in its forward (torch.tensor, torch.zeros, "
            "torch.arange without device=) meets its other tensors, which the trace allows "
            "only where a CPU step computes with it (for CUDA, whose arithmetic refuses such a "
            "mix, nowhere; an RNN's hidden state, nowhere): make it on the input's device "
            "(device=x.device), or keep it as a buffer"
        )
    if exc.layer == ROOT and _MORE_INPUTS.search(exc.reason):
        return (
            f"; nin_profile feeds {name} one input, the batch: wrap a model that takes more "
            "in a module whose forward takes one and makes the others"
        )
    if embedding and not inputs.token_ids:
        return (
            f"; nin_profile fed {name} float {inputs.describe()}, not the integer token ids an "
            "embedding looks up: give --token-ids and --input-shape LENGTH, the tokens of an "
            "example (token_ids=True, input_size=(LENGTH,) from Python)"
        )
    if not inputs.square_image:
        return ""
    cfg = model_config(config)
    smallest = None if fits(name, cfg, batch) else smallest_image_size(name, cfg, batch)
    if smallest is None:
        return ""
    shape = f"{cfg.channels},{smallest},{smallest}"
    return f"; the smallest --image-size {name} accepts is {smallest} (--input-shape {shape})"


def predicted(profile: ModelProfile, phase: str) -> MemoryBreakdown:
    return profile.train if phase == "train" else profile.inference


def step_flops(profile: ModelProfile, phase: str) -> int:
    """Counted FLOPs of one iteration of `phase` at the profile's batch."""
    return profile.flops_train_step if phase == "train" else profile.flops_forward


@dataclass(frozen=True)
class Subject:
    """A model in a precision, as the run measures it: the estimate at the run's batch."""

    static: ModelProfile
    precision: str

    @property
    def key(self) -> tuple[str, str]:
        return self.static.name, self.precision

    @property
    def label(self) -> str:
        return (
            self.static.name if self.precision == "fp32" else f"{self.static.name} {self.precision}"
        )


Measured = dict[tuple[str, str], dict[str, PhaseMeasurement]]  # (model, precision) → phase →


class Run:
    """The state one run shares across models: config, progress, CPU speed, CUDA context."""

    def __init__(self, config: RunConfig, on_progress: ProgressSink) -> None:
        self.config = config
        self.on_progress = on_progress
        self.notes: list[str] = []
        self.measured_context: int | None = None
        self._estimates: dict[tuple[str, int, str], ModelProfile] = {}
        self._searched: dict[tuple[str, int, int | None, str], ModelProfile] = {}
        self.started = time.monotonic()
        self._saved: dict[str, str] = {}
        self.classes: dict[str, int | None] = {}  # each model's, as its analysis read them

    def analyse(
        self, name: str, batch: int | None = None, precision: str | None = None
    ) -> ModelProfile:
        precision = precision or self.config.precision
        words = "" if precision == self.config.precision else f" · {precision}"
        task = f"{name} · estimate · batch {batch or self.config.batch}{words}"
        self.on_progress(ProgressEvent(task, "analysis", 0, 1))
        profile = analyse_or_explain(name, self.config, batch, precision=precision)
        self.classes[name] = profile.classes
        return profile

    def analyse_at(
        self, static: ModelProfile, batch: int, precision: str | None = None
    ) -> ModelProfile:
        """The estimate at `batch` in `precision` (`static` itself where it is the run's batch
        and precision: `static` is the run's batch's estimate in `precision`), made once."""
        precision = precision or self.config.precision
        if batch == self.config.batch:
            return static
        key = (static.name, batch, precision)
        if key not in self._estimates:
            self._estimates[key] = self.analyse(static.name, batch, precision)
        return self._estimates[key]

    def estimate(
        self, name: str, batch: int, memory_limit: int | None, precision: str | None
    ) -> ModelProfile:
        """An estimate for a batch search, made once for both phases (no progress event)."""
        key = (name, batch, memory_limit, precision or self.config.precision)
        if key not in self._searched:
            self._searched[key] = analyse_or_explain(
                name, self.config, batch, memory_limit, precision
            )
        return self._searched[key]

    def budget_left(self) -> float | None:
        """Seconds of --cpu-time-budget this run has not spent yet (None: no budget)."""
        budget = self.config.cpu_time_budget
        return max(1.0, budget - (time.monotonic() - self.started)) if budget > 0 else None

    @property
    def cpu_rate(self) -> float:
        """The FLOP/s CPU plans assume (CPU_PLANNING_FLOPS_PER_THREAD a thread)."""
        import torch

        return CPU_PLANNING_FLOPS_PER_THREAD * torch.get_num_threads()

    def worker_model(self, name: str) -> str:
        """How a worker process gets the model: its name, or the copy of an instance handed
        to the Python API, saved once for all its measurements."""
        module = instance(name)
        if module is None:
            return name
        if name not in self._saved:
            self._saved[name] = SAVED_PREFIX + str(save_for_worker(module))
        return self._saved[name]

    def request(
        self, name: str, phase: str, plan: Plan, per_layer: bool = True, precision: str = ""
    ) -> Request:
        c = self.config
        return Request(
            model=self.worker_model(name),
            phase=phase,
            batch=plan.batch,
            device=c.device,
            input_shape=c.inputs.shape,
            token_ids=c.inputs.token_ids,
            batch_dim=c.inputs.batch_dim,
            classes=self.classes.get(name, c.classes),
            optimizer=c.optimizer,
            warmup=plan.warmup,
            iterations=plan.iterations,
            time_limit_s=plan.time_limit_s,
            per_layer=per_layer,
            precision=precision or c.precision,
            channels_last=c.channels_last,
        )

    def run_worker(self, request: Request | TimingRequest, task: str) -> dict[str, Any]:
        return run_worker(
            request,
            lambda stage, done, total: self.on_progress(ProgressEvent(task, stage, done, total)),
        )

    def measure(
        self,
        name: str,
        phase: str,
        plan: Plan,
        static: ModelProfile,
        per_layer: bool = True,
        precision: str = "",
    ) -> PhaseMeasurement:
        """Measure one phase in a worker process; `static` is the estimate at `plan.batch`."""
        request = self.request(name, phase, plan, per_layer, precision)
        words = "" if request.precision == self.config.precision else f" · {request.precision}"
        raw = self.run_worker(request, f"{name} · {phase} · batch {plan.batch}{words}")
        result = to_measurement(
            raw,
            request,
            step_flops(static, phase),
            predicted(static, phase),
            tuple(n for n in (plan.note,) if n),
        )
        if result.memory and result.memory.cuda_context and self.measured_context is None:
            self.measured_context = result.memory.cuda_context
        return result

    def plan(self, static: ModelProfile, phase: str, batch: int, share: int) -> Plan:
        """One measurement in its own process (a sweep point; any measurement on CUDA)."""
        c = self.config
        if c.device != "cpu" or c.cpu_time_budget <= 0:
            return Plan(batch, c.warmup, c.iterations)
        share_s = c.cpu_time_budget / share
        flops = per_batch_flops(static, phase, c.batch, c.precision)
        return plan_cpu(batch, flops, self.cpu_rate, share_s, c.iterations)


def per_batch_flops(
    static: ModelProfile, phase: str, batch: int, precision: str = "fp32"
) -> Callable[[int], int]:
    """Counted FLOPs of one iteration at any batch, from the estimate at `batch` (they are
    linear in the batch), weighed for planning by how much slower `precision` runs on the CPU
    (CPU_PLANNING_SLOWDOWN)."""
    per_example = step_flops(static, phase) / batch * CPU_PLANNING_SLOWDOWN.get(precision, 1)
    return lambda b: int(per_example * b)


def run_profile(config: RunConfig, on_progress: ProgressSink = _ignore) -> Profile:
    run = Run(config, on_progress)
    statics = [run.analyse(name) for name in config.models]
    if config.parallel != "none":  # per rank under DDP or FSDP2, predicted before measuring
        from nin_profile.parallel_run import parallel_profile, rank_points

        points = {s.name: rank_points(run, s) for s in statics}
    subjects = [Subject(s, config.precision) for s in statics]
    compared = {  # (model, precision) → its estimate at the run's batch (--compare-precision)
        (s.name, p): s if p == config.precision else run.analyse(s.name, precision=p)
        for s in statics
        for p in config.compare_precisions
    }
    subjects += [Subject(s, p) for (_, p), s in compared.items() if p != config.precision]
    measured: Measured = {}
    if not config.static and config.device == "cpu":
        measured = _measure_on_cpu(run, subjects)
    elif not config.static:
        measured = {s.key: _measure_phases(run, s) for s in subjects}
    models = []
    for static in statics:
        profile = replace(static, measured=measured.get((static.name, config.precision), {}))
        profile = replace(profile, sweep=_sweep(run, static))
        if config.compare_peers:
            profile = replace(profile, peers=_peers(run, static))
        profile = replace(profile, fits=_fits(run, profile))
        if config.parallel != "none":  # real ranks measured beside (parallel_run.py)
            profile = replace(profile, parallel=parallel_profile(run, profile, points[static.name]))
        precisions = tuple(
            _precision_profile(run, compared[static.name, p], p, measured)
            for p in config.compare_precisions
        )
        models.append(replace(profile, precisions=precisions))
    named = (config.precision, *config.compare_precisions)
    if note := cuda_amp_note(config.device, named, measured=not config.static):
        run.notes.append(note)
    run.notes.extend(time_first_notes(statics, config))
    run.notes.extend(
        f"cuDNN's RNN not traced: {m.name}'s {', '.join(m.unpredicted)}; traced as the "
        "composite cell, whose saved tensors stand in for cuDNN's reserve"
        for m in statics
        if m.unpredicted
    )
    env = collect_environment(config.device, measured=not config.static)
    return Profile(config, env, tuple(models), tuple(run.notes))


def _precision_profile(
    run: Run, static: ModelProfile, precision: str, measured: Measured
) -> PrecisionProfile:
    """One model in one precision for the comparison: its estimate at the run's batch, its
    measurements, and its largest batch for --memory-budget (predicted)."""
    fits = []
    if run.config.memory_budget:
        fits = [
            _predicted_fit(run, static, phase, run.config.memory_budget, precision)
            for phase in PHASES
        ]
    return PrecisionProfile(
        precision=precision,
        activation_bytes_saved=static.activation_bytes_saved,
        saved_bytes_by_dtype=static.saved_bytes_by_dtype,
        train=static.train,
        inference=static.inference,
        measured=measured.get((static.name, precision), {}),
        fits=tuple(fits),
    )


def _peers(run: Run, static: ModelProfile) -> PeerFigures:
    from nin_profile.peers import peer_figures

    c = run.config
    run.on_progress(ProgressEvent(f"{static.name} · torchinfo and fvcore", "peers", 0, 1))
    classes = c.classes or DEFAULT_CLASSES  # what a built-in model is built with
    return peer_figures(static.name, c.inputs, classes, c.batch)


def _measure_on_cpu(run: Run, subjects: list[Subject]) -> Measured:
    """Every model (in each precision) at one batch per phase (the plan's): memory in a
    process per model, precision and phase, then the times of all of them in one process,
    interleaved (TimingRequest)."""
    c = run.config

    def flops(phase: str, b: int) -> int:
        return sum(per_batch_flops(s.static, phase, c.batch, s.precision)(b) for s in subjects)

    flops_at = {phase: lambda b, phase=phase: flops(phase, b) for phase in PHASES}
    plan = plan_cpu_run(c.batch, flops_at, run.cpu_rate, c.cpu_time_budget, c.iterations)
    if plan.note:
        run.notes.append(plan.note)
    measured: Measured = {}
    for subject in subjects:
        measured[subject.key] = {}
        for phase in PHASES:
            batch = plan.batches[phase]
            memory_plan = Plan(batch, warmup=1, iterations=0)
            at_batch = run.analyse_at(subject.static, batch, subject.precision)
            measured[subject.key][phase] = run.measure(
                subject.static.name, phase, memory_plan, at_batch, False, subject.precision
            )
    timed = [
        (subject, phase)
        for subject in subjects
        for phase in PHASES
        if measured[subject.key][phase].memory is not None
    ]
    if timed:
        rounds = max(plan.rounds, c.iterations)
        left = run.budget_left()
        if left is not None:  # the per-layer timing comes after the rounds: six passes
            layers_s = 6 * flops_at["inference"](plan.batches["inference"]) / run.cpu_rate
            left = max(1.0, left - layers_s)
        _time_interleaved(run, rounds, left, timed, measured)
    return measured


def _time_interleaved(
    run: Run,
    rounds: int,
    time_limit_s: float | None,
    timed: list[tuple[Subject, str]],
    measured: Measured,
) -> None:
    """Time `timed` in one worker, interleaved; add the times, per-layer times and roofs to
    `measured` in place. A failure leaves the memory figures and says why there are no times."""
    entries = tuple(
        run.request(
            s.static.name, phase, Plan(measured[s.key][phase].batch, 1, rounds), True, s.precision
        )
        for s, phase in timed
    )
    request = TimingRequest(entries, rounds, min(MIN_ROUNDS, rounds), time_limit_s)
    raw = run.run_worker(request, f"{len(timed)} measurements · interleaved")
    if "timings" not in raw:
        error = raw.get("error", {}).get("message", "no result")
        run.notes.append(f"no CPU timings: the timing process failed ({error})")
        return
    layer_ms = raw.get("layer_ms") or [None] * len(timed)
    for (subject, phase), raw_timing, layers in zip(timed, raw["timings"], layer_ms, strict=True):
        pm = measured[subject.key][phase]
        flops = step_flops(run.analyse_at(subject.static, pm.batch, subject.precision), phase)
        extra: dict[str, Any] = {"timing": timing_of(raw_timing, flops)}
        if phase == "inference":
            roof = raw.get("ceilings", {}).get(get_precision(subject.precision).compute)
            extra |= {"layer_ms": layers or {}, "ceilings": Ceilings(**roof) if roof else None}
        measured[subject.key][phase] = replace(pm, **extra)


RECURRENT = ("RNN", "LSTM", "GRU")


def time_first_notes(statics: Iterable[ModelProfile], config: RunConfig) -> list[str]:
    """A line for each model whose time-first recurrent layer (`batch_first=False`, which
    takes (time, batch, features)) was handed the batch in its time dim: its output has the
    batch first. Where the model takes time-first input, --batch-dim 1 profiles it as it runs;
    a model that transposes its batch-first input before the layer gives no line."""
    if config.inputs.batch_dim:
        return []
    notes = []
    for model in statics:
        for layer in model.layers:
            shape = layer.output_shape
            time_first = layer.type in RECURRENT and "batch_first=True" not in layer.spec
            if time_first and shape and len(shape) == 3 and shape[0] == config.batch != shape[1]:
                notes.append(
                    f"time-first recurrent layer: {model.name}'s {layer.type} `{layer.name}` "
                    f"(batch_first=False) took the batch of {config.batch} as its time steps "
                    f"(its output {'×'.join(map(str, shape))}); if the model takes (time, "
                    "batch, features), give --batch-dim 1 (batch_dim=1 from Python)"
                )
                break
    return notes


def _measure_phases(run: Run, subject: Subject) -> dict[str, PhaseMeasurement]:
    """On CUDA: each phase at the requested batch, memory and time in a process of its own
    (GPU times are steady from run to run; the CPU's are not: _measure_on_cpu)."""
    c, static = run.config, subject.static
    plan = Plan(c.batch, c.warmup, c.iterations)
    return {
        phase: run.measure(static.name, phase, plan, static, True, subject.precision)
        for phase in PHASES
    }


def _sweep(run: Run, static: ModelProfile) -> tuple[PhaseMeasurement, ...]:
    """Each sweep batch and phase: the estimate, and the measurement unless --static."""
    c = run.config
    points = []
    share = max(1, len(c.models) * len(PHASES) * len(c.sweep_batches))
    for batch in c.sweep_batches:
        at_batch = run.analyse(static.name, batch)
        for phase in PHASES:
            estimate = PhaseMeasurement(
                phase, batch, "estimate", None, None, None, predicted=predicted(at_batch, phase)
            )
            if c.static:
                points.append(estimate)
                continue
            plan = run.plan(static, phase, batch, share)
            if plan.batch != batch:  # a sweep point is a batch size: skip it rather than shrink it
                points.append(replace(estimate, error=f"skipped on the CPU: {plan.note}"))
                continue
            points.append(run.measure(static.name, phase, replace(plan, warmup=1), at_batch))
    return tuple(points)


def _fits(run: Run, static: ModelProfile) -> tuple[BatchFit, ...]:
    """The largest batches the run asks for, in the run's precision."""
    fits = []
    for phase in PHASES:
        if run.config.memory_budget:
            fits.append(_predicted_fit(run, static, phase, run.config.memory_budget))
        if run.config.max_batch:
            fits.append(_measured_fit(run, static, phase))
    return tuple(fits)


def _context(run: Run) -> tuple[int, str]:
    """The CUDA context to add to a prediction, and where the figure comes from."""
    if run.config.cuda_context is not None:
        return run.config.cuda_context, "given with --cuda-context"
    if run.measured_context is not None:
        return run.measured_context, "measured in this run"
    return ASSUMED_CUDA_CONTEXT, "assumed, not measured; set it with --cuda-context"


def _predicted_fits(
    run: Run, name: str, phase: str, limit: int, precision: str | None = None
) -> Callable[[int], bool]:
    """On CUDA: whether the simulated caching allocator serves the step within `limit` less
    the context; on the CPU, whether the estimated peak fits in `limit` (no CUDA context)."""
    if run.config.device == "cuda":
        context, _ = _context(run)
        within = limit - context

        def served(batch: int) -> bool:
            profile = run.estimate(name, batch, within, precision)
            reserved = predicted(profile, phase).reserved
            return reserved is not None and reserved <= within

        return served

    def fits(batch: int) -> bool:
        return predicted(run.estimate(name, batch, None, precision), phase).peak <= limit

    return fits


def _affine_guess(
    run: Run, static: ModelProfile, phase: str, limit: int, precision: str | None = None
) -> int:
    """The batch where the predicted peak, nearly affine in batch, would reach `limit`."""
    at_one = predicted(run.estimate(static.name, 1, None, precision), phase).peak
    per_example = (predicted(static, phase).peak - at_one) / max(1, run.config.batch - 1)
    context = _context(run)[0] if run.config.device == "cuda" else 0
    return max(1, int((limit - context - at_one) / max(per_example, 1.0)) + 1)


def _predicted_fit(
    run: Run, static: ModelProfile, phase: str, budget: int, precision: str | None = None
) -> BatchFit:
    """The largest batch whose step fits `budget` as predicted; `static` is the estimate at
    the run's batch in `precision` (the run's own by default)."""
    words = f" · {precision}" if precision and precision != run.config.precision else ""
    task = f"{static.name} · {phase} · {fmt_bytes(budget)}{words}"
    run.on_progress(ProgressEvent(task, "fit", 0, 1))
    guess = _affine_guess(run, static, phase, budget, precision)
    batch, _ = largest_fitting(_predicted_fits(run, static.name, phase, budget, precision), guess)
    if run.config.device == "cuda":
        context, source = _context(run)
        how = (
            "predicted for a CUDA device: its caching allocator simulated within the budget "
            f"less a CUDA context of {fmt_bytes(context)} ({source})"
        )
    else:
        how = f"predicted for the {run.config.device.upper()}: the estimated peak within the budget"
    return BatchFit(phase, batch or None, budget, how)


class _SearchStopped(Exception):
    """A probe of the batch search failed for a reason other than memory."""


def _measured_fit(run: Run, static: ModelProfile, phase: str) -> BatchFit:
    """The largest batch that runs, by bisection over real runs, each in its own process.

    The search starts at the batch the estimate (plus the measured CUDA context) predicts for
    the device's memory, 2% steps first. Only an out-of-memory error counts as "does not fit";
    any other failure stops the search and is reported."""
    probes: list[int] = []
    total: list[int] = []

    def fits(batch: int) -> bool:
        """One warm-up step (it makes the optimizer state) and the measured step: no timing."""
        probes.append(batch)
        plan = Plan(batch, warmup=1, iterations=0)
        request = replace(run.request(static.name, phase, plan, False), scratch=False)
        raw = run.run_worker(request, f"{static.name} · {phase} · largest batch · try {batch}")
        total[:] = [raw["total_memory"]] if raw.get("total_memory") else total
        error = raw.get("error")
        if error and error["kind"] != "out_of_memory":
            raise _SearchStopped(f"batch {batch}: {error['message']}")
        return error is None

    memory = _device_memory(static)
    guess = _affine_guess(run, static, phase, memory) if memory else run.config.batch
    try:
        fit, fail = largest_fitting(fits, guess, precision=0.01, first_step=0.02 if memory else 1.0)
        how = (
            f"measured: batch {fit} runs and {fail} does not ({len(probes)} runs, "
            "each in a fresh process; within 1%)"
            if fail
            else f"measured: every batch tried up to {fit} runs"
        )
    except _SearchStopped as exc:
        fit, how = 0, f"search stopped after {len(probes)} runs: {exc}"
    return BatchFit(phase, fit or None, total[0] if total else 0, how)


def _device_memory(profile: ModelProfile) -> int | None:
    """The device's memory as the phase measurements reported it (a seed for the search)."""
    return next((m.total_memory for m in profile.measured.values() if m.total_memory), None)
