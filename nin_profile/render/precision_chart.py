"""The chart of --compare-precision: each model's memory (and, where measured, time) by precision.

Pure: profile → matplotlib Figure. Bars are estimates, stacked by memory category; a black
tick marks a measured peak between ops (the figure the estimate predicts) where the run
measured that precision at the batch of the estimates; a third panel shows the measured time
per example where the run timed it.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nin_profile.render.charts import (
    LEGEND_WIDTH,
    LEGIBLE_TITLE_WIDTH,
    PHASE_TITLES,
    _stacked_categories,
)
from nin_profile.results import (
    MemoryBreakdown,
    ModelProfile,
    PhaseMeasurement,
    PrecisionProfile,
    Profile,
)
from nin_profile.units import MiB

SHORT = {  # tick labels: two short lines each, so that five precisions side by side stay legible
    "fp32": "fp32",
    "amp-fp16": "AMP\nfp16",
    "amp-bf16": "AMP\nbf16",
    "fp16": "fp16\nmodel",
    "bf16": "bf16\nmodel",
}
BAR_INCHES = 0.75  # of figure width per bar, for the tick labels not to touch
GAP = 0.7  # bars' widths between two models' groups


def _positions(models: Sequence[ModelProfile]) -> list[list[float]]:
    """Each model's bars' x positions: its precisions side by side, a gap between models."""
    groups, start = [], 0.0
    for m in models:
        groups.append([start + i for i in range(len(m.precisions))])
        start += len(m.precisions) + GAP
    return groups


def _measured_peak(pm: PhaseMeasurement | None, batch: int) -> float | None:
    """The measured peak between ops (else allocated) in MiB, where measured at `batch`."""
    if pm is None or pm.memory is None or pm.batch != batch:
        return None
    peak = pm.memory.peak_between_ops or pm.memory.peak_allocated
    return peak / MiB if peak else None


def _breakdown(p: PrecisionProfile, phase: str) -> MemoryBreakdown:
    return p.train if phase == "train" else p.inference


def _memory_panel(ax: Axes, profile: Profile, phase: str, groups: list[list[float]]) -> None:
    models = [m for m in profile.models if m.precisions]
    bars = [p for m in models for p in m.precisions]
    xs = [x for group in groups for x in group]
    _stacked_categories(ax, [_breakdown(p, phase) for p in bars], xs, 0.8)
    measured = [
        (x, _measured_peak(p.measured.get(phase), profile.config.batch))
        for x, p in zip(xs, bars, strict=True)
    ]
    points = [(x, v) for x, v in measured if v is not None]
    if points:
        ax.scatter(  # beside the bar's right edge, clear of the total above it
            [x + 0.4 for x, _ in points],
            [v for _, v in points],
            marker="<",
            s=60,
            color="black",
            zorder=3,
            label="measured peak between ops",
        )
    # where the estimate's peak counts what it knows an op holds inside, its own figure
    # between ops is what the measured marker is held to: a tick at that height
    between = [
        (x, b.between_ops / MiB)
        for x, p in zip(xs, bars, strict=True)
        if (b := _breakdown(p, phase)).between_ops is not None
    ]
    if between:
        ax.scatter(
            [x for x, _ in between],
            [v for _, v in between],
            marker="_",
            s=300,
            color="black",
            zorder=3,
            label="estimated peak between ops",
        )
    ax.set_ylabel(f"MiB at the peak of {PHASE_TITLES[phase]}")
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.12)


def _time_panel(ax: Axes, profile: Profile, groups: list[list[float]]) -> None:
    """Measured milliseconds per example of each phase, by precision (a measurement may be at
    a smaller batch than the estimates: per example is comparable)."""
    models = [m for m in profile.models if m.precisions]
    xs = [x for group in groups for x in group]
    bars = [p for m in models for p in m.precisions]
    for offset, phase, color in ((-0.2, "train", "#4c72b0"), (0.2, "inference", "#dd8452")):
        values = []
        for p in bars:
            pm = p.measured.get(phase)
            ok = pm is not None and pm.timing is not None and pm.batch > 0
            values.append(pm.timing.ms_per_iter / pm.batch if ok and pm and pm.timing else 0.0)
        ax.bar(
            [x + offset for x in xs],
            values,
            width=0.4,
            color=color,
            label=f"{PHASE_TITLES[phase]} (measured)",
        )
    ax.set_ylabel("ms per example\n(measured)")
    ax.spines[["top", "right"]].set_visible(False)


def _label_groups(ax: Axes, models: Sequence[ModelProfile], groups: list[list[float]]) -> None:
    """Precisions as tick labels, each model's name centred under its group."""
    ax.set_xticks(
        [x for group in groups for x in group],
        [SHORT[p.precision] for m in models for p in m.precisions],
        fontsize="small",
    )
    for m, group in zip(models, groups, strict=True):
        ax.annotate(
            m.name,
            xy=((group[0] + group[-1]) / 2, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -34),
            textcoords="offset points",
            ha="center",
            va="top",
            fontweight="bold",
        )


def _timed(profile: Profile) -> bool:
    return any(
        pm.timing for m in profile.models for p in m.precisions for pm in p.measured.values()
    )


def _subtitle(profile: Profile, measured: bool) -> str:
    c = profile.config
    layout = " · channels_last" if c.channels_last else ""
    kind = "estimated (bars) and measured" if measured else "estimated"
    return f"{kind} · {c.device}{layout} · batch {c.batch} · per batch"


def precision_memory(profile: Profile) -> Figure:
    """Each model's estimated peaks in each precision, stacked by category (a training step
    above, inference below), with measured peaks and times where the run has them."""
    models = [m for m in profile.models if m.precisions]
    groups = _positions(models)
    bars = sum(len(m.precisions) for m in models)
    timed = _timed(profile)
    width = max(LEGIBLE_TITLE_WIDTH, BAR_INCHES * bars + 1.5)
    fig = Figure(figsize=(width + LEGEND_WIDTH, 11.5 if timed else 8.5), layout="constrained")
    axes = fig.subplots(3 if timed else 2, 1, sharex=True)
    for ax, phase in zip(axes, ("train", "inference"), strict=False):
        _memory_panel(ax, profile, phase, groups)
    if timed:
        _time_panel(axes[2], profile, groups)
    _label_groups(axes[-1], models, groups)
    measured = any(p.measured for m in models for p in m.precisions)
    what = "Memory and time" if timed else "Memory"
    axes[0].set_title(f"{what} by precision\n{_subtitle(profile, measured)}")
    for i, ax in enumerate(axes):  # each panel its own legend: sizes differ by phase
        handles, labels = ax.get_legend_handles_labels()
        if i < 2:  # memory: the categories top down, as stacked
            handles, labels = handles[::-1], labels[::-1]
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig
