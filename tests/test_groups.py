"""Large models stay readable: the per-layer table and chart of a 300-layer model show its
blocks (or its top layers and the rest summed), the same rows in both, adding up to the
model's totals; layers.csv keeps every layer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from nin_profile.render.charts import layer_costs
from nin_profile.render.csv import layers_csv
from nin_profile.render.general import layer_table
from nin_profile.render.groups import MAX_ROWS, REST, layer_groups
from nin_profile.results import LayerStats, ModelProfile, Profile

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def base() -> Profile:
    return Profile.from_dict(json.loads((GOLDEN / "profile_cpu.json").read_text()))


def layer(name: str, flops: int) -> LayerStats:
    return LayerStats(
        name=name,
        type="Conv2d",
        output_shape=(2, 32, 7, 7),
        params=flops // 10,
        trainable_params=flops // 10,
        flops_forward=flops,
        flops_backward=2 * flops,
        output_bytes=100,
        saved_bytes=flops // 100,
    )


def densenet_like() -> list[LayerStats]:
    """A stem of 4, dense blocks of 6, 12, 24, 16 layers of 6 modules each, 3 transitions of 4,
    a norm and a head: 4 + 58·6 + 3·4 + 2 = 366 layers."""
    layers = [layer(f"features.{stem}", 1_000) for stem in ("conv0", "norm0", "relu0", "pool0")]
    for block, depth in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, depth + 1):
            for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
                layers.append(layer(f"features.denseblock{block}.denselayer{i}.{part}", 10 * i))
        if block < 4:
            for part in ("norm", "relu", "conv", "pool"):
                layers.append(layer(f"features.transition{block}.{part}", 500))
    return [*layers, layer("features.norm5", 7), layer("classifier", 2_000)]


def big_model(base: Profile, layers: list[LayerStats]) -> ModelProfile:
    nin = base.models[0]
    return replace(
        nin,
        name="densenet_like",
        layers=tuple(layers),
        params=sum(x.params for x in layers),
        flops_forward=sum(x.flops_forward for x in layers),
        flops_backward=sum(x.flops_backward for x in layers),
        activation_bytes_saved=sum(x.saved_bytes for x in layers),
        measured={},
    )


def test_a_300_layer_model_shows_its_blocks(base: Profile) -> None:
    model = big_model(base, densenet_like())
    groups = layer_groups(model)
    assert len(model.layers) == 366 and len(groups) <= MAX_ROWS
    # depth 3 would give 4 + 58 dense layers + ... > 40 rows; depth 2 gives the blocks
    assert [g.stats.name for g in groups][:6] == [
        "features.conv0",
        "features.norm0",
        "features.relu0",
        "features.pool0",
        "features.denseblock1",
        "features.transition1",
    ]
    block1 = groups[4].stats
    assert block1.type == "36 layers"  # 6 dense layers × 6 modules
    assert block1.flops_forward == sum(6 * 10 * i for i in range(1, 7))  # 1_260
    for total, value in (
        (model.params, lambda s: s.params),
        (model.flops_forward, lambda s: s.flops_forward),
        (model.flops_backward, lambda s: s.flops_backward),
        (model.activation_bytes_saved, lambda s: s.saved_bytes),
    ):
        assert sum(value(g.stats) for g in groups) == total


def test_table_chart_and_csv_agree(base: Profile) -> None:
    model = big_model(base, densenet_like())
    profile = replace(base, models=(model,))
    groups = layer_groups(model)
    table_rows = layer_table(model, profile).splitlines()[2:]
    # the table's first cell: the row's name, then its type and shape
    first_cells = [row.split(" | ")[0].strip("| ") for row in table_rows]
    assert [cell.split(" ")[0] for cell in first_cells] == [g.stats.name for g in groups]
    chart_rows = layer_costs(profile, model).axes[0].get_yticklabels()
    assert [label.get_text().split(" ")[0] for label in chart_rows] == [
        g.stats.name for g in groups
    ]
    csv_rows = layers_csv(profile).splitlines()[1:]
    assert len(csv_rows) == len(model.layers) == 366


def test_a_flat_model_shows_its_top_layers_and_the_rest_summed(base: Profile) -> None:
    layers = [layer(str(i), flops=i) for i in range(300)]  # one name component: no blocks
    model = big_model(base, layers)
    groups = layer_groups(model)
    assert len(groups) == MAX_ROWS and groups[-1].stats.name == REST
    shown = [g.stats.name for g in groups[:-1]]
    assert shown == [str(i) for i in range(300 - (MAX_ROWS - 1), 300)]  # the most FLOPs, in order
    assert groups[-1].stats.flops_forward == sum(range(300 - (MAX_ROWS - 1)))
    assert sum(g.stats.flops_forward for g in groups) == model.flops_forward


def test_a_small_model_shows_every_layer(base: Profile) -> None:
    nin = base.models[0]
    assert [g.stats for g in layer_groups(nin)] == list(nin.layers)
