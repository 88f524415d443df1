"""Profile → the summary table printed in the terminal (a rich Table; printing is the CLI's)."""

from __future__ import annotations

from rich.table import Table

from nin_profile.results import Profile
from nin_profile.units import fmt_mib, fmt_scaled

_COLUMNS = (
    "Model",
    "Params\n(M)",
    "Fwd\nGMACs",
    "Fwd\nGFLOPs",
    "Step\nGFLOPs",
    "Saved\nMiB",
    "Train\npeak MiB",
    "Infer\npeak MiB",
)


def summary_table(profile: Profile) -> Table:
    c = profile.config
    table = Table(
        title=f"Estimated for {c.device} · batch {c.batch} · {c.dtype} · {c.optimizer} · "
        "per batch · FLOPs = 2 × MACs · step = forward + backward",
        title_justify="left",
    )
    for title in _COLUMNS:
        table.add_column(title, justify="left" if title == "Model" else "right", no_wrap=True)
    for m in profile.models:
        table.add_row(
            m.name,
            fmt_scaled(m.params, 1e6),
            fmt_scaled(m.macs_forward, 1e9, 1),
            fmt_scaled(m.flops_forward, 1e9, 1),
            fmt_scaled(m.flops_train_step, 1e9, 1),
            fmt_mib(m.activation_bytes_saved, 0),
            fmt_mib(m.train.peak, 0),
            fmt_mib(m.inference.peak, 0),
        )
    return table
