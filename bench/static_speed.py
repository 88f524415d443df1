"""Static analysis speed against torchinfo and fvcore, measured side by side in one run.

    python bench/static_speed.py [--batch 128] [--repeats 3]

For each model: nin_profile's static analysis (a training step and an inference pass, traced
on meta tensors), torchinfo's default `summary` (a real forward pass on the CPU) and fvcore's
`FlopCountAnalysis(...).total()` (a real traced forward pass), on the same model and batch.
Then the whole `--static` command in fresh processes, as a user runs it. Prints medians and
ratios; the figures depend on the machine, the ratios much less.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

import torch
from fvcore.nn import FlopCountAnalysis
from torchinfo import summary

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.models import get_model

MODELS = ("nin", "alexnet", "vgg11")


def seconds(work: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return times


def fvcore_total(model: torch.nn.Module, x: torch.Tensor) -> int:
    return int(FlopCountAnalysis(model, x).unsupported_ops_warnings(False).total())


def fresh_cli_seconds(repeats: int, *extra: str) -> list[float]:
    """Wall time of `python -m nin_profile --static` on the three models, each in a new process."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "nin_profile",
            "--static",
            "--models",
            ",".join(MODELS),
            "--out",
            f"{tmp}/out",
            *extra,
        ]
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return times


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):8.3f} (±{(max(times) - min(times)) / 2:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"median (± half range) of {args.repeats} runs, seconds\n"
    )
    bare, charted = fresh_cli_seconds(args.repeats, "--no-charts"), fresh_cli_seconds(args.repeats)
    print(
        f"whole `--static` run of {', '.join(MODELS)} in a fresh process: "
        f"{fmt(bare)} s with --no-charts, {fmt(charted)} s with the PNG charts\n"
    )
    print(
        f"{'model':<8} {'nin_profile':>18} {'torchinfo':>18} {'fvcore':>18} "
        f"{'torchinfo/ours':>15} {'fvcore/ours':>12}"
    )
    for name in MODELS:
        cfg = AnalysisConfig(batch=args.batch, device="cuda")
        ours = seconds(partial(analyse_model, name, cfg), args.repeats)
        model = get_model(name).eval()  # built once, outside the timings
        x = torch.randn(args.batch, 1, 224, 224)
        info = seconds(partial(summary, model, input_size=tuple(x.shape), verbose=0), args.repeats)
        flops = seconds(partial(fvcore_total, model, x), args.repeats)
        mine = statistics.median(ours)
        print(
            f"{name:<8} {fmt(ours):>18} {fmt(info):>18} {fmt(flops):>18} "
            f"{statistics.median(info) / mine:14.0f}× {statistics.median(flops) / mine:11.0f}×"
        )
        del model, x


if __name__ == "__main__":
    main()
