"""Charts read as a reader reads them, checked without looking: what a title claims against
what is drawn, scales, ticks, labels that stay clear of titles and of each other.

The profile is the golden one of tests/test_report.py (a real CPU run at batch 2, with a sweep
at batches 1 and 2), changed where a test needs another case.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from nin_profile.render.charts import models_overview
from nin_profile.results import ModelProfile, Profile

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
    """Every bar label inside its axes (so under the title) and clear of every other label."""
    canvas = drawn(fig)
    for ax in fig.axes:
        boxes = [extent(t, canvas) for t in bar_labels(ax)]
        frame = ax.get_window_extent(canvas.get_renderer())
        title = extent(ax.title, canvas)
        for i, box in enumerate(boxes):
            assert frame.contains(box.x0, box.y1) and frame.contains(box.x1, box.y1), (
                f"{bar_labels(ax)[i].get_text()!r} runs out of its axes {ax.get_title()!r}"
            )
            assert not box.overlaps(title)
            for other in boxes[i + 1 :]:
                assert not box.overlaps(other), f"{bar_labels(ax)[i].get_text()!r} overlaps"


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
