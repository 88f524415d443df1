"""Profile → matplotlib Figures. Pure: no model, no device, no file I/O (report.py saves them).

Figures are made with `matplotlib.figure.Figure` directly (no pyplot, no global state) and
rendered by the Agg backend when saved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from nin_profile.render.groups import layer_groups
from nin_profile.render.names import ChartSpec, chart_plan, is_pointwise
from nin_profile.results import LayerStats, MemoryCategory, ModelProfile, PhaseMeasurement, Profile
from nin_profile.units import MiB

CATEGORY_COLORS = {
    MemoryCategory.PARAMS: "#4c72b0",
    MemoryCategory.BUFFERS: "#8172b3",
    MemoryCategory.INPUT: "#937860",
    MemoryCategory.OPTIMIZER: "#dd8452",
    MemoryCategory.WORKSPACE: "#8c8c8c",
    MemoryCategory.GRADS: "#55a868",
    MemoryCategory.ACTIVATIONS: "#c44e52",
    MemoryCategory.TRANSIENT: "#ccb974",
}
PHASE_TITLES = {"train": "training step", "inference": "inference"}


def _figures_label(profile: Profile) -> str:
    c = profile.config
    kind = "estimated" if c.static else "estimated and measured"
    return f"{kind} · {c.device} · {c.dtype} · batch {c.batch}"


def _log(ax: Axes, axis: str = "y") -> None:
    """A log axis with labelled decades only: minor ticks cost most of a figure's render time."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    (ax.yaxis if axis == "y" else ax.xaxis).set_minor_locator(NullLocator())


def _positive(values: Sequence[float]) -> list[float]:
    """Zeros as NaN: a log axis cannot show them, and a NaN bar is simply not drawn."""
    return [v if v > 0 else float("nan") for v in values]


def models_overview(profile: Profile) -> Figure:
    """Parameters, FLOPs and peak memory of every model, side by side (log scales)."""
    models = profile.models
    names = [m.name for m in models]
    fig = Figure(figsize=(max(9.0, 1.6 * len(models) + 6), 4.4), layout="constrained")
    params_ax, flops_ax, memory_ax = fig.subplots(1, 3)
    bars = params_ax.bar(names, [m.params / 1e6 for m in models], color="#4c72b0")
    params_ax.bar_label(bars, fmt="%.2f M", fontsize="x-small")
    params_ax.set(title="Parameters", ylabel="parameters (millions, log scale)")
    _grouped(
        flops_ax,
        names,
        {
            "forward": [m.flops_forward / 1e9 for m in models],
            "training step (forward + backward)": [m.flops_train_step / 1e9 for m in models],
        },
    )
    flops_ax.set(title="Computation per batch", ylabel="GFLOPs (log scale)")
    _grouped(
        memory_ax,
        names,
        {
            "training peak (estimated)": [m.train.peak / MiB for m in models],
            "inference peak (estimated)": [m.inference.peak / MiB for m in models],
        },
    )
    _measured_markers(memory_ax, profile, names)
    memory_ax.set(title="Peak memory per batch", ylabel="MiB (log scale)")
    for ax in (params_ax, flops_ax, memory_ax):
        _log(ax)
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"The models side by side ({_figures_label(profile)})")
    return fig


def _grouped(ax: Axes, names: Sequence[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        offsets = [x + (i - (len(series) - 1) / 2) * width for x in range(len(names))]
        bars = ax.bar(offsets, _positive(values), width=width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", rotation=90, padding=2)
    ax.set_xticks(range(len(names)), names)
    ax.legend(fontsize="small")


def _measured_markers(ax: Axes, profile: Profile, names: Sequence[str]) -> None:
    """Measured peaks at the estimate's batch, as markers over the estimated bars."""
    width = 0.4
    for offset, phase in ((-width / 2, "train"), (width / 2, "inference")):
        xs, ys = [], []
        for x, m in enumerate(profile.models):
            pm = m.measured.get(phase)
            if pm and pm.memory and pm.batch == profile.config.batch:
                xs.append(x + offset)
                ys.append(pm.memory.peak_allocated / MiB)
        if xs:
            ax.scatter(
                xs,
                ys,
                marker="D",
                color="black",
                zorder=3,
                label=f"{phase} peak allocated (measured)",
            )
    ax.legend(fontsize="small")


def memory_breakdown(profile: Profile, phase: str) -> Figure:
    """What is alive at each model's peak, stacked by category (estimated), with measurements."""
    models = profile.models
    names = [m.name for m in models]
    fig = Figure(figsize=(max(7.0, 1.3 * len(models) + 3), 4.8), layout="constrained")
    ax = fig.subplots()
    bottom = [0.0] * len(models)
    top = None
    for category in MemoryCategory:
        values = [_breakdown(m, phase)[category] / MiB for m in models]
        if any(values):
            top = ax.bar(
                names,
                values,
                bottom=bottom,
                label=f"{category.value} (estimated)",
                color=CATEGORY_COLORS[category],
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for key, marker, label in (
        ("peak_allocated", "D", "peak allocated (measured)"),
        ("nvml_process", "X", "process memory, NVML (measured)"),
    ):
        points = [
            (x, getattr(pm.memory, key))
            for x, pm in enumerate(_phase(models, phase))
            if pm and pm.memory and getattr(pm.memory, key) and pm.batch == profile.config.batch
        ]
        if points:
            ax.scatter(
                [p[0] for p in points],
                [p[1] / MiB for p in points],
                marker=marker,
                color="black",
                zorder=3,
                label=label,
            )
    if top is not None:
        ax.bar_label(top, labels=[f"{v:,.0f}" for v in bottom], fontsize="small")
    ax.set(
        title=f"Memory at the peak of a {PHASE_TITLES[phase]} ({_figures_label(profile)})",
        ylabel="MiB alive at the peak",
    )
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize="small", loc="upper left")
    return fig


def _breakdown(m: ModelProfile, phase: str) -> dict[MemoryCategory, int]:
    b = m.train if phase == "train" else m.inference
    return {c: b[c] for c in MemoryCategory}


def _phase(models: Sequence[ModelProfile], phase: str) -> list[PhaseMeasurement | None]:
    return [m.measured.get(phase) for m in models]


def layer_costs(profile: Profile, model: ModelProfile) -> Figure:
    """Per layer (a large model's blocks, as in the table: render/groups.py): parameters,
    forward and backward FLOPs, bytes saved for backward (log scales)."""
    groups = layer_groups(model)
    layers = [group.stats for group in groups if group.stats.name != "loss"]
    names = [f"{layer.name} {layer.type}" for layer in layers]
    fig = Figure(figsize=(13.0, max(3.5, 0.28 * len(layers) + 1.5)), layout="constrained")
    params_ax, flops_ax, saved_ax = fig.subplots(1, 3, sharey=True)
    ys = range(len(layers))
    params_ax.barh(ys, _positive([layer.params for layer in layers]), color="#4c72b0")
    params_ax.set(title="Parameters", xlabel="parameters (log scale)")
    height = 0.4
    flops_ax.barh(
        [y - height / 2 for y in ys],
        _positive([lay.flops_forward / 1e9 for lay in layers]),
        height=height,
        label="forward",
        color="#dd8452",
    )
    flops_ax.barh(
        [y + height / 2 for y in ys],
        _positive([lay.flops_backward / 1e9 for lay in layers]),
        height=height,
        label="backward",
        color="#55a868",
    )
    flops_ax.set(title="FLOPs per batch", xlabel="GFLOPs (log scale)")
    flops_ax.legend(fontsize="small")
    saved_ax.barh(ys, _positive([layer.saved_bytes / MiB for layer in layers]), color="#c44e52")
    saved_ax.set(title="Saved for backward", xlabel="MiB per batch (log scale)")
    for ax in (params_ax, flops_ax, saved_ax):
        _log(ax, "x")
    params_ax.set_yticks(list(ys), names, fontsize="small")
    params_ax.invert_yaxis()
    by = "block by block" if any(group.grouped for group in groups) else "layer by layer"
    fig.suptitle(
        f"{model.name}, {by} (estimated · {profile.config.device} · "
        f"{profile.config.dtype} · batch {profile.config.batch})"
    )
    return fig


def _roofline_points(profile: Profile, m: ModelProfile) -> list[tuple[float, float, LayerStats]]:
    """(intensity in FLOP/B, achieved GFLOP/s, layer) at the batch the layers were timed at."""
    pm = m.measured.get("inference")
    if not pm or not pm.layer_ms:
        return []
    r = pm.batch / profile.config.batch  # FLOPs and activations scale with batch; parameters don't
    points = []
    for layer in m.layers:
        ms = pm.layer_ms.get(layer.name)
        moved = (layer.input_bytes + layer.output_bytes) * r + layer.param_bytes
        if layer.flops_forward and ms and ms > 0 and moved:  # a container moves nothing itself
            flops = layer.flops_forward * r
            points.append((flops / moved, flops / (ms / 1e3) / 1e9, layer))
    return points


def roofline(profile: Profile) -> Figure:
    """Each layer's arithmetic intensity against the throughput it achieved (where timed) under
    the device's measured roofs; without timing, against its forward FLOPs."""
    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.subplots()
    timed = any(_roofline_points(profile, m) for m in profile.models)
    for i, m in enumerate(_roofline_models(profile)):
        if timed:
            points = _roofline_points(profile, m)
        else:
            points = [
                (layer.intensity, layer.flops_forward / 1e9, layer)
                for layer in m.layers
                if layer.flops_forward
            ]
        if not points:
            continue
        color, marker = f"C{i % 10}", "osD^vP*X"[i % 8]
        ax.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            label=m.name,
            marker=marker,
            color=color,
            alpha=0.8,
        )
        pointwise = [p for p in points if is_pointwise(p[2])]
        if pointwise:
            ax.scatter(
                [p[0] for p in pointwise],
                [p[1] for p in pointwise],
                marker="o",
                facecolors="none",
                edgecolors=color,
                s=160,
                label=f"{m.name}: 1×1 convolutions",
            )
    if timed:
        _roofs(ax, profile)
        ax.set(ylabel="achieved GFLOP/s (measured forward, log scale)")
        title = f"Roofline of each layer ({profile.environment.device_name})"
    else:
        ax.set(ylabel="forward GFLOPs of the layer per batch (log scale)")
        c = profile.config
        title = f"Arithmetic intensity of each layer (estimated · {c.dtype} · batch {c.batch})"
    ax.set(xlabel="arithmetic intensity, FLOPs per byte moved (log scale)", title=title)
    _log(ax, "x")
    _log(ax, "y")
    ax.legend(fontsize="small")
    return fig


def _roofline_models(profile: Profile) -> list[ModelProfile]:
    """NiN and its baselines when NiN is there (its ablations share most of its layers and would
    hide its points); otherwise every model."""
    names = {m.name for m in profile.models}
    if "nin" not in names:
        return list(profile.models)
    return [
        m
        for m in profile.models
        if m.name in ("nin", "alexnet", "vgg11", "vgg11_narrow") or not m.name.startswith("nin")
    ]


def _roofs(ax: Axes, profile: Profile) -> None:
    ceilings = next(
        (pm.ceilings for m in profile.models for pm in m.measured.values() if pm.ceilings), None
    )
    if ceilings is None:
        return
    xs = [0.1, ceilings.ridge, 1e4]
    ax.plot(
        xs,
        [min(ceilings.flops_per_s, ceilings.bytes_per_s * x) / 1e9 for x in xs],
        color="black",
        linestyle="--",
        label=f"roofs: {ceilings.flops_per_s / 1e12:.2f} TFLOP/s {ceilings.matmul_precision} "
        "matmul, "
        f"{ceilings.bytes_per_s / 1e9:.0f} GB/s copy (measured)",
    )


def sweep(profile: Profile) -> Figure:
    """Peak memory (estimated and measured) and time per iteration (measured) against batch.
    One colour per model; solid lines for training, dashed for inference."""
    timed = any(p.timing for m in profile.models for p in m.sweep)
    measured = any(p.memory for m in profile.models for p in m.sweep)
    fig = Figure(figsize=(12.0 if timed else 7.5, 5.0), layout="constrained")
    axes: list[Axes] = list(fig.subplots(1, 2, squeeze=True)) if timed else [fig.subplots()]
    memory_ax = axes[0]
    for i, m in enumerate(profile.models):
        color = f"C{i % 10}"
        for phase, style in (("train", "-"), ("inference", "--")):
            points = sorted((p for p in m.sweep if p.phase == phase), key=lambda p: p.batch)
            est = [(p.batch, p.predicted.peak / MiB) for p in points if p.predicted]
            if est:
                memory_ax.plot(
                    *zip(*est, strict=True), style, color=color, label=f"{m.name} {phase} (est.)"
                )
            meas = [(p.batch, p.memory.peak_allocated / MiB) for p in points if p.memory]
            if meas:
                memory_ax.scatter(*zip(*meas, strict=True), color=color, marker="D")
            times = [(p.batch, p.timing.ms_per_iter) for p in points if p.timing]
            if timed and times:
                axes[1].plot(
                    *zip(*times, strict=True),
                    style,
                    marker="o",
                    color=color,
                    label=f"{m.name} {phase}",
                )
    legend = "lines: estimated, ◆: measured" if measured else "estimated"
    memory_ax.set(
        title=f"Peak memory against batch size ({legend})",
        xlabel="batch size (log scale)",
        ylabel="MiB (log scale)",
    )
    if timed:
        axes[1].set(
            title="Time per iteration (measured)",
            xlabel="batch size (log scale)",
            ylabel="ms per iteration (log scale)",
        )
    for ax in axes:
        _log(ax, "x")
        _log(ax, "y")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"Batch sweep ({_figures_label(profile)})")
    return fig


_MAKERS: dict[str, Callable[[Profile, ChartSpec], Figure]] = {
    "models": lambda p, s: models_overview(p),
    "memory": lambda p, s: memory_breakdown(p, s.phase or "train"),
    "roofline": lambda p, s: roofline(p),
    "sweep": lambda p, s: sweep(p),
    "layers": lambda p, s: layer_costs(p, next(m for m in p.models if m.name == s.model)),
}


def all_charts(profile: Profile) -> dict[str, Figure]:
    """File name → Figure for every chart the report links."""
    return {spec.file: chart(profile, spec.file) for spec in chart_plan(profile)}


def chart(profile: Profile, file: str) -> Figure:
    """The one chart of the report saved as `file`."""
    spec = next((spec for spec in chart_plan(profile) if spec.file == file), None)
    if spec is None:
        raise KeyError(f"the report of this profile has no chart {file!r}")
    return _MAKERS[spec.kind](profile, spec)
