"""Turn H100 allocator histories into test data for the caching-allocator simulation.

    python bench/extract_allocator_histories.py SNAPSHOT_DIR
        [--out tests/data/h100_allocator_histories.json]

SNAPSHOT_DIR holds the pickles `python bench/memory_snapshot.py record` wrote on a CUDA
machine ({model}-{phase}-{batch}.pickle; two warm-up steps, then the recorded one). Each is
`torch.cuda.memory._snapshot()`: 'segments' are what the allocator held at the end,
'device_traces'[0] the allocations and frees of the recorded step, in order. For each point the
JSON gets what `nin_profile.engine.allocator.steady_reserved` needs to replay the step (as
tests/test_allocator.py does) and the segments the H100 held after it:

- held: what the worker allocated before its first step and holds throughout (parameters,
  buffers, inputs, optimizer state): the blocks allocated at the end that the recorded step did
  not allocate, less the cuBLAS workspaces, in address order (the snapshot does not say in which
  order they were allocated). Checked against nin_profile's own trace for the CUDA rules at that
  batch, which has the same sizes except, in inference, the targets the worker keeps (`x, _ =
  make_batch(...)`) and the trace does not.
- step: the recorded step's allocations and frees, the snapshot's own.
- first_step: the cuBLAS workspaces (`DeviceRules.blas_workspace` / `blaslt_workspace`, one per
  thread that runs a matrix product, resp. `addmm`): the first step allocates them where that
  thread first calls cuBLAS, which the recorded (third) step cannot show, so they are placed by
  the same step's frames: after the first allocation of a `forward` frame (a linear layer's
  output) for the caller thread, after the first allocation of 1 MiB or more past
  `_make_grads` (a matrix product's output in backward) for the autograd thread.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from nin_profile.engine.allocator import round_size
from nin_profile.engine.analysis import (
    HELD_FROM_START,
    AnalysisConfig,
    TraceSetup,
    _loss,
    _trace_training,
    build_on_meta,
    model_config,
)
from nin_profile.engine.devices import DEVICE_RULES, workspace_size
from nin_profile.engine.layer_stack import LayerStack
from nin_profile.engine.memory import AllocationLog
from nin_profile.engine.tracing import StepTracer
from nin_profile.engine.training import make_batch
from nin_profile.results import MemoryCategory
from nin_profile.units import MiB

RULES = DEVICE_RULES["cuda"]
FORMAT = (
    "points: one per snapshot. held: bytes of each allocation made before the first step and "
    "held throughout (the snapshot's blocks the step did not allocate, less the workspaces, "
    "each its requested size rounded up to 512 B, in address order). step: the recorded step "
    "in order; n > 0 allocates n bytes (the k-th positive entry is allocation k, from 1), -k "
    "frees allocation k; sizes as requested (the allocator rounds them); what the step leaves "
    "allocated (the gradients) is freed as the next step starts. first_step: index in step -> "
    "bytes allocated just before that event in the first step only, and held from then on (the "
    "cuBLAS workspaces). measured_segments: sorted total_size of every segment the allocator "
    "held after the recorded step; measured_reserved: their sum."
)
SOURCE = (
    "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130: python bench/memory_snapshot.py record "
    "--models nin,alexnet,vgg11 --phases train,inference, batches 32 and 128 (warm-up 2, then "
    "the recorded step; PYTORCH_CUDA_ALLOC_CONF unset, as the snapshots' allocator_settings say)"
)


def snapshot_step(snapshot: dict[str, Any]) -> tuple[list[int], list[str], set[int]]:
    """The recorded step in the compact encoding, each event's innermost frame, and the
    addresses of the step's allocations still live at its end."""
    step: list[int] = []
    tops: list[str] = []
    live: dict[int, int] = {}  # address -> 1-based allocation index
    allocations = 0
    for event in snapshot["device_traces"][0]:
        action = event["action"]
        if action == "alloc":
            allocations += 1
            step.append(event["size"])
            live[event["addr"]] = allocations
        elif action == "free_requested":
            step.append(-live.pop(event["addr"]))
        elif action == "free_completed":
            continue
        else:  # segment_alloc, oom, ...: nothing the encoding can say
            raise ValueError(f"unexpected action {action!r}")
        tops.append((event.get("frames") or [{"name": ""}])[0]["name"])
    return step, tops, set(live)


def snapshot_held(snapshot: dict[str, Any], step_live: set[int]) -> list[int]:
    """The blocks allocated at the end that the recorded step did not allocate: what the
    worker allocated before its first step and the workspaces, in address order (a segment's
    blocks were carved in allocation order); each its request rounded as the allocator does
    (a block can be larger than that where a remainder of 1 MiB or less was not split off)."""
    return [
        round_size(block["requested_size"])
        for block in sorted(
            (b for seg in snapshot["segments"] for b in seg["blocks"]),
            key=lambda b: b["address"],
        )
        if block["state"] == "active_allocated" and block["address"] not in step_live
    ]


def traced_setup(model_name: str, phase: str, batch: int) -> tuple[list[int], list[str]]:
    """nin_profile's held allocations for the CUDA rules (in the order `analysis._reserved`
    replays them) and the threads x libraries that call cuBLAS, sorted."""
    cfg = AnalysisConfig(batch=batch, device="cuda")
    model = build_on_meta(model_name, model_config(cfg))
    if phase == "train":
        setup = TraceSetup.of(cfg)
        trace = _trace_training(model, cfg, _loss(model, cfg, model_name, setup), setup)
        held_cats = (*HELD_FROM_START, MemoryCategory.OPTIMIZER)  # the state: held after step 1
        held_keys = set().union(*(trace.owners.get(cat, set()) for cat in held_cats))
        held = [e.delta for e in trace.log.events if e.key in held_keys and e.delta > 0]
        return held, sorted(f"{t}:{lib}" for t, lib in trace.tracer.blas_users)
    model.eval()  # as analysis._trace_inference does
    x, _ = make_batch(cfg.batch, cfg.inputs, 1, "meta")
    log = AllocationLog(RULES.block_bytes)
    for tensors in (model.parameters(), model.buffers(), [x]):
        log.keys_of(tensors)
    held = [e.delta for e in log.events]
    tracer = StepTracer(LayerStack(model), log)
    with torch.no_grad(), tracer:
        model(x)
    log.close()
    return held, sorted(f"{t}:{lib}" for t, lib in tracer.blas_users)


def workspace_points(step: list[int], tops: list[str], users: list[str]) -> dict[str, list[int]]:
    """index in step -> the workspaces allocated just before it in the first step."""
    allocs = [i for i, n in enumerate(step) if n > 0]
    at: dict[str, int] = {}
    if any(u.startswith("caller:") for u in users):
        at["caller"] = next(i for i in allocs if tops[i] == "forward") + 1
    if any(u.startswith("autograd:") for u in users):
        start = next(i for i in allocs if tops[i] == "_make_grads")
        at["autograd"] = next(i for i in allocs if i > start and step[i] >= MiB) + 1
    first: dict[str, list[int]] = {}
    for thread, index in at.items():
        for user in users:
            if user.startswith(thread + ":"):
                size = workspace_size(RULES, user.split(":")[1])
                first.setdefault(str(index), []).append(size)
    return first


def point(path: Path) -> dict[str, Any]:
    model, phase, batch = path.stem.rsplit("-", 2)
    with path.open("rb") as f:
        snapshot = pickle.load(f)
    step, tops, step_live = snapshot_step(snapshot)
    traced, users = traced_setup(model, phase, int(batch))
    first_step = workspace_points(step, tops, users)
    held = snapshot_held(snapshot, step_live)
    for size in (s for sizes in first_step.values() for s in sizes):
        held.remove(size)  # ValueError: the snapshot does not hold the workspace
    if Counter(held) != Counter(traced):
        extra, missing = Counter(held) - Counter(traced), Counter(traced) - Counter(held)
        print(f"{path.stem}: held beyond nin_profile's trace {dict(extra)}, short {dict(missing)}")
    segments = sorted(seg["total_size"] for seg in snapshot["segments"])
    return {
        "model": model,
        "phase": phase,
        "batch": int(batch),
        "held": held,
        "step": step,
        "first_step": first_step,
        "measured_segments": segments,
        "measured_reserved": sum(segments),
    }


ORDER = {"nin": 0, "alexnet": 1, "vgg11": 2, "train": 0, "inference": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshots", type=Path)
    parser.add_argument(
        "--out", type=Path, default=Path("tests/data/h100_allocator_histories.json")
    )
    args = parser.parse_args()
    points = [point(p) for p in sorted(args.snapshots.glob("*-*-*.pickle"))]
    points.sort(key=lambda p: (ORDER.get(p["model"], 9), ORDER.get(p["phase"], 9), p["batch"]))
    command = "python bench/extract_allocator_histories.py " + " ".join(sys.argv[1:])
    # one point per line, no indentation: the step lists are long
    lines = ",\n".join(json.dumps(p, separators=(",", ":")) for p in points)
    header = {"format": FORMAT, "source": SOURCE, "extracted_with": command}
    text = json.dumps(header, indent=1)[:-2] + ',\n "points": [\n' + lines + "\n ]\n}\n"
    json.loads(text)  # well-formed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"{args.out}: {len(points)} points, {len(text):,} bytes")


if __name__ == "__main__":
    main()
