"""cuDNN's RNN on a real GPU: the reserve it keeps for backward, the scratch it takes in a call.

    python bench/cuda_kernels.py [--out DIR] [--device cuda|cpu]

PyTorch cannot size cuDNN's reserve without a GPU (its meta kernel for `_cudnn_rnn` returns an
empty one: "TODO: Query cudnnGetRNNTrainingReserveSize"), so nin_profile's CUDA trace keeps the
composite cell for LSTM and GRU and says the reserve is not predicted
(nin_profile/engine/kernels.py).
This records what a formula would need, over a grid: LSTM and GRU, one and two layers, one and
two directions, steps, batch, input and hidden sizes, float32 and float16. For each, the
reserve `aten._cudnn_rnn` returns, the bytes it allocates and frees inside the call (cuDNN's
workspace), and the reserve over L·D·T·N·H·itemsize (layers, directions, steps, batch, hidden,
bytes per element), the unit such a formula is written in. Then the zoo's LSTM and GRU
classifiers (tests/zoo_models.py): what autograd saves in a real step against today's estimate.
Writes rnn_kernels.csv under --out and prints both tables.

`--device cpu` runs the same grid, float32 LSTM only, on oneDNN's `mkldnn_rnn_layer` (its
workspace, one call per layer and direction; no scratch figure), where the estimate is exact:
it checks this script where no GPU is. Not yet run on a GPU (written 2026-11-27).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import zoo_models
from test_memory import step_saved_bytes

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.training import make_batch

aten = torch.ops.aten
# the fused RNN kernel of each device, and the index of what it keeps for backward in its outputs
KERNELS = {"cuda": (aten._cudnn_rnn.default, 3), "cpu": (aten.mkldnn_rnn_layer.default, 3)}
MODES = {"LSTM": nn.LSTM, "GRU": nn.GRU}


@dataclass(frozen=True)
class Shape:
    mode: str  # "LSTM" or "GRU"
    layers: int
    directions: int
    steps: int
    batch: int
    input_size: int
    hidden: int
    dtype: str  # "float32" or "float16"

    @property
    def unit(self) -> int:
        """L·D·T·N·H·itemsize: bytes of one hidden state per layer, direction, step, example."""
        itemsize = getattr(torch, self.dtype).itemsize
        return self.layers * self.directions * self.steps * self.batch * self.hidden * itemsize


@dataclass(frozen=True)
class Row(Shape):
    calls: int  # fused kernel calls in the forward
    reserve: int  # bytes the calls return for backward, summed
    scratch: int | None  # CUDA: bytes allocated and freed inside the calls, the largest

    @property
    def per_unit(self) -> float:
        return self.reserve / self.unit


class FusedRnnCalls(TorchDispatchMode):
    """Records what each call of `device`'s fused RNN kernel returns for backward and, on CUDA,
    what it allocates beyond its outputs while it runs."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.kernel, self.kept = KERNELS[device]
        self.cuda = device == "cuda"
        self.reserves: list[int] = []
        self.scratches: list[int] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is not self.kernel:
            return func(*args, **(kwargs or {}))
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        out = func(*args, **(kwargs or {}))
        self.reserves.append(out[self.kept].untyped_storage().nbytes())
        if self.cuda:
            after = torch.cuda.memory_allocated()  # the outputs held
            self.scratches.append(torch.cuda.max_memory_allocated() - after)
        return out


def record(shape: Shape, device: str) -> Row:
    """One training-mode forward of an `nn.LSTM`/`nn.GRU` of `shape` on `device`."""
    dtype = getattr(torch, shape.dtype)
    rnn = MODES[shape.mode](
        shape.input_size, shape.hidden, shape.layers, bidirectional=shape.directions == 2
    ).to(device, dtype)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, device=device, dtype=dtype)
    x.requires_grad_()
    with FusedRnnCalls(device) as calls:
        rnn.train()(x)
    return Row(
        **asdict(shape),
        calls=len(calls.reserves),
        reserve=sum(calls.reserves),
        scratch=max(calls.scratches) if calls.scratches else None,
    )


def grid(device: str) -> list[Shape]:
    modes, dtypes = (
        (("LSTM", "GRU"), ("float32", "float16"))
        if device == "cuda"
        else (
            ("LSTM",),
            ("float32",),
        )
    )
    sizes = itertools.product(
        modes, (1, 2), (1, 2), (1, 10, 100), (1, 8, 64), (32, 100), (32, 100, 256), dtypes
    )
    return [Shape(*values) for values in sizes]


def zoo_saved(name: str, device: str, batch: int) -> tuple[int, int]:
    """(estimated, real) bytes autograd saves in a training step of the zoo's `name`."""
    cfg = AnalysisConfig(
        batch=batch,
        inputs=zoo_models.INPUTS,
        device=device,
    )
    estimated = analyse_model(f"zoo_models:{name}", cfg).activation_bytes_saved
    torch.manual_seed(0)
    model = getattr(zoo_models, name)().to(device)
    x, y = make_batch(batch, zoo_models.INPUTS, zoo_models.CLASSES, device)
    return estimated, step_saved_bytes(model, x, y, zoo_models.CLASSES)


def write_csv(rows: list[Row], path: Path) -> None:
    names = [f.name for f in fields(Row)] + ["unit", "per_unit"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in rows:
            writer.writerow([getattr(row, name) for name in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-out"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch", type=int, default=512, help="of the zoo's classifiers")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/cuda_kernels.py: no CUDA device here (--device cpu checks the script)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [record(shape, args.device) for shape in grid(args.device)]
    write_csv(rows, args.out / "rnn_kernels.csv")
    print(f"{len(rows)} shapes on {args.device} → {args.out / 'rnn_kernels.csv'}")
    print("mode  L D    T   N   I   H dtype    calls    reserve B  scratch B  reserve/unit")
    for r in rows:
        scratch = "" if r.scratch is None else f"{r.scratch:,}"
        print(
            f"{r.mode:5} {r.layers} {r.directions} {r.steps:4} {r.batch:3} {r.input_size:3} "
            f"{r.hidden:3} {r.dtype:8} {r.calls:5} {r.reserve:12,} {scratch:>10} "
            f"{r.per_unit:8.3f}"
        )
    print(f"zoo classifiers at batch {args.batch}, saved for backward (estimated vs real):")
    for name in ("lstm", "gru"):
        estimated, real = zoo_saved(name, args.device, args.batch)
        print(f"  {name}: {estimated:,} vs {real:,} B ({100 * (estimated - real) / real:+.1f}%)")


if __name__ == "__main__":
    main()
