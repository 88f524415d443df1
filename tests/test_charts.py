"""Charts read as a reader reads them, checked without looking: what a title claims against
what is drawn, scales, ticks, labels that stay clear of titles and of each other.

The profile is the golden one of tests/test_report.py (a real CPU run at batch 2, with a sweep
at batches 1 and 2), changed where a test needs another case.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from nin_profile.render.charts import (
    all_charts,
    layer_costs,
    memory_breakdown,
    models_overview,
    roofline,
    sweep,
)
from nin_profile.results import MemoryCategory, ModelProfile, PhaseMeasurement, Profile
from nin_profile.units import MiB, fmt_bytes, fmt_percent

PROFILE = Path(__file__).parent / "golden" / "profile_cpu.json"


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.from_dict(json.loads(PROFILE.read_text()))


def unmeasured(profile: Profile) -> Profile:
    """The profile as a static run makes it: the same estimates, nothing measured."""
    return replace(profile, models=tuple(replace(m, measured={}, sweep=()) for m in profile.models))


def measured_elsewhere(profile: Profile) -> Profile:
    """Every phase measured at another batch than the estimates' (as a CPU run may halve it)."""

    def elsewhere(m: ModelProfile) -> ModelProfile:
        return replace(
            m, measured={k: replace(pm, batch=pm.batch + 1) for k, pm in m.measured.items()}
        )

    return replace(profile, models=tuple(elsewhere(m) for m in profile.models))


def with_nvml(profile: Profile) -> Profile:
    """The profile as a CUDA run makes it: NVML reads the process's memory, well above the
    peak allocated (the CUDA context, the allocator's cache)."""

    def nvml(pm: PhaseMeasurement) -> PhaseMeasurement:
        if pm.memory is None:
            return pm
        process = 2 * pm.memory.peak_allocated + 500 * MiB
        return replace(pm, memory=replace(pm.memory, nvml_process=process))

    return replace(
        profile,
        models=tuple(
            replace(m, measured={k: nvml(pm) for k, pm in m.measured.items()})
            for m in profile.models
        ),
    )


def log_ticks(ax: Axes, axis: str) -> list[str]:
    """The labelled major ticks a log axis shows within its limits."""
    which = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    locs = [v for v in which.get_majorticklocs() if low <= v <= high]
    return [text for text in which.get_major_formatter().format_ticks(locs) if text]


def titles(fig: Figure) -> str:
    """Every title of the figure, its own and its axes', as one text."""
    own = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    return "\n".join([own, *(ax.get_title() for ax in fig.axes)])


def drawn(fig: Figure) -> FigureCanvasAgg:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def bar_labels(ax: Axes) -> list[Text]:
    return [t for t in ax.texts if t.get_text()]


def extent(artist: Text, canvas: FigureCanvasAgg) -> Bbox:
    return artist.get_window_extent(canvas.get_renderer())


def assert_labels_clear(fig: Figure) -> None:
    """Every bar label inside its axes (so under the title), clear of every other label, of
    every bar and of every marker."""
    canvas = drawn(fig)
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        labels = bar_labels(ax)
        boxes = [extent(t, canvas) for t in labels]
        frame = ax.get_window_extent(renderer)
        bars = [p.get_window_extent(renderer) for p in ax.patches]
        markers = [
            point
            for collection in ax.collections
            for point in collection.get_offset_transform().transform(collection.get_offsets())
        ]
        for i, (label, box) in enumerate(zip(labels, boxes, strict=True)):
            text = f"{label.get_text()!r} in {ax.get_title()!r}"
            assert frame.contains(box.x0, box.y1) and frame.contains(box.x1, box.y1), text
            assert not box.overlaps(extent(ax.title, canvas)), text
            assert not any(box.overlaps(other) for other in boxes[i + 1 :]), text
            assert not any(box.overlaps(bar) for bar in bars), f"{text} over a bar"
            assert not any(box.padded(4).contains(x, y) for x, y in markers), f"{text} marked"


def test_models_overview_is_titled_by_what_it_draws(profile: Profile) -> None:
    assert "estimated and measured" in titles(models_overview(profile))
    for static_like in (unmeasured(profile), measured_elsewhere(profile)):
        fig = models_overview(static_like)
        assert "measured" not in titles(fig) and "estimated" in titles(fig)
        labels = fig.axes[2].get_legend_handles_labels()[1]
        assert not any("measured" in label for label in labels)


def test_models_overview_shows_ratios_on_linear_axes(profile: Profile) -> None:
    fig = models_overview(profile)
    params_ax, flops_ax, memory_ax = fig.axes
    assert all(ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0 for ax in fig.axes)
    heights = [bar.get_height() for bar in params_ax.patches if isinstance(bar, Rectangle)]
    assert heights == pytest.approx([m.params / 1e6 for m in profile.models])
    labels = memory_ax.get_legend_handles_labels()[1]
    assert "training step: forward + backward (estimated)" in labels
    assert "training step: peak allocated (measured)" in labels
    assert "per batch" in flops_ax.get_ylabel()


@pytest.mark.parametrize("count", [1, 6])
def test_models_overview_labels_stay_under_the_titles(profile: Profile, count: int) -> None:
    assert_labels_clear(models_overview(replace(profile, models=profile.models[:count])))


@pytest.mark.parametrize("phase", ["train", "inference"])
def test_memory_chart_is_titled_by_what_it_draws(profile: Profile, phase: str) -> None:
    (ax,) = memory_breakdown(with_nvml(profile), phase).axes
    assert "estimated and measured" in ax.get_title()
    labels = ax.get_legend_handles_labels()[1]
    assert "peak allocated (measured)" in labels and "process memory, NVML (measured)" in labels
    for static_like in (unmeasured(profile), measured_elsewhere(profile)):
        (ax,) = memory_breakdown(static_like, phase).axes
        assert "measured" not in ax.get_title() and "estimated" in ax.get_title()
        assert not any("measured" in label for label in ax.get_legend_handles_labels()[1])


def test_memory_bars_stack_to_the_estimated_peak(profile: Profile) -> None:
    (ax,) = memory_breakdown(profile, "train").axes
    stacks: dict[float, float] = {}
    for container in ax.containers:
        if (container.get_label() or "").endswith("(estimated)"):
            for bar in container:
                x = round(bar.get_x(), 6)
                stacks[x] = stacks.get(x, 0.0) + bar.get_height()
    peaks = [m.train.peak / MiB for m in profile.models]
    assert [stacks[x] for x in sorted(stacks)] == pytest.approx(peaks)
    assert ax.get_yscale() == "linear" and "MiB" in ax.get_ylabel()


@pytest.mark.parametrize("phase", ["train", "inference"])
def test_every_category_held_is_named_with_its_size(profile: Profile, phase: str) -> None:
    """A category too thin to see (the input, beside VGG's activations) is still named, with
    its size, in the legend; one that holds nothing is left out (SGD keeps no state)."""
    (ax,) = memory_breakdown(profile, phase).axes
    legend = " | ".join(ax.get_legend_handles_labels()[1])
    for category in MemoryCategory:
        sizes = [(m.train if phase == "train" else m.inference)[category] for m in profile.models]
        if any(sizes):
            assert f"{category.value}: {fmt_bytes(min(sizes))}" in legend
            assert f"{fmt_bytes(max(sizes))} (estimated)" in legend
        else:
            assert f"{category.value}:" not in legend


@pytest.mark.parametrize("count", [1, 6])
def test_memory_labels_stay_clear_of_titles_and_markers(profile: Profile, count: int) -> None:
    one_or_all = replace(profile, models=profile.models[:count])
    for phase in ("train", "inference"):
        assert_labels_clear(memory_breakdown(with_nvml(one_or_all), phase))


def test_the_sweep_marks_every_point_and_names_the_swept_batches(profile: Profile) -> None:
    fig = sweep(profile)
    memory_ax, time_ax = fig.axes
    batches = sorted({p.batch for m in profile.models for p in m.sweep})
    assert f"batches {', '.join(map(str, batches))}" in titles(fig)
    assert f"batch {profile.config.batch} " not in titles(fig)
    estimates = [line for line in memory_ax.get_lines() if line.get_linestyle() != "None"]
    measurements = [line for line in memory_ax.get_lines() if line.get_linestyle() == "None"]
    assert len(estimates) == 2 * len(profile.models)  # training and inference of each
    assert all(line.get_marker() == "o" for line in estimates)
    assert measurements and all(line.get_marker() == "D" for line in measurements)
    assert all(line.get_marker() == "D" for line in time_ax.get_lines())
    for ax in (memory_ax, time_ax):
        assert list(ax.xaxis.get_majorticklocs()) == batches
    assert "estimated and measured" in titles(fig)


def test_a_predicted_sweep_says_estimated(profile: Profile) -> None:
    predicted = replace(
        profile,
        models=tuple(
            replace(m, sweep=tuple(replace(p, memory=None, timing=None) for p in m.sweep))
            for m in profile.models
        ),
    )
    fig = sweep(predicted)
    assert len(fig.axes) == 1 and "measured" not in titles(fig)
    assert "measured" not in [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.parametrize("measured", [True, False])
def test_every_log_axis_has_three_labelled_ticks(profile: Profile, measured: bool) -> None:
    charts = all_charts(profile if measured else unmeasured(profile))
    for file, fig in charts.items():
        for ax in fig.axes:
            for axis in ("x", "y"):
                scale = ax.get_yscale() if axis == "y" else ax.get_xscale()
                if scale == "log" and not (file == "sweep.png" and axis == "x"):
                    assert len(log_ticks(ax, axis)) >= 3, f"{file} {axis}: {log_ticks(ax, axis)}"


def test_the_roofline_says_what_is_estimated_and_what_measured(profile: Profile) -> None:
    fig = roofline(profile)
    (ax,) = fig.axes
    assert "estimated" in ax.get_xlabel() and "intensity" in ax.get_xlabel()
    assert "measured" in ax.get_ylabel() and "achieved" in ax.get_ylabel()
    assert "intensity estimated, throughput measured" in titles(fig)
    (ax,) = roofline(unmeasured(profile)).axes
    assert "measured" not in ax.get_ylabel() + ax.get_title()
    assert "estimated" in ax.get_ylabel() and "estimated" in ax.get_title()


def test_the_roofs_span_the_points_not_a_fixed_range(profile: Profile) -> None:
    (ax,) = roofline(profile).axes
    (roof,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    intensities = [float(x) for c in ax.collections for x in np.asarray(c.get_offsets())[:, 0]]
    xs = np.asarray(roof.get_xdata())
    left, right = xs.min(), xs.max()
    assert min(intensities) / 2 <= left < min(intensities)  # a factor of two beyond the points
    assert max(intensities) < right <= 2 * max(intensities)


@pytest.mark.parametrize("measured", [True, False])
def test_no_legend_covers_a_chart(profile: Profile, measured: bool) -> None:
    for file, fig in all_charts(profile if measured else unmeasured(profile)).items():
        canvas = drawn(fig)
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
        for legend in filter(None, legends):
            box = legend.get_window_extent(canvas.get_renderer())
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(canvas.get_renderer())), file


@pytest.mark.parametrize("phase", ["train", "inference"])
def test_a_long_title_keeps_clear_of_the_legend(profile: Profile, phase: str) -> None:
    # "estimated and measured · cuda · AMP bf16, channels_last · batch 128" ran past its
    # axes into the legend of the H200's channels_last report
    config = replace(profile.config, device="cuda", precision="amp-bf16", channels_last=True)
    three = replace(profile, config=config, models=profile.models[:3])  # as narrow as there
    fig = memory_breakdown(three, phase)
    renderer = drawn(fig).get_renderer()
    title = fig.axes[0].title.get_window_extent(renderer)
    assert "channels_last" in fig.axes[0].get_title()
    for legend in fig.legends:
        assert not title.overlaps(legend.get_window_extent(renderer))


def test_a_layer_chart_shows_where_the_parameters_sit(profile: Profile) -> None:
    """VGG-11's first dense layer holds most of its parameters: on a linear axis its bar is
    most of the panel, and its label says its share."""
    vgg = next(m for m in profile.models if m.name == "vgg11")
    fig = layer_costs(profile, vgg)
    params_ax = fig.axes[0]
    assert all(ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0 for ax in fig.axes)
    dense = max(vgg.layers, key=lambda layer: layer.params)
    assert dense.type == "Linear" and dense.params / vgg.params > 0.75  # 102,764,544 of 128.8 M
    widths = [bar.get_width() for bar in params_ax.patches if isinstance(bar, Rectangle)]
    assert max(widths) / sum(widths) == pytest.approx(dense.params / vgg.params)
    assert fmt_percent(dense.params, vgg.params) in [t.get_text() for t in params_ax.texts]
    assert "estimated" in titles(fig) and "measured" not in titles(fig)


def test_every_layer_that_costs_something_is_labelled(profile: Profile) -> None:
    nin = next(m for m in profile.models if m.name == "nin")
    params_ax, flops_ax, saved_ax = layer_costs(profile, nin).axes
    layers = [layer for layer in nin.layers if layer.name != "loss"]
    assert len(params_ax.texts) == sum(1 for layer in layers if layer.params)
    assert len(flops_ax.texts) == sum(1 for la in layers if la.flops_forward + la.flops_backward)
    assert len(saved_ax.texts) == sum(1 for layer in layers if layer.saved_bytes)
    # 7.2, a 1×1 convolution of 10 channels to 10: 10×10+10 = 110 parameters, too few to see
    assert "<0.1%" in [t.get_text() for t in params_ax.texts]


def test_a_sweep_of_one_batch_names_that_batch(profile: Profile) -> None:
    one = replace(
        profile,
        models=tuple(
            replace(m, sweep=tuple(p for p in m.sweep if p.batch == 1)) for m in profile.models
        ),
    )
    assert profile.config.batch != 1
    assert "· batch 1\n" in titles(sweep(one)) + "\n"


def test_a_missing_measured_bar_says_why(profile: Profile) -> None:
    """On the CPU a large step is measured at a smaller batch: its bar is missing from the
    charts at the run's batch, and the gap says at which batch it was measured."""
    first_elsewhere = replace(
        profile, models=(*measured_elsewhere(profile).models[:1], *profile.models[1:])
    )
    elsewhere = f"measured at batch {profile.config.batch + 1}"
    for fig in (
        models_overview(first_elsewhere),
        memory_breakdown(first_elsewhere, "train"),
        memory_breakdown(first_elsewhere, "inference"),
    ):
        notes = [t.get_text() for t in fig.axes[-1].texts]
        assert elsewhere in notes
        assert_labels_clear(fig)
