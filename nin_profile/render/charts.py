"""Profile → matplotlib Figures. Pure: no model, no device, no file I/O (report.py saves them).

Figures are made with `matplotlib.figure.Figure` directly (no pyplot, no global state) and
rendered by the Agg backend when saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

from nin_profile.render.groups import layer_groups
from nin_profile.render.names import ChartSpec, chart_plan, is_pointwise
from nin_profile.render.text import precision_title
from nin_profile.results import (
    LayerStats,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    PhaseMeasurement,
    Profile,
)
from nin_profile.units import KiB, MiB, fmt_bytes, fmt_number, fmt_percent

CATEGORY_COLORS = {
    MemoryCategory.PARAMS: "#4c72b0",
    MemoryCategory.BUFFERS: "#8172b3",
    MemoryCategory.INPUT: "#937860",
    MemoryCategory.OPTIMIZER: "#dd8452",
    MemoryCategory.WORKSPACE: "#8c8c8c",
    MemoryCategory.GRADS: "#55a868",
    MemoryCategory.WEIGHT_COPIES: "#64b5cd",
    MemoryCategory.ACTIVATIONS: "#c44e52",
    MemoryCategory.TRANSIENT: "#ccb974",
    MemoryCategory.COMMUNICATION: "#64b5cd",
    MemoryCategory.UNSHARDED_PARAMS: "#a6bddb",
}
PHASE_TITLES = {"train": "a training step", "inference": "inference"}
PARAMS_COLOR = CATEGORY_COLORS[MemoryCategory.PARAMS]
INFERENCE_COLOR = "#2a9d8f"
TRAIN_COLOR = "#dd8452"
INFERENCE_EST = "inference: forward pass (estimated)"
TRAIN_EST = "training step: forward + backward (estimated)"
INFERENCE_MEAS = "inference: peak allocated (measured)"
TRAIN_MEAS = "training step: peak allocated (measured)"
# MeasuredMemory's field, its legend and the style of its bars
MEASURED_MEMORY: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("peak_allocated", "peak allocated (measured)", {"facecolor": "white", "hatch": "////"}),
    ("nvml_process", "process memory, NVML (measured)", {"facecolor": "#d9d9d9", "hatch": "...."}),
)
LEGIBLE_TITLE_WIDTH = 5.0  # inches an axes needs for a two-line title not to run past it
LEGEND_WIDTH = 3.8  # inches a legend beside the axes takes, with a category's sizes in it
SWEEP_LINES: dict[str, tuple[str, Any]] = {
    "train": ("training", "-"),
    "inference": ("inference", "--"),
}
ESTIMATED_MARK: dict[str, Any] = {"marker": "o", "markersize": 4}
MEASURED_MARK: dict[str, Any] = {"marker": "D", "markersize": 7, "markerfacecolor": "none"}
HEADROOM = 0.2  # above the tallest bar, a fraction of the data's range: room for its label


def _subtitle(profile: Profile, measured: bool, batches: Sequence[int] = ()) -> str:
    """What a chart draws: estimated alone or with measurements, on what, at which batches
    (the run's batch unless given)."""
    c = profile.config
    kind = "estimated and measured" if measured else "estimated"
    return f"{kind} · {c.device} · {precision_title(c)} · {_batches(batches or [c.batch])}"


def _batches(batches: Sequence[int]) -> str:
    """'batch 128', or 'batches 1, 32, 128, 256'."""
    return f"batch{'es' if len(batches) > 1 else ''} {', '.join(map(str, batches))}"


def _tick_text(value: float, _pos: int | None = None) -> str:
    """A tick as a plain number, thousands separated: 0.001, 2.5, 200, 17,500."""
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def _log(ax: Axes, axis: str = "y") -> None:
    """A log axis with at least three labelled ticks: decades where the axis spans three or
    more, else 1, 2 and 5 of each decade. No minor ticks: they cost most of a figure's render
    time. Call it once everything is drawn (it reads the axis's limits)."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = math.log10(high / low)
    subs = (1.0,) if decades >= 3 else (1.0, 2.0, 5.0) if decades >= 1 else tuple(range(1, 10))
    which = ax.yaxis if axis == "y" else ax.xaxis
    which.set_major_locator(LogLocator(subs=subs, numticks=100))
    which.set_major_formatter(FuncFormatter(_tick_text))
    which.set_minor_locator(NullLocator())


def _offsets(groups: int, column: int, columns: int, width: float) -> list[float]:
    """The x of the `column`-th of `columns` bars side by side in each group."""
    return [x + (column - (columns - 1) / 2) * width for x in range(groups)]


def _bars(
    ax: Axes,
    xs: Sequence[float],
    values: Sequence[float | None],
    text: Callable[[float], str],
    rotation: float = 90,
    **style: Any,
) -> None:
    """Bars where a value is known (None: no bar), each labelled with `text` of its value."""
    points = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
    if points:
        bars = ax.bar([x for x, _ in points], [v for _, v in points], **style)
        ax.bar_label(
            bars,
            labels=[text(v) for _, v in points],
            fontsize="x-small",
            rotation=rotation,
            padding=2,
        )


def _model_axis(ax: Axes, names: Sequence[str]) -> None:
    """Model names under the groups; room above the tallest bar for its label."""
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", rotation_mode="anchor")
    ax.yaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.margins(y=HEADROOM)


def _measured_mib(profile: Profile, phase: str, key: str = "peak_allocated") -> list[float | None]:
    """Each model's measured memory figure `key` of `phase` in MiB, where it was measured at
    the batch of the estimates (a run on the CPU may measure at a smaller one), else None."""
    values: list[float | None] = []
    for m in profile.models:
        pm = m.measured.get(phase)
        at_batch = pm is not None and pm.memory is not None and pm.batch == profile.config.batch
        value = getattr(pm.memory, key) if at_batch and pm and pm.memory else None
        values.append(value / MiB if value else None)
    return values


def _legend_below(fig: Figure, columns: int = 4) -> None:
    """One legend for the whole figure, under its axes, each label once."""
    labelled: dict[str, Artist] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    fig.legend(
        list(labelled.values()),
        list(labelled),
        loc="outside lower center",
        ncols=columns,
        fontsize="small",
    )


def models_overview(profile: Profile) -> Figure:
    """Parameters, FLOPs and peak memory of every model side by side, on linear scales: the
    point is how many times one model's figure is another's."""
    models = profile.models
    names = [m.name for m in models]
    fig = Figure(figsize=(max(9.0, 1.6 * len(models) + 6), 5.2), layout="constrained")
    params_ax, flops_ax, memory_ax = fig.subplots(1, 3)
    xs = range(len(models))
    params = [m.params / 1e6 for m in models]
    _bars(params_ax, xs, params, lambda v: f"{fmt_number(v, 2)} M", rotation=0, color=PARAMS_COLOR)
    params_ax.set(title="Parameters", ylabel="parameters (millions)")
    _flops_panel(flops_ax, profile)
    measured = _peaks_panel(memory_ax, profile)
    for ax in (params_ax, flops_ax, memory_ax):
        _model_axis(ax, names)
    _legend_below(fig, columns=2)
    fig.suptitle(f"The models side by side\n{_subtitle(profile, measured)}")
    return fig


def _flops_panel(ax: Axes, profile: Profile) -> None:
    """FLOPs of a forward pass and of a training step, per batch."""
    models = profile.models
    series = (
        (INFERENCE_EST, INFERENCE_COLOR, [m.flops_forward / 1e9 for m in models]),
        (TRAIN_EST, TRAIN_COLOR, [m.flops_train_step / 1e9 for m in models]),
    )
    width = 0.8 / len(series)
    for column, (label, color, values) in enumerate(series):
        xs = _offsets(len(models), column, len(series), width)
        _bars(ax, xs, values, fmt_number, width=width, label=label, color=color)
    ax.set(
        title="Computation per batch",
        ylabel=f"GFLOPs per batch of {profile.config.batch} (FLOPs = 2 × MACs)",
    )


def _peaks_panel(ax: Axes, profile: Profile) -> bool:
    """Estimated peaks of inference and of a training step, each beside its measurement where
    there is one at this batch; whether any measurement is drawn."""
    models = profile.models
    series: list[tuple[str, Sequence[float | None], dict[str, Any], str | None]] = [
        (INFERENCE_EST, [m.inference.peak / MiB for m in models], {"color": INFERENCE_COLOR}, None),
        (
            INFERENCE_MEAS,
            _measured_mib(profile, "inference"),
            _measured_style(INFERENCE_COLOR),
            "inference",
        ),
        (TRAIN_EST, [m.train.peak / MiB for m in models], {"color": TRAIN_COLOR}, None),
        (TRAIN_MEAS, _measured_mib(profile, "train"), _measured_style(TRAIN_COLOR), "train"),
    ]
    drawn = [entry for entry in series if any(entry[1])]
    width = 0.8 / len(drawn)
    for column, (label, values, style, measured_phase) in enumerate(drawn):
        xs = _offsets(len(models), column, len(drawn), width)
        _bars(ax, xs, values, fmt_number, width=width, label=label, **style)
        if measured_phase:
            _gaps(ax, xs, values, profile, measured_phase)
    ax.set(
        title="Peak memory per batch", ylabel=f"MiB at the peak, batch of {profile.config.batch}"
    )
    return any(entry[3] for entry in drawn)


def _gaps(
    ax: Axes, xs: Sequence[float], values: Sequence[float | None], profile: Profile, phase: str
) -> None:
    """Say, where a measured bar is missing, why: a run on the CPU measures large steps at a
    smaller batch, and a measurement can fail."""
    for x, value, m in zip(xs, values, profile.models, strict=True):
        pm = m.measured.get(phase)
        if value is None:
            why = (
                "not measured"
                if pm is None
                else "failed"
                if pm.error
                else f"measured at batch {pm.batch}"
                if pm.batch != profile.config.batch
                else "not read"
            )
            ax.annotate(
                why,
                (x, 0),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=90,
                fontsize="x-small",
                color="dimgray",
            )


def _measured_style(color: str) -> dict[str, Any]:
    """A measured bar: the colour of its estimate, hatched."""
    return {"facecolor": "white", "edgecolor": color, "hatch": "////"}


def memory_breakdown(profile: Profile, phase: str) -> Figure:
    """What is alive at each model's peak, stacked by category (estimated), beside what was
    measured at the same batch (peak allocated; the process's memory where NVML reads it)."""
    models = profile.models
    measured = [
        (label, values, style)
        for key, label, style in MEASURED_MEMORY
        if any(values := _measured_mib(profile, phase, key))
    ]
    columns = 1 + len(measured)
    width = 0.8 / columns
    plot_width = max(LEGIBLE_TITLE_WIDTH, (0.7 + 0.35 * columns) * len(models))
    fig = Figure(figsize=(plot_width + LEGEND_WIDTH, 5.2), layout="constrained")
    ax = fig.subplots()
    breakdowns = [m.train if phase == "train" else m.inference for m in models]
    _stacked_categories(ax, breakdowns, _offsets(len(models), 0, columns, width), width)
    for column, (label, values, style) in enumerate(measured, start=1):
        xs = _offsets(len(models), column, columns, width)
        _bars(ax, xs, values, fmt_number, width=width, label=label, ec="black", **style)
        _gaps(ax, xs, values, profile, phase)
    _model_axis(ax, [m.name for m in models])
    ax.set_ylabel(f"MiB alive at the peak, batch of {profile.config.batch}")
    ax.set_title(
        f"Memory at the peak of {PHASE_TITLES[phase]}\n{_subtitle(profile, bool(measured))}"
    )
    handles, labels = ax.get_legend_handles_labels()
    categories = len(handles) - len(measured)  # stacked bottom up: listed top down, as drawn
    order = [*reversed(range(categories)), *range(categories, len(handles))]
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside right upper",
        fontsize="small",
    )
    _room_for_title(fig, ax)
    return fig


def _room_for_title(fig: Figure, ax: Axes) -> None:
    """Widen `fig` where `ax`'s title runs past the axes, into the legend beside them (a
    subtitle naming AMP and channels_last did)."""
    fig.draw_without_rendering()
    over = ax.title.get_window_extent().width - ax.get_window_extent().width
    if over > 0:
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + over / fig.dpi + 0.3, height)


def _stacked_categories(
    ax: Axes, breakdowns: Sequence[MemoryBreakdown], xs: Sequence[float], width: float
) -> None:
    """One bar per breakdown, stacked by category and labelled with its total; a category is
    named in the legend with its size, since a thin one cannot be seen."""
    bottom = [0.0] * len(breakdowns)
    for category in MemoryCategory:
        sizes = [b[category] for b in breakdowns]
        if any(sizes):
            ax.bar(
                xs,
                [s / MiB for s in sizes],
                width=width,
                bottom=bottom,
                label=f"{category.value.replace('_', ' ')}: {_size_range(sizes)} (estimated)",
                color=CATEGORY_COLORS[category],
            )
            bottom = [b + s / MiB for b, s in zip(bottom, sizes, strict=True)]
    label_totals(ax, xs, bottom, rotation=0 if width > 0.5 else 90)


def label_totals(ax: Axes, xs: Sequence[float], totals: Sequence[float], rotation: int = 0) -> None:
    """Each stacked bar's total (MiB) just above it."""
    for x, total in zip(xs, totals, strict=True):
        ax.annotate(
            fmt_number(total),
            (x, total),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="x-small",
            rotation=rotation,
        )


def _size_range(sizes: Sequence[int]) -> str:
    """'24.5 MiB' where every model holds the same, else '0 B to 474.2 MiB'."""
    low, high = min(sizes), max(sizes)
    return fmt_bytes(low) if low == high else f"{fmt_bytes(low)} to {fmt_bytes(high)}"


def layer_costs(profile: Profile, model: ModelProfile) -> Figure:
    """Per layer (a large model's blocks, as in the table: render/groups.py): parameters,
    forward and backward FLOPs, bytes saved for backward, on linear scales, each labelled with
    the row's share of the model's total: the point is where they sit (one dense layer of
    VGG-11 holds most of its parameters)."""
    groups = layer_groups(model)
    layers = [group.stats for group in groups if group.stats.name != "loss"]
    names = [f"{layer.name} {layer.type}" for layer in layers]
    # the panels keep their width beside long layer names (a transformer's run to 60 letters)
    width = 13.0 + 0.07 * max(0, max(map(len, names)) - 40)
    fig = Figure(figsize=(width, max(3.5, 0.28 * len(layers) + 2.2)), layout="constrained")
    params_ax, flops_ax, saved_ax = fig.subplots(1, 3, sharey=True)
    ys = list(range(len(layers)))
    params = [layer.params for layer in layers]
    scale, unit = _axis_unit(max(params), COUNT_UNITS)
    params_ax.barh(ys, [p / scale for p in params], color=PARAMS_COLOR)
    _share_labels(params_ax, ys, [p / scale for p in params], params, model.params)
    params_ax.set(title="Parameters,\n% of the model's", xlabel=f"parameters ({unit})")
    _layer_flops(flops_ax, ys, layers, model.flops_train_step)
    saved = [layer.saved_bytes for layer in layers]
    size, byte_unit = _axis_unit(max(saved), BYTES_UNITS)
    saved_ax.barh(ys, [s / size for s in saved], color=CATEGORY_COLORS[MemoryCategory.ACTIVATIONS])
    _share_labels(saved_ax, ys, [s / size for s in saved], saved, model.activation_bytes_saved)
    saved_ax.set(title="Saved for backward,\n% of the model's", xlabel=f"{byte_unit} per batch")
    for ax in (params_ax, flops_ax, saved_ax):
        ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
        ax.margins(x=HEADROOM)
    params_ax.set_yticks(ys, names, fontsize="small")
    params_ax.invert_yaxis()
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    by = "block by block" if any(group.grouped for group in groups) else "layer by layer"
    fig.suptitle(f"{model.name}, {by}\n{_subtitle(profile, measured=False)}")
    return fig


def _layer_flops(ax: Axes, ys: Sequence[int], layers: Sequence[LayerStats], total: int) -> None:
    """Forward and backward GFLOPs of each layer, labelled with its share of a training step."""
    height = 0.4
    largest = max((max(layer.flops_forward, layer.flops_backward) for layer in layers), default=0)
    scale, unit = _axis_unit(largest, FLOPS_UNITS)
    forward = [layer.flops_forward / scale for layer in layers]
    backward = [layer.flops_backward / scale for layer in layers]
    ax.barh([y - height / 2 for y in ys], forward, height=height, label="forward", color="#dd8452")
    ax.barh(
        [y + height / 2 for y in ys], backward, height=height, label="backward", color="#55a868"
    )
    ends = [max(f, b) for f, b in zip(forward, backward, strict=True)]
    step = [layer.flops_forward + layer.flops_backward for layer in layers]
    _share_labels(ax, ys, ends, step, total)
    ax.set(title="FLOPs per batch,\n% of a training step's", xlabel=f"{unit} per batch")


COUNT_UNITS = ((1e6, "millions"), (1e3, "thousands"), (1.0, "count"))
FLOPS_UNITS = ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs"), (1.0, "FLOPs"))
BYTES_UNITS = ((MiB, "MiB"), (KiB, "KiB"), (1.0, "B"))  # MiB = 2^20 B


def _axis_unit(largest: float, units: Sequence[tuple[float, str]]) -> tuple[float, str]:
    """The scale of an axis and its name: the largest of `units` (largest first) that
    `largest` reaches, else the last."""
    return next(((s, u) for s, u in units if largest >= s), units[-1])


def _share_labels(
    ax: Axes, ys: Sequence[float], ends: Sequence[float], parts: Sequence[int], total: int
) -> None:
    """Each row's share of `total`, right of its bar's end (none where the part is zero)."""
    for y, end, part in zip(ys, ends, parts, strict=True):
        if part:
            share = "<0.1%" if part / total < 0.001 else fmt_percent(part, total)
            ax.annotate(
                share,
                (end, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize="x-small",
            )


def _roofline_points(profile: Profile, m: ModelProfile) -> list[tuple[float, float, LayerStats]]:
    """(intensity in FLOP/B, achieved GFLOP/s, layer) at the batch the layers were timed at."""
    pm = _timed(m)
    if pm is None:
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
    """Each layer's arithmetic intensity (estimated) against the throughput it achieved (its
    counted FLOPs over its measured time) under the device's measured roofs; where no layer
    was timed, against its forward FLOPs (estimated)."""
    fig = Figure(figsize=(9.5, 6.8), layout="constrained")
    ax = fig.subplots()
    timed = any(_roofline_points(profile, m) for m in profile.models)
    intensities: list[float] = []
    for i, m in enumerate(_roofline_models(profile)):
        points = _roofline_points(profile, m) if timed else _intensity_points(m)
        if points:
            _layer_points(ax, points, m.name, f"C{i % 10}", "osD^vP*X"[i % 8])
            intensities += [p[0] for p in points]
    c = profile.config
    if timed:
        _roofs(ax, profile, min(intensities), max(intensities))
        ax.set_ylabel(
            "achieved GFLOP/s, measured: counted forward FLOPs\nover measured time (log scale)"
        )
        batches = sorted({pm.batch for m in profile.models if (pm := _timed(m))})
        title = (
            "Roofline of each layer's forward pass\nintensity estimated, throughput measured · "
            f"{profile.environment.device_name} · {precision_title(c)} · {_batches(batches)}"
        )
    else:
        ax.set_ylabel("forward GFLOPs of the layer per batch\n(estimated, log scale)")
        title = f"Arithmetic intensity of each layer\n{_subtitle(profile, measured=False)}"
    ax.set(
        xlabel="arithmetic intensity, forward FLOPs per byte moved (estimated, log scale)",
        title=title,
    )
    _log(ax, "x")
    _log(ax, "y")
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    return fig


def _timed(m: ModelProfile) -> PhaseMeasurement | None:
    """The inference measurement that timed each layer, if one did."""
    pm = m.measured.get("inference")
    return pm if pm and pm.layer_ms else None


def _intensity_points(m: ModelProfile) -> list[tuple[float, float, LayerStats]]:
    """(intensity in FLOP/B, forward GFLOPs per batch, layer) of each layer that computes."""
    return [
        (layer.intensity, layer.flops_forward / 1e9, layer)
        for layer in m.layers
        if layer.flops_forward
    ]


def _layer_points(
    ax: Axes, points: Sequence[tuple[float, float, LayerStats]], name: str, color: str, marker: str
) -> None:
    """One model's layers, its 1×1 convolutions ringed."""
    ax.scatter(
        [p[0] for p in points],
        [p[1] for p in points],
        label=name,
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
            label=f"{name}: 1×1 convolutions",
        )


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


def _roofs(ax: Axes, profile: Profile, low: float, high: float) -> None:
    """The measured roofs, from a factor of two left of the lowest intensity (or of the ridge)
    to a factor of two right of the highest."""
    ceilings = next(
        (pm.ceilings for m in profile.models for pm in m.measured.values() if pm.ceilings), None
    )
    if ceilings is None:
        return
    xs = [min(low, ceilings.ridge) / 2, ceilings.ridge, max(high, ceilings.ridge) * 2]
    ax.plot(
        xs,
        [min(ceilings.flops_per_s, ceilings.bytes_per_s * x) / 1e9 for x in xs],
        color="black",
        linestyle="--",
        label=f"roofs (measured): {ceilings.flops_per_s / 1e12:.2f} TFLOP/s "
        f"{ceilings.matmul_precision} {ceilings.kernel},\n"
        f"{ceilings.bytes_per_s / 1e9:.0f} GB/s copy",
    )


def sweep(profile: Profile) -> Figure:
    """Peak memory (estimated, and measured where it was) and time per iteration (measured)
    against batch size: one colour per model, solid for training, dashed for inference,
    dots on the estimates and diamonds on the measurements."""
    points = [p for m in profile.models for p in m.sweep]
    timed = any(p.timing for p in points)
    measured = any(p.memory for p in points)
    batches = sorted({p.batch for p in points})
    fig = Figure(figsize=(12.0 if timed else 7.5, 5.6), layout="constrained")
    axes: list[Axes] = list(fig.subplots(1, 2)) if timed else [fig.subplots()]
    memory_ax = axes[0]
    for i, m in enumerate(profile.models):
        for phase, (_, style) in SWEEP_LINES.items():
            line = {"linestyle": style, "color": f"C{i % 10}"}
            ordered = sorted((p for p in m.sweep if p.phase == phase), key=lambda p: p.batch)
            est = [(p.batch, p.predicted.peak / MiB) for p in ordered if p.predicted]
            meas = [(p.batch, p.memory.peak_allocated / MiB) for p in ordered if p.memory]
            times = [(p.batch, p.timing.ms_per_iter) for p in ordered if p.timing]
            _series(memory_ax, est, ESTIMATED_MARK, **line)
            _series(memory_ax, meas, MEASURED_MARK, linestyle="none", color=line["color"])
            if timed:
                _series(axes[1], times, MEASURED_MARK, **line)
    memory_ax.set_ylabel("MiB at the peak of a step (log scale)")
    if timed:  # two panels: each says what it draws (one panel: the figure's title says it)
        memory_ax.set_title(
            f"Peak memory ({'estimated and measured' if measured else 'estimated'})"
        )
        axes[1].set(title="Time per iteration (measured)", ylabel="ms per batch (log scale)")
    for ax in axes:
        ax.set_xlabel("batch size (log scale)")
        _log(ax, "x")
        ax.xaxis.set_major_locator(FixedLocator(batches))
        _log(ax, "y")
    fig.legend(
        handles=_sweep_legend(profile.models, measured or timed),
        loc="outside right center",
        fontsize="small",
    )
    what = "Memory and time" if timed else "Peak memory"
    fig.suptitle(f"{what} against batch size\n{_subtitle(profile, measured or timed, batches)}")
    return fig


def _series(
    ax: Axes, points: Sequence[tuple[int, float]], mark: dict[str, Any], **line: Any
) -> None:
    if points:
        ax.plot(*zip(*points, strict=True), **mark, **line)


def _sweep_legend(models: Sequence[ModelProfile], measured: bool) -> list[Line2D]:
    """What colour is which model, and what the line styles and the marks mean."""
    handles = [Line2D([], [], color=f"C{i % 10}", label=m.name) for i, m in enumerate(models)]
    handles += [
        Line2D([], [], color="black", linestyle=style, label=words)
        for words, style in SWEEP_LINES.values()
    ]
    handles.append(
        Line2D([], [], color="black", linestyle="none", label="estimated", **ESTIMATED_MARK)
    )
    if measured:
        handles.append(
            Line2D([], [], color="black", linestyle="none", label="measured", **MEASURED_MARK)
        )
    return handles


def _precision_chart(profile: Profile) -> Figure:
    from nin_profile.render.precision_chart import precision_memory  # it draws with this module

    return precision_memory(profile)


_MAKERS: dict[str, Callable[[Profile, ChartSpec], Figure]] = {
    "models": lambda p, s: models_overview(p),
    "memory": lambda p, s: memory_breakdown(p, s.phase or "train"),
    "roofline": lambda p, s: roofline(p),
    "sweep": lambda p, s: sweep(p),
    "precision": lambda p, s: _precision_chart(p),
    "layers": lambda p, s: layer_costs(p, next(m for m in p.models if m.name == s.model)),
    "ranks": lambda p, s: _rank_memory(p, s.model or ""),
}


def _rank_memory(profile: Profile, model: str) -> Figure:
    from nin_profile.render.parallel_chart import rank_memory

    return rank_memory(profile, model)


def all_charts(profile: Profile) -> dict[str, Figure]:
    """File name → Figure for every chart the report links."""
    return {spec.file: chart(profile, spec.file) for spec in chart_plan(profile)}


def chart(profile: Profile, file: str) -> Figure:
    """The one chart of the report saved as `file`."""
    spec = next((spec for spec in chart_plan(profile) if spec.file == file), None)
    if spec is None:
        raise KeyError(f"the report of this profile has no chart {file!r}")
    return _MAKERS[spec.kind](profile, spec)
