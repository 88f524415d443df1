"""Small pure helpers the report's sections share: tables, names, comparisons in words.

Every sentence that states a result is built from the profile's numbers: ratios, shares and
verdicts are computed here, never written in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nin_profile.results import (
    SCRATCH_NOTE,
    LayerStats,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    PhaseMeasurement,
    Profile,
    RunConfig,
    Timing,
)

PRECISION_TITLES = {
    "fp32": "fp32",
    "amp-fp16": "AMP fp16",
    "amp-bf16": "AMP bf16",
    "fp16": "fp16 model",
    "bf16": "bf16 model",
}
PRECISION_MEANINGS = {
    "fp32": "fp32 (everything in float32)",
    "amp-fp16": "AMP fp16 (autocast around the forward and the loss, float32 parameters, "
    "gradients and optimizer state, a GradScaler)",
    "amp-bf16": "AMP bf16 (autocast around the forward and the loss, float32 parameters, "
    "gradients and optimizer state)",
    "fp16": "an fp16 model (parameters, gradients, optimizer state and input in float16)",
    "bf16": "a bf16 model (parameters, gradients, optimizer state and input in bfloat16)",
}


def precision_title(c: RunConfig) -> str:
    """'AMP fp16', 'fp32, channels_last': for headings."""
    return PRECISION_TITLES[c.precision] + (", channels_last" if c.channels_last else "")


def policy_title(c: RunConfig) -> str:
    """FSDP2's mixed-precision policy for headings: 'FSDP2 bf16, reduce fp32' (its defaults
    followed: the model's dtype, then the param dtype); '' without one."""
    if c.fsdp_param_dtype is None and c.fsdp_reduce_dtype is None:
        return ""
    param = c.fsdp_param_dtype or "fp32"
    return f"FSDP2 {param}, reduce {c.fsdp_reduce_dtype or param}"


def precision_meaning(c: RunConfig) -> str:
    """The run's precision and memory format in words, for the conditions."""
    layout = ", model and batch in channels_last" if c.channels_last else ""
    return PRECISION_MEANINGS[c.precision] + layout


DISPLAY = {
    "nin": "NiN",
    "alexnet": "AlexNet",
    "vgg11": "VGG-11",
    "vgg11_narrow": "the narrow VGG-11",
    "nin_single_1x1": "NiN with one 1×1 conv per block",
    "nin_gradual_head": "NiN with a gradual head",
}
PHASE_WORDS = {"train": "a training step", "inference": "inference"}
# Categories that grow with the batch; the rest (parameters, gradients, optimizer state,
# buffers, library workspaces) are paid once per model.
PER_EXAMPLE = (MemoryCategory.INPUT, MemoryCategory.ACTIVATIONS, MemoryCategory.TRANSIENT)
# The least relative difference between two timings that a verdict reads as a difference, even
# when both are steadier than that: clocks and caches move a few percent from run to run.
NOISE_FLOOR = 0.02
# The standard error of a median, in interquartile ranges, for n samples of a normal spread:
# 1.2533 σ / √n with σ = IQR / 1.349, so 0.929 IQR / √n.
MEDIAN_SE_PER_IQR = 1.2533 / 1.349
# A difference is read as one beyond this many standard errors of the difference (~95%).
SIGNIFICANCE = 2.0


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A GitHub markdown table; `right[i]` right-aligns column i (numbers)."""
    rule = ["---:" if r else "---" for r in right]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, rule, *rows])


def display(name: str) -> str:
    return DISPLAY.get(name, name)


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def listing(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


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
    """(estimate − measured) / measured, signed: '-7.7%' means the estimate is 7.7% low."""
    if estimate is None or not measured:
        return "–"
    return f"{100 * (estimate - measured) / measured:+.1f}%"


def error_words(estimate: int, measured: int) -> str:
    """The estimate against the measurement in words whose sign matches the numbers:
    '7.7% below it', '1.2% above it', 'equal to it'."""
    if estimate == measured or not measured:
        return "equal to it"
    share = 100 * abs(estimate - measured) / measured
    return f"{share:.1f}% {'below' if estimate < measured else 'above'} it"


def model_named(profile: Profile, name: str) -> ModelProfile | None:
    return next((m for m in profile.models if m.name == name), None)


def breakdown(m: ModelProfile, phase: str) -> MemoryBreakdown:
    return m.train if phase == "train" else m.inference


def measured_at(m: ModelProfile, phase: str) -> PhaseMeasurement | None:
    pm = m.measured.get(phase)
    return pm if pm and pm.memory else None


def per_example_ms(pm: PhaseMeasurement | None) -> float | None:
    return pm.timing.ms_per_iter / pm.batch if pm and pm.timing else None


def per_example_bytes(b: MemoryBreakdown, batch: int) -> float:
    """What one example adds at the peak: the input, activations and transients it brings."""
    return sum(b[c] for c in PER_EXAMPLE) / batch


def held_bytes(b: MemoryBreakdown) -> int:
    """Parameters, gradients and optimizer state: what the model holds whatever the batch."""
    return b[MemoryCategory.PARAMS] + b[MemoryCategory.GRADS] + b[MemoryCategory.OPTIMIZER]


_KERNEL = re.compile(r"kernel_size=(\d+|\([\d, ]+\))")
_STRIDE = re.compile(r"stride=(\d+|\([\d, ]+\))")
_DIMS = re.compile(r"([123])d$")
_FEATURES = re.compile(r"in_features=(\d+), out_features=(\d+)")
_CHANNELS = re.compile(r"^(\d+), (\d+), kernel_size")


def layer_label(layer: LayerStats) -> str:
    """A layer's name, type and shape in a few characters: '0.0 Conv2d 11×11/4, 1→96',
    '1 MaxPool2d 3×3/2', '2 Conv1d 5/2, 40→16', '3 MaxPool3d 1×2×2', '14 Linear 6400→4096',
    '3 ReLU'."""
    parts = [layer.name, layer.type]
    spec = layer.spec
    dims = _DIMS.search(layer.type)
    if kernel := _KERNEL.search(spec):
        sizes = _sizes(kernel[1], int(dims[1]) if dims else 2)
        k = "×".join(map(str, sizes))
        if stride := _STRIDE.search(spec):
            steps = _sizes(stride[1], len(sizes))
            if any(s != 1 for s in steps):
                k += "/" + ("×".join(map(str, steps)) if len(set(steps)) > 1 else str(steps[0]))
        parts.append(k)
    text = " ".join(parts)
    if channels := _CHANNELS.search(spec):
        text += f", {channels[1]}→{channels[2]}"
    elif features := _FEATURES.search(spec):
        text += f" {features[1]}→{features[2]}"
    return text


def _sizes(text: str, dims: int) -> list[int]:
    """A module's size argument as its repr writes it, one per dimension: `3` or `(1, 2, 2)`."""
    sizes = [int(n) for n in re.findall(r"\d+", text)]
    return sizes * dims if len(sizes) == 1 and not text.startswith("(") else sizes


@dataclass(frozen=True)
class TimeVerdict:
    """Two timings per example: a/b, the noise they were measured with, and what it allows
    saying. `differs` only where |a/b − 1| exceeds the noise: twice the standard error of the
    difference of their medians (each estimated from its interquartile range and its number of
    iterations), and at least NOISE_FLOOR."""

    ratio: float
    noise: float

    @property
    def differs(self) -> bool:
        return abs(self.ratio - 1) > self.noise

    def words(self) -> str:
        """'11% more time', '30% less time', '2.1× the time', or 'within noise (±4%)'."""
        if not self.differs:
            return f"within noise (±{100 * self.noise:.0f}%)"
        if self.ratio >= 2:
            return f"{self.ratio:.1f}× the time"
        if self.ratio <= 0.5:
            return f"{1 / self.ratio:.1f}× less time"
        more = self.ratio > 1
        return f"{100 * abs(self.ratio - 1):.0f}% {'more' if more else 'less'} time"


def time_verdict(a: PhaseMeasurement | None, b: PhaseMeasurement | None) -> TimeVerdict | None:
    """a's time per example against b's; None unless both were timed."""
    ta, tb = (pm.timing if pm else None for pm in (a, b))
    if a is None or b is None or ta is None or tb is None:
        return None
    ratio = (ta.ms_per_iter / a.batch) / (tb.ms_per_iter / b.batch)
    spread = SIGNIFICANCE * (median_error(ta) ** 2 + median_error(tb) ** 2) ** 0.5
    return TimeVerdict(ratio, max(spread, NOISE_FLOOR))


def median_error(t: Timing) -> float:
    """The standard error of a timing's median, relative to it; one iteration tells nothing."""
    if t.iterations < 2:
        return 1.0
    return MEDIAN_SE_PER_IQR * t.noise / t.iterations**0.5


def interval(t: Timing) -> str:
    """The interquartile range of the iteration times, '9.75–9.84', or '–'."""
    if t.iterations < 2:
        return "–"
    if t.ms_q1 is not None and t.ms_q3 is not None:
        return f"{t.ms_q1:,.2f}–{t.ms_q3:,.2f}"
    return f"±{t.ms_spread / 2:,.2f}"  # profiles from before the interval was kept


def scratch_ops(profile: Profile) -> list[tuple[str, str, str]]:
    """(model, phase, 'N MiB in op (pass)') of each measurement's largest kernel scratch."""
    return [
        (m.name, phase, text.partition(": ")[2])
        for m in profile.models
        for phase, pm in m.measured.items()
        for text in pm.notes
        if text.startswith(SCRATCH_NOTE)
    ]


NAMES_SHOWN = 4


def without_grad_note(models: Sequence[ModelProfile]) -> str | None:
    """One line for the models whose training step gives some trainable parameters no
    gradient, naming them: a cause of a backward that is smaller than the user expects."""
    where = []
    for m in models:
        if m.without_grad:
            names = list(m.without_grad)
            shown = ", ".join(names[:NAMES_SHOWN])
            more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
            tensors = f"{len(names)} tensor{'s' if len(names) > 1 else ''}"
            where.append(f"{m.name}: {sum(m.without_grad.values()):,} in {tensors} ({shown}{more})")
    if not where:
        return None
    return (
        "trainable parameters the training step gives no gradient (the loss does not reach "
        "them: a module the forward does not call, a branch cut off from the graph, a "
        "reentrant checkpoint whose inputs need no gradient; they get no .grad, no optimizer "
        "state and no backward FLOPs, and the figures leave them out): " + "; ".join(where)
    )


def grouped_notes(profile: Profile) -> list[str]:
    """The run's notes, a line for parameters without a gradient, then the measurements' notes
    and failures one line per kind (the text before the first ': '), naming the models and
    phases each concerns."""
    lines = list(profile.notes)
    if no_grad := without_grad_note(profile.models):
        lines.append(no_grad)
    kinds: dict[str, list[tuple[str, str]]] = {}
    for m in profile.models:
        for phase, pm in m.measured.items():
            for text in (*pm.notes, pm.error):
                if text and not text.startswith(SCRATCH_NOTE):
                    kind, _, detail = text.partition(": ")
                    kinds.setdefault(kind, []).append((f"{m.name} {phase}", detail))
        for point in m.sweep:
            if point.error:
                kind, _, detail = point.error.partition(": ")
                kinds.setdefault(kind, []).append(
                    (f"{m.name} {point.phase} @{point.batch}", detail)
                )
    for kind, where in kinds.items():
        details = {detail for _, detail in where}
        if details == {""} or len(details) == 1:
            shared = next(iter(details))
            lines.append(
                f"{kind}{': ' + shared if shared else ''} ({', '.join(w for w, _ in where)})"
            )
        else:
            lines.append(f"{kind}: " + "; ".join(f"{w} {d}" for w, d in where))
    return lines
