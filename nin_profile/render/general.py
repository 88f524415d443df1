"""The report's sections for any set of models: conditions and notes, summary, measurements,
comparison, sweep, largest batch, per-layer figures, method. Pure: no model, no device, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from nin_profile.columns import TEXT, TITLES, VALUES, Column, cell_text
from nin_profile.render.groups import grouping_note, layer_groups
from nin_profile.render.names import chart_file
from nin_profile.render.sections import Section, names
from nin_profile.render.text import (
    PHASE_WORDS,
    breakdown,
    display,
    error_words,
    grouped_notes,
    held_bytes,
    how_many,
    interval,
    layer_label,
    listing,
    md_table,
    per_example_bytes,
    per_example_ms,
    precision_meaning,
    rel_error,
    scratch_ops,
    time_verdict,
)
from nin_profile.results import (
    SCRATCH_NOTE,
    Environment,
    MeasuredMemory,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    PeerFigures,
    PhaseMeasurement,
    Profile,
)
from nin_profile.units import fmt_bytes, fmt_int, fmt_mib, fmt_number, fmt_percent, fmt_scaled

# The chapter's models: a run of only these gets the exercises, not the general comparison.
CHAPTER = frozenset(
    {"nin", "nin_single_1x1", "nin_gradual_head", "alexnet", "vgg11", "vgg11_narrow"}
)
PHASES = ("train", "inference")
T = TypeVar("T", int, float)


def chart(profile: Profile, kind: str, alt: str, charts: bool, **where: str) -> str:
    file = chart_file(profile, kind, **where) if charts else None
    return f"![{alt}]({file})" if file else ""


def join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def is_measured(profile: Profile) -> bool:
    return not profile.config.static and any(m.measured for m in profile.models)


# ---- title, conditions, notes ----------------------------------------------------------------


def _cuda_stack(env: Environment) -> str:
    """The CUDA stack the profile recorded, e.g. " (CUDA 13.0, cuDNN 9.19.0, driver 580.159.04)"."""
    parts = [
        f"{label} {value}"
        for label, value in (("CUDA", env.cuda), ("cuDNN", env.cudnn), ("driver", env.driver))
        if value
    ]
    return f" ({', '.join(parts)})" if parts else ""


def title(profile: Profile) -> str:
    shown = [display(m.name) for m in profile.models]
    if len(shown) > 6:
        shown = [*shown[:5], f"{len(shown) - 5} more models"]
    return f"# Parameters, computation and memory of {listing(shown)}"


def measured_batches(profile: Profile) -> dict[str, set[int]]:
    """The batches each phase was measured at, over all models."""
    batches: dict[str, set[int]] = {}
    for m in profile.models:
        for phase, pm in m.measured.items():
            batches.setdefault(phase, set()).add(pm.batch)
    return batches


def classes_words(profile: Profile) -> str:
    """'10 classes' where the run names one count (given, or every model's own), else what
    each model's output says."""
    counts = {m.classes for m in profile.models} if profile.config.classes is None else set()
    classes = profile.config.classes or (counts.pop() if len(counts) == 1 else None)
    return f"{classes} classes" if classes else "each model's own classes"


# dtypes a model can build its layers in that no precision here casts to
_OWN_DTYPES = ("float64", "complex64", "complex128")


def _own_dtypes(profile: Profile) -> str:
    """Where a model keeps layers of its own dtype (fp32 and AMP leave a model's dtypes as
    built), which models and dtypes, from what each saves for backward."""
    if profile.config.precision in ("fp16", "bf16"):
        return ""
    named = [
        f"{m.name} ({', '.join(dtypes)})"
        for m in profile.models
        if (dtypes := [d for d in _OWN_DTYPES if m.saved_bytes_by_dtype.get(d)])
    ]
    return (
        f", but for the layers built in another dtype, kept as built: {listing(named)}"
        if named
        else ""
    )


def conditions(profile: Profile) -> str:
    """The run's conditions, stated once for the whole report."""
    c, env = profile.config, profile.environment
    inputs = c.inputs
    batch = f"of {inputs.describe()}" if inputs.square_image else f"of {inputs.describe()} each"
    if inputs.batch_place:
        batch += f" ({inputs.batch_place})"
    text = (
        f"Batch {c.batch} {batch}, {classes_words(profile)}, "
        f"{precision_meaning(c)}{_own_dtypes(profile)}, optimizer {c.optimizer}. Every figure "
        "is per batch unless it says per example. "
    )
    if c.parallel != "none":
        text += f"Under --parallel {c.parallel} the batch is each rank's. "
    if is_measured(profile):
        text += (
            f"Estimated without running (static analysis on meta tensors, memory for {c.device}) "
            f"and measured on {env.device_name}{_cuda_stack(env)}"
        )
        other = {
            phase: batches
            for phase, batches in measured_batches(profile).items()
            if batches != {c.batch}
        }
        if other:
            at = listing(
                [
                    f"{'training' if phase == 'train' else 'inference'} at batch "
                    f"{', '.join(map(str, sorted(b)))}"
                    for phase, b in other.items()
                ]
            )
            text += (
                f"; measured {at} (see the notes), where each measured figure stands beside "
                "the estimate at its own batch"
            )
        text += "."
    else:
        text += (
            f"Estimated without running (static analysis on meta tensors) for {c.device}; "
            "nothing was measured."
        )
    return (
        text + f" Torch {env.torch}, Python {env.python}, {env.platform}; device: "
        f"{env.device_name}."
    )


def title_section(profile: Profile, charts: bool) -> str:
    notes = grouped_notes(profile)
    parts = [title(profile), conditions(profile)]
    if notes:
        parts.append(
            "Notes (what was shortened, skipped, failed or assumed):\n\n"
            + "\n".join(f"- {n}" for n in notes)
        )
    return join(*parts)


# ---- summary: estimates at the requested batch -----------------------------------------------


def summary_section(profile: Profile, charts: bool) -> str:
    b = profile.config.batch
    headers = [
        "Model",
        "Params",
        "Fwd MACs (G)",
        "Fwd FLOPs (G)",
        "Train-step FLOPs (G)",
        "Saved for backward (MiB)",
        "Train peak (MiB)",
        "per example (MiB)",
        "Inference peak (MiB)",
        "per example (MiB)",
    ]
    rows = []
    for m in profile.models:
        row = [
            m.name,
            fmt_int(m.params),
            fmt_scaled(m.macs_forward, 1e9),
            fmt_scaled(m.flops_forward, 1e9),
            fmt_scaled(m.flops_train_step, 1e9),
            fmt_mib(m.activation_bytes_saved),
        ]
        for phase in PHASES:
            bd = breakdown(m, phase)
            row += [fmt_mib(bd.peak), fmt_mib(per_example_bytes(bd, b), 2)]
        rows.append(row)
    return join(
        "## Summary",
        f"*Estimated at batch {b}. Per example: what one more example adds at the peak "
        "(its input, activations and transients); parameters, gradients and optimizer state "
        "are paid once.*",
        md_table(headers, rows, [False] + [True] * (len(headers) - 1)),
        chart(profile, "models", "parameters, FLOPs and peak memory of each model", charts),
    )


# ---- measurements ----------------------------------------------------------------------------


def _measured_rows(profile: Profile) -> list[tuple[ModelProfile, PhaseMeasurement]]:
    return [(m, m.measured[p]) for m in profile.models for p in PHASES if p in m.measured]


def measured_memory_table(profile: Profile) -> str:
    cuda = any(
        pm.memory and pm.memory.peak_reserved is not None for _, pm in _measured_rows(profile)
    )
    between = any(
        pm.memory and pm.memory.peak_between_ops is not None for _, pm in _measured_rows(profile)
    )
    # where the estimate follows an op's inside, its own figure between ops, beside
    inside = any(pm.predicted and pm.predicted.between_ops for _, pm in _measured_rows(profile))
    headers = ["Model", "Phase", "Batch", "Peak est. (MiB)", "Peak meas. (MiB)", "err"]
    if between:
        headers += ["Between ops est. (MiB)"] if inside else []
        headers += ["Between ops meas. (MiB)", "err", "Scratch at peak (MiB)"]
    if cuda:
        headers += [
            "Reserved est. (MiB)",
            "Reserved meas. (MiB)",
            "err",
            "NVML process (MiB)",
            "CUDA context (MiB)",
        ]
    rows = []
    for m, pm in _measured_rows(profile):
        cells = [m.name, pm.phase, str(pm.batch)]
        est, mem = pm.predicted, pm.memory
        if mem is None or est is None:
            rows.append(
                cells
                + [fmt_mib(est.peak) if est else "–", pm.error or "–"]
                + ["–"] * (len(headers) - 5)
            )
            continue
        cells += [
            fmt_mib(est.peak),
            fmt_mib(mem.peak_allocated),
            rel_error(est.peak, mem.peak_allocated),
        ]
        if between:
            b = mem.peak_between_ops
            cells += [fmt_mib(est.peak_between_ops)] if inside else []
            cells += [
                fmt_mib(b),
                rel_error(est.peak_between_ops, b),
                fmt_mib(_scratch_in_one_op(mem)),
            ]
        if cuda:
            cells += [
                fmt_mib(est.reserved),
                fmt_mib(mem.peak_reserved),
                rel_error(est.reserved, mem.peak_reserved),
                fmt_mib(mem.nvml_process),
                fmt_mib(mem.cuda_context),
            ]
        rows.append(cells)
    return md_table(headers, rows, [False, False] + [True] * (len(headers) - 2))


def _scratch_in_one_op(mem: MeasuredMemory) -> int | None:
    """What one op's scratch took the whole peak above the peak between ops: their difference,
    never below 0 (on the CPU the two come from two runs, the second under a dispatch mode,
    which can hold a few bytes more)."""
    if mem.peak_between_ops is None:
        return None
    return max(0, mem.peak_allocated - mem.peak_between_ops)


def measured_time_table(profile: Profile) -> str:
    headers = [
        "Model",
        "Phase",
        "Batch",
        "ms per iteration (median)",
        "middle half of iterations (ms)",
        "ms per example",
        "examples/s",
        "TFLOP/s achieved",
        "iterations",
    ]
    rows = []
    for m, pm in _measured_rows(profile):
        t = pm.timing
        if t is None:
            rows.append([m.name, pm.phase, str(pm.batch)] + ["–"] * 6)
            continue
        rows.append(
            [
                m.name,
                pm.phase,
                str(pm.batch),
                fmt_number(t.ms_per_iter, 2),
                interval(t),
                fmt_number(t.ms_per_iter / pm.batch, 3),
                f"{t.examples_per_s:,.1f}",
                fmt_number(t.tflops, 2) if t.tflops is not None else "–",
                str(t.iterations),
            ]
        )
    return md_table(headers, rows, [False, False] + [True] * 7)


def _how_timed(profile: Profile) -> str:
    interleaved = any(pm.timing and pm.timing.interleaved for _, pm in _measured_rows(profile))
    if interleaved:
        return (
            "All models were timed in one process, in rounds (each in turn, a fast one for a few "
            "iterations), so that a change in the machine's speed hit them alike"
        )
    return "Each model and phase was timed in a process of its own, iteration after iteration"


def _scratch_words(profile: Profile) -> str:
    """What the table's scratch column is, and which op held the most scratch at any moment
    (from the measurements' notes): the two differ, the column being what was held inside
    an op when the whole step peaked."""
    column = (
        "Scratch at peak: the measured peak less the measured peak between ops, what ops held "
        "inside themselves when the allocator peaked. "
    )
    ops = scratch_ops(profile)
    if not any(pm.memory and pm.memory.peak_between_ops for _, pm in _measured_rows(profile)):
        column = ""
    if not ops:
        return column
    model, phase, where = max(ops, key=lambda item: float(item[2].split()[0].replace(",", "")))
    step = "training step" if phase == "train" else "inference pass"
    return column + f"The most scratch one op held, at any moment: {where}, in {model}'s {step}. "


def _largest_miss(profile: Profile) -> str:
    """The model whose measured peak the estimate misses most, in words."""
    misses = [
        (abs(pm.predicted.peak - pm.memory.peak_allocated) / pm.memory.peak_allocated, m, pm)
        for m, pm in _measured_rows(profile)
        if pm.memory and pm.predicted and pm.memory.peak_allocated
    ]
    if not misses:
        return ""
    share, m, pm = max(misses, key=lambda item: item[0])
    if share < 0.02:
        return "Every estimated peak is within 2% of the measured one."
    assert pm.predicted is not None and pm.memory is not None
    estimate, peak = pm.predicted.peak, pm.memory.peak_allocated
    scratch = [note.partition(": ")[2] for note in pm.notes if note.startswith(SCRATCH_NOTE)]
    return (
        f"The estimate misses most for {m.name}'s "
        f"{'training step' if pm.phase == 'train' else 'inference pass'}: measured "
        f"{fmt_bytes(peak)} at batch {pm.batch}, and the estimate, {fmt_bytes(estimate)}, is "
        f"{error_words(estimate, peak)}"
        + (f" (its most scratch inside one op: {scratch[0]})." if scratch else ".")
    )


def _cpu_between_ops(profile: Profile) -> str:
    """What the CPU's between-ops column is, where the run measured it."""
    if not any(pm.memory and pm.memory.peak_between_ops for _, pm in _measured_rows(profile)):
        return ""
    inside = [
        f"{m.name} {pm.phase}"
        for m, pm in _measured_rows(profile)
        if pm.predicted and pm.predicted.between_ops
    ]
    return (
        "Between ops: the same step once more, without what a kernel allocates and frees "
        "inside its op, the figure the estimate predicts. "
        + (
            "Where the estimate follows what happens inside an op (a kernel's scratch it "
            "knows; a fused kernel, or under inference_mode an op PyTorch composes of others, "
            "such as attention or an RNN layer, traced step by step), its peak counts it and "
            f"its figure between ops does not: {', '.join(inside)}. "
            if inside
            else ""
        )
    )


def measured_section(profile: Profile, charts: bool) -> str:
    device = next(pm.device_name for _, pm in _measured_rows(profile))
    cpu = profile.config.device == "cpu"
    why = (
        "On the CPU the measured peak is the allocator's, from the profiler's allocation "
        "records; kernels allocate scratch inside themselves that no trace of tensors can see "
        "(a convolution's im2col buffers and oneDNN's reorders, a 16-bit matrix product's "
        "buffers, an FFT's working copy), so it runs above the estimate. "
        + _cpu_between_ops(profile)
        if cpu
        else "Between ops: the highest the allocator held before or after any op, without "
        "the scratch a kernel allocates and frees inside one op (cuDNN's workspace), which no "
        "trace of tensors can see and the estimate leaves out. Reserved: what CUDA's caching "
        "allocator kept from the driver; NVML process: what nvidia-smi shows for the process. "
    ) + _scratch_words(profile)
    return join(
        f"## Measured on {device}",
        "*Each model and phase measured in a process of its own; each measured figure beside "
        "the estimate at the batch it was measured at. err = (est. − meas.) / meas.: "
        "negative where the estimate is low.*",
        md_table_title("Memory", measured_memory_table(profile)),
        why + _largest_miss(profile),
        md_table_title("Time", measured_time_table(profile)),
        f"{_how_timed(profile)}. The middle half of the iterations lies within the interval "
        "shown. This report calls two times different only where they differ by more than "
        "twice the standard error of the difference of their medians (estimated from those "
        "intervals and the numbers of iterations), and at least 2%.",
    )


def md_table_title(title_text: str, table: str) -> str:
    return f"**{title_text}**\n\n{table}"


# ---- comparison of any models ----------------------------------------------------------------


def parameters_table(models: Sequence[ModelProfile], reference: ModelProfile) -> str:
    rows = []
    for m in models:
        top = max(m.layers, key=lambda layer: layer.params)
        rows.append(
            [
                m.name,
                fmt_int(m.params),
                fmt_int(m.trainable_params),
                f"{m.params / reference.params:,.1f}×" if reference.params else "–",
                layer_label(top),
                fmt_percent(top.params, m.params),
            ]
        )
    return md_table(
        ["Model", "Params", "Trainable", f"× {reference.name}", "Largest layer", "its share"],
        rows,
        [False, True, True, True, False, True],
    )


def computation_table(models: Sequence[ModelProfile], reference: ModelProfile, batch: int) -> str:
    rows = [
        [
            m.name,
            fmt_scaled(m.macs_forward, 1e9),
            fmt_scaled(m.flops_forward, 1e9),
            fmt_scaled(m.flops_backward, 1e9),
            fmt_scaled(m.flops_train_step, 1e9),
            fmt_scaled(m.flops_forward / batch, 1e9, 3),
            f"{m.flops_train_step / reference.flops_train_step:,.2f}×"
            if reference.flops_train_step
            else "–",
        ]
        for m in models
    ]
    return md_table(
        [
            "Model",
            "Fwd MACs (G)",
            "Fwd FLOPs (G)",
            "Bwd FLOPs (G)",
            "Train-step FLOPs (G)",
            "Fwd GFLOPs per example",
            f"Step × {reference.name}",
        ],
        rows,
        [False] + [True] * 6,
    )


_SHOWN = {
    "train": (
        MemoryCategory.PARAMS,
        MemoryCategory.GRADS,
        MemoryCategory.OPTIMIZER,
        MemoryCategory.WORKSPACE,
        MemoryCategory.INPUT,
        MemoryCategory.WEIGHT_COPIES,
        MemoryCategory.ACTIVATIONS,
        MemoryCategory.TRANSIENT,
    ),
    "inference": (
        MemoryCategory.PARAMS,
        MemoryCategory.WORKSPACE,
        MemoryCategory.INPUT,
        MemoryCategory.WEIGHT_COPIES,
        MemoryCategory.ACTIVATIONS,
    ),
}
CATEGORY_TITLES = {
    MemoryCategory.PARAMS: "parameters",
    MemoryCategory.BUFFERS: "buffers",
    MemoryCategory.INPUT: "input",
    MemoryCategory.OPTIMIZER: "optimizer state",
    MemoryCategory.WORKSPACE: "workspace",
    MemoryCategory.GRADS: "gradients",
    MemoryCategory.WEIGHT_COPIES: "weight copies",
    MemoryCategory.ACTIVATIONS: "saved activations",
    MemoryCategory.TRANSIENT: "transient",
    MemoryCategory.COMMUNICATION: "communication",
    MemoryCategory.UNSHARDED_PARAMS: "gathered parameters",
}


def memory_table(models: Sequence[ModelProfile], phase: str, batch: int) -> str:
    """The estimated peak of `phase` by category, at the run's batch; the categories a model
    family never holds (workspace, optimizer state with SGD) are left out."""
    shown = [
        c
        for c in _SHOWN[phase]
        if c is MemoryCategory.PARAMS or any(breakdown(m, phase)[c] for m in models)
    ]
    headers = ["Model", *(f"{CATEGORY_TITLES[c]} (MiB)" for c in shown), "peak (MiB)"]
    reserved = any(breakdown(m, phase).reserved is not None for m in models)
    if reserved:
        headers.append("reserved (MiB)")
    headers += ["per example (MiB)", "peak at"]
    rows = []
    for m in models:
        b = breakdown(m, phase)
        row = [m.name, *(fmt_mib(b[c]) for c in shown), fmt_mib(b.peak)]
        if reserved:
            row.append(fmt_mib(b.reserved))
        row += [fmt_mib(per_example_bytes(b, batch), 2), peak_site(m, b)]
        rows.append(row)
    return md_table(headers, rows, [False] + [True] * (len(headers) - 2) + [False])


def peak_site(m: ModelProfile, b: MemoryBreakdown) -> str:
    """'backward, 4.5 ReLU, `threshold_backward`': the pass, the layer and the op."""
    layer = next((layer for layer in m.layers if layer.name == b.site.layer), None)
    where = layer_label(layer) if layer else b.site.layer or "–"
    return f"{b.site.phase}, {where}" + (f", `{b.site.op}`" if b.site.op else "")


def memory_sentence(m: ModelProfile, phase: str, batch: int) -> str:
    """Where and how high `phase` of `m` peaks, and what most of it is."""
    b = breakdown(m, phase)
    biggest = max(MemoryCategory, key=lambda c: b[c])
    text = (
        f"At batch {batch}, {PHASE_WORDS[phase]} of {display(m.name)} peaks at an estimated "
        f"{fmt_bytes(b.peak)} ({peak_site(m, b)}); the largest part is "
        f"{CATEGORY_TITLES[biggest]}, {fmt_percent(b[biggest], b.peak, 0)} of it"
    )
    if biggest in (MemoryCategory.PARAMS, MemoryCategory.GRADS, MemoryCategory.OPTIMIZER):
        return text + "."
    held = "parameters, gradients and optimizer state" if phase == "train" else "parameters"
    return text + f", while {held} take {fmt_bytes(held_bytes(b))}."


def extremes(
    models: Sequence[ModelProfile], value: Callable[[ModelProfile], float], noun: str
) -> str:
    """'X has the most parameters (N) and Y the fewest (M, Z× fewer)'."""
    ordered = sorted(models, key=value)
    low, high = ordered[0], ordered[-1]
    return (
        f"{display(high.name)} has the most {noun} ({fmt_number(value(high))}) and "
        f"{display(low.name)} the fewest ({fmt_number(value(low))}, "
        f"{how_many(value(low), value(high))})"
    )


def comparison_section(profile: Profile, charts: bool) -> str:
    models = list(profile.models)
    b = profile.config.batch
    reference = models[0]
    parts = [
        "## Comparison of the models",
        "### Parameters",
        parameters_table(models, reference),
        (
            f"Of the {len(models)} models, {extremes(models, lambda m: m.params, 'parameters')}."
            if len(models) > 1
            else ""
        ),
        "### Computation",
        computation_table(models, reference, b),
        (
            f"Per training step at batch {b}, "
            f"{extremes(models, lambda m: m.flops_train_step / 1e9, 'GFLOPs')}."
            if len(models) > 1
            else ""
        ),
    ]
    for phase, what in (("train", "training"), ("inference", "prediction")):
        alt = f"memory of {PHASE_WORDS[phase]} by category"
        parts += [
            f"### Memory during {what}",
            memory_table(models, phase, b),
            " ".join(memory_sentence(m, phase, b) for m in models),
            # exercise 3 links the same chart where it is shown
            chart(profile, "memory", alt, charts and not _chapter_memory(profile), phase=phase),
        ]
    parts.append(time_comparison(profile))
    return join(*parts)


def time_comparison(profile: Profile) -> str:
    """Fastest against slowest per example, for each phase measured, with the noise."""
    lines = []
    for phase in PHASES:
        timed = [
            (m, m.measured[phase])
            for m in profile.models
            if phase in m.measured and m.measured[phase].timing
        ]
        if len(timed) < 2:
            continue
        ordered = sorted(timed, key=lambda item: per_example_ms(item[1]) or 0.0)
        (fast, pf), (slow, ps) = ordered[0], ordered[-1]
        verdict = time_verdict(ps, pf)
        assert verdict is not None
        lines.append(
            f"Measured, {PHASE_WORDS[phase]} of {display(slow.name)} takes "
            f"{per_example_ms(ps):,.3f} ms per example at batch {ps.batch} and of "
            f"{display(fast.name)} {per_example_ms(pf):,.3f} ms at batch {pf.batch}: "
            + (f"the first takes {verdict.words()}." if verdict.differs else f"{verdict.words()}.")
        )
    return join("### Time", " ".join(lines)) if lines else ""


def _chapter_memory(profile: Profile) -> bool:
    """Exercise 3 is in the report (NiN and a baseline), with the memory charts."""
    return "nin" in names(profile) and bool(names(profile) & {"alexnet", "vgg11", "vgg11_narrow"})


def needs_comparison(profile: Profile) -> bool:
    """The general comparison, where the chapter's sections do not cover the run."""
    return "nin" not in names(profile) or not names(profile) <= CHAPTER


# ---- peers -------------------------------------------------------------------------------------


def _peer_rows(profile: Profile) -> list[tuple[ModelProfile, PeerFigures]]:
    return [(m, m.peers) for m in profile.models if m.peers]


def peers_section(profile: Profile, charts: bool) -> str:
    rows = _peer_rows(profile)
    table = md_table(
        [
            "Model",
            "Params (ours)",
            "torchinfo params",
            "Fwd MACs (ours, G)",
            "torchinfo mult-adds (G)",
            'fvcore "flops" (G)',
            "torchinfo total size (MiB)",
            "Train peak (ours, MiB)",
            "Inference peak (ours, MiB)",
            "ops fvcore skipped",
        ],
        [
            [
                m.name,
                fmt_int(m.params),
                fmt_int(p.torchinfo_params),
                fmt_scaled(m.macs_forward, 1e9),
                fmt_scaled(p.torchinfo_mult_adds, 1e9),
                fmt_scaled(p.fvcore_flops, 1e9),
                fmt_mib(p.torchinfo_total_bytes),
                fmt_mib(m.train.peak),
                fmt_mib(m.inference.peak),
                _skipped_by_fvcore(p),
            ]
            for m, p in rows
        ],
        [False] + [True] * 8 + [False],
    )
    return join(
        "## Beside torchinfo and fvcore",
        f"*Their figures for batch {profile.config.batch}: each tool run on the CPU at batch 1 "
        "and 2, and each figure carried to the batch along the line through those two; "
        "torchinfo's sizes (decimal MB) converted to MiB.*",
        table,
        "\n".join(f"- {line}" for line in _peer_differences(rows)),
    )


def _skipped_by_fvcore(p: PeerFigures) -> str:
    if p.fvcore_flops is None:
        return "–"
    return ", ".join(f"`{op}` ×{n}" for op, n in p.fvcore_unsupported.items()) or "none"


# What fvcore counts as matrix products (its by_operator names), as our MACs do.
MATRIX_OPS = frozenset({"conv", "linear", "addmm", "matmul", "bmm", "einsum", "mm"})


def _fvcore_difference(m: ModelProfile, difference: int, p: PeerFigures) -> str:
    """Where fvcore's count departs from our forward MACs: more by what it counts for ops
    other than products (which we list under *not counted*), less by the products of the
    ops it skips (the rest of the difference)."""
    others = {op: n for op, n in p.fvcore_by_operator.items() if op not in MATRIX_OPS}
    more = sum(others.values())
    less = difference - more
    parts = []
    if more:
        counted = listing([f"`{op}` ({n:,})" for op, n in others.items()])
        parts.append(f"{more:+,} it counts for {counted}, ops we list under *not counted*")
    skipped = listing([f"`{op}`" for op in p.fvcore_unsupported])
    if less < 0:
        parts.append(f"{less:+,}, the products of the ops it skips ({skipped or 'none listed'})")
    elif less > 0:  # not what skipping does: its products differ from ours
        parts.append(f"{less:+,} more in the products it counts")
    return f"{difference:+,} for {m.name}: " + " and ".join(parts)


def _peer_differences(rows: list[tuple[ModelProfile, PeerFigures]]) -> list[str]:
    """Why each figure differs from ours, in one line each, from the numbers; a tool that
    failed on a model says so, and the model has no figure of it."""
    failures = [
        f"{tool} failed on {m.name}, so its columns are empty there: {error}"
        for m, p in rows
        for tool, error in (("torchinfo", p.torchinfo_error), ("fvcore", p.fvcore_error))
        if error
    ]
    torchinfo = [(m, p) for m, p in rows if p.torchinfo_error is None]
    fvcore_rows = [(m, p) for m, p in rows if p.fvcore_error is None]
    lines = failures
    if torchinfo:
        every = "every model" if len(torchinfo) == len(rows) else "every model it ran"
        lines += _torchinfo_differences(torchinfo, every)
    if fvcore_rows:
        lines.append(_fvcore_differences(fvcore_rows))
    return lines


def _fvcore_differences(rows: list[tuple[ModelProfile, PeerFigures]]) -> str:
    fvcore = [(m, (p.fvcore_flops or 0) - m.macs_forward) for m, p in rows]
    exact = [m.name for m, d in fvcore if d == 0]
    differing = [
        _fvcore_difference(m, d, p) for (m, d), (_, p) in zip(fvcore, rows, strict=True) if d
    ]
    return (
        'fvcore\'s "flops" are multiply-adds, half of our FLOPs (FLOPs = 2 × MACs): its count '
        + (f"equals our forward MACs for {listing(exact)}" if exact else "")
        + ("; it differs by " if exact and differing else "differs by " if differing else "")
        + "; ".join(differing)
        + ". It skips the ops listed (no formula)."
    )


def _torchinfo_differences(rows: list[tuple[ModelProfile, PeerFigures]], every: str) -> list[str]:
    same_params = [m.name for m, p in rows if p.torchinfo_params == m.params]
    tied = (
        " (a parameter that several layers share, tied weights, counts there once for each "
        "layer; we count each tensor once)"
    )
    other_params = [
        f"{p.torchinfo_params or 0:,} for {m.name}, {(p.torchinfo_params or 0) - m.params:+,}"
        + (tied if (p.torchinfo_params or 0) > m.params else "")
        for m, p in rows
        if p.torchinfo_params != m.params
    ]
    lines = [
        "Parameters: torchinfo counts "
        + (
            f"the same for {every}."
            if not other_params
            else (f"the same for {listing(same_params)}; " if same_params else "")
            + f"it counts {'; '.join(other_params)} against ours."
        )
    ]
    extra = [(m, (p.torchinfo_mult_adds or 0) - m.macs_forward) for m, p in rows]
    lines.append(
        "torchinfo's mult-adds are our forward MACs "
        + ", ".join(
            f"{'plus' if d >= 0 else 'minus'} {fmt_scaled(abs(d), 1e6)} M for {m.name}"
            for m, d in extra
        )
        + ": it counts a convolution's parameters once per output position and any other "
        "layer's once per example, so a bias addition counts as one multiply-add, an "
        "embedding counts its whole table and a linear layer over a sequence counts once, "
        "not once per step."
    )
    lines.append(
        "torchinfo's \"estimated total size\" is the input, every layer's output counted twice "
        '("forward/backward pass") and the parameters: '
        + ", ".join(
            f"{fmt_bytes(p.torchinfo_total_bytes or 0)} for {m.name} against our training peak of "
            f"{fmt_bytes(m.train.peak)}"
            for m, p in rows
        )
        + ". It has no gradients or optimizer state, and it counts every output, where autograd "
        "keeps only what the backward needs (an in-place ReLU's output once, a max-pool's int64 "
        "indices, no output a later layer does not save)."
    )
    return lines


# ---- sweeps, fits, layers ----------------------------------------------------------------------


def sweep_section(profile: Profile, charts: bool) -> str:
    points = [(m, p) for m in profile.models for p in m.sweep]
    # the figure the estimate predicts, where measured: between ops (as the measured table)
    between = any(p.memory and p.memory.peak_between_ops is not None for _, p in points)
    rows = []
    for m, p in points:
        mem, t = p.memory, p.timing
        est = p.predicted.peak if p.predicted else None
        b = mem.peak_between_ops if mem else None
        b_est = p.predicted.peak_between_ops if p.predicted else None
        rows.append(
            [
                m.name,
                p.phase,
                str(p.batch),
                fmt_mib(est),
                fmt_mib(mem.peak_allocated) if mem else "–",
                rel_error(est, mem.peak_allocated) if mem and est else "–",
                *([fmt_mib(b), rel_error(b_est, b) if b and b_est else "–"] if between else []),
                f"{t.ms_per_iter:,.2f}" if t else "–",
                interval(t) if t else "–",
                f"{t.examples_per_s:,.1f}" if t else "–",
                p.error or "",
            ]
        )
    measured = any(p.memory for _, p in points)
    headers = [
        "Model",
        "Phase",
        "Batch",
        "Peak est. (MiB)",
        "Peak meas. (MiB)",
        "err",
        *(["Between ops meas. (MiB)", "err"] if between else []),
        "ms per iteration (median)",
        "middle half (ms)",
        "examples/s",
        "note",
    ]
    if not measured:  # a static sweep: the estimate alone
        headers, rows = headers[:4], [r[:4] for r in rows]
    return join(
        "## Memory and time against batch size",
        f"*Batches {', '.join(map(str, sorted({p.batch for _, p in points})))}: "
        + (
            "estimated and measured, each point in a process of its own.*"
            if measured
            else "estimated.*"
        ),
        md_table(headers, rows, [False, False] + [True] * (len(headers) - 3) + [len(headers) <= 4]),
        chart(profile, "sweep", "memory and time against batch size", charts),
    )


def fits_section(profile: Profile, charts: bool) -> str:
    fits = [(m, f) for m in profile.models for f in m.fits]
    hows = list(dict.fromkeys(f.how for _, f in fits))
    one_way = len(hows) == 1  # said once above the table rather than on every row
    rows = [
        [m.name, f.phase, fmt_int(f.batch) if f.batch else "none", fmt_bytes(f.limit_bytes)]
        + [f.how] * (not one_way)
        for m, f in fits
    ]
    table = md_table(
        ["Model", "Phase", "Largest batch", "Memory"] + ["How"] * (not one_way),
        rows,
        [False, False, True, True] + [False] * (not one_way),
    )
    how = f"*How, for every row: {hows[0]}.*" if one_way else ""
    return join("## The largest batch that fits", how, table)


_LAYER_COLUMNS = (
    Column.OUTPUT_SHAPE,
    Column.PARAMS,
    Column.FLOPS_FORWARD,
    Column.FLOPS_BACKWARD,
    Column.SAVED_BYTES,
    Column.ALLOCATED_DELTA,
    Column.INTENSITY,
)
_SHARED = frozenset(
    {Column.PARAMS, Column.FLOPS_FORWARD, Column.FLOPS_BACKWARD, Column.SAVED_BYTES}
)


def layer_table(m: ModelProfile, profile: Profile) -> str:
    """Every layer with its spec; beside each cost column, the layer's share of the model's
    total; measured per-layer figures where this run has them."""
    totals = {c: sum(int(VALUES[c](r)) for r in m.layers) for c in _SHARED}  # type: ignore[call-overload]
    headers: list[str] = ["Layer"]
    for c in _LAYER_COLUMNS:
        headers += [TITLES[c], "%"] if c in _SHARED else [TITLES[c]]
    train, infer = m.measured.get("train"), m.measured.get("inference")
    deltas = train.layer_deltas if train and train.batch == profile.config.batch else {}
    times = infer.layer_ms if infer else {}
    if deltas:
        headers.append("Adds MiB (meas.)")
    if times:
        headers += [f"Fwd ms alone (meas., batch {infer.batch})", "%"]  # type: ignore[union-attr]
    total_ms = sum(times.values())
    rows = []
    for group in layer_groups(m):
        r = group.stats
        cells = [layer_label(r)]
        for c in _LAYER_COLUMNS:
            cells.append(cell_text(c, r))
            if c in _SHARED:
                cells.append(fmt_percent(VALUES[c](r), totals[c]))  # type: ignore[arg-type]
        if deltas:
            delta = _measured_sum(deltas, group.members)
            cells.append(fmt_mib(delta, 2) if delta is not None else "–")
        if times:
            ms = _measured_sum(times, group.members)
            cells += [
                f"{ms:,.3f}" if ms is not None else "–",
                fmt_percent(ms, total_ms) if ms is not None else "–",
            ]
        rows.append(cells)
    right = [h != "Layer" and h not in {TITLES[c] for c in TEXT} for h in headers]
    return md_table(headers, rows, right)


def _measured_sum(figures: Mapping[str, T], members: tuple[str, ...]) -> T | None:
    """A group's measured figure: its layers' summed, None where none was measured."""
    values = [figures[name] for name in members if name in figures]
    return sum(values[1:], values[0]) if values else None


def not_counted_text(m: ModelProfile) -> str:
    if not m.not_counted:
        return "Every op with arithmetic has a FLOP formula."
    ops = ", ".join(f"`{n.op}` ({n.phase}, {n.calls}×)" for n in m.not_counted)
    return f"Not counted (no FLOP formula): {ops}."


def layers_section(profile: Profile, charts: bool) -> str:
    parts = [
        "## Per-layer figures",
        f"*Estimated at batch {profile.config.batch} unless marked meas. Layer: name, type, "
        "kernel/stride and channels. %: the layer's share of the model's total in the column "
        "to its left. Adds MiB: what the allocator holds more after the layer's forward "
        "(training step) than before. FLOP/B: forward FLOPs per byte of input, parameters and "
        "output. Fwd ms alone: each layer run on its own input, back to back (median).*",
    ]
    for m in profile.models:
        parts += [
            f"### {m.name}",
            m.description,
            f"Training loss: {m.loss}." if m.loss else "",
            layer_table(m, profile),
            grouping_note(m, layer_groups(m)),
            not_counted_text(m),
            chart(profile, "layers", f"{m.name} per layer", charts, model=m.name),
        ]
    return join(*parts)


# ---- method ----------------------------------------------------------------------------------

GLOSSARY = (
    ("parameters", "the model's weights and biases."),
    ("gradients", "the `.grad` of each trainable parameter, alive from the backward pass on."),
    (
        "optimizer state",
        "what the optimizer keeps between steps: a momentum buffer per parameter, Adam's two "
        "moments; none for plain SGD.",
    ),
    (
        "workspace",
        "memory a library holds from one step to the next: on CUDA, the cuBLAS and cuBLASLt "
        "workspace of each thread that runs a matrix product.",
    ),
    ("input", "the batch of inputs and its targets."),
    (
        "saved activations",
        "in training, the tensors autograd keeps for the backward pass (each storage once); in "
        "inference, the layer outputs alive at the peak.",
    ),
    (
        "transient",
        "anything else alive at the peak: gradients flowing back, an op's temporaries.",
    ),
    (
        "reserved",
        "what CUDA's caching allocator holds from the driver: the blocks in use and those it "
        "cached for reuse (estimated by a simulation of its rules).",
    ),
    (
        "CUDA context",
        "the memory the driver takes for a process before any tensor (measured, never estimated).",
    ),
    (
        "peak between ops / scratch",
        "the highest the allocator held between two ops, and what one op allocated and freed "
        "inside itself above that (cuDNN's convolution workspace).",
    ),
)

METHOD = (
    "FLOPs count a multiply-add as 2 (FLOPs = 2 × MACs). Convolutions and matrix products are "
    "counted with PyTorch's own formulas (`torch.utils.flop_counter`); ops without a formula "
    "are listed as not counted, never as zero (FFTs among them). A product of complex "
    "tensors (a Fourier layer's weights) counts as PyTorch counts it, a multiply-add per "
    "pair of complex elements, where real arithmetic takes four multiplications and four "
    "additions; a complex parameter counts as one parameter, of 8 bytes in complex64.",
    "Where we differ from PyTorch's `FlopCounterMode`: a convolution's backward is counted as "
    "one forward for the input gradient and one for the weight gradient, each only where it "
    "is computed. PyTorch's formula counts the weight gradient of a grouped convolution "
    "`groups` times too high (every input channel times every output channel): a depthwise "
    "convolution's backward came out at (1 + channels) times its forward instead of 2.",
    "Kernels: the trace runs the kernel the device selects where the meta device would run "
    "another (the rules, each with the PyTorch source it follows, in "
    "`nin_profile/engine/devices.py`). On the CPU, "
    "attention (`scaled_dot_product_attention`, `nn.MultiheadAttention`) runs the flash kernel "
    "PyTorch's own selection picks, which keeps a logsumexp instead of the attention matrix, "
    "but in inference `nn.MultiheadAttention` and `nn.TransformerEncoderLayer` run PyTorch's "
    "fused fast path, which keeps the whole attention matrix; `nn.LSTM` runs oneDNN's layer "
    "with its workspace; `nn.GRU` the CPU's composite. For CUDA, attention runs the kernel "
    "PyTorch's selection picks on an H100 or H200: cuDNN's for fp16 and bf16 where it takes "
    "the shapes (head dims multiples of 8, at most 256), else flash or memory-efficient; the "
    "memory-efficient kernel for float32 (flash and cuDNN need fp16 or bf16). These choices "
    "were checked against PyTorch's own on an H200 with torch 2.11 and cuDNN 9.19; other "
    "versions choose differently. `nn.LSTM` and `nn.GRU` run cuDNN's RNN, whose reserve for "
    "backward comes from a formula fitted to what that H200 returned (864 shapes, each to the "
    "byte); with projections, packed sequences, dropout, bfloat16 or AMP, and for `nn.RNN`, "
    "the composite cell stands in, that reserve is not predicted, and a note names the layer. "
    "The inference fast paths of the attention "
    "layers are not traced for CUDA (the slow path stands in).",
    "Bytes: KiB = 2^10 B, MiB = 2^20 B, GiB = 2^30 B.",
    "Estimated figures come from tracing one training step (after a warm-up step, so optimizer "
    "state exists) and one inference pass on meta tensors: nothing of batch size is allocated. "
    "The peak replays every allocation and free in program order; for CUDA, sizes are rounded "
    "up to the caching allocator's 512-byte blocks. Memory a kernel allocates inside itself "
    "(cuDNN workspace, CPU im2col buffers) and the CUDA context are not in the estimate.",
    "Reserved (estimated, CUDA only): a simulation of the caching allocator's rules (rounding, "
    "segment sizes, best-fit reuse, splitting and merging of cached blocks) over the traced "
    "allocations and frees of the warm-up and measured steps, without cuDNN's workspaces.",
    "Measured figures: memory from a separate process per model and phase (peak allocated and "
    "reserved from `torch.cuda`, process memory from NVML; on the CPU, the allocator's peak "
    "from the profiler's allocation records). Time: CUDA events on the GPU, each model and "
    "phase in its own process; on the CPU a monotonic clock, all models in one process, "
    "interleaved in rounds. Each time is the median of its iterations, with the interquartile "
    "range. Per-layer times: each layer run alone on its own input, back to back.",
)


def method_section(profile: Profile, charts: bool) -> str:
    glossary = "\n".join(f"- **{term}**: {meaning}" for term, meaning in GLOSSARY)
    return join(
        "## How the figures are made",
        "\n".join(f"- {line}" for line in METHOD),
        "### What the memory categories mean",
        glossary,
    )


TITLE = Section("title", title_section)
SUMMARY = Section("summary", summary_section)
MEASURED = Section("measured", measured_section, is_measured)
COMPARISON = Section("comparison", comparison_section, needs_comparison)
SWEEP = Section("sweep", sweep_section, lambda p: any(m.sweep for m in p.models))
FITS = Section("fits", fits_section, lambda p: any(m.fits for m in p.models))
PEERS = Section("peers", peers_section, lambda p: any(m.peers for m in p.models))
LAYERS = Section("layers", layers_section)
METHOD_SECTION = Section("method", method_section)
