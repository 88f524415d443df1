"""FLOPs against independent oracles: fvcore on real tensors, FlopCounterMode on a real backward
pass, and the convolution formula worked by hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nin_profile.engine.analysis import AnalysisConfig, analyse, analyse_model
from nin_profile.inputs import InputSpec
from nin_profile.models import get_model
from nin_profile.results import ModelProfile

# Small enough for a real CPU pass in a test; VGG-11 at 32×32 keeps its 8 convs and 3 dense layers.
CASES = [("nin", 224), ("nin_single_1x1", 224), ("alexnet", 224), ("vgg11", 32)]
BATCH = 2


def profile(name: str, image_size: int, batch: int = BATCH) -> ModelProfile:
    return analyse_model(
        name, AnalysisConfig(batch=batch, inputs=InputSpec.image(1, image_size), device="cpu")
    )


def real_model(name: str, image_size: int) -> nn.Module:
    torch.manual_seed(0)
    return get_model(name, image_size=image_size)


def test_first_nin_conv_by_hand() -> None:
    nin = profile("nin", 224, batch=1)
    first = nin.layers[0]
    assert first.name == "0.0"
    # MACs = c_out*c_in*k*k per output pixel: 96*1*11*11 * 54*54 = 33_872_256; FLOPs = 2 × MACs
    assert first.flops_forward == 2 * 96 * 1 * 11 * 11 * 54 * 54 == 67_744_512


@pytest.mark.parametrize(("name", "image_size"), CASES)
def test_forward_macs_per_layer_match_fvcore(name: str, image_size: int) -> None:
    ours = profile(name, image_size)
    model = real_model(name, image_size).eval()
    x = torch.randn(BATCH, 1, image_size, image_size)
    fvcore_macs = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).by_module()
    counted = [layer for layer in ours.layers if layer.type in ("Conv2d", "Linear")]
    assert len(counted) >= 8
    for layer in counted:
        assert layer.flops_forward == 2 * fvcore_macs[layer.name], layer.name


@pytest.mark.parametrize(("name", "image_size"), CASES)
def test_totals_match_pytorchs_flop_counter_on_a_real_backward_pass(
    name: str, image_size: int
) -> None:
    ours = profile(name, image_size)
    model = real_model(name, image_size).train()
    x = torch.randn(BATCH, 1, image_size, image_size)
    y = torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as forward:
        loss = nn.functional.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    assert ours.flops_forward == forward.get_total_flops()
    assert ours.flops_backward == backward.get_total_flops()


@pytest.mark.parametrize("name", ["nin", "alexnet", "vgg11"])
def test_backward_costs_twice_the_forward_except_for_the_first_conv(name: str) -> None:
    # grad_input and grad_weight each take as many MACs as the forward; the first conv's input
    # needs no gradient, so it computes grad_weight only.
    layers = [layer for layer in profile(name, 224).layers if layer.flops_forward]
    first, rest = layers[0], layers[1:]
    assert first.flops_backward == first.flops_forward
    for layer in rest:
        assert layer.flops_backward == 2 * layer.flops_forward, layer.name


@pytest.mark.parametrize("name", ["nin", "alexnet", "vgg11"])
def test_flops_are_twice_the_macs_and_layers_sum_to_totals(name: str) -> None:
    p = profile(name, 224)
    assert p.flops_forward == 2 * p.macs_forward
    assert sum(layer.flops_forward for layer in p.layers) == p.flops_forward
    assert sum(layer.flops_backward for layer in p.layers) == p.flops_backward
    assert p.flops_train_step == p.flops_forward + p.flops_backward


def test_flops_scale_linearly_with_batch() -> None:
    one, many = profile("nin", 224, batch=1), profile("nin", 224, batch=64)
    assert many.flops_forward == 64 * one.flops_forward
    assert many.flops_backward == 64 * one.flops_backward


def test_ops_without_a_formula_are_listed_not_silently_zero() -> None:
    not_counted = {(n.op, n.phase): n.calls for n in profile("nin", 224).not_counted}
    assert not_counted[("relu", "forward")] == 12  # 4 blocks × 3 ReLUs
    assert not_counted[("max_pool2d_with_indices", "forward")] == 3
    assert not_counted[("threshold_backward", "backward")] == 12
    assert ("convolution", "forward") not in not_counted


# ---- grouped, depthwise, strided, dilated and transposed convolutions -------------------------

GROUPED_CASES = [  # (in, out, kernel, stride, padding, dilation, groups, transposed)
    (8, 8, 3, 1, 1, 1, 8, False),  # depthwise 3×3
    (8, 16, 3, 2, 1, 1, 4, False),  # grouped, strided
    (8, 8, 3, 1, 2, 2, 2, False),  # grouped, dilated
    (8, 8, 1, 1, 0, 1, 1, False),  # pointwise (groups=1: PyTorch's formula is right)
    (8, 4, 3, 2, 1, 1, 2, True),  # grouped transposed, strided
    (8, 8, 4, 2, 1, 1, 8, True),  # depthwise transposed
]
SIDE = 10


def grouped_conv(
    c_in: int, c_out: int, k: int, s: int, p: int, d: int, g: int, transposed: bool
) -> nn.Module:
    kind = nn.ConvTranspose2d if transposed else nn.Conv2d
    return kind(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)


def decomposed_flops(conv: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs of `conv` as `groups` separate convolutions of groups=1, each
    counted by FlopCounterMode on real tensors, where PyTorch's formulas are right."""
    assert isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
    g = conv.groups
    transposed = isinstance(conv, nn.ConvTranspose2d)
    x = x.detach().requires_grad_()
    xs, ws = x.chunk(g, dim=1), conv.weight.detach().chunk(g, dim=0)
    ws = tuple(w.clone().requires_grad_() for w in ws)
    fn: Callable[..., torch.Tensor] = (
        nn.functional.conv_transpose2d if transposed else nn.functional.conv2d
    )
    opts = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    with FlopCounterMode(display=False) as forward:
        out = torch.cat([fn(xi, wi, **opts) for xi, wi in zip(xs, ws, strict=True)], dim=1)
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    return forward.get_total_flops(), backward.get_total_flops()


@pytest.mark.parametrize("case", GROUPED_CASES)
def test_grouped_conv_flops_match_the_decomposition_into_groups(case: tuple) -> None:
    c_in = case[0]
    torch.manual_seed(0)
    # a conv in front, so that the grouped conv's input needs a gradient too
    model = nn.Sequential(nn.Conv2d(c_in, c_in, 1), grouped_conv(*case), nn.Flatten())
    x = torch.randn(BATCH, c_in, SIDE, SIDE)
    forward, backward = decomposed_flops(model[1], model[0](x))
    cfg = AnalysisConfig(batch=BATCH, inputs=InputSpec.image(c_in, SIDE), device="cpu")
    layer = {row.name: row for row in analyse(model.to("meta"), cfg, name="g").layers}["1"]
    assert layer.flops_forward == forward
    assert layer.flops_backward == backward == 2 * forward


def test_depthwise_backward_by_hand() -> None:
    # depthwise 3×3, 32 channels, 16×16, padding 1: 9 MACs per output, 32*16*16 outputs per
    # example; the input and the weight gradients cost as much each: backward = 2 × forward
    # (PyTorch's own formula gives (1 + 32) × forward: it multiplies all 32 channels with all 32)
    c, side, batch = 32, 16, 2
    model = nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Flatten())
    cfg = AnalysisConfig(batch=batch, inputs=InputSpec.image(c, side), device="cpu")
    layer = {row.name: row for row in analyse(model.to("meta"), cfg, name="dw").layers}["1"]
    assert layer.flops_forward == 2 * batch * c * side * side * 9 == 294_912
    assert layer.flops_backward == 2 * layer.flops_forward == 589_824


def test_first_conv_of_a_model_computes_only_its_weight_gradient() -> None:
    # the batch needs no gradient: output_mask = (False, True, True) → one forward's worth
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten())
    cfg = AnalysisConfig(batch=1, inputs=InputSpec.image(4, 8), device="cpu")
    (layer, *_) = analyse(model.to("meta"), cfg, name="first").layers
    assert layer.flops_forward == 2 * 4 * 6 * 6 * 9  # 4 channels × 6×6 outputs × 9 MACs
    assert layer.flops_backward == layer.flops_forward
