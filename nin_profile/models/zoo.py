"""NiN, AlexNet and VGG-11 as d2l defines them, and the variants the chapter's exercises need.

Each model is one top-level `nn.Sequential`, so layer names match d2l's indexing
("0.0" is the first conv of NiN's first block, "1" the max-pool after it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import pairwise

import torch
from torch import nn

from nin_profile.engine.layer_stack import forward_on_meta
from nin_profile.models import ModelConfig, register_model

# (out_channels, kernel, stride, padding) of NiN's first three blocks; the fourth maps to classes.
NIN_BLOCKS = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1))

# (number of 3×3 convs, out_channels) of each VGG block; d2l's narrow copy divides channels by 4.
VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
VGG_ARCHS = {
    "vgg11": VGG11_ARCH,
    "vgg11_narrow": tuple((n, c // 4) for n, c in VGG11_ARCH),
}

DENSE_WIDTH = 4096


def nin_block(widths: tuple[int, ...], kernel: int, stride: int, padding: int) -> nn.Sequential:
    """Conv(widths[0]→widths[1], kernel) then a 1×1 conv to each next width, each with a ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(widths[0], widths[1], kernel, stride, padding), nn.ReLU()]
    for c_in, c_out in pairwise(widths[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=1), nn.ReLU()]
    return nn.Sequential(*layers)


def build_nin(cfg: ModelConfig, pointwise: int = 2, head: tuple[int, ...] = ()) -> nn.Sequential:
    """d2l's NiN; `pointwise` 1×1 convs per block, `head` widths between 384 and the classes."""
    blocks: list[nn.Module] = []
    c_in = cfg.channels
    for c_out, kernel, stride, padding in NIN_BLOCKS:
        blocks += [
            nin_block((c_in,) + (c_out,) * (1 + pointwise), kernel, stride, padding),
            nn.MaxPool2d(3, stride=2),
        ]
        c_in = c_out
    head_widths = (c_in, *head, cfg.classes) if head else (c_in,) + (cfg.classes,) * (1 + pointwise)
    return nn.Sequential(
        *blocks,
        nn.Dropout(0.5),
        nin_block(head_widths, kernel=3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )


def dense_head(in_features: int, classes: int) -> list[nn.Module]:
    """AlexNet's and VGG's classifier: two 4096-wide layers with dropout, then the logits."""
    return [
        nn.Flatten(),
        nn.Linear(in_features, DENSE_WIDTH),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(DENSE_WIDTH, DENSE_WIDTH),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(DENSE_WIDTH, classes),
    ]


def alexnet_features(channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, 96, kernel_size=11, stride=4, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]


def vgg_block(convs: int, c_in: int, c_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=2, stride=2))


def vgg_features(arch: tuple[tuple[int, int], ...], channels: int) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for convs, c_out in arch:
        blocks.append(vgg_block(convs, channels, c_out))
        channels = c_out
    return blocks


def with_dense_head(
    make_features: Callable[[int], list[nn.Module]], cfg: ModelConfig
) -> nn.Sequential:
    """The conv part then the dense head, whose input size a meta-device copy of the part finds."""
    with torch.device("meta"):
        probe = nn.Sequential(*make_features(cfg.channels))
    in_features = forward_on_meta(probe, (1, cfg.channels, cfg.image_size, cfg.image_size)).numel()
    return nn.Sequential(*make_features(cfg.channels), *dense_head(in_features, cfg.classes))


_NIN_VARIANTS = {
    "nin": (
        "NiN (d2l): 4 blocks of a conv and two 1×1 convs, global average pooling, no dense layer",
        {},
    ),
    "nin_single_1x1": (
        "NiN with one 1×1 conv per block instead of two (exercise 2)",
        {"pointwise": 1},
    ),
    "nin_gradual_head": (
        "NiN whose last block narrows 384→96→24→classes instead of 384→classes "
        "in one 3×3 conv (exercise 4)",
        {"head": (96, 24)},
    ),
}
for _name, (_description, _options) in _NIN_VARIANTS.items():
    register_model(_name, _description)(
        lambda cfg, options=_options: build_nin(cfg, **options)  # type: ignore[misc]
    )


@register_model(
    "alexnet", "AlexNet (d2l): 5 convs, 3 max-pools, 3 dense layers (6400→4096→4096→classes)"
)
def build_alexnet(cfg: ModelConfig) -> nn.Module:
    return with_dense_head(alexnet_features, cfg)


_VGG_DESCRIPTIONS = {
    "vgg11": "VGG-11 (d2l): 8 3×3 convs in 5 blocks (64…512 channels), 3 dense layers",
    "vgg11_narrow": "VGG-11 with conv channels ÷ 4 (16…128) as d2l trains it; dense layers kept",
}
for _name, _arch in VGG_ARCHS.items():
    register_model(_name, _VGG_DESCRIPTIONS[_name])(
        lambda cfg, arch=_arch: with_dense_head(partial(vgg_features, arch), cfg)  # type: ignore[misc]
    )
