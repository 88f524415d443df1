"""The per-rank chart (--parallel): rank 0's training memory against the world size, stacked
by category, beside one process without the wrapper (matplotlib, Agg, no global state)."""

from __future__ import annotations

from matplotlib.figure import Figure

from nin_profile.render.charts import (
    CATEGORY_COLORS,
    LEGEND_WIDTH,
    LEGIBLE_TITLE_WIDTH,
    label_totals,
)
from nin_profile.render.parallel import RANK_TITLES, shown_categories
from nin_profile.render.text import policy_title, precision_title
from nin_profile.results import Profile
from nin_profile.units import MiB, fmt_int

SHORT_NAMES = {"ddp": "DDP", "fsdp": "FSDP2"}


def rank_memory(profile: Profile, model: str) -> Figure:
    """One bar per world size (and one for one process), stacked by category."""
    m = next(m for m in profile.models if m.name == model)
    assert m.parallel is not None
    points = sorted(m.parallel.points, key=lambda p: p.world_size)
    breakdowns = [m.train, *(p.train for p in points)]
    labels = ["one\nprocess", *(fmt_int(p.world_size) for p in points)]
    fig = Figure(
        figsize=(max(LEGIBLE_TITLE_WIDTH, 0.9 * len(labels)) + LEGEND_WIDTH, 5.2),
        layout="constrained",
    )
    ax = fig.subplots()
    xs = list(range(len(labels)))
    bottom = [0.0] * len(xs)
    for category in shown_categories(breakdowns):
        sizes = [b[category] / MiB for b in breakdowns]
        ax.bar(
            xs,
            sizes,
            width=0.6,
            bottom=bottom,
            label=RANK_TITLES[category],
            color=CATEGORY_COLORS[category],
        )
        bottom = [b + s for b, s in zip(bottom, sizes, strict=True)]
    label_totals(ax, xs, bottom)
    ax.set_xticks(xs, labels)
    ax.set_xlabel("ranks (world size)")
    c = profile.config
    ax.set_ylabel(f"MiB alive at rank 0's peak, batch of {c.batch} a rank")
    ax.set_title(
        f"{model}: memory per rank, a training step under "
        f"{SHORT_NAMES.get(c.parallel, c.parallel)}\nestimated · {c.device} · {precision_title(c)}"
        + (f" · {policy}" if (policy := policy_title(c)) else "")
    )
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], loc="outside right upper", fontsize="small")
    return fig
