"""Predicted against measured memory, side by side in one run.

    python bench/memory_accuracy.py [--device cuda|cpu] [--batches 1,32,128,256]
                                    [--models nin,alexnet,vgg11] [--csv FILE]
    python bench/memory_accuracy.py --from-profile DIR/profile.json [--re-estimate] [--csv FILE]

The second form measures nothing: it reads a run's sweep (`python -m nin_profile
--sweep-batch ...`), or its measurements at --batch where it has no sweep; each point there is
the estimate and a measurement in a worker process of its own, as here. With --re-estimate,
the estimates are made again here, by this nin_profile, for each point's configuration (an
estimate needs no GPU): today's estimate against the recorded measurement.

For each model × {train, inference} × batch: the estimate (static analysis on meta tensors,
for this device's rules) and the measurement (a worker process per point), with the relative
error of the estimate: (estimated − measured) / measured. Targets: |error| ≤ 2% on peak
allocated, ≤ 5% on NVML's process figure.

On CUDA the estimate includes what the caching allocator reserves (`res`: allocator.py
replays its rules over the traced step). The NVML estimate is the estimated reserve (else the
estimated peak allocated) plus the CUDA context, which is measured, not estimated: nothing on
the CPU can know it. The columns after the errors say how large each
term the estimate cannot see was at that point:
  between   (CUDA) the measured peak between ops, without what kernels allocate and free inside
            one op, beside the estimate's (what it holds between ops: a composite op's parts
            are one op in inference) and its error: what a trace of tensors can predict
  scratch   peak allocated − peak between ops: kernel scratch at the peak (cuDNN workspace)
  context   NVML's figure for the process right after the CUDA context was made
  libs      NVML process − peak reserved − context: kernels and library state loaded later
  reserve   peak reserved − peak allocated: the caching allocator's unused blocks
  base      measured − estimated memory when the step began (the allocator's rounding)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.measure.runner import run_worker, to_measurement
from nin_profile.measure.worker import Request
from nin_profile.results import MemoryBreakdown, MemoryCategory, PhaseMeasurement, Profile
from nin_profile.run import analysis_config
from nin_profile.units import MiB


@dataclass(frozen=True)
class Row:
    model: str
    phase: str
    batch: int
    estimated: int
    measured: PhaseMeasurement
    estimated_baseline: int
    estimated_reserved: int | None
    estimated_between: int  # the estimate's peak between the device's ops

    def cells(self) -> dict[str, str]:
        m = self.measured.memory
        if m is None:
            return {"error": self.measured.error or "no figure"}
        held = self.estimated_reserved or self.estimated
        nvml_est = held + m.cuda_context if m.cuda_context is not None else None
        libs = None
        if m.nvml_process is not None and m.peak_reserved is not None and m.cuda_context:
            libs = m.nvml_process - m.peak_reserved - m.cuda_context
        between = m.peak_between_ops
        return {
            "est MiB": mib(self.estimated),
            "meas MiB": mib(m.peak_allocated),
            "err": error(self.estimated, m.peak_allocated),
            "between MiB": mib(between),
            "est between": mib(self.estimated_between),
            "err between": error(self.estimated_between, between),
            "scratch": mib(m.peak_allocated - between if between is not None else None),
            "res est": mib(self.estimated_reserved),
            "res meas": mib(m.peak_reserved),
            "res err": error(self.estimated_reserved, m.peak_reserved),
            "NVML est": mib(nvml_est),
            "NVML meas": mib(m.nvml_process),
            "NVML err": error(nvml_est, m.nvml_process),
            "context": mib(m.cuda_context),
            "libs": mib(libs),
            "reserve": mib(m.peak_reserved - m.peak_allocated if m.peak_reserved else None),
            "base": mib(m.baseline_allocated - self.estimated_baseline),
        }


def mib(n: int | None) -> str:
    return "–" if n is None else f"{n / MiB:,.1f}"


def error(estimated: int | None, measured: int | None) -> str:
    if estimated is None or not measured:
        return "–"
    return f"{100 * (estimated - measured) / measured:+.2f}%"


def estimated_baseline(breakdown: MemoryBreakdown, phase: str) -> int:
    """What the estimate holds when the step begins: parameters, buffers, library workspaces,
    input, optimizer state."""
    held = [
        MemoryCategory.PARAMS,
        MemoryCategory.BUFFERS,
        MemoryCategory.WORKSPACE,
        MemoryCategory.INPUT,
    ]
    if phase == "train":
        held.append(MemoryCategory.OPTIMIZER)
    return sum(breakdown[c] for c in held)


def measure_point(model: str, phase: str, batch: int, device: str, optimizer: str) -> Row:
    static = analyse_model(model, AnalysisConfig(batch=batch, device=device, optimizer=optimizer))
    breakdown = static.train if phase == "train" else static.inference
    request = Request(
        model=model,
        phase=phase,
        batch=batch,
        device=device,
        optimizer=optimizer,
        warmup=2,
        iterations=3,
        per_layer=False,
    )
    return row(
        model, to_measurement(run_worker(request, timeout_s=600), request, predicted=breakdown)
    )


def row(model: str, measured: PhaseMeasurement, estimate: MemoryBreakdown | None = None) -> Row:
    """One point of the table: a measurement with the estimate at its batch beside it (the one
    recorded with it unless `estimate` is given)."""
    estimate = estimate or measured.predicted
    assert estimate is not None
    return Row(
        model,
        measured.phase,
        measured.batch,
        estimate.peak,
        measured,
        estimated_baseline(estimate, measured.phase),
        estimate.reserved,
        estimate.peak_between_ops,
    )


def rows_from_profile(path: str, re_estimate: bool) -> tuple[list[Row], str]:
    """The table's rows from a saved run's sweep (its measurements at --batch where it has no
    sweep), and a line naming what measured them."""
    profile = Profile.from_dict(json.loads(Path(path).read_text()))
    rows = []
    for m in profile.models:
        points = m.sweep or tuple(m.measured.values())
        for pm in sorted(points, key=lambda pm: (pm.phase != "train", pm.batch)):
            if pm.predicted is None or (pm.memory is None and not pm.error):
                continue
            estimate = None
            if re_estimate:
                static = analyse_model(m.name, analysis_config(profile.config, pm.batch))
                estimate = static.train if pm.phase == "train" else static.inference
            rows.append(row(m.name, pm, estimate))
    env = profile.environment
    return rows, f"torch {env.torch}, optimizer {profile.config.optimizer}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="nin,alexnet,vgg11")
    parser.add_argument("--batches", default="1,32,128,256")
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--from-profile", help="read the points from this run's sweep instead")
    parser.add_argument(
        "--re-estimate",
        action="store_true",
        help="with --from-profile: make the estimates again here instead of reading them",
    )
    args = parser.parse_args()
    rows: list[Row] = []
    setting = f"torch {torch.__version__}, optimizer {args.optimizer}"
    if args.from_profile:
        rows, setting = rows_from_profile(args.from_profile, args.re_estimate)
    else:
        for model in args.models.split(","):
            for phase in ("train", "inference"):
                for batch in map(int, args.batches.split(",")):
                    print(f"measuring {model} {phase} batch {batch} …", file=sys.stderr, flush=True)
                    rows.append(measure_point(model, phase, batch, args.device, args.optimizer))
    name = rows[0].measured.device_name if rows else args.device
    print(f"\nPredicted vs measured peak memory on {name}, {setting}; err = (est − meas) / meas\n")
    columns = [
        "model",
        "phase",
        "batch",
        *next((list(r.cells()) for r in rows if "error" not in r.cells()), ["error"]),
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if c in ("model", "phase") else "---:" for c in columns) + "|")
    table = []
    for r in rows:
        cells = {"model": r.model, "phase": r.phase, "batch": str(r.batch), **r.cells()}
        table.append(cells)
        print("| " + " | ".join(cells.get(c, cells.get("error", "–")) for c in columns) + " |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*columns, "error"], restval="")
            writer.writeheader()
            writer.writerows(table)


if __name__ == "__main__":
    main()
