"""Per-layer rows of a large model, grouped so that a table and a chart stay readable. Pure.

A model of up to `MAX_ROWS` layers shows every layer. A larger one (DenseNet-121 has over 300)
shows its blocks: the layers grouped by the deepest prefix of their dotted names that gives at
most `MAX_ROWS` groups (`features.denseblock1`, ...), each group's figures summed, so that the
rows still add up to the model's totals. Where even the first name component gives too many
groups (a flat Sequential of 300 layers), the `MAX_ROWS - 1` layers with the most forward FLOPs
are shown, in the order they ran, and the rest summed in one row. The chart and the table use
the same rows; layers.csv keeps every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from nin_profile.results import LayerStats, ModelProfile

MAX_ROWS = 40
REST = "(other layers)"


@dataclass(frozen=True)
class LayerGroup:
    """One row: a layer, or several summed; `members` are the layer names it holds."""

    stats: LayerStats
    members: tuple[str, ...]

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1


def summed(name: str, layers: list[LayerStats]) -> LayerStats:
    """One row for `layers`: their counts, FLOPs and bytes summed, the last one's output."""
    if len(layers) == 1:
        return layers[0]
    shapes = [layer.output_shape for layer in layers if layer.output_shape is not None]
    return LayerStats(
        name=name,
        type=f"{len(layers)} layers",
        output_shape=shapes[-1] if shapes else None,
        params=sum(layer.params for layer in layers),
        trainable_params=sum(layer.trainable_params for layer in layers),
        flops_forward=sum(layer.flops_forward for layer in layers),
        flops_backward=sum(layer.flops_backward for layer in layers),
        output_bytes=sum(layer.output_bytes for layer in layers),
        saved_bytes=sum(layer.saved_bytes for layer in layers),
        calls=sum(layer.calls for layer in layers),
        allocated_delta=sum(layer.allocated_delta for layer in layers),
        input_bytes=sum(layer.input_bytes for layer in layers),
        param_bytes=sum(layer.param_bytes for layer in layers),
    )


def _by_prefix(layers: list[LayerStats], depth: int) -> dict[str, list[LayerStats]]:
    groups: dict[str, list[LayerStats]] = {}
    for layer in layers:
        groups.setdefault(".".join(layer.name.split(".")[:depth]), []).append(layer)
    return groups


def _top_and_rest(layers: list[LayerStats], rows: int) -> list[LayerGroup]:
    ranked = sorted(layers, key=lambda layer: layer.flops_forward, reverse=True)
    top = {layer.name for layer in ranked[: rows - 1]}
    rest = [layer for layer in layers if layer.name not in top]
    shown = [LayerGroup(layer, (layer.name,)) for layer in layers if layer.name in top]
    return [*shown, LayerGroup(summed(REST, rest), tuple(layer.name for layer in rest))]


def layer_groups(model: ModelProfile, rows: int = MAX_ROWS) -> list[LayerGroup]:
    """The rows that show `model`'s layers: each layer, its blocks, or its top layers."""
    layers = list(model.layers)
    if len(layers) <= rows:
        return [LayerGroup(layer, (layer.name,)) for layer in layers]
    deepest = max(len(layer.name.split(".")) for layer in layers)
    for depth in range(deepest - 1, 0, -1):
        groups = _by_prefix(layers, depth)
        if len(groups) <= rows:
            return [
                LayerGroup(summed(prefix, members), tuple(layer.name for layer in members))
                for prefix, members in groups.items()
            ]
    return _top_and_rest(layers, rows)


def grouping_note(model: ModelProfile, groups: list[LayerGroup]) -> str:
    """In words, how the rows show the layers (empty when each row is one layer)."""
    if not any(group.grouped for group in groups):
        return ""
    how = (
        f"the {len(groups) - 1} layers with the most forward FLOPs, the rest summed"
        if groups[-1].stats.name == REST
        else "grouped by block, each block's figures summed"
    )
    return (
        f"{model.name} has {len(model.layers)} layers: shown in {len(groups)} rows, {how}; "
        "layers.csv holds every layer."
    )
