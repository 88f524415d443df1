"""Profile → markdown text. Pure: no model, no device, no file I/O."""

from __future__ import annotations

from collections.abc import Sequence

from nin_profile.columns import TITLES, VALUES, Column, cell_text
from nin_profile.results import MemoryBreakdown, MemoryCategory, ModelProfile, Profile
from nin_profile.units import GiB, fmt_mib, fmt_percent, fmt_scaled, fmt_shape

ESTIMATED = "estimated"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A GitHub markdown table; `right[i]` right-aligns column i (numbers)."""
    rule = ["---:" if r else "---" for r in right]
    lines = [headers, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def run_header(profile: Profile, figures: str = ESTIMATED) -> str:
    """One line that every table carries: device, dtype, batch, and estimated or measured."""
    c = profile.config
    return (
        f"*{figures}; device {c.device}, {c.dtype}, batch {c.batch} "
        f"({c.channels}×{c.image_size}×{c.image_size} input, {c.classes} classes), "
        f"optimizer {c.optimizer}; per batch unless marked per example*"
    )


def summary_table(profile: Profile) -> str:
    headers = [
        "Model",
        "Params",
        "Forward MACs (G)",
        "Forward FLOPs (G)",
        "Train-step FLOPs (G)",
        "Saved for backward (MiB)",
        "Train peak (MiB)",
        "Inference peak (MiB)",
    ]
    rows = [
        [
            m.name,
            f"{m.params:,}",
            fmt_scaled(m.macs_forward, 1e9),
            fmt_scaled(m.flops_forward, 1e9),
            fmt_scaled(m.flops_train_step, 1e9),
            fmt_mib(m.activation_bytes_saved),
            fmt_mib(m.train.peak),
            fmt_mib(m.inference.peak),
        ]
        for m in profile.models
    ]
    return md_table(headers, rows, [False] + [True] * 7)


def breakdown_table(profile: Profile, phase: str) -> str:
    """Bytes alive at each model's peak, by category (MiB); the categories sum to the peak."""
    headers = ["Model", *(c.value for c in MemoryCategory), "Peak", "Peak happens at"]
    rows = []
    for m in profile.models:
        b: MemoryBreakdown = getattr(m, phase)
        site = f"{b.site.phase}, layer {b.site.layer} ({b.site.op})"
        rows.append([m.name, *(fmt_mib(b[c]) for c in MemoryCategory), fmt_mib(b.peak), site])
    return md_table(headers, rows, [False] + [True] * (len(MemoryCategory) + 1) + [False])


_LAYER_COLUMNS = (
    Column.NAME,
    Column.TYPE,
    Column.OUTPUT_SHAPE,
    Column.PARAMS,
    Column.FLOPS_FORWARD,
    Column.FLOPS_BACKWARD,
    Column.SAVED_BYTES,
)
_SHARED = (Column.PARAMS, Column.FLOPS_FORWARD, Column.FLOPS_BACKWARD, Column.SAVED_BYTES)


def layer_table(model: ModelProfile) -> str:
    """Every layer, and for the cost columns the layer's share of the model's total."""
    totals = {c: sum(int(VALUES[c](r)) for r in model.layers) for c in _SHARED}  # type: ignore[call-overload]
    headers: list[str] = []
    for c in _LAYER_COLUMNS:
        headers.append(TITLES[c])
        if c in _SHARED:
            headers.append("%")
    rows = []
    for r in model.layers:
        cells = []
        for c in _LAYER_COLUMNS:
            cells.append(
                cell_text(c, r) if c is not Column.OUTPUT_SHAPE else fmt_shape(r.output_shape)
            )
            if c in _SHARED:
                cells.append(fmt_percent(VALUES[c](r), totals[c]))  # type: ignore[arg-type]
        rows.append(cells)
    right = [h not in ("Layer", "Type", "Output shape") for h in headers]
    return md_table(headers, rows, right)


def not_counted_text(model: ModelProfile) -> str:
    if not model.not_counted:
        return "Every op with arithmetic has a FLOP formula."
    ops = ", ".join(f"`{n.op}` ({n.phase}, {n.calls}×)" for n in model.not_counted)
    return f"Not counted (no FLOP formula; elementwise, pooling, loss and optimizer ops): {ops}."


CONVENTIONS = (
    "FLOPs count a multiply-add as 2 (FLOPs = 2 × MACs). Convolutions and matrix products are "
    "counted with PyTorch's own formulas (`torch.utils.flop_counter`); other ops are listed as "
    "not counted, never as zero.",
    "Bytes: MiB = 2^20 B, GiB = 2^30 B.",
    "Estimated figures come from tracing one training step (after a warm-up step, so optimizer "
    "state exists) and one inference pass on meta tensors: no memory of batch size is allocated. "
    "The peak replays every allocation and free in program order; for CUDA, sizes are rounded "
    "up to the caching allocator's 512-byte blocks.",
    "Saved for backward: storages autograd keeps for the backward pass, each counted once (a "
    "ReLU's output that the next conv also saves counts for the ReLU), parameters excluded, "
    "the input batch included.",
)


def conventions() -> str:
    return "\n".join(f"- {line}" for line in CONVENTIONS)


def render_report(profile: Profile) -> str:
    """The whole report.md."""
    c = profile.config
    env = profile.environment
    parts = [
        "# nin_profile report",
        f"Models: {', '.join(c.models)}. Torch {env.torch}, Python {env.python}, {env.platform}. "
        f"Device: {env.device_name}.",
        run_header(profile),
        "## Summary",
        summary_table(profile),
        f"## Memory of a training step (estimated peak, MiB; 1 GiB = {GiB // 2**20} MiB)",
        breakdown_table(profile, "train"),
        "## Memory of inference (estimated peak, MiB)",
        breakdown_table(profile, "inference"),
        "## Per-layer figures",
    ]
    for m in profile.models:
        parts += [
            f"### {m.name}",
            m.description,
            run_header(profile),
            layer_table(m),
            not_counted_text(m),
        ]
    parts += ["## Conventions", conventions()]
    return "\n\n".join(parts) + "\n"
