"""Architectures users bring, against oracles: `python bench/zoo.py [--batch 2] [--models a,b]`.

Needs torchvision, which does not install beside the CPU build of
torch CI uses: run it from a separate environment, e.g.

    python3 -m venv /work/venv-zoo
    /work/venv-zoo/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /work/venv-zoo/bin/pip install -e . fvcore torchinfo pandas matplotlib nvidia-ml-py rich
    /work/venv-zoo/bin/python bench/zoo.py

For each torchvision model, at the given batch on the CPU, nin_profile's static analysis
(`--device cpu`) beside:
- params: the real model's parameter count;
- forward and backward FLOPs: FlopCounterMode on a real training step of the model with each
  grouped convolution split into `groups` convolutions (PyTorch's formula for a grouped
  convolution's backward is wrong, its formula for one group is right) and attention run on
  the math path (FlopCounterMode has no formula for the CPU's flash kernel). Ours counts the
  flash kernel's backward as five products (it recomputes the scores), the math path's as
  four, so attention models differ there by design;
- saved bytes: what autograd saves in a real forward and loss, each storage once, parameters
  and buffers excluded (as ours: BatchNorm's running statistics are the model's state);
- the training step's peak: the CPU allocator's, one steady step after a warm-up;
- wall time of our analysis (building the model on meta, then tracing a training step and
  inference; after one warm-up analysis) against torchinfo's `summary` (one real forward) of
  the same model and batch, already built (building it on the CPU is not timed).
Prints a markdown table (the README's accuracy section holds the last one).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.training import TrainingLoss, make_batch, make_optimizer, training_step
from nin_profile.inputs import InputSpec
from nin_profile.measure.cpu_memory import cpu_peak_during

MODELS = {  # torchvision name → image side it runs at
    "resnet18": 224,
    "resnet50": 224,
    "mobilenet_v2": 224,
    "mobilenet_v3_small": 224,
    "efficientnet_b0": 224,
    "densenet121": 224,
    "regnet_y_400mf": 224,
    "convnext_tiny": 224,
    "shufflenet_v2_x1_0": 224,
    "inception_v3": 299,
    "googlenet": 224,
    "vit_b_16": 224,
    "swin_t": 224,
}
CLASSES = 1000


class SplitGroups(nn.Module):
    """A grouped convolution as `groups` convolutions of one group each, same weights."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        weights = c.weight.chunk(c.groups, dim=0)
        biases = c.bias.chunk(c.groups) if c.bias is not None else (None,) * c.groups
        outs = [
            nn.functional.conv2d(xi, w, b, c.stride, c.padding, c.dilation)
            for xi, w, b in zip(x.chunk(c.groups, dim=1), weights, biases, strict=True)
        ]
        return torch.cat(outs, dim=1)


def split_groups(model: nn.Module) -> nn.Module:
    """`model` with each grouped nn.Conv2d replaced by its SplitGroups, in place."""
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d) and child.groups > 1:
            setattr(model, name, SplitGroups(child))
        else:
            split_groups(child)
    return model


def build(name: str) -> nn.Module:
    import torchvision.models

    torch.manual_seed(0)
    model: nn.Module = getattr(torchvision.models, name)()
    return model


@dataclass
class Row:
    name: str
    params: tuple[int, int]
    flops_forward: tuple[int, int]
    flops_backward: tuple[int, int]
    saved: tuple[int, int]
    train_peak: tuple[int, int]
    seconds: tuple[float, float]


def oracle_flops(
    name: str, x: torch.Tensor, y: torch.Tensor, classes: int | None
) -> tuple[int, int]:
    model = split_groups(build(name)).train()
    loss_fn = TrainingLoss(classes)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            loss = loss_fn(model(x), y)
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


def oracle_saved(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int | None) -> int:
    held = [*model.parameters(), *model.buffers()]  # state the model holds anyway
    params = {t.untyped_storage().data_ptr() for t in held}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = TrainingLoss(classes)(model(x), y)
    del loss
    return sum(saved.values())


def oracle_peak(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int | None) -> int:
    loss_fn, opt = TrainingLoss(classes), make_optimizer("sgd", model.parameters())
    training_step(model, loss_fn, opt, x, y)
    opt.zero_grad(set_to_none=True)
    held = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), x, y])
    return held + cpu_peak_during(lambda: training_step(model, loss_fn, opt, x, y))


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(None):
        yield


def measure(name: str, side: int, batch: int) -> Row:
    from torchinfo import summary

    cfg = AnalysisConfig(batch=batch, inputs=InputSpec.image(3, side), device="cpu")
    path = f"torchvision.models:{name}"
    analyse_model(path, cfg)  # warm-up: imports, meta kernels
    ours_s = seconds(lambda: analyse_model(path, cfg))
    ours = analyse_model(path, cfg)
    x, y = make_batch(batch, cfg.inputs, CLASSES, "cpu")
    real = build(name).train()
    params = sum(p.numel() for p in real.parameters())
    forward, backward = oracle_flops(name, x, y, ours.classes)
    saved = oracle_saved(real, x, y, ours.classes)
    peak = oracle_peak(build(name).train(), x, y, ours.classes)
    model = build(name)
    with quiet():
        torchinfo_s = seconds(lambda: summary(model, input_data=x, verbose=0))
    return Row(
        name,
        (ours.params, params),
        (ours.flops_forward, forward),
        (ours.flops_backward, backward),
        (ours.activation_bytes_saved, saved),
        (ours.train.peak, peak),
        (ours_s, torchinfo_s),
    )


def err(pair: tuple[float, float]) -> str:
    ours, oracle = pair
    return "exact" if ours == oracle else f"{100 * (ours - oracle) / oracle:+.1f}%"


def table(rows: list[Row], batch: int) -> str:
    head = (
        f"| model (batch {batch}, CPU) | params | fwd GFLOPs | err | bwd GFLOPs | err | "
        "saved MiB | err | train peak MiB | meas. MiB | err | ours s | torchinfo s |\n"
        "| --- |" + " ---: |" * 12
    )
    lines = [head]
    mib = 2**20
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params[0]:,} ({err(r.params)}) | {r.flops_forward[0] / 1e9:.2f} | "
            f"{err(r.flops_forward)} | {r.flops_backward[0] / 1e9:.2f} | {err(r.flops_backward)} "
            f"| {r.saved[0] / mib:.1f} | {err(r.saved)} | {r.train_peak[0] / mib:.1f} | "
            f"{r.train_peak[1] / mib:.1f} | {err(r.train_peak)} | {r.seconds[0]:.2f} | "
            f"{r.seconds[1]:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        try:
            rows.append(measure(name, MODELS[name], args.batch))
        except Exception as exc:  # one model failing must not cost the others' rows
            print(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0], flush=True)
            continue
        print(table(rows[-1:], args.batch).splitlines()[-1], flush=True)
    print()
    print(table(rows, args.batch))


if __name__ == "__main__":
    main()
