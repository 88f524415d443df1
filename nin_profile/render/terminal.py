"""Profile → what the terminal shows: rich Tables and note lines (printing is the CLI's).

Each table keeps to 80 columns for the six default models: the estimates at the requested
batch in one, the measurements (at their own batches) in another, a sweep in a third.
"""

from __future__ import annotations

from rich import box
from rich.table import Table

from nin_profile.render.text import (
    grouped_notes,
    interval,
    policy_title,
    precision_title,
    rel_error,
)
from nin_profile.results import Profile
from nin_profile.units import fmt_mib, fmt_number, fmt_scaled

PHASE_SHORT = {"train": "train", "inference": "infer"}


def _table(title: str, caption: str) -> Table:
    return Table(
        title=title,
        title_justify="left",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )


def _columns(table: Table, titles: list[str]) -> None:
    for title in titles:
        # a narrow terminal folds a cell rather than cut a number short
        table.add_column(
            title, justify="left" if title in ("Model", "Phase") else "right", overflow="fold"
        )


def summary_table(profile: Profile) -> Table:
    """The estimates at the requested batch."""
    c = profile.config
    table = _table(
        f"estimated for {c.device} · batch {c.batch} · {precision_title(c)} · {c.optimizer} · "
        "per batch",
        "Step = forward + backward · FLOPs = 2 × MACs · Saved = kept for backward · "
        "peaks: largest memory in use",
    )
    _columns(
        table,
        [
            "Model",
            "Params\nM",
            "Fwd\nGFLOP",
            "Step\nGFLOP",
            "Saved\nMiB",
            "Train peak\nMiB",
            "Infer peak\nMiB",
        ],
    )
    for m in profile.models:
        table.add_row(
            m.name,
            fmt_scaled(m.params, 1e6),
            fmt_scaled(m.flops_forward, 1e9, 1),
            fmt_scaled(m.flops_train_step, 1e9, 1),
            fmt_mib(m.activation_bytes_saved, 0),
            fmt_mib(m.train.peak, 0),
            fmt_mib(m.inference.peak, 0),
        )
    return table


def measured_table(profile: Profile) -> Table | None:
    """Each measurement beside the estimate at its own batch; None when nothing was measured."""
    rows = [(m, pm) for m in profile.models for pm in m.measured.values()]
    if not rows:
        return None
    table = _table(
        f"measured on {rows[0][1].device_name} · per batch",
        "est. = estimated at that batch · meas. = peak allocated · err = (est. − meas.) / meas."
        " · ms: median per iteration · middle half: the 25th to 75th percentile (ms)",
    )
    titles = ["Model", "Phase", "Batch", "est.\nMiB", "meas.\nMiB", "err", "ms", "middle\nhalf"]
    _columns(table, titles)
    for m, pm in rows:
        est, mem, t = pm.predicted, pm.memory, pm.timing
        table.add_row(
            m.name,
            PHASE_SHORT.get(pm.phase, pm.phase),
            str(pm.batch),
            fmt_mib(est.peak, 0) if est else "–",
            fmt_mib(mem.peak_allocated, 0) if mem else "failed" if pm.error else "–",
            rel_error(est.peak, mem.peak_allocated) if est and mem else "–",
            fmt_number(t.ms_per_iter, 1) if t else "–",
            interval(t) if t else "–",
        )
    return table


def sweep_table(profile: Profile) -> Table | None:
    points = [(m, p) for m in profile.models for p in m.sweep]
    if not points:
        return None
    measured = any(p.memory for _, p in points)
    table = _table(
        "batch sweep · " + ("estimated and measured" if measured else "estimated") + " · per batch",
        "est. = estimated peak"
        + (" · meas. = peak allocated · ms: median per iteration" if measured else ""),
    )
    titles = ["Model", "Phase", "Batch", "est.\nMiB"]
    if measured:
        titles += ["meas.\nMiB", "err", "ms"]
    _columns(table, titles)
    for m, p in points:
        est = p.predicted.peak if p.predicted else None
        cells = [m.name, PHASE_SHORT.get(p.phase, p.phase), str(p.batch), fmt_mib(est, 0)]
        if measured:
            mem, t = p.memory, p.timing
            cells += [
                fmt_mib(mem.peak_allocated, 0) if mem else ("skipped" if p.error else "–"),
                rel_error(est, mem.peak_allocated) if mem and est else "–",
                f"{t.ms_per_iter:,.1f}" if t else "–",
            ]
        table.add_row(*cells)
    return table


def rank_table(profile: Profile) -> Table | None:
    """Per rank under --parallel: rank 0's peaks at each world size (and real ranks)."""
    points = [(m, p) for m in profile.models if m.parallel for p in m.parallel.points]
    if not points:
        return None
    c = profile.config
    budget = bool(c.memory_budget)
    table = _table(
        f"{c.parallel} · batch {c.batch} a rank · estimated ({c.device})",
        "peaks of rank 0"
        + (f" · {policy}" if (policy := policy_title(c)) else "")
        + (" · fits: the largest batch a rank fits in --memory-budget" * budget),
    )
    _columns(table, ["Model", "Ranks", "Train peak\nMiB", "Infer peak\nMiB"] + ["fits"] * budget)
    for m, p in points:
        fit = p.fits[0].batch if p.fits else None
        row = [m.name, f"{p.world_size:,}", fmt_mib(p.train.peak, 0), fmt_mib(p.inference.peak, 0)]
        table.add_row(*row, *([f"{fit:,}" if fit else "none"] * budget))
    return table


def tables(profile: Profile) -> list[Table]:
    from nin_profile.render.precision_terminal import precision_table  # it uses this module

    shown = [
        summary_table(profile),
        measured_table(profile),
        sweep_table(profile),
        rank_table(profile),
        precision_table(profile),
    ]
    return [t for t in shown if t is not None]


def notes_lines(profile: Profile) -> list[str]:
    """What was shortened, skipped, failed or assumed, one line per kind; then the fits."""
    lines = [f"note: {n}" for n in grouped_notes(profile)]
    by_how: dict[str, list[str]] = {}  # one line for the fits found the same way
    for m in profile.models:
        for f in m.fits:
            batch = f"{f.batch:,}" if f.batch else "none"
            by_how.setdefault(f.how, []).append(f"{m.name} {f.phase} {batch}")
    lines += [f"largest batch, {how}: {', '.join(fits)}" for how, fits in by_how.items()]
    return lines
