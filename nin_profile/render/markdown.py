"""Profile → report.md. Pure: no model, no device, no file I/O.

Every sentence that states a result is built from the profile's numbers: the ratios, shares and
comparisons below are computed, never written in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from statistics import median
from typing import TypeVar

from nin_profile.columns import TEXT, TITLES, VALUES, Column, cell_text
from nin_profile.render.groups import grouping_note, layer_groups
from nin_profile.render.names import chart_file, is_pointwise
from nin_profile.results import (
    Ceilings,
    Environment,
    LayerStats,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    PhaseMeasurement,
    Profile,
)
from nin_profile.units import fmt_bytes, fmt_int, fmt_mib, fmt_percent, fmt_scaled

NIN = "nin"
BASELINES = ("alexnet", "vgg11", "vgg11_narrow")
DISPLAY = {
    "nin": "NiN",
    "alexnet": "AlexNet",
    "vgg11": "VGG-11",
    "vgg11_narrow": "the narrow VGG-11",
    "nin_single_1x1": "NiN with one 1×1 conv per block",
    "nin_gradual_head": "NiN with a gradual head",
}
PHASE_WORDS = {"train": "a training step", "inference": "inference"}
T = TypeVar("T", int, float)


# ---- small helpers ---------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A GitHub markdown table; `right[i]` right-aligns column i (numbers)."""
    rule = ["---:" if r else "---" for r in right]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, rule, *rows])


def display(name: str) -> str:
    return DISPLAY.get(name, name)


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def how_many(a: float, b: float, fewer: str = "fewer", more: str = "more") -> str:
    """a against b in words: '23.5× fewer', '19% fewer', '2.1× more', 'as many'."""
    if not b or a == b:
        return "as many" if fewer == "fewer" else "the same"
    if a < b:
        return f"{b / a:.1f}× {fewer}" if a and b >= 2 * a else f"{100 * (1 - a / b):.0f}% {fewer}"
    return f"{a / b:.1f}× {more}" if a >= 2 * b else f"{100 * (a / b - 1):.0f}% {more}"


def change(before: float, after: float) -> str:
    """The relative change from before to after, signed: '-11.2%'."""
    return f"{100 * (after - before) / before:+.1f}%" if before else "–"


def rel_error(estimate: float | None, measured: float | None) -> str:
    if estimate is None or not measured:
        return "–"
    return f"{100 * (estimate - measured) / measured:+.1f}%"


def model_named(profile: Profile, name: str) -> ModelProfile | None:
    return next((m for m in profile.models if m.name == name), None)


def breakdown(m: ModelProfile, phase: str) -> MemoryBreakdown:
    return m.train if phase == "train" else m.inference


def figures_kind(profile: Profile) -> str:
    return "estimated" if profile.config.static else "estimated and measured"


def run_header(profile: Profile, figures: str | None = None) -> str:
    """The line above every table: device, dtype, batch, and estimated or measured."""
    c = profile.config
    return (
        f"*{figures or figures_kind(profile)} · device {c.device} · {c.dtype} · batch {c.batch} "
        f"({c.channels}×{c.image_size}×{c.image_size} input, {_classes_words(profile)}) · "
        f"optimizer {c.optimizer} · per batch unless marked per example*"
    )


def _classes_words(profile: Profile) -> str:
    """'10 classes' where the run names one count (given, or every model's own), else what
    each model's output says."""
    counts = {m.classes for m in profile.models} if profile.config.classes is None else set()
    classes = profile.config.classes or (counts.pop() if len(counts) == 1 else None)
    return f"{classes} classes" if classes else "each model's own classes"


def chart(profile: Profile, kind: str, alt: str, charts: bool, **where: str) -> str:
    file = chart_file(profile, kind, **where) if charts else None
    return f"![{alt}]({file})" if file else ""


def measured_at(m: ModelProfile, phase: str) -> PhaseMeasurement | None:
    pm = m.measured.get(phase)
    return pm if pm and pm.memory else None


def per_example_ms(pm: PhaseMeasurement | None) -> float | None:
    return pm.timing.ms_per_iter / pm.batch if pm and pm.timing else None


# ---- header and summary ----------------------------------------------------------------------


def _cuda_stack(env: Environment) -> str:
    """The CUDA stack the profile recorded, e.g. " (CUDA 13.0, cuDNN 9.19.0, driver 580.159.04)"."""
    parts = [
        f"{label} {value}"
        for label, value in (("CUDA", env.cuda), ("cuDNN", env.cudnn), ("driver", env.driver))
        if value
    ]
    return f" ({', '.join(parts)})" if parts else ""


def title_block(profile: Profile) -> str:
    env = profile.environment
    lines = [
        "# Network in Network: parameters, computation and memory",
        f"Models: {', '.join(m.name for m in profile.models)}. Torch {env.torch}, Python "
        f"{env.python}, {env.platform}. Device: {env.device_name}{_cuda_stack(env)}.",
        run_header(profile),
    ]
    notes = [*profile.notes, *_measurement_notes(profile)]
    if notes:
        lines += [
            "Notes on this run (what was shortened, skipped, failed or assumed, and what the "
            "measurement saw beside the figures):",
            "\n".join(f"- {n}" for n in notes),
        ]
    return "\n\n".join(lines)


def _measurement_notes(profile: Profile) -> list[str]:
    notes = []
    for m in profile.models:
        for phase, pm in m.measured.items():
            notes += [f"{m.name} {phase}: {t}" for t in (*pm.notes, pm.error) if t]
    return notes


def summary_section(profile: Profile, charts: bool) -> str:
    headers = [
        "Model",
        "Params",
        "Fwd MACs (G)",
        "Fwd FLOPs (G)",
        "Train-step FLOPs (G)",
        "Saved for backward (MiB)",
        "Train peak est. (MiB)",
        "Inference peak est. (MiB)",
    ]
    measured = not profile.config.static
    if measured:
        headers[6:] = [
            "Train peak est. (MiB)",
            "meas. (MiB)",
            "err",
            "Inference peak est. (MiB)",
            "meas. (MiB)",
            "err",
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
        for phase in ("train", "inference"):
            row += _peak_cells(m, phase) if measured else [fmt_mib(breakdown(m, phase).peak)]
        rows.append(row)
    right = [False] + [True] * (len(headers) - 1)
    parts = ["## Summary", run_header(profile), md_table(headers, rows, right)]
    if measured:
        parts.append(
            "*est. = estimated (static analysis, no device); meas. = peak allocated as "
            "the device's allocator reports it; err = (est. − meas.) / meas.; where a "
            "measurement ran at another batch, both are given at that batch (@b)*"
        )
    parts.append(
        chart(profile, "models", "parameters, FLOPs and peak memory of each model", charts)
    )
    return "\n\n".join(p for p in parts if p)


def _peak_cells(m: ModelProfile, phase: str) -> list[str]:
    estimate = breakdown(m, phase).peak
    pm = m.measured.get(phase)
    if pm is None or pm.memory is None or pm.predicted is None:
        return [fmt_mib(estimate), "failed" if pm and pm.error else "–", "–"]
    at = (
        ""
        if pm.batch == m.measured[phase].batch and pm.predicted.peak == estimate
        else f" @{pm.batch}"
    )
    return [
        fmt_mib(pm.predicted.peak) + at,
        fmt_mib(pm.memory.peak_allocated),
        rel_error(pm.predicted.peak, pm.memory.peak_allocated),
    ]


# ---- exercise 3 ------------------------------------------------------------------------------


def _baselines(profile: Profile) -> list[ModelProfile]:
    return [m for name in BASELINES if (m := model_named(profile, name))]


def _against(
    nin: float,
    others: Sequence[tuple[ModelProfile, float]],
    fewer: str = "fewer",
    more: str = "more",
) -> str:
    """'23.5× fewer than AlexNet and 64.7× fewer than VGG-11'."""
    parts = [f"{how_many(nin, value, fewer, more)} than {display(m.name)}" for m, value in others]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 2 else parts)


def largest_layer(m: ModelProfile, value: Callable[[LayerStats], int]) -> LayerStats:
    return max(m.layers, key=value)


def parameters_section(profile: Profile, nin: ModelProfile) -> str:
    models = [nin, *_baselines(profile)]
    rows = []
    for m in models:
        top = largest_layer(m, lambda layer: layer.params)
        rows.append(
            [
                m.name,
                fmt_int(m.params),
                fmt_int(m.trainable_params),
                f"{m.params / nin.params:,.1f}×",
                f"{top.name} ({top.type})",
                fmt_percent(top.params, m.params),
            ]
        )
    top = largest_layer(nin, lambda layer: layer.params)
    others = [(m, m.params) for m in models[1:]]
    sentence = f"NiN has {nin.params:,} parameters"
    if others:
        sentence += f": {_against(nin.params, others)}"
    sentence += (
        f". Its largest layer, {top.name} ({top.type}), holds "
        f"{fmt_percent(top.params, nin.params)} of them; NiN has no dense layer at all."
    )
    table = md_table(
        ["Model", "Params", "Trainable", "× NiN", "Largest layer", "its share"],
        rows,
        [False, True, True, True, False, True],
    )
    return "\n\n".join(["### (a) Parameters", run_header(profile, "counted"), table, sentence])


def computation_section(profile: Profile, nin: ModelProfile) -> str:
    models = [nin, *_baselines(profile)]
    b = profile.config.batch
    rows = [
        [
            m.name,
            fmt_scaled(m.macs_forward, 1e9),
            fmt_scaled(m.flops_forward, 1e9),
            fmt_scaled(m.flops_backward, 1e9),
            fmt_scaled(m.flops_train_step, 1e9),
            fmt_scaled(m.flops_forward / b, 1e9, 3),
            f"{m.flops_train_step / nin.flops_train_step:,.2f}×",
        ]
        for m in models
    ]
    table = md_table(
        [
            "Model",
            "Fwd MACs (G)",
            "Fwd FLOPs (G)",
            "Bwd FLOPs (G)",
            "Train-step FLOPs (G)",
            "Fwd GFLOPs per example",
            "Step × NiN",
        ],
        rows,
        [False] + [True] * 6,
    )
    others = [(m, m.flops_train_step) for m in models[1:]]
    sentence = (
        f"A training step of NiN at batch {b} costs {nin.flops_train_step / 1e9:,.1f} "
        f"GFLOPs (forward {nin.flops_forward / 1e9:,.1f}, backward "
        f"{nin.flops_backward / 1e9:,.1f})"
    )
    if others:
        sentence += f": {_against(nin.flops_train_step, others)}"
    sentence += (
        f". Per example, its forward pass is {nin.flops_forward / b / 1e9:.2f} GFLOPs "
        f"({nin.macs_forward / b / 1e9:.2f} G multiply-adds). FLOPs count convolutions "
        "and matrix products; what has no formula is listed per model under "
        "*not counted*."
    )
    return "\n\n".join(["### (b) Computation", run_header(profile, "estimated"), table, sentence])


_SHOWN = (
    MemoryCategory.PARAMS,
    MemoryCategory.GRADS,
    MemoryCategory.OPTIMIZER,
    MemoryCategory.WORKSPACE,
    MemoryCategory.INPUT,
    MemoryCategory.ACTIVATIONS,
    MemoryCategory.TRANSIENT,
)
_SHOWN_INFERENCE = (
    MemoryCategory.PARAMS,
    MemoryCategory.WORKSPACE,
    MemoryCategory.INPUT,
    MemoryCategory.ACTIVATIONS,
)


def memory_section(profile: Profile, nin: ModelProfile, phase: str, charts: bool) -> str:
    letter, what = ("(c)", "training") if phase == "train" else ("(d)", "prediction")
    models = [nin, *_baselines(profile)]
    shown = [  # the workspace column only where some model holds one
        c
        for c in (_SHOWN if phase == "train" else _SHOWN_INFERENCE)
        if c is not MemoryCategory.WORKSPACE or any(breakdown(m, phase)[c] for m in models)
    ]
    headers = ["Model", *(f"{c.value} (MiB)" for c in shown), "peak est. (MiB)"]
    reserved = any(breakdown(m, phase).reserved is not None for m in models)
    if reserved:
        headers.append("reserved est. (MiB)")
    measured = any(measured_at(m, phase) for m in models)
    if measured:
        headers += [
            "peak allocated meas. (MiB)",
            "err",
            "reserved meas. (MiB)",
            *(["err"] if reserved else []),
            "NVML process (MiB)",
            "CUDA context (MiB)",
        ]
    rows = []
    for m in models:
        b = breakdown(m, phase)
        row = [m.name, *(fmt_mib(b[c]) for c in shown), fmt_mib(b.peak)]
        if reserved:
            row.append(fmt_mib(b.reserved))
        if measured:
            row += _measured_memory_cells(m, phase, b, reserved)
        rows.append(row)
    table = md_table(headers, rows, [False] + [True] * (len(headers) - 1))
    parts = [
        f"### {letter} Memory during {what}",
        run_header(profile),
        table,
        _memory_sentence(profile, nin, models[1:], phase),
    ]
    if measured:
        parts.append(_measured_sentence(profile, nin, phase))
    parts.append(
        chart(profile, "memory", f"memory of {PHASE_WORDS[phase]} by category", charts, phase=phase)
    )
    return "\n\n".join(p for p in parts if p)


def _measured_memory_cells(
    m: ModelProfile, phase: str, estimate: MemoryBreakdown, reserved: bool
) -> list[str]:
    pm = measured_at(m, phase)
    if pm is None or pm.memory is None or pm.predicted is None:
        return ["failed" if m.measured.get(phase) else "–"] + ["–"] * (4 + int(reserved))
    mem = pm.memory
    at = "" if pm.predicted.peak == estimate.peak else f" @{pm.batch}"
    reserved_error = [rel_error(pm.predicted.reserved, mem.peak_reserved)] if reserved else []
    return [
        fmt_mib(mem.peak_allocated) + at,
        rel_error(pm.predicted.peak, mem.peak_allocated),
        fmt_mib(mem.peak_reserved),
        *reserved_error,
        fmt_mib(mem.nvml_process),
        fmt_mib(mem.cuda_context),
    ]


def _memory_sentence(
    profile: Profile, nin: ModelProfile, others: list[ModelProfile], phase: str
) -> str:
    b = breakdown(nin, phase)
    held = b[MemoryCategory.PARAMS] + b[MemoryCategory.GRADS] + b[MemoryCategory.OPTIMIZER]
    biggest = max(MemoryCategory, key=lambda c: b[c])
    site = next((layer for layer in nin.layers if layer.name == b.site.layer), None)
    where = f"layer {b.site.layer}" + (f" ({site.type})" if site else "")
    text = (
        f"At batch {profile.config.batch}, {PHASE_WORDS[phase]} of NiN peaks at an estimated "
        f"{fmt_bytes(b.peak)} during the {b.site.phase} pass, at {where}; the largest part is "
        f"{biggest.value}, {fmt_percent(b[biggest], b.peak, 0)} of it, while parameters"
        f"{', gradients and optimizer state' if phase == 'train' else ''} take "
        f"{fmt_bytes(held)}."
    )
    for m in others[:1]:  # the first baseline makes the contrast; the table has the rest
        o = breakdown(m, phase)
        o_held = o[MemoryCategory.PARAMS] + o[MemoryCategory.GRADS] + o[MemoryCategory.OPTIMIZER]
        text += (
            f" {display(m.name)} peaks at {fmt_bytes(o.peak)}, "
            f"{how_many(o.peak, b.peak, 'less', 'more')} than NiN, and there parameters"
            f"{' and their gradients' if phase == 'train' else ''} take {fmt_bytes(o_held)}, "
            f"{fmt_percent(o_held, o.peak, 0)} of it: NiN trades parameters for activations."
        )
    return text


def _measured_sentence(profile: Profile, nin: ModelProfile, phase: str) -> str:
    pm = measured_at(nin, phase)
    if pm is None or pm.memory is None or pm.predicted is None:
        return ""
    mem = pm.memory
    text = (
        f"Measured on {pm.device_name} at batch {pm.batch}: NiN's peak allocated is "
        f"{fmt_bytes(mem.peak_allocated)}, {rel_error(pm.predicted.peak, mem.peak_allocated)} "
        f"from the estimate of {fmt_bytes(pm.predicted.peak)}"
    )
    if mem.peak_between_ops is not None:
        scratch = mem.peak_allocated - mem.peak_between_ops
        text += (
            f". Of that peak, {fmt_bytes(scratch)} is scratch a kernel allocates and frees "
            "inside one op (cuDNN's convolution workspace), which no trace of tensors can see; "
            f"between ops the peak is {fmt_bytes(mem.peak_between_ops)}, "
            f"{rel_error(pm.predicted.peak, mem.peak_between_ops)} from the estimate"
        )
    if mem.peak_reserved:
        text += f"; the caching allocator reserved {fmt_bytes(mem.peak_reserved)}"
        if pm.predicted.reserved is not None:
            text += (
                f", {rel_error(pm.predicted.reserved, mem.peak_reserved)} from the "
                f"{fmt_bytes(pm.predicted.reserved)} its simulation over the traced step "
                "estimates without cuDNN's workspaces"
            )
    if mem.nvml_process:
        text += f"; nvidia-smi shows {fmt_bytes(mem.nvml_process)} for the process"
        if mem.cuda_context:
            text += f", of which the CUDA context is {fmt_bytes(mem.cuda_context)}"
    return text + "."


# ---- exercises 2 and 4 -----------------------------------------------------------------------

_METRICS: list[tuple[str, Callable[[ModelProfile], float | None], Callable[[float], str]]] = [
    ("Parameters", lambda m: m.params, lambda v: fmt_int(int(v))),
    ("Forward GFLOPs", lambda m: m.flops_forward, lambda v: fmt_scaled(v, 1e9)),
    ("Train-step GFLOPs", lambda m: m.flops_train_step, lambda v: fmt_scaled(v, 1e9)),
    ("Saved for backward (MiB)", lambda m: m.activation_bytes_saved, fmt_mib),
    ("Train peak, est. (MiB)", lambda m: m.train.peak, fmt_mib),
    ("Inference peak, est. (MiB)", lambda m: m.inference.peak, fmt_mib),
    (
        "Train step, meas. (ms per example)",
        lambda m: per_example_ms(m.measured.get("train")),
        lambda v: f"{v:,.3f}",
    ),
    (
        "Inference, meas. (ms per example)",
        lambda m: per_example_ms(m.measured.get("inference")),
        lambda v: f"{v:,.3f}",
    ),
]


def diff_table(base: ModelProfile, variant: ModelProfile) -> str:
    rows = []
    for title, value, fmt in _METRICS:
        a, b = value(base), value(variant)
        if a is None or b is None:
            continue
        rows.append([title, fmt(a), fmt(b), change(a, b)])
    return md_table(["", base.name, variant.name, "change"], rows, [False, True, True, True])


def _change_words(base: ModelProfile, variant: ModelProfile) -> str:
    return (
        f"parameters {change(base.params, variant.params)} ({variant.params - base.params:+,}), "
        f"training-step FLOPs {change(base.flops_train_step, variant.flops_train_step)}, bytes "
        f"saved for backward {change(base.activation_bytes_saved, variant.activation_bytes_saved)}"
        f", estimated training peak {change(base.train.peak, variant.train.peak)}"
    )


def exercise2_section(profile: Profile, nin: ModelProfile) -> str:
    variant = model_named(profile, "nin_single_1x1")
    if variant is None:
        return ""
    text = f"With one 1×1 convolution per block instead of two: {_change_words(nin, variant)}."
    timing = _timing_words(nin, variant)
    return "\n\n".join(
        p
        for p in [
            "## Exercise 2: why two 1×1 convolutions per block? (one removed)",
            run_header(profile),
            diff_table(nin, variant),
            text + timing,
            "The second 1×1 convolution of a block adds another nonlinearity across channels at "
            "every pixel; its cost is what the table shows. Whether its accuracy is worth that "
            "needs training runs (exercise 1), which this tool does not do.",
        ]
        if p
    )


def _timing_words(base: ModelProfile, variant: ModelProfile) -> str:
    a, b = per_example_ms(base.measured.get("train")), per_example_ms(variant.measured.get("train"))
    if a is None or b is None:
        return ""
    return f" Measured, a training step takes {change(a, b)} time per example."


def exercise4_section(profile: Profile, nin: ModelProfile) -> str:
    variant = model_named(profile, "nin_gradual_head")
    if variant is None:
        return ""
    classes = nin.classes or profile.config.classes
    head = [layer for layer in nin.layers if layer.name.startswith("7.") and layer.params]
    gradual = [layer for layer in variant.layers if layer.name.startswith("7.") and layer.params]
    text = (
        f"NiN's last block maps 384×5×5 to {classes}×5×5 in one 3×3 "
        f"convolution ({sum(layer.params for layer in head):,} parameters in the block); "
        f"narrowing 384→96→24→{classes} instead "
        f"({sum(layer.params for layer in gradual):,} parameters in the block): "
        f"{_change_words(nin, variant)}."
    )
    return "\n\n".join(
        p
        for p in [
            "## Exercise 4: reducing 384×5×5 to 10×5×5 in one step",
            run_header(profile),
            diff_table(nin, variant),
            text + _timing_words(nin, variant),
            "The gradual head costs little because it works on 5×5 maps. The trouble with the "
            "one-step reduction is not a resource: one 3×3 convolution (and its ReLU) must "
            f"compress 384 channels into {classes}, and every later layer sees "
            f"only those {classes} channels, a bottleneck whose effect on accuracy "
            "training, not this profile, has to judge.",
        ]
        if p
    )


# ---- the chapter's claims --------------------------------------------------------------------


def dense_layers_section(profile: Profile) -> str:
    rows, sentences = [], []
    for m in profile.models:
        dense = [layer for layer in m.layers if layer.type == "Linear"]
        if not dense:
            continue
        first = dense[0]
        total = sum(layer.params for layer in dense)
        rows.append(
            [
                m.name,
                f"{first.name}",
                fmt_int(first.params),
                fmt_percent(first.params, m.params),
                fmt_int(total),
                fmt_percent(total, m.params),
            ]
        )
        if m.name in BASELINES:
            sentences.append(
                f"{sentence_case(display(m.name))}'s first dense layer ({first.name}) holds "
                f"{first.params / 1e6:.1f} M parameters, "
                f"{fmt_percent(first.params, m.params)} of the model."
            )
    if not rows:
        return ""
    table = md_table(
        ["Model", "First dense layer", "its params", "share", "All dense params", "share"],
        rows,
        [False, False, True, True, True, True],
    )
    return "\n\n".join(
        [
            "### Where the parameters of AlexNet and VGG sit",
            run_header(profile, "counted"),
            table,
            " ".join(sentences) + " The chapter gives ≈26M for AlexNet's and ≈102M "
            "for VGG's: the reason NiN drops dense layers.",
        ]
    )


def _pointwise(m: ModelProfile) -> list[LayerStats]:
    return [layer for layer in m.layers if is_pointwise(layer)]


def speed_section(profile: Profile, charts: bool) -> str:
    nin, alexnet = model_named(profile, NIN), model_named(profile, "alexnet")
    if nin is None or alexnet is None:
        return ""
    rows = [_intensity_row(m) for m in (nin, alexnet)]
    table = md_table(
        [
            "Model",
            "Fwd GFLOPs",
            "Bytes moved by all layers (forward, MiB)",
            "FLOP per byte, whole forward",
            "1×1 convs",
            "their FLOP share",
            "their FLOP/B (median)",
            "other convs' FLOP/B (median)",
        ],
        rows,
        [False] + [True] * 7,
    )
    parts = [
        "### Is NiN slower per training step than AlexNet?",
        run_header(profile),
        table,
        _speed_sentence(profile, nin, alexnet),
    ]
    ceilings = next(
        (pm.ceilings for m in profile.models for pm in m.measured.values() if pm.ceilings), None
    )
    if ceilings:
        parts.append(
            f"On {profile.environment.device_name} a large {ceilings.matmul_precision} matrix "
            f"product ran at {ceilings.flops_per_s / 1e12:.2f} TFLOP/s and a large copy at "
            f"{ceilings.bytes_per_s / 1e9:.0f} GB/s (measured): a layer below "
            f"{ceilings.ridge:.0f} FLOP/B cannot keep the arithmetic units busy and is "
            "bound by memory bandwidth." + _above_roof_sentence(profile, ceilings)
        )
    parts.append(_time_share_sentence(nin))
    parts.append(chart(profile, "roofline", "arithmetic intensity of each layer", charts))
    return "\n\n".join(p for p in parts if p)


def _above_roof_sentence(profile: Profile, ceilings: Ceilings) -> str:
    """Say so when timed layers ran faster than a CUDA roof measured in full float32."""
    if ceilings.matmul_precision != "fp32" or profile.config.device != "cuda":
        return ""
    above = [
        layer
        for m in profile.models
        if (pm := m.measured.get("inference")) and pm.batch == profile.config.batch
        for layer in m.layers
        if pm.layer_ms.get(layer.name)
        and layer.flops_forward / (pm.layer_ms[layer.name] / 1e3) > ceilings.flops_per_s
    ]
    if not above:
        return ""
    return (
        f" {len(above)} timed layers ran above that roof: cuDNN runs float32 convolutions on "
        "TF32 tensor cores unless `torch.backends.cudnn.allow_tf32` is off, and this roof was "
        "measured with full float32 arithmetic; a run of this version measures the roof in "
        "TF32 where the convolutions use it."
    )


def _intensity_row(m: ModelProfile) -> list[str]:
    moved = sum(layer.bytes_moved for layer in m.layers)
    pointwise = _pointwise(m)
    others = [layer for layer in m.layers if layer.type == "Conv2d" and not is_pointwise(layer)]
    return [
        m.name,
        fmt_scaled(m.flops_forward, 1e9),
        fmt_mib(moved),
        f"{m.flops_forward / moved:,.1f}" if moved else "–",
        str(len(pointwise)),
        fmt_percent(sum(layer.flops_forward for layer in pointwise), m.flops_forward),
        f"{median(layer.intensity for layer in pointwise):,.1f}" if pointwise else "–",
        f"{median(layer.intensity for layer in others):,.1f}" if others else "–",
    ]


def _traffic(m: ModelProfile, batch: int) -> tuple[float, int]:
    """(bytes per example, bytes per batch) of the forward's traffic: activations scale with
    the batch, parameters are read once per batch."""
    weights = sum(layer.param_bytes for layer in m.layers)
    return (sum(layer.bytes_moved for layer in m.layers) - weights) / batch, weights


def traffic_crossover(nin: ModelProfile, other: ModelProfile, batch: int) -> int | None:
    """The smallest batch from which NiN's forward moves more bytes than `other`'s."""
    (a_nin, w_nin), (a_other, w_other) = _traffic(nin, batch), _traffic(other, batch)
    if a_nin <= a_other:
        return None
    return max(1, int((w_other - w_nin) / (a_nin - a_other)) + 1)


def _speed_sentence(profile: Profile, nin: ModelProfile, alexnet: ModelProfile) -> str:
    nin_moved = sum(layer.bytes_moved for layer in nin.layers)
    alex_moved = sum(layer.bytes_moved for layer in alexnet.layers)
    moved = (
        f"{how_many(nin_moved, alex_moved, 'less', 'more')} data through memory "
        f"({fmt_bytes(nin_moved)} against {fmt_bytes(alex_moved)})"
    )
    flops = f"NiN's forward pass does {how_many(nin.flops_forward, alexnet.flops_forward)} FLOPs"
    crossover = traffic_crossover(nin, alexnet, profile.config.batch)
    if nin_moved > alex_moved:
        text = (
            f"Estimated: {flops} than AlexNet's but moves {moved}: each NiN block keeps a "
            "full-resolution feature map through two 1×1 convolutions and three ReLUs, and a "
            "1×1 convolution does few FLOPs per byte it reads and writes (table above)."
        )
    else:
        dense = sum(layer.params for layer in alexnet.layers if layer.type == "Linear")
        text = (
            f"Estimated: {flops} than AlexNet's and moves {moved}: at batch "
            f"{profile.config.batch}, reading AlexNet's {dense / 1e6:.1f} M dense weights "
            "outweighs NiN's larger feature maps"
        )
        text += f"; from batch {crossover} up, NiN's feature maps move more." if crossover else "."
    return text + _measured_speed(nin, alexnet)


def _measured_speed(nin: ModelProfile, alexnet: ModelProfile) -> str:
    a, b = per_example_ms(nin.measured.get("train")), per_example_ms(alexnet.measured.get("train"))
    if a is None or b is None:
        return ""
    verdict = "holds" if a > b else "does not hold"
    return (
        f" Measured: a NiN training step takes {a:,.3f} ms per example against AlexNet's "
        f"{b:,.3f} ms, so NiN is {how_many(a, b, 'faster', 'slower')} per "
        f"step with {how_many(nin.flops_train_step, alexnet.flops_train_step)} FLOPs and "
        f"{how_many(nin.params, alexnet.params)} parameters: the chapter's remark that NiN can "
        f"take longer {verdict} here."
    )


def _time_share_sentence(m: ModelProfile) -> str:
    pm = m.measured.get("inference")
    if not pm or not pm.layer_ms:
        return ""
    total = sum(pm.layer_ms.values())
    pointwise = _pointwise(m)
    ms = sum(pm.layer_ms.get(layer.name, 0.0) for layer in pointwise)
    flops = sum(layer.flops_forward for layer in pointwise)
    return (
        f"Timed layer by layer (forward, batch {pm.batch}, {pm.device_name}): NiN's "
        f"{len(pointwise)} 1×1 convolutions take {fmt_percent(ms, total)} of the forward time "
        f"for {fmt_percent(flops, m.flops_forward)} of its FLOPs."
    )


def claims_section(profile: Profile, charts: bool) -> str:
    parts = [dense_layers_section(profile), speed_section(profile, charts)]
    body = [p for p in parts if p]
    return "\n\n".join(["## The chapter's claims, checked", *body]) if body else ""


# ---- sweeps, fits, layers --------------------------------------------------------------------


def sweep_section(profile: Profile, charts: bool) -> str:
    points = [(m, p) for m in profile.models for p in m.sweep]
    if not points:
        return ""
    rows = []
    for m, p in points:
        mem, t = p.memory, p.timing
        est = p.predicted.peak if p.predicted else None
        rows.append(
            [
                m.name,
                p.phase,
                str(p.batch),
                fmt_mib(est),
                fmt_mib(mem.peak_allocated) if mem else "–",
                rel_error(est, mem.peak_allocated) if mem and est else "–",
                f"{t.ms_per_iter:,.2f}" if t else "–",
                f"{t.examples_per_s:,.1f}" if t else "–",
                p.error or "",
            ]
        )
    table = md_table(
        [
            "Model",
            "Phase",
            "Batch",
            "Peak est. (MiB)",
            "Peak meas. (MiB)",
            "err",
            "ms per iteration",
            "examples/s",
            "note",
        ],
        rows,
        [False, False, True, True, True, True, True, True, False],
    )
    return "\n\n".join(
        p
        for p in [
            "## Memory and time against batch size",
            run_header(profile),
            table,
            chart(profile, "sweep", "memory and time against batch size", charts),
        ]
        if p
    )


def fits_section(profile: Profile) -> str:
    rows = [
        [m.name, f.phase, fmt_int(f.batch) if f.batch else "none", fmt_bytes(f.limit_bytes), f.how]
        for m in profile.models
        for f in m.fits
    ]
    if not rows:
        return ""
    table = md_table(
        ["Model", "Phase", "Largest batch", "Memory", "How"],
        rows,
        [False, False, True, True, False],
    )
    return "\n\n".join(["## The largest batch that fits", run_header(profile), table])


_LAYER_COLUMNS = (
    Column.NAME,
    Column.TYPE,
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
    """Every layer (a large model's blocks, see render/groups.py); beside each cost column, the
    row's share of the model's total; measured per-layer figures where this run has them at
    the same batch."""
    totals = {c: sum(int(VALUES[c](r)) for r in m.layers) for c in _SHARED}  # type: ignore[call-overload]
    headers: list[str] = []
    for c in _LAYER_COLUMNS:
        headers += [TITLES[c], "%"] if c in _SHARED else [TITLES[c]]
    train, infer = m.measured.get("train"), m.measured.get("inference")
    deltas = train.layer_deltas if train and train.batch == profile.config.batch else {}
    times = infer.layer_ms if infer else {}
    if deltas:
        headers.append("Adds MiB (meas.)")
    if times:
        headers += [f"Fwd ms (meas., batch {infer.batch})", "%"]  # type: ignore[union-attr]
    total_ms = sum(times.values())
    rows = []
    for group in layer_groups(m):
        r = group.stats
        cells = []
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
    right = [h not in {TITLES[c] for c in TEXT} for h in headers]
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
        "*%: the layer's share of the model's total in the column to its left. Adds MiB: "
        "what the allocator holds more after the layer's forward (training step) than "
        "before. FLOP/B: forward FLOPs per byte of input, parameters and output.*",
    ]
    for m in profile.models:
        parts += [
            f"### {m.name}",
            m.description,
            f"Training loss: {m.loss}." if m.loss else "",
            run_header(profile),
            layer_table(m, profile),
            grouping_note(m, layer_groups(m)),
            not_counted_text(m),
            chart(profile, "layers", f"{m.name} per layer", charts, model=m.name),
        ]
    return "\n\n".join(p for p in parts if p)


# ---- method ----------------------------------------------------------------------------------

METHOD = (
    "FLOPs count a multiply-add as 2 (FLOPs = 2 × MACs). Convolutions and matrix products are "
    "counted with PyTorch's own formulas (`torch.utils.flop_counter`); ops without a formula "
    "are listed as not counted, never as zero.",
    "Where we differ from PyTorch's `FlopCounterMode`: a convolution's backward is counted as "
    "one forward for the input gradient and one for the weight gradient, each only where it "
    "is computed. PyTorch's formula counts the weight gradient of a grouped convolution "
    "`groups` times too high (every input channel times every output channel): a depthwise "
    "convolution's backward came out at (1 + channels) times its forward instead of 2.",
    "Kernels: the trace runs the kernel the device selects where the meta device would run "
    "another (`nin_profile/kernels.py`, with the PyTorch source of each rule). On the CPU, "
    "attention (`scaled_dot_product_attention`, `nn.MultiheadAttention`) runs the flash kernel "
    "PyTorch's own selection picks, which keeps a logsumexp instead of the attention matrix; "
    "`nn.LSTM` runs oneDNN's layer with its workspace; `nn.GRU` the CPU's composite. For "
    "CUDA, float32 attention runs the memory-efficient kernel (flash and cuDNN need fp16 or "
    "bf16): these CUDA choices follow PyTorch's source and are not yet validated on a GPU, and "
    "the reserve cuDNN's RNN keeps is not predicted (LSTM and GRU are traced as their "
    "composite cell for CUDA).",
    "Bytes: KiB = 2^10 B, MiB = 2^20 B, GiB = 2^30 B.",
    "Estimated figures come from tracing one training step (after a warm-up step, so optimizer "
    "state exists) and one inference pass on meta tensors: nothing of batch size is allocated. "
    "The peak replays every allocation and free in program order; for CUDA, sizes are rounded "
    "up to the caching allocator's 512-byte blocks. Memory a kernel allocates inside itself "
    "(cuDNN workspace, CPU im2col buffers) and the CUDA context are not in the estimate.",
    "Reserved (estimated, CUDA only): the segments CUDA's caching allocator would hold once "
    "the step repeats, from a simulation of its rules (rounding, segment sizes, best-fit reuse, "
    "splitting and merging of cached blocks) over the traced allocations and frees of the "
    "warm-up and measured steps. cuDNN's workspaces are not in it: on an H100 it was below the "
    "measured reserve wherever convolutions needed them (training, mostly).",
    "Saved for backward: storages autograd keeps for the backward pass, each counted once (a "
    "ReLU's output that the next conv also saves counts for the ReLU); parameters excluded, "
    "the input batch included.",
    "Measured figures come from a separate process per model, phase and batch: peak allocated "
    "and reserved from `torch.cuda` (on the CPU, the allocator's peak from the profiler's "
    "allocation records), process and device memory from NVML, time from CUDA events (on the "
    "CPU, a monotonic clock) as the median over the timed iterations.",
)


def method_section() -> str:
    return "## How the figures are made\n\n" + "\n".join(f"- {line}" for line in METHOD)


def exercise3_section(profile: Profile, charts: bool) -> str:
    nin = model_named(profile, NIN)
    if nin is None:
        return (
            "## Exercise 3: NiN's resource use\n\nThe exercises compare NiN with its "
            "baselines: add `nin` to `--models` for these sections."
        )
    return "\n\n".join(
        [
            "## Exercise 3: NiN's resource use",
            parameters_section(profile, nin),
            computation_section(profile, nin),
            memory_section(profile, nin, "train", charts),
            memory_section(profile, nin, "inference", charts),
        ]
    )


def render_report(profile: Profile, charts: bool = True) -> str:
    """The whole report.md; `charts` says whether the PNGs it links are written beside it."""
    nin = model_named(profile, NIN)
    sections = [
        title_block(profile),
        summary_section(profile, charts),
        exercise3_section(profile, charts),
        exercise2_section(profile, nin) if nin else "",
        exercise4_section(profile, nin) if nin else "",
        claims_section(profile, charts),
        sweep_section(profile, charts),
        fits_section(profile),
        layers_section(profile, charts),
        method_section(),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
