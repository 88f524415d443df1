"""The same configuration measured twice, each in a fresh process: how far apart the figures are.

    python bench/repeatability.py [--device cuda|cpu] [--models nin,alexnet,vgg11]
                                  [--phases train,inference] [--batch 128] [--iterations 20]

A measurement is only worth its repeatability: peak allocated should agree to the byte (the
allocator is deterministic for the same program), time per iteration (median of the timed
iterations, CUDA events on a GPU) within a few percent.
"""

from __future__ import annotations

import argparse

import torch

from nin_profile.measure.runner import run_worker, to_measurement
from nin_profile.measure.worker import Request
from nin_profile.results import PhaseMeasurement


def measure(model: str, phase: str, args: argparse.Namespace) -> PhaseMeasurement:
    request = Request(
        model=model,
        phase=phase,
        batch=args.batch,
        device=args.device,
        warmup=3,
        iterations=args.iterations,
        per_layer=False,
    )
    return to_measurement(run_worker(request, timeout_s=600), request)


def row(model: str, phase: str, first: PhaseMeasurement, second: PhaseMeasurement) -> str:
    if not (first.memory and second.memory and first.timing and second.timing):
        return f"| {model} | {phase} | {first.error or second.error} | | | | | |"
    a, b = first.memory.peak_allocated, second.memory.peak_allocated
    ta, tb = first.timing.ms_per_iter, second.timing.ms_per_iter
    return (
        f"| {model} | {phase} | {a:,} | {b:,} | {b - a:+,} | {ta:.3f} | {tb:.3f} | "
        f"{100 * (tb - ta) / ta:+.2f}% |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="nin,alexnet,vgg11")
    parser.add_argument("--phases", default="train,inference")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        for phase in args.phases.split(","):
            rows.append(row(model, phase, measure(model, phase, args), measure(model, phase, args)))
    where = f"batch {args.batch}, {args.device}, torch {torch.__version__}"
    print(f"\nThe same measurement twice, each in a fresh process: {where}\n")
    print(
        "| model | phase | peak allocated, 1st (B) | 2nd (B) | difference (B) "
        "| ms/iter 1st | ms/iter 2nd | time difference |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
