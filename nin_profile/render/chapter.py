"""The sections that answer the "Network in Network" chapter of Dive into Deep Learning: its
exercises 2, 3 and 4 and its claims, shown only when the models they speak of are in the run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import median

from nin_profile.render.general import (
    chart,
    computation_table,
    join,
    memory_sentence,
    memory_table,
    parameters_table,
)
from nin_profile.render.names import is_pointwise
from nin_profile.render.sections import Section, has_all, has_any
from nin_profile.render.text import (
    PHASE_WORDS,
    breakdown,
    change,
    display,
    error_words,
    held_bytes,
    how_many,
    layer_label,
    md_table,
    measured_at,
    model_named,
    per_example_ms,
    sentence_case,
    time_verdict,
)
from nin_profile.results import Ceilings, LayerStats, ModelProfile, Profile
from nin_profile.units import fmt_bytes, fmt_int, fmt_mib, fmt_percent, fmt_scaled

NIN = "nin"
BASELINES = ("alexnet", "vgg11", "vgg11_narrow")


def _nin(profile: Profile) -> ModelProfile:
    nin = model_named(profile, NIN)
    assert nin is not None  # the sections below need it (Section.needs)
    return nin


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


# ---- exercise 3 ------------------------------------------------------------------------------


def parameters_part(profile: Profile) -> str:
    nin = _nin(profile)
    models = [nin, *_baselines(profile)]
    top = max(nin.layers, key=lambda layer: layer.params)
    others = [(m, m.params) for m in models[1:]]
    sentence = f"NiN has {nin.params:,} parameters: {_against(nin.params, others)}"
    sentence += (
        f". Its largest layer, {layer_label(top)}, holds "
        f"{fmt_percent(top.params, nin.params)} of them; NiN has no dense layer at all."
    )
    return join("### (a) Parameters", parameters_table(models, nin), sentence)


def computation_part(profile: Profile) -> str:
    nin = _nin(profile)
    models = [nin, *_baselines(profile)]
    b = profile.config.batch
    others = [(m, m.flops_train_step) for m in models[1:]]
    sentence = (
        f"A training step of NiN at batch {b} costs {nin.flops_train_step / 1e9:,.1f} "
        f"GFLOPs (forward {nin.flops_forward / 1e9:,.1f}, backward "
        f"{nin.flops_backward / 1e9:,.1f}): {_against(nin.flops_train_step, others)}. Per "
        f"example, its forward pass is {nin.flops_forward / b / 1e9:.2f} GFLOPs "
        f"({nin.macs_forward / b / 1e9:.2f} G multiply-adds). FLOPs count convolutions and "
        "matrix products; what has no formula is listed per model under *not counted*."
    )
    return join("### (b) Computation", computation_table(models, nin, b), sentence)


def memory_part(profile: Profile, phase: str, charts: bool) -> str:
    letter, what = ("(c)", "training") if phase == "train" else ("(d)", "prediction")
    nin = _nin(profile)
    baselines = _baselines(profile)
    b = profile.config.batch
    text = memory_sentence(nin, phase, b)
    for m in baselines[:1]:  # the first baseline makes the contrast; the table has the rest
        o, n = breakdown(m, phase), breakdown(nin, phase)
        text += (
            f" {display(m.name)} peaks at {fmt_bytes(o.peak)}, "
            f"{how_many(o.peak, n.peak, 'less', 'more')} than NiN, and there parameters"
            f"{' and their gradients' if phase == 'train' else ''} take "
            f"{fmt_bytes(held_bytes(o))}, {fmt_percent(held_bytes(o), o.peak, 0)} of it: NiN "
            "trades parameters for activations."
        )
    return join(
        f"### {letter} Memory during {what}",
        f"*Estimated at batch {b}; the measured peaks are under Measured above.*",
        memory_table([nin, *baselines], phase, b),
        text,
        _measured_sentence(nin, phase),
        chart(
            profile, "memory", f"memory of {PHASE_WORDS[phase]} by category", charts, phase=phase
        ),
    )


def _measured_sentence(nin: ModelProfile, phase: str) -> str:
    """NiN's measured peak beside the estimate at the batch it was measured at."""
    pm = measured_at(nin, phase)
    if pm is None or pm.memory is None or pm.predicted is None:
        return ""
    mem, est = pm.memory, pm.predicted
    text = (
        f"Measured on {pm.device_name} at batch {pm.batch}, NiN's peak allocated is "
        f"{fmt_bytes(mem.peak_allocated)}; the estimate at that batch, "
        f"{fmt_bytes(est.peak)}, is {error_words(est.peak, mem.peak_allocated)}"
    )
    if mem.peak_between_ops is not None:
        scratch = "cuDNN's convolution workspace" if mem.peak_reserved else "im2col buffers"
        text += (
            f". Of that peak, {fmt_bytes(mem.peak_allocated - mem.peak_between_ops)} is scratch "
            f"a kernel allocates and frees inside one op ({scratch}); between "
            f"ops the peak is {fmt_bytes(mem.peak_between_ops)} and the estimate is "
            f"{error_words(est.peak_between_ops, mem.peak_between_ops)}"
        )
    if mem.peak_reserved and est.reserved is not None:
        text += (
            f"; the caching allocator reserved {fmt_bytes(mem.peak_reserved)}, and its "
            f"simulation without cuDNN's workspaces, {fmt_bytes(est.reserved)}, is "
            f"{error_words(est.reserved, mem.peak_reserved)}"
        )
    if mem.nvml_process:
        text += f"; nvidia-smi shows {fmt_bytes(mem.nvml_process)} for the process"
        if mem.cuda_context:
            text += f", of which the CUDA context is {fmt_bytes(mem.cuda_context)}"
    return text + "."


def exercise3_section(profile: Profile, charts: bool) -> str:
    return join(
        "## Exercise 3: NiN's parameters, computation and memory against its baselines",
        parameters_part(profile),
        computation_part(profile),
        memory_part(profile, "train", charts),
        memory_part(profile, "inference", charts),
    )


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
    for label, value, fmt in _METRICS:
        a, b = value(base), value(variant)
        if a is None or b is None:
            continue
        rows.append([label, fmt(a), fmt(b), change(a, b)])
    return md_table(["", base.name, variant.name, "change"], rows, [False, True, True, True])


def _change_words(base: ModelProfile, variant: ModelProfile) -> str:
    return (
        f"parameters {change(base.params, variant.params)} ({variant.params - base.params:+,}), "
        f"training-step FLOPs {change(base.flops_train_step, variant.flops_train_step)}, bytes "
        f"saved for backward {change(base.activation_bytes_saved, variant.activation_bytes_saved)}"
        f", estimated training peak {change(base.train.peak, variant.train.peak)}"
    )


def _timing_words(base: ModelProfile, variant: ModelProfile) -> str:
    verdict = time_verdict(variant.measured.get("train"), base.measured.get("train"))
    if verdict is None:
        return ""
    if not verdict.differs:
        return f" Measured, its training step takes the same time per example, {verdict.words()}."
    return (
        f" Measured, its training step takes {verdict.words()} per example (beyond the "
        f"±{100 * verdict.noise:.0f}% noise)."
    )


def exercise2_section(profile: Profile, charts: bool) -> str:
    nin, variant = _nin(profile), model_named(profile, "nin_single_1x1")
    assert variant is not None
    text = f"With one 1×1 convolution per block instead of two: {_change_words(nin, variant)}."
    return join(
        "## Exercise 2: why two 1×1 convolutions per block? (one removed)",
        diff_table(nin, variant),
        text + _timing_words(nin, variant),
        "The second 1×1 convolution of a block adds another nonlinearity across channels at "
        "every pixel; its cost is what the table shows. Whether its accuracy is worth that "
        "needs training runs (exercise 1), which this tool does not do.",
    )


def exercise4_section(profile: Profile, charts: bool) -> str:
    nin, variant = _nin(profile), model_named(profile, "nin_gradual_head")
    assert variant is not None
    classes = nin.classes or profile.config.classes
    head = [layer for layer in nin.layers if layer.name.startswith("7.") and layer.params]
    gradual = [layer for layer in variant.layers if layer.name.startswith("7.") and layer.params]
    text = (
        f"NiN's last block maps 384×5×5 to {classes}×5×5 in one 3×3 convolution "
        f"({sum(layer.params for layer in head):,} parameters in the block); narrowing "
        f"384→96→24→{classes} instead ({sum(layer.params for layer in gradual):,} parameters "
        f"in the block): {_change_words(nin, variant)}."
    )
    return join(
        f"## Exercise 4: reducing 384×5×5 to {classes}×5×5 in one step",
        diff_table(nin, variant),
        text + _timing_words(nin, variant),
        "The gradual head costs little because it works on 5×5 maps. The trouble with the "
        "one-step reduction is not a resource: one 3×3 convolution (and its ReLU) must "
        f"compress 384 channels into {classes}, and every later layer sees only those "
        f"{classes} channels, a bottleneck whose effect on accuracy training, not this "
        "profile, has to judge.",
    )


# ---- the chapter's claims --------------------------------------------------------------------


def dense_layers_part(profile: Profile) -> str:
    rows, sentences = [], []
    for m in [m for m in profile.models if m.name in (NIN, *BASELINES)]:
        dense = [layer for layer in m.layers if layer.type == "Linear"]
        if not dense:
            continue
        first = dense[0]
        total = sum(layer.params for layer in dense)
        rows.append(
            [
                m.name,
                layer_label(first),
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
    return join(
        "### Where the parameters of AlexNet and VGG sit",
        table,
        " ".join(sentences) + " The chapter gives ≈26M for AlexNet's and ≈102M for VGG's: "
        "the reason NiN drops dense layers.",
    )


def _pointwise(m: ModelProfile) -> list[LayerStats]:
    return [layer for layer in m.layers if is_pointwise(layer)]


def speed_part(profile: Profile, charts: bool) -> str:
    nin, alexnet = model_named(profile, NIN), model_named(profile, "alexnet")
    if nin is None or alexnet is None:
        return ""
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
        [_intensity_row(m) for m in (nin, alexnet)],
        [False] + [True] * 7,
    )
    parts = [
        "### Is NiN slower per training step than AlexNet?",
        table,
        _speed_sentence(profile, nin, alexnet),
    ]
    ceilings = next(
        (pm.ceilings for m in profile.models for pm in m.measured.values() if pm.ceilings), None
    )
    if ceilings:
        parts.append(_roof_sentence(profile, ceilings))
    parts.append(_time_share_sentence(nin))
    parts.append(chart(profile, "roofline", "arithmetic intensity of each layer", charts))
    return join(*parts)


def _roof_sentence(profile: Profile, ceilings: Ceilings) -> str:
    text = (
        f"On {profile.environment.device_name} a large {ceilings.matmul_precision} "
        f"{ceilings.kernel} ran at {ceilings.flops_per_s / 1e12:.2f} TFLOP/s and a large copy at "
        f"{ceilings.bytes_per_s / 1e9:.0f} GB/s (measured in the process that timed the "
        f"layers): a layer below {ceilings.ridge:.0f} FLOP/B cannot keep the arithmetic units "
        "busy and is bound by memory bandwidth."
    )
    above = [
        f"{m.name} {layer.name}"
        for m in profile.models
        if (pm := m.measured.get("inference"))
        for layer in m.layers
        if pm.layer_ms.get(layer.name)
        # the layer's FLOPs at the batch it was timed at (they are linear in the batch)
        and layer.flops_forward * pm.batch / profile.config.batch / pm.layer_ms[layer.name] * 1e3
        > ceilings.flops_per_s
    ]
    if above and ceilings.matmul_precision == "fp32" and profile.config.device == "cuda":
        text += (
            f" {len(above)} timed layers ran above that roof: cuDNN runs float32 convolutions "
            "on TF32 tensor cores unless `torch.backends.cudnn.allow_tf32` is off, and this "
            "roof was measured in full float32 (a run of this version measures it in TF32)."
        )
    elif above:
        text += (
            f" {len(above)} timed layers ({', '.join(above[:4])}{', …' if len(above) > 4 else ''})"
            " ran above that roof: the roof as measured is below what this device reaches for "
            "them, so read it as a lower bound here."
        )
    return text


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
            f"Estimated at batch {profile.config.batch}: {flops} than AlexNet's but moves "
            f"{moved}: each NiN block keeps a full-resolution feature map through two 1×1 "
            "convolutions and three ReLUs, and a 1×1 convolution does few FLOPs per byte it "
            "reads and writes (table above)."
        )
    else:
        dense = sum(layer.params for layer in alexnet.layers if layer.type == "Linear")
        text = (
            f"Estimated at batch {profile.config.batch}: {flops} than AlexNet's and moves "
            f"{moved}: reading AlexNet's {dense / 1e6:.1f} M dense weights outweighs NiN's "
            "larger feature maps"
        )
        text += f"; from batch {crossover} up, NiN's feature maps move more." if crossover else "."
    return text + _measured_speed(nin, alexnet)


def _measured_speed(nin: ModelProfile, alexnet: ModelProfile) -> str:
    a, b = nin.measured.get("train"), alexnet.measured.get("train")
    verdict = time_verdict(a, b)
    if verdict is None or a is None or b is None:
        return ""
    text = (
        f" Measured: a NiN training step takes {per_example_ms(a):,.3f} ms per example at "
        f"batch {a.batch} against AlexNet's {per_example_ms(b):,.3f} ms at batch {b.batch}"
    )
    if not verdict.differs:
        return text + (
            f", {verdict.words()}: the chapter's remark that NiN can take longer is neither "
            "confirmed nor refuted here."
        )
    holds = "holds" if verdict.ratio > 1 else "does not hold"
    return text + (
        f", so a NiN step takes {verdict.words()} (beyond the ±{100 * verdict.noise:.0f}% "
        f"noise) with {how_many(nin.flops_train_step, alexnet.flops_train_step)} FLOPs and "
        f"{how_many(nin.params, alexnet.params)} parameters: the chapter's remark that NiN can "
        f"take longer {holds} here."
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
        f"Timed layer by layer (forward, batch {pm.batch}, {pm.device_name}, each layer alone): "
        f"NiN's {len(pointwise)} 1×1 convolutions take {fmt_percent(ms, total)} of the summed "
        f"layer time for {fmt_percent(flops, m.flops_forward)} of its FLOPs."
    )


def claims_section(profile: Profile, charts: bool) -> str:
    body = [dense_layers_part(profile), speed_part(profile, charts)]
    if not any(body):
        return ""
    return join("## The chapter's claims, checked", *body)


EXERCISE3 = Section("exercise 3", exercise3_section, has_any(NIN, BASELINES))
EXERCISE2 = Section("exercise 2", exercise2_section, has_all(NIN, "nin_single_1x1"))
EXERCISE4 = Section("exercise 4", exercise4_section, has_all(NIN, "nin_gradual_head"))
CLAIMS = Section("claims", claims_section, has_any(NIN, BASELINES))
