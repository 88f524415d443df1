"""Profile → what the terminal shows: a rich Table and note lines (printing is the CLI's)."""

from __future__ import annotations

from rich.table import Table

from nin_profile.results import ModelProfile, PhaseMeasurement, Profile
from nin_profile.units import fmt_mib, fmt_scaled

CAPTION = (
    "est. = estimated without running · meas. = peak allocated, measured · "
    "err = (est. − meas.) / meas. · @b = at batch b · img/s = examples per second · "
    "FLOPs = 2 × MACs · step = forward + backward"
)


def relative_error(predicted: float, measured: float) -> str:
    """(predicted − measured) / measured, signed: +3.1% means the estimate is 3.1% high."""
    return f"{100 * (predicted - measured) / measured:+.1f}%" if measured else "–"


def _peak_cells(m: PhaseMeasurement | None, estimate: int) -> list[str]:
    """Estimated peak; then measured peak allocated and the estimate's error at that batch."""
    if m is None:
        return [fmt_mib(estimate, 0)]
    if m.memory is None or m.predicted is None:
        return [fmt_mib(estimate, 0), "failed" if m.error else "–", "–"]
    batch = "" if m.predicted.peak == estimate else f" @{m.batch}"
    return [
        fmt_mib(m.predicted.peak, 0) + batch,
        fmt_mib(m.memory.peak_allocated, 0),
        relative_error(m.predicted.peak, m.memory.peak_allocated),
    ]


def _row(m: ModelProfile, measured: bool) -> list[str]:
    cells = [m.name, fmt_scaled(m.params, 1e6)]
    if not measured:
        cells.append(fmt_scaled(m.flops_forward, 1e9, 1))
    cells += [fmt_scaled(m.flops_train_step, 1e9, 1), fmt_mib(m.activation_bytes_saved, 0)]
    for phase, estimate in (("train", m.train.peak), ("inference", m.inference.peak)):
        cells += _peak_cells(m.measured.get(phase) if measured else None, estimate)
    if measured:
        t = m.measured.get("train")
        cells.append(f"{t.timing.examples_per_s:,.1f}" if t and t.timing else "–")
    return cells


def _titles(measured: bool) -> list[str]:
    titles = (
        ["Model", "Params\nM"]
        + ([] if measured else ["Fwd\nGFLOP"])
        + ["Step\nGFLOP", "Saved\nMiB"]
    )
    for phase in ("Train", "Infer"):
        titles.append(f"{phase}\nest. MiB")
        if measured:
            titles += [f"{phase}\nmeas. MiB", f"{phase}\nerr"]
    return titles + (["Train\nimg/s"] if measured else [])


def summary_table(profile: Profile) -> Table:
    c = profile.config
    measured = not c.static
    where = (
        f"measured on {profile.environment.device_name}"
        if measured
        else f"estimated for {c.device}"
    )
    table = Table(
        title=f"{where} · batch {c.batch} · {c.dtype} · {c.optimizer} · figures per batch",
        title_justify="left",
        caption=CAPTION,
        caption_justify="left",
    )
    for title in _titles(measured):
        # a narrow terminal folds a cell rather than cut a number short
        table.add_column(title, justify="left" if title == "Model" else "right", overflow="fold")
    for m in profile.models:
        table.add_row(*_row(m, measured))
    return table


def notes_lines(profile: Profile) -> list[str]:
    """What was shortened, skipped, failed or assumed, one line each."""
    lines = [f"note: {n}" for n in profile.notes]
    for m in profile.models:
        for phase, pm in m.measured.items():
            lines += [f"{m.name} {phase}: {text}" for text in (*pm.notes, pm.error) if text]
        lines += [f"{m.name} {p.phase} batch {p.batch}: {p.error}" for p in m.sweep if p.error]
        lines += [f"{m.name} {f.phase}: largest batch {f.batch} ({f.how})" for f in m.fits]
    return lines
