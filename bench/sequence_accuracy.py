"""Sequence and attention layers, estimated against a real CPU run.

    python bench/sequence_accuracy.py [--batch 8] [--steps 64] [--width 32]

Models over `--steps` steps of `--width` features (token ids through an embedding where the
name says so), one line each: saved bytes, the training step's and the inference pass's peak
(the CPU allocator's full peak, as tests/test_kernels.py holds attention, LSTM and GRU to it),
estimated (`--device cpu`, fp32 unless the line says AMP) and real, and the error. The real
inference runs under `inference_mode`, where PyTorch takes its fused fast paths for
nn.MultiheadAttention and nn.TransformerEncoderLayer (nin_profile/engine/fastpath.py).
On the project's 2-core machine (2026-11-27, torch 2.13, batch 8, 64 steps, width 32) see
docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_memory import step_saved_bytes
from test_precision import real_amp

from nin_profile.engine.analysis import AnalysisConfig, analyse, meta_copy
from nin_profile.engine.training import (
    TrainingLoss,
    forward,
    make_batch,
    make_optimizer,
    token_vocabulary,
    training_step,
)
from nin_profile.inputs import InputSpec
from nin_profile.measure.cpu_memory import cpu_peak_during

CLASSES = 4


class Classifier(nn.Module):
    """`body` over (batch, steps, width) values or embedded token ids; the mean classifies."""

    def __init__(self, body: nn.Module, width: int, tokens: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, width) if tokens else None
        self.body = body
        self.head = nn.Linear(2 * width if _bidirectional(body) else width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        if isinstance(self.body, nn.MultiheadAttention):
            x = self.body(x, x, x)[0]
        elif isinstance(self.body, nn.RNNBase):
            x = self.body(x)[0]
        else:
            x = self.body(x)
        return self.head(x.mean(1))


def _bidirectional(body: nn.Module) -> bool:
    return isinstance(body, nn.RNNBase) and body.bidirectional


def bodies(width: int) -> dict[str, Callable[[], nn.Module]]:
    def encoder(**kw: object) -> nn.Module:
        return nn.TransformerEncoderLayer(
            width,
            4,
            2 * width,
            dropout=0.0,
            batch_first=True,
            **kw,  # type: ignore[arg-type]
        )

    return {
        "GRU": lambda: nn.GRU(width, width, batch_first=True),
        "GRU, 2 layers, bidirectional": lambda: nn.GRU(
            width, width, 2, batch_first=True, bidirectional=True
        ),
        "LSTM": lambda: nn.LSTM(width, width, batch_first=True),
        "MultiheadAttention (weights returned)": lambda: nn.MultiheadAttention(
            width, 4, batch_first=True
        ),
        "TransformerEncoderLayer": encoder,
        "TransformerEncoderLayer, pre-norm, GELU": lambda: encoder(
            norm_first=True, activation="gelu"
        ),
    }


def held(*tensors: torch.Tensor) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def real_run(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str
) -> tuple[int, int, int]:
    """(saved bytes, training peak, inference peak) of a real CPU run."""
    amp = real_amp(precision)
    saved = step_saved_bytes(model, x, y, CLASSES, amp)  # also the warm-up
    loss_fn, opt = TrainingLoss(CLASSES), make_optimizer("sgd", model.parameters())
    training_step(model, loss_fn, opt, x, y, amp=amp)  # this optimizer's state (none for SGD)
    opt.zero_grad(set_to_none=True)
    train = held(*model.parameters(), x, y) + cpu_peak_during(
        lambda: training_step(model, loss_fn, opt, x, y, amp=amp)
    )
    model.eval()
    with torch.inference_mode():
        inference = held(*model.parameters(), x) + cpu_peak_during(lambda: forward(model, x, amp))
    return saved, train, inference


def error(estimate: int, real: int) -> str:
    return f"{(estimate - real) / real:+.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    print("| model | input | saved B (est / real) | train peak B | err | inference peak B | err |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, body in bodies(args.width).items():
        for tokens, precision in ((False, "fp32"), (True, "fp32"), (True, "amp-bf16")):
            if precision != "fp32" and "Transformer" not in name and "Multihead" not in name:
                continue
            torch.manual_seed(0)
            model = Classifier(body(), args.width, tokens)
            shape = (args.steps,) if tokens else (args.steps, args.width)
            inputs = InputSpec(shape, token_ids=tokens)
            cfg = AnalysisConfig(batch=args.batch, inputs=inputs, device="cpu", precision=precision)
            est = analyse(meta_copy(model, always=True), cfg, name=name)
            x, y = make_batch(
                args.batch, inputs, CLASSES, "cpu", vocabulary=token_vocabulary(model)
            )
            saved, train, inference = real_run(model, x, y, precision)
            kind = ("token ids" if tokens else "values") + (
                "" if precision == "fp32" else ", AMP bf16"
            )
            print(
                f"| {name} | {kind} | {est.activation_bytes_saved:,} / {saved:,} | "
                f"{est.train.peak:,} / {train:,} | {error(est.train.peak, train)} | "
                f"{est.inference.peak:,} / {inference:,} | "
                f"{error(est.inference.peak, inference)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
