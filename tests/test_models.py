"""The model zoo against MISSION.md: parameter counts by hand, output shapes from its table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nin_profile.engine.layer_stack import params_by_layer
from nin_profile.errors import ImportPathError, InvalidConfig, UnknownModel
from nin_profile.models import get_model, list_models, register_model


def conv(c_in: int, c_out: int, k: int) -> int:
    """Weights plus biases of a k×k convolution."""
    return c_in * c_out * k * k + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def meta_model(name: str, **cfg: int) -> nn.Module:
    with torch.device("meta"):
        return get_model(name, **cfg)


def layer_params(name: str, **cfg: int) -> dict[str, int]:
    return {layer: count.total for layer, count in params_by_layer(meta_model(name, **cfg)).items()}


def test_registry_lists_the_zoo_in_order() -> None:
    names = [s.name for s in list_models()]
    assert names == [
        "nin",
        "nin_single_1x1",
        "nin_gradual_head",
        "alexnet",
        "vgg11",
        "vgg11_narrow",
    ]
    assert all(s.description for s in list_models())


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("nin", "a second NiN")(lambda cfg: nn.Identity())


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModel, match="known models: nin, nin_single_1x1"):
        get_model("resnet")


@pytest.mark.parametrize("field", ["channels", "classes", "image_size"])
def test_non_positive_config_is_refused(field: str) -> None:
    with pytest.raises(InvalidConfig, match=f"{field} must be a positive integer"):
        get_model("nin", **{field: 0})


def test_nin_parameters_by_layer() -> None:
    assert layer_params("nin") == {
        "0.0": conv(1, 96, 11),  # 1*96*11*11 + 96 = 11_712
        "0.2": conv(96, 96, 1),  # 96*96 + 96 = 9_312
        "0.4": conv(96, 96, 1),
        "2.0": conv(96, 256, 5),  # 96*256*5*5 + 256 = 614_656
        "2.2": conv(256, 256, 1),  # 256*256 + 256 = 65_792
        "2.4": conv(256, 256, 1),
        "4.0": conv(256, 384, 3),  # 256*384*9 + 384 = 885_120
        "4.2": conv(384, 384, 1),  # 384*384 + 384 = 147_840
        "4.4": conv(384, 384, 1),
        "7.0": conv(384, 10, 3),  # 384*10*9 + 10 = 34_570
        "7.2": conv(10, 10, 1),  # 10*10 + 10 = 110
        "7.4": conv(10, 10, 1),
    }
    assert conv(1, 96, 11) == 11_712 and conv(96, 256, 5) == 614_656


def test_nin_total_is_about_two_million() -> None:
    # 30_336 + 746_240 + 1_180_800 + 34_790 (blocks 0, 2, 4, 7)
    assert sum(layer_params("nin").values()) == 1_992_166


def test_alexnet_parameters_and_the_chapters_26m_dense_layer() -> None:
    params = layer_params("alexnet")
    assert params["0"] == conv(1, 96, 11)
    assert params["3"] == conv(96, 256, 5)
    assert params["6"] == conv(256, 384, 3)
    assert params["8"] == conv(384, 384, 3)
    assert params["10"] == conv(384, 256, 3)
    assert params["14"] == dense(256 * 5 * 5, 4096)  # 6400*4096 + 4096 = 26_218_496, "≈ 26M"
    assert params["17"] == dense(4096, 4096)
    assert params["20"] == dense(4096, 10)
    assert params["14"] == 26_218_496
    assert sum(params.values()) == 46_764_746


def test_vgg11_parameters_and_the_chapters_102m_dense_layer() -> None:
    params = layer_params("vgg11")
    convs = [
        (1, 64),
        (64, 128),
        (128, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    conv_names = ["0.0", "1.0", "2.0", "2.2", "3.0", "3.2", "4.0", "4.2"]
    for name, (c_in, c_out) in zip(conv_names, convs, strict=True):
        assert params[name] == conv(c_in, c_out, 3)
    assert params["6"] == dense(512 * 7 * 7, 4096) == 102_764_544  # "≈ 102M"
    assert params["9"] == dense(4096, 4096)
    assert params["12"] == dense(4096, 10)
    assert sum(params.values()) == 128_806_154


def test_narrow_vgg_divides_conv_channels_by_four_and_keeps_dense_width() -> None:
    params = layer_params("vgg11_narrow")
    assert params["0.0"] == conv(1, 16, 3)
    assert params["4.2"] == conv(128, 128, 3)
    assert params["6"] == dense(128 * 7 * 7, 4096)  # 6272*4096 + 4096


def test_single_1x1_ablation_drops_one_pointwise_conv_per_block() -> None:
    full, single = layer_params("nin"), layer_params("nin_single_1x1")
    dropped = conv(96, 96, 1) + conv(256, 256, 1) + conv(384, 384, 1) + conv(10, 10, 1)
    assert sum(full.values()) - sum(single.values()) == dropped  # 9_312+65_792+147_840+110
    assert [n for n in single if n.startswith("4.")] == ["4.0", "4.2"]


def test_gradual_head_narrows_384_to_10_in_three_steps() -> None:
    params = layer_params("nin_gradual_head")
    assert params["7.0"] == conv(384, 96, 3)
    assert params["7.2"] == conv(96, 24, 1)
    assert params["7.4"] == conv(24, 10, 1)


def test_channels_classes_and_image_size_are_configurable() -> None:
    params = layer_params("alexnet", channels=3, classes=100, image_size=256)
    assert params["0"] == conv(3, 96, 11)
    # 256 → conv k11 s4 p1: 62 → pool: 30 → pool: 14 → pool: 6
    assert params["14"] == dense(256 * 6 * 6, 4096)
    assert params["20"] == dense(4096, 100)


NIN_SHAPES = {  # MISSION.md's table, batch 1
    "0": (1, 96, 54, 54),
    "1": (1, 96, 26, 26),
    "2": (1, 256, 26, 26),
    "3": (1, 256, 12, 12),
    "4": (1, 384, 12, 12),
    "5": (1, 384, 5, 5),
    "6": (1, 384, 5, 5),
    "7": (1, 10, 5, 5),
    "8": (1, 10, 1, 1),
    "9": (1, 10),
}


def test_nin_output_shapes_match_the_mission_table() -> None:
    model = meta_model("nin")
    x = torch.empty(1, 1, 224, 224, device="meta")
    shapes = {}
    for name, layer in model.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape)
    assert shapes == NIN_SHAPES


def test_import_path_builds_a_user_model() -> None:
    model = get_model("torch.nn:Identity")
    assert isinstance(model, nn.Identity)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_package.models:net", "cannot import 'no_such_package.models'"),
        ("math:no_such_thing", "has no attribute 'no_such_thing'"),
        ("math:pi", "gave a float, not a torch.nn.Module"),
        ("math:", "must look like package.module:callable"),
    ],
)
def test_bad_import_paths_say_what_is_wrong(path: str, message: str) -> None:
    with pytest.raises(ImportPathError, match=message):
        get_model(path)
