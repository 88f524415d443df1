"""Parameter counts per model and per layer, and the differences between two sets of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nin_profile.engine.analysis import build_on_meta
from nin_profile.engine.layer_stack import params_by_layer
from nin_profile.models import ModelConfig, is_built_in


@dataclass(frozen=True)
class ParamCounts:
    """Total and per-layer parameter counts of one model under one config."""

    model: str
    total: int
    layers: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.total, "layers": dict(self.layers)}


def count_params(name: str, cfg: ModelConfig) -> ParamCounts:
    model = build_on_meta(name, cfg)  # a user's builder that needs real tensors runs on the CPU
    layers = {layer: count.total for layer, count in params_by_layer(model).items()}
    return ParamCounts(name, sum(layers.values()), layers)


def params_document(names: Iterable[str], cfg: ModelConfig) -> dict[str, Any]:
    """The content of a parameter-count file: the config the built-in models were built with
    (none for a file of models given by import path, which are built bare, whatever the
    options), then each model's counts."""
    names = list(names)
    config = {"channels": cfg.channels, "classes": cfg.classes, "image_size": cfg.image_size}
    return {
        "config": config if any(is_built_in(name) for name in names) else {},
        "models": {name: count_params(name, cfg).to_dict() for name in names},
    }


def params_drift(expected: Mapping[str, Any]) -> list[str]:
    """Each difference between a parameter-count file and the models as they are now."""
    cfg = ModelConfig(**expected.get("config", {}))
    lines: list[str] = []
    for name, want in expected["models"].items():
        have = count_params(name, cfg)
        lines += _layer_drift(name, want["layers"], have.layers)
        if want["params"] != have.total:
            lines.append(
                f"{name}: total {want['params']:,} → {have.total:,} "
                f"({have.total - want['params']:+,})"
            )
    return lines


def _layer_drift(model: str, want: Mapping[str, int], have: Mapping[str, int]) -> list[str]:
    lines = []
    for layer in dict.fromkeys([*want, *have]):
        before, after = want.get(layer), have.get(layer)
        if before == after:
            continue
        if before is None:
            lines.append(f"{model}: layer {layer} is new, {after:,} params")
        elif after is None:
            lines.append(f"{model}: layer {layer} is gone (had {before:,} params)")
        else:
            lines.append(f"{model}: layer {layer} {before:,} → {after:,} ({after - before:+,})")
    return lines
