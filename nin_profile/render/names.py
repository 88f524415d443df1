"""Which charts a profile gets and what their files are called (no matplotlib needed here)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nin_profile.results import LayerStats, ModelProfile, Profile


@dataclass(frozen=True)
class ChartSpec:
    kind: str  # "models", "memory", "layers", "sweep", "roofline", "precision", "ranks"
    file: str
    title: str
    model: str | None = None
    phase: str | None = None


def safe(name: str) -> str:
    """A model name as part of a file name: 'pkg.mod:fn' → 'pkg_mod_fn'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def has_timing(profile: Profile) -> bool:
    return any(
        m.measured.get("inference") and m.measured["inference"].layer_ms for m in profile.models
    )


def has_sweep(profile: Profile) -> bool:
    return any(m.sweep for m in profile.models)


def layers_chart(model: ModelProfile) -> ChartSpec:
    return ChartSpec(
        "layers",
        f"layers_{safe(model.name)}.png",
        f"{model.name}: parameters, FLOPs and saved activations per layer",
        model=model.name,
    )


def chart_plan(profile: Profile) -> list[ChartSpec]:
    """The charts of a report, in the order the report shows them."""
    plan = [
        ChartSpec("models", "models.png", "The models side by side"),
        ChartSpec("memory", "memory_train.png", "Memory of a training step", phase="train"),
        ChartSpec("memory", "memory_inference.png", "Memory of inference", phase="inference"),
        ChartSpec(
            "roofline",
            "roofline.png",
            "Roofline: per-layer arithmetic intensity against achieved throughput"
            if has_timing(profile)
            else "Arithmetic intensity of each layer",
        ),
    ]
    if has_sweep(profile):
        plan.append(ChartSpec("sweep", "sweep.png", "Memory and time against batch size"))
    if any(m.precisions for m in profile.models):
        plan.append(ChartSpec("precision", "precision.png", "Memory by precision"))
    plan += [
        ChartSpec("ranks", f"ranks_{safe(m.name)}.png", f"{m.name}: memory per rank", model=m.name)
        for m in profile.models
        if m.parallel is not None
    ]
    plan += [layers_chart(m) for m in profile.models]
    return plan


def chart_file(
    profile: Profile, kind: str, model: str | None = None, phase: str | None = None
) -> str | None:
    for spec in chart_plan(profile):
        if spec.kind == kind and spec.model == model and spec.phase == phase:
            return spec.file
    return None


def is_pointwise(layer: LayerStats) -> bool:
    """A 1×1 convolution, told by the module's own description."""
    return layer.type == "Conv2d" and "kernel_size=(1, 1)" in layer.spec
