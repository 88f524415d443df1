"""The training step and inference pass that are both predicted and measured: one definition."""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import keystr, tree_flatten_with_path

from nin_profile.errors import InvalidConfig
from nin_profile.inputs import InputSpec
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
    batch: int,
    inputs: InputSpec,
    classes: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    vocabulary: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic batch of `inputs` and class targets: float values in `dtype` (and in
    `torch.channels_last` where asked), or int64 token ids below `vocabulary`; values matter
    to neither memory nor FLOPs."""
    shape = inputs.batch_shape(batch)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty(batch, dtype=torch.long, device=device)
    meta = torch.device(device).type == "meta"
    if inputs.token_ids:
        x = torch.empty(shape, dtype=torch.long, device=device)
        return (x, y) if meta else (x.random_(0, vocabulary), y.random_(0, classes))
    if meta:
        return torch.empty(shape, device=device, dtype=dtype, memory_format=layout), y
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=layout)
    return x, y.random_(0, classes)


def token_vocabulary(model: nn.Module) -> int:
    """The ids every embedding of `model` can look up: the smallest `num_embeddings` (1 where
    the model has no nn.Embedding or nn.EmbeddingBag: id 0 only)."""
    sizes = [
        m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    ]
    return min(sizes, default=1)


def floating_outputs(output: Any) -> list[tuple[str, torch.Tensor]]:
    """(where, tensor) of each floating-point tensor in a model's output, in order: `` for a
    bare tensor, else its path (`[0]`, `.aux_logits1`, `['out']`)."""
    leaves, _ = tree_flatten_with_path(output)
    return [
        (keystr(path), leaf)
        for path, leaf in leaves
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
    ]


def output_classes(
    output: Any, batch: int, steps: int | None = None, wanted: int | None = None
) -> int | None:
    """The classes of a model's output: `wanted` where one of its outputs has that many
    (the head the user named, of a model with several), else the width of its first (batch,
    classes) floating-point tensor, or, where it has none and the input is `steps` token
    ids, of its first (batch, steps, classes) one (a language model's scores for each
    token); None where it has neither (feature maps, a segmentation's per-pixel scores)."""
    widths = class_widths(output, batch, steps)
    if wanted in widths:
        return wanted
    return widths[0] if widths else None


def class_widths(output: Any, batch: int, steps: int | None = None) -> list[int]:
    """The widths of the outputs that can be scores of classes, in order: those shaped
    (batch, classes), or, where none is and the input is `steps` token ids, those shaped
    (batch, steps, classes)."""
    tensors = [tensor for _, tensor in floating_outputs(output)]
    widths = [int(t.shape[1]) for t in tensors if t.dim() == 2 and t.shape[0] == batch]
    if widths or steps is None:
        return widths
    per_token = [t for t in tensors if t.dim() == 3 and tuple(t.shape[:2]) == (batch, steps)]
    return [int(t.shape[2]) for t in per_token]


def is_logits(
    tensor: torch.Tensor, batch: int, classes: int | None, steps: int | None = None
) -> bool:
    shape = tuple(tensor.shape)
    return classes is not None and (
        shape == (batch, classes) or (steps is not None and shape == (batch, steps, classes))
    )


def describe_loss(output: Any, batch: int, classes: int | None, steps: int | None = None) -> str:
    """In words, which loss the training step takes over this output (see TrainingLoss)."""
    outputs = floating_outputs(output)
    logits = [(where, t) for where, t in outputs if is_logits(t, batch, classes, steps)]
    rest = [where for where, t in outputs if not is_logits(t, batch, classes, steps)]
    per_token = any(t.dim() == 3 for _, t in logits)
    cross_entropy = f"cross-entropy over {classes} classes" + (
        f" at each of the {steps} tokens" if per_token else ""
    )
    if len(outputs) == 1:
        return cross_entropy if logits else "mean of the output"
    parts = []
    if logits:
        parts.append(f"{cross_entropy} on output {', '.join(where for where, _ in logits)}")
    if rest:
        means = "the mean" if len(rest) == 1 else "the means"
        parts.append(f"{means} of output {', '.join(rest)}")
    return "sum of " + " and ".join(parts)


class TrainingLoss(nn.Module):
    """The training step's loss over a model's output of any structure (tensor, tuple, list,
    namedtuple, dict): every floating-point output that requires grad enters, cross-entropy
    against the targets for those shaped (batch, classes), and, where the input is `steps`
    token ids, at each token for those shaped (batch, steps, classes) (each example's target
    for all its tokens: a language model's loss, its scores flattened as training loops do);
    the mean for the rest; their sum is what backward starts from. A single (batch, classes)
    output is plain cross-entropy."""

    def __init__(self, classes: int | None, steps: int | None = None) -> None:
        super().__init__()
        self.classes, self.steps = classes, steps

    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        batch = target.shape[0]
        terms = [
            self._cross_entropy(t, target)
            if is_logits(t, batch, self.classes, self.steps)
            else t.mean()
            for _, t in floating_outputs(output)
            if t.requires_grad
        ]
        if not terms:
            raise ValueError("no floating-point output of the model requires grad")
        return functools.reduce(operator.add, terms)

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 2:
            return nn.functional.cross_entropy(logits, target)
        steps = logits.shape[1]
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.repeat_interleave(steps)
        )


def _no_phase(phase: Phase) -> None:
    pass


@dataclass
class Amp:
    """Automatic mixed precision in a step: `autocast()` around the forward and the loss (a
    fresh context each time: its weight-cast cache lives as long as the region), and for fp16
    a GradScaler around backward and the optimizer step, as PyTorch's AMP recipe has it."""

    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    scaler: torch.amp.GradScaler | None = None


class TracedGradScaler(torch.amp.GradScaler):
    """A GradScaler for a trace on tensors without values: the step it takes is one whose
    gradients are finite, so the optimizer steps (the real one asks `found_inf.item()`)."""

    def _maybe_opt_step(
        self,
        optimizer: torch.optim.Optimizer,
        optimizer_state: dict[str, Any],
        *args: Any,
        **kwargs: Any,
    ) -> float | None:
        return optimizer.step(*args, **kwargs)


def scaler_state(amp: Amp | None) -> list[torch.Tensor]:
    """What a GradScaler keeps between steps: its scale and growth tracker (after one step)."""
    scaler = amp.scaler if amp else None
    if scaler is None:
        return []
    return [t for t in (scaler._scale, scaler._growth_tracker) if t is not None]


def forward(model: nn.Module, x: torch.Tensor, amp: Amp | None = None) -> Any:
    """The model's forward on `x`, under autocast for AMP."""
    with amp.autocast() if amp else contextlib.nullcontext():
        return model(x)


def training_step(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    on_phase: Callable[[Phase], None] = _no_phase,
    amp: Amp | None = None,
) -> None:
    """Forward, loss, backward, optimizer step; gradients are left for the caller to clear.
    With AMP, the forward and the loss run under autocast; for fp16 the loss is scaled before
    backward, and the scaler unscales the gradients, steps and updates its scale."""
    on_phase(Phase.FORWARD)
    with amp.autocast() if amp else contextlib.nullcontext():
        loss = loss_fn(model(x), y)
    on_phase(Phase.BACKWARD)
    scaler = amp.scaler if amp else None
    (scaler.scale(loss) if scaler else loss).backward()
    on_phase(Phase.OPTIMIZER)
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()
