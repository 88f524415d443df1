"""The training step and inference pass that are both predicted and measured: one definition."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from nin_profile.errors import InvalidConfig
from nin_profile.results import Phase

# Learning rates do not change memory or FLOPs; they are d2l's defaults for these models.
OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter], bool | None], torch.optim.Optimizer]] = {
    "sgd": lambda params, foreach: torch.optim.SGD(params, lr=0.1, foreach=foreach),
    "momentum": lambda params, foreach: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, foreach=foreach
    ),
    "adam": lambda params, foreach: torch.optim.Adam(params, lr=1e-3, foreach=foreach),
}


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], foreach: bool | None = None
) -> torch.optim.Optimizer:
    """`sgd`, `momentum` (SGD with momentum 0.9) or `adam`; foreach=None lets torch choose."""
    if name not in OPTIMIZERS:
        raise InvalidConfig(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, foreach)


def optimizer_state(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def make_batch(
    batch: int, channels: int, image_size: int, classes: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic batch of images and class targets; values matter to neither memory nor FLOPs."""
    shape = (batch, channels, image_size, image_size)
    if torch.device(device).type == "meta":
        return torch.empty(shape, device=device), torch.empty(
            batch, dtype=torch.long, device=device
        )
    x = torch.randn(shape, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    return x, y


def _no_phase(phase: Phase) -> None:
    pass


def training_step(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    on_phase: Callable[[Phase], None] = _no_phase,
) -> None:
    """Forward, loss, backward, optimizer step; gradients are left for the caller to clear."""
    on_phase(Phase.FORWARD)
    loss = loss_fn(model(x), y)
    on_phase(Phase.BACKWARD)
    loss.backward()
    on_phase(Phase.OPTIMIZER)
    optimizer.step()
