"""Every precision's estimate against a real CPU run, at full size.

    python bench/precision_vs_real.py [--models nin,alexnet,vgg11] [--batch 2] [--image-size 224]

For each model, precision (and AMP bf16 in channels_last) one line: saved bytes, the training
step's and the inference pass's peak between dispatched ops, estimated and real, and the
error. The real run is tests/test_precision.py's (`real_cpu_run`: a real step under
`torch.autocast("cpu")` with a real GradScaler, or on a model cast with `.to()`; autograd's
saved tensors once per storage; the CPU allocator's peak between the ops a dispatch mode
sees). The tests run the same comparison at small images; this runs it at the models' own
size. On the project's 2-core machine (2026-11-27, torch 2.13, batch 2, 224 px) every figure
of NiN, AlexNet and VGG-11 was equal to the byte in all five precisions; VGG-11's fp16 step
took 48-155 s (the CPU has no fp16 arithmetic).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_precision import config, estimate, real_cpu_run

from nin_profile.engine.precision import PRECISION_NAMES
from nin_profile.models import get_model

CASES = [(p, False) for p in PRECISION_NAMES] + [("amp-bf16", True)]


def error(estimated: int, real: int) -> str:
    return f"{100 * (estimated - real) / real:+.3f}%"


def compare(name: str, precision: str, channels_last: bool, batch: int, size: int) -> str:
    """One line: the estimate against a real run of `name` in `precision`."""
    started = time.monotonic()
    est = estimate(name, size, batch, precision, channels_last)
    torch.manual_seed(0)
    model = get_model(name, channels=1, classes=10, image_size=size)
    real = real_cpu_run(model, config(size, batch, precision, channels_last))
    pairs = {
        "saved": (est.activation_bytes_saved, real.saved),
        "train peak": (est.train.peak, real.train_peak),
        "inference peak": (est.inference.peak, real.inference_peak),
    }
    figures = " | ".join(
        f"{what} est {e:,} real {r:,} {error(e, r)}" for what, (e, r) in pairs.items()
    )
    layout = " channels_last" if channels_last else ""
    return f"{name} {precision}{layout}: {figures} ({time.monotonic() - started:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nin,alexnet,vgg11")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    for name in args.models.split(","):
        for precision, channels_last in CASES:
            print(compare(name, precision, channels_last, args.batch, args.image_size), flush=True)


if __name__ == "__main__":
    main()
