"""Models that fail on purpose, loaded by import path (`fake_models:...`) in worker processes.

On meta tensors they behave, so the static analysis runs; on real tensors they fail the way a
too-large batch or a broken extension does.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

OOM_ABOVE = 6  # batches larger than this "run out of memory"


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


class OutOfMemoryAboveSix(_Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta" and x.shape[0] > OOM_ABOVE:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (on purpose above {OOM_ABOVE})"
            )
        return self.body(x)


class KillsItself(_Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "meta":
            os.kill(os.getpid(), signal.SIGKILL)
        return self.body(x)


class PositionsRunOut(_Classifier):
    """A lookup that only real values can overrun (a position table shorter than the input):
    on meta the index has no values, on the CPU it is out of range."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[-1], device=x.device)
        return self.body(x) + self.table(positions).sum(0)  # the line a failure names


class DetachedOut(nn.Module):
    """Returns its output detached from autograd: the training step has nothing to train."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).detach()
