"""The precisions a step runs in, and what each keeps in which dtype.

- `fp32`: everything in float32 (on CUDA, cuDNN runs float32 convolutions on TF32 tensor cores
  by default; the arithmetic is still counted as float32 FLOPs).
- `amp-fp16`, `amp-bf16`: automatic mixed precision. `torch.autocast` around the forward and
  the loss, the parameters, their gradients and the optimizer state in float32; autocast runs
  each op in the dtype its op lists give it (convolutions and matrix products in half, losses,
  softmax and reductions in float32, the rest in whatever dtype its inputs have) and keeps a
  half copy of each float32 weight it casts until the autocast region exits. `amp-fp16` adds a
  `torch.amp.GradScaler` (its scale and growth tracker persist between steps; bf16 has the
  range of float32 and needs none).
- `fp16`, `bf16`: the model and the input cast to that dtype (`model.to(dtype)`): parameters,
  gradients and optimizer state in half, no autocast and no scaler. Integer tensors (max-pool
  indices, targets, BatchNorm's batch counter) keep their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line checks a precision's name without torch
    import torch

PRECISION_NAMES = ("fp32", "amp-fp16", "amp-bf16", "fp16", "bf16")


@dataclass(frozen=True)
class Precision:
    """A precision by name; dtypes as torch's attribute names ("float16")."""

    name: str
    model: str  # the dtype of parameters, gradients, optimizer state and the input
    autocast: str | None = None  # AMP: the lower precision autocast runs its op lists in
    grad_scaler: bool = False  # AMP in fp16: a GradScaler scales the loss, unscales the grads

    @property
    def amp(self) -> bool:
        return self.autocast is not None

    @property
    def compute(self) -> str:
        """The dtype convolutions and matrix products run in."""
        return self.autocast or self.model

    @property
    def half(self) -> bool:
        """Whether convolutions and matrix products run in a 16-bit dtype."""
        return self.compute != "float32"

    def model_dtype(self) -> torch.dtype:
        import torch

        dtype = getattr(torch, self.model)
        assert isinstance(dtype, torch.dtype)
        return dtype

    def autocast_dtype(self) -> torch.dtype:
        import torch

        assert self.autocast is not None, f"{self.name} does not autocast"
        dtype = getattr(torch, self.autocast)
        assert isinstance(dtype, torch.dtype)
        return dtype


PRECISIONS = {
    "fp32": Precision("fp32", "float32"),
    "amp-fp16": Precision("amp-fp16", "float32", autocast="float16", grad_scaler=True),
    "amp-bf16": Precision("amp-bf16", "float32", autocast="bfloat16"),
    "fp16": Precision("fp16", "float16"),
    "bf16": Precision("bf16", "bfloat16"),
}
assert tuple(PRECISIONS) == PRECISION_NAMES


def get_precision(name: str) -> Precision:
    """The precision of this name; one line naming the choices otherwise."""
    from nin_profile.errors import InvalidConfig

    if name not in PRECISIONS:
        raise InvalidConfig(f"precision {name!r}: choose one of {', '.join(PRECISION_NAMES)}")
    return PRECISIONS[name]


def cuda_amp_note(device: str, precisions: tuple[str, ...], measured: bool) -> str | None:
    """The note a run that predicts AMP for CUDA without measuring it carries."""
    amp = [name for name in precisions if get_precision(name).amp]
    if device != "cuda" or measured or not amp:
        return None
    return (
        f"{' and '.join(dict.fromkeys(amp))} for CUDA: CUDA's autocast applied op by op to a "
        "trace on the CPU (each op's casts asked of CUDA's own autocast kernel); estimated "
        "only (checked on an H200 for NiN, AlexNet and VGG-11: saved bytes within 1%, peaks "
        "between ops within 2% but for NiN's training at batch 32, up to 3.1% low)"
    )
