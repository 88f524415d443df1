"""The comparison of precisions (--compare-precision): what AMP and half models buy, per model.

Every sentence is computed from the profile: each model's estimated peaks in each precision,
what autograd saves by dtype (which tensors a precision halves: float ones; which it does not:
max-pool indices and targets, int64), the weight copies autocast makes, the measurements and
the largest batches where the run has them.
"""

from __future__ import annotations

from collections.abc import Iterator

from nin_profile.render.general import chart, join
from nin_profile.render.sections import Section
from nin_profile.render.text import (
    PRECISION_TITLES,
    display,
    held_bytes,
    listing,
    md_table,
    time_verdict,
)
from nin_profile.results import (
    SCRATCH_NOTE,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    PhaseMeasurement,
    PrecisionProfile,
    Profile,
)
from nin_profile.units import fmt_bytes, fmt_mib

FLOATS = ("float32", "float16", "bfloat16", "float64")
AMP = ("amp-fp16", "amp-bf16")
BASELINES = ("alexnet", "vgg11")


def has_precisions(profile: Profile) -> bool:
    return any(m.precisions for m in profile.models)


def compared_models(profile: Profile) -> list[ModelProfile]:
    """The models the run compared in several precisions (all of them, in a run that did)."""
    return [m for m in profile.models if m.precisions]


def reference(m: ModelProfile) -> PrecisionProfile:
    """What the others are held against: fp32 where compared, else the first precision."""
    return next((p for p in m.precisions if p.precision == "fp32"), m.precisions[0])


def compared_rows(
    profile: Profile,
) -> Iterator[tuple[ModelProfile, PrecisionProfile, PrecisionProfile]]:
    """(model, precision, its reference) for each row of a by-precision table, in order."""
    for m in compared_models(profile):
        ref = reference(m)
        for p in m.precisions:
            yield m, p, ref


def kept_bytes(p: PrecisionProfile) -> int:
    """Bytes saved for backward in a dtype no precision changes (int64 indices, bool masks)."""
    return sum(n for dtype, n in p.saved_bytes_by_dtype.items() if dtype not in FLOATS)


def _vs(value: int | None, base: int | None) -> str:
    if value is None or not base:
        return "–"
    return f"{100 * (value - base) / base:+.0f}%"


def memory_table(profile: Profile) -> str:
    headers = [
        "Model",
        "Precision",
        "Train peak (MiB)",
        "vs ref.",
        "Inference peak (MiB)",
        "vs ref.",
        "Saved for backward (MiB)",
        "of it int64 and bool (MiB)",
        "Params + grads + optimizer (MiB)",
        "Weight copies at the train peak (MiB)",
    ]
    rows = [
        [
            m.name,
            PRECISION_TITLES[p.precision],
            fmt_mib(p.train.peak),
            _vs(p.train.peak, ref.train.peak),
            fmt_mib(p.inference.peak),
            _vs(p.inference.peak, ref.inference.peak),
            fmt_mib(p.activation_bytes_saved),
            fmt_mib(kept_bytes(p)),
            fmt_mib(held_bytes(p.train)),
            fmt_mib(p.train[MemoryCategory.WEIGHT_COPIES]),
        ]
        for m, p, ref in compared_rows(profile)
    ]
    return md_table(headers, rows, [False, False] + [True] * (len(headers) - 2))


def _measured_peak(pm: PhaseMeasurement | None) -> int | None:
    """The measured figure the estimate predicts: the peak between ops where measured."""
    if pm is None or pm.memory is None:
        return None
    between = pm.memory.peak_between_ops
    return between if between is not None else pm.memory.peak_allocated


def _full_peak(pm: PhaseMeasurement | None) -> int | None:
    """The allocator's whole peak, scratch inside ops included."""
    return pm.memory.peak_allocated if pm and pm.memory else None


def _err(pm: PhaseMeasurement | None) -> str:
    measured = _measured_peak(pm)
    if pm is None or pm.predicted is None or not measured:
        return "–"
    estimate = (
        pm.predicted.peak_between_ops
        if pm.memory and pm.memory.peak_between_ops
        else pm.predicted.peak
    )
    return f"{100 * (estimate - measured) / measured:+.1f}%"


def _ms(pm: PhaseMeasurement | None) -> str:
    return f"{pm.timing.ms_per_iter:,.1f}" if pm and pm.timing else "–"


def _time_vs(pm: PhaseMeasurement | None, ref: PhaseMeasurement | None) -> str:
    if pm is ref:
        return "ref."
    verdict = time_verdict(pm, ref)
    return verdict.words() if verdict else "–"


def measured_table(profile: Profile) -> str:
    headers = ["Model", "Precision"]
    for phase in ("train", "inference"):
        words = "Train" if phase == "train" else "Inference"
        headers += [
            f"{words} batch",
            f"{words} peak meas. (MiB)",
            "vs ref.",
            "between ops meas. (MiB)",
            "est. err",
            f"{words} ms per iteration",
            "time per example vs ref.",
        ]
    rows = []
    for m, p, ref in compared_rows(profile):
        cells = [m.name, PRECISION_TITLES[p.precision]]
        for phase in ("train", "inference"):
            pm, ref_pm = p.measured.get(phase), ref.measured.get(phase)
            between = pm.memory.peak_between_ops if pm and pm.memory else None
            cells += [
                str(pm.batch) if pm else "–",
                fmt_mib(_full_peak(pm)),
                _vs(_full_peak(pm), _full_peak(ref_pm)),
                fmt_mib(between),
                _err(pm),
                _ms(pm),
                _time_vs(pm, ref_pm),
            ]
        rows.append(cells)
    right = [False, False] + [True] * 6 + [False] + [True] * 6 + [False]
    return md_table(headers, rows, right)


def fits_table(profile: Profile) -> str:
    budget = profile.config.memory_budget
    headers = ["Model", "Precision", "Largest training batch", "vs ref.", "Largest inference batch"]
    headers.append("vs ref.")
    rows = []
    for m, p, ref in compared_rows(profile):
        cells = [m.name, PRECISION_TITLES[p.precision]]
        for phase in ("train", "inference"):
            batch, base = _fit(p, phase), _fit(ref, phase)
            cells += [f"{batch:,}" if batch else "–", _vs(batch, base)]
        rows.append(cells)
    how = next((f.how for m in profile.models for p in m.precisions for f in p.fits), "")
    return join(
        f"The largest batch that fits {fmt_bytes(budget or 0)}, by precision ({how}):",
        md_table(headers, rows, [False, False, True, True, True, True]),
    )


def _fit(p: PrecisionProfile, phase: str) -> int | None:
    return next((f.batch for f in p.fits if f.phase == phase), None)


def _amp(m: ModelProfile) -> PrecisionProfile | None:
    """The model's AMP profile to speak of: fp16's where compared, else bf16's."""
    by_name = {p.precision: p for p in m.precisions}
    return next((by_name[name] for name in AMP if name in by_name), None)


def _cut(before: MemoryBreakdown, after: MemoryBreakdown) -> float:
    """How much less `after` peaks than `before`, as a share of `before` (negative: more)."""
    return 1 - after.peak / before.peak


def _cut_words(m: ModelProfile, amp: PrecisionProfile, first: bool = True) -> str:
    """ "cuts NiN's training peak by 42% (979.9 MiB → 571.7 MiB)"; not `first`: "AlexNet's by
    17% (...)"."""
    ref, cut = reference(m), _cut(reference(m).train, amp.train)
    how = f"by {100 * cut:.0f}%" if cut >= 0 else f"raised by {100 * -cut:.0f}%"
    change = f"{how} ({fmt_bytes(ref.train.peak)} → {fmt_bytes(amp.train.peak)})"
    if not first:
        return f"{display(m.name)}'s {change}"
    return f"cuts {display(m.name)}'s estimated training peak {change}"


def _measured_words(m: ModelProfile, amp: PrecisionProfile) -> str | None:
    """What the measured run says of the same change, whole peaks (scratch inside ops
    included): "NiN's measured 1.1 MiB → 1.2 MiB (+5%; the most scratch inside one op under
    AMP bf16: 0.2 MiB in convolution)"; None where either was not measured."""
    before, after = reference(m).measured.get("train"), amp.measured.get("train")
    start, end = _full_peak(before), _full_peak(after)
    if start is None or end is None or after is None:
        return None
    scratch = [n.partition(": ")[2] for n in after.notes if n.startswith(SCRATCH_NOTE)]
    where = f"; the most scratch inside one op: {scratch[0]}" if scratch else ""
    return f"{display(m.name)}'s {fmt_bytes(start)} → {fmt_bytes(end)} ({_vs(end, start)}{where})"


def _measured_sentence(pairs: list[tuple[ModelProfile, PrecisionProfile]]) -> str:
    measured = [words for m, a in pairs if (words := _measured_words(m, a))]
    if not measured:
        return ""
    return (
        " Measured, the whole training peak (what kernels allocate and free inside their ops "
        f"included, which the estimate leaves out) went {listing(measured)}."
    )


def _activation_share(b: MemoryBreakdown) -> float:
    """What grows with the batch at the peak: input, saved activations and transients."""
    per_example = (MemoryCategory.INPUT, MemoryCategory.ACTIVATIONS, MemoryCategory.TRANSIENT)
    return sum(b[c] for c in per_example) / b.peak if b.peak else 0.0


HOW_AMP_STORES = (
    "autocast stores what autograd saves and the gradients flowing back in 16 bits, except "
    "int64 max-pool indices and targets, and keeps parameters, gradients and optimizer state "
    "in float32 (adding 16-bit copies of the weights)"
)


def _why(m: ModelProfile, amp: PrecisionProfile) -> str:
    """The model's figures behind its cut: the share of the reference peak that grows with the
    batch (activations, which AMP stores in 16 bits but for the int64 ones), the int64 bytes,
    the float32 state AMP keeps, and the weight copies it adds."""
    ref = reference(m)
    kept, held = kept_bytes(amp), held_bytes(ref.train)
    copies = amp.train[MemoryCategory.WEIGHT_COPIES]
    saved = amp.activation_bytes_saved
    return (
        f"{display(m.name)}'s {PRECISION_TITLES[ref.precision]} peak is "
        f"{100 * _activation_share(ref.train):.0f}% activations, of which "
        f"{fmt_bytes(kept)} of int64 stays ({100 * kept / saved if saved else 0:.0f}% of what "
        f"it saves under {PRECISION_TITLES[amp.precision]}), and "
        f"{100 * held / ref.train.peak:.0f}% float32 state ({fmt_bytes(held)}); weight copies "
        f"add {fmt_bytes(copies)}"
    )


def _with_amp(models: list[ModelProfile]) -> list[tuple[ModelProfile, PrecisionProfile]]:
    return [(m, a) for m in models if (a := _amp(m)) is not None]


def verdict(profile: Profile) -> str:
    """NiN against AlexNet and VGG-11 (or every model, in a run of others): how much AMP cuts
    the training peak, and why."""
    pairs = [(m, a) for m, a in _with_amp(compared_models(profile)) if len(m.precisions) > 1]
    if not pairs:
        return ""
    reasons = "; ".join(_why(m, a) for m, a in pairs)
    nin = next(((m, a) for m, a in pairs if m.name == "nin"), None)
    baselines = [(m, a) for m, a in pairs if m.name in BASELINES]
    if nin is None or not baselines:
        cuts = [_cut_words(m, a, i == 0) for i, (m, a) in enumerate(pairs)]
        return (
            f"**What AMP buys.** It {listing(cuts)}. Why: {HOW_AMP_STORES}. {reasons}."
            + _measured_sentence(pairs)
        )
    others = [_cut_words(b, a, first=False) for b, a in baselines]
    return (
        f"**Does NiN gain more from AMP?** {PRECISION_TITLES[nin[1].precision]} "
        f"{_cut_words(*nin)}, {listing(others)}: {_gains(nin, baselines)}. Why: "
        f"{HOW_AMP_STORES}. {reasons}." + _measured_sentence(pairs)
    )


Pair = tuple[ModelProfile, PrecisionProfile]


def _gains(nin: Pair, baselines: list[Pair]) -> str:
    """'NiN gains more than AlexNet and less than VGG-11', from the cuts of the training peak."""
    nin_cut = _cut(reference(nin[0]).train, nin[1].train)
    cuts = {m.name: _cut(reference(m).train, a.train) for m, a in baselines}
    more = [display(n) for n, cut in cuts.items() if nin_cut > cut]
    less = [display(n) for n, cut in cuts.items() if nin_cut <= cut]
    if not less:
        return f"NiN gains more than {listing(more)}"
    if not more:
        return f"NiN gains less than {listing(less)}"
    return f"NiN gains more than {listing(more)} and less than {listing(less)}"


def _half_sentence(profile: Profile) -> str:
    """What a whole-model 16-bit precision halves, for the first model compared in one."""
    for m in compared_models(profile):
        ref = reference(m)
        half = next((p for p in m.precisions if p.precision in ("fp16", "bf16")), None)
        if half is None or half is ref:
            continue
        dtype = half.precision
        return (
            f"Cast whole to {dtype}, {display(m.name)} halves its parameters, gradients and "
            f"optimizer state as well ({fmt_bytes(held_bytes(ref.train))} → "
            f"{fmt_bytes(held_bytes(half.train))}) and makes no weight copies; the int64 it "
            f"saves for backward stays ({fmt_bytes(kept_bytes(half))}); its training peak goes "
            f"from {fmt_bytes(ref.train.peak)} to {fmt_bytes(half.train.peak)}."
        )
    return ""


def _caveat(profile: Profile) -> str:
    c = profile.config
    text = (
        "Estimated at batch "
        f"{c.batch} for {c.device.upper()}: every precision's step traced as it runs there "
        "(autocast's own op lists and weight-cast cache, a GradScaler's state for AMP fp16). "
    )
    if c.device == "cuda" and any(p.precision in AMP for m in profile.models for p in m.precisions):
        text += (
            "CUDA's autocast is applied to a trace on the CPU, each op's casts taken from "
            "CUDA's own autocast kernel. Checked on an H200 (torch 2.11) at batch 32 for NiN, "
            "AlexNet and VGG-11 in AMP fp16 and bf16 and as fp16 and bf16 models: what autograd "
            "saves within 1% of a real step in all 12; the peak within 2% of the one measured "
            "between ops in 17 of 24, VGG-11's inference within 0.01% between ops in four "
            "more (the test held the whole peak to it), NiN's training 2.7-3.1% low in three "
            "(within 0.7% at batch 128). "
        )
    return text + "FLOPs are the same in every precision; time changes where measured."


def precision_section(profile: Profile, charts: bool) -> str:
    measured = any(p.measured for m in profile.models for p in m.precisions)
    fits = any(p.fits for m in profile.models for p in m.precisions)
    return join(
        "## What lower precision buys",
        _caveat(profile),
        memory_table(profile),
        "*vs ref.: against fp32 (or the first precision compared). Saved for backward: what "
        "autograd keeps, each storage once; int64 and bool: max-pool indices, targets and "
        "masks, whose size no precision changes. Weight copies: autocast's 16-bit copies of "
        "float32 weights (AMP), saved for backward.*",
        verdict(profile),
        _half_sentence(profile),
        chart(profile, "precision", "Memory by precision", charts),
        measured_table(profile) if measured else "",
        "*Peak meas.: the allocator's whole peak, with what kernels allocate and free inside "
        "their ops; between ops: without it, the figure the estimate predicts (est. err "
        "against it where measured, else against the whole peak). Time per example against "
        "the reference, called a difference only beyond the timings' noise.*"
        if measured
        else "",
        fits_table(profile) if fits else "",
    )


PRECISION = Section("precision", precision_section, has_precisions)


# ---- memory format ---------------------------------------------------------------------------


def _scratch_words(profile: Profile) -> str:
    """The largest scratch a kernel held inside one op in the measured runs, in words."""
    rows = [
        (mem.peak_allocated - mem.peak_between_ops, m.name, phase)
        for m in profile.models
        for phase, pm in m.measured.items()
        if (mem := pm.memory) is not None and mem.peak_between_ops is not None
    ]
    if not rows:
        return ""
    scratch, name, phase = max(rows)
    step = "training step" if phase == "train" else "inference pass"
    return (
        f" Measured here, the most a kernel held inside one op was {fmt_bytes(scratch)} "
        f"({name}'s {step}): that scratch, which the estimate leaves out, is where the layout "
        "can change memory (run without --channels-last to compare)."
    )


def layout_section(profile: Profile, charts: bool) -> str:
    c = profile.config
    return join(
        "## Memory format: channels_last",
        "The model's 4-d weights and the batch are stored channels-last (`torch.channels_last`: "
        "the same sizes, NHWC strides), and the convolutions keep their outputs so. Every "
        "tensor holds as many bytes as in the default layout, so the estimated saved bytes and "
        "peaks are those of the default layout (the trace runs on channels_last tensors and "
        "finds the same figures). What changes is the strides, the kernels that run "
        f"({'cuDNN' if c.device == 'cuda' else 'oneDNN'}'s channels-last convolutions), the "
        "scratch and workspaces those kernels take, and the "
        "time." + _scratch_words(profile),
    )


LAYOUT = Section("layout", layout_section, lambda profile: profile.config.channels_last)
