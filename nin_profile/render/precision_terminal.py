"""--compare-precision in the terminal: each model's peaks (and largest batches, and measured
times where the run has them) by precision, as a rich Table (printing is the CLI's)."""

from __future__ import annotations

from rich.table import Table

from nin_profile.render.precision import compared_models, compared_rows
from nin_profile.render.terminal import _columns, _table
from nin_profile.render.text import PRECISION_TITLES
from nin_profile.results import PrecisionProfile, Profile
from nin_profile.units import fmt_bytes, fmt_mib


def _vs(value: int, base: int) -> str:
    return f"{100 * (value - base) / base:+.0f}%" if base else "–"


def _fit(p: PrecisionProfile, phase: str) -> str:
    batch = next((f.batch for f in p.fits if f.phase == phase), None)
    return f"{batch:,}" if batch else "–"


def _ms(p: PrecisionProfile) -> str:
    pm = p.measured.get("train")
    return f"{pm.timing.ms_per_iter / pm.batch:,.1f}" if pm and pm.timing else "–"


def precision_table(profile: Profile) -> Table | None:
    """Each compared model's estimated peaks by precision, against its reference (fp32)."""
    models = compared_models(profile)
    if not models:
        return None
    fits = any(p.fits for m in models for p in m.precisions)
    budget = profile.config.memory_budget if fits else None
    timed = any(p.measured for m in models for p in m.precisions)
    table = _table(
        f"by precision · estimated for {profile.config.device} · batch {profile.config.batch}",
        "peaks estimated; vs: against fp32 (or the first precision compared)"
        + (f" · max batch: predicted for {fmt_bytes(budget)}" if budget else "")
        + (" · ms: a training step per example, measured" if timed else ""),
    )
    titles = ["Model", "Precision", "Train\nMiB", "vs", "Infer\nMiB", "vs"]
    titles += ["Max train\nbatch", "Max infer\nbatch"] if fits else []
    titles += ["Train ms\nper ex."] if timed else []
    _columns(table, titles)
    table.columns[1].justify = "left"
    for m, p, ref in compared_rows(profile):
        row = [m.name, PRECISION_TITLES[p.precision], fmt_mib(p.train.peak)]
        row += [_vs(p.train.peak, ref.train.peak), fmt_mib(p.inference.peak)]
        row += [_vs(p.inference.peak, ref.inference.peak)]
        row += [_fit(p, "train"), _fit(p, "inference")] if fits else []
        row += [_ms(p)] if timed else []
        table.add_row(*row)
    return table
