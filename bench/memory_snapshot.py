"""What the CUDA caching allocator really held at a step's peak, beside the estimate.

    python bench/memory_snapshot.py record [--models nin,alexnet,vgg11] [--batches 32]
                                           [--phases train,inference] [--out DIR]
    python bench/memory_snapshot.py explain DIR/nin-train-32.pickle [--top 15]

`record` (on a CUDA machine) measures each point in a worker process, as the report does, with
the allocator's history of the measured step recorded (`torch.cuda.memory._record_memory_history`)
and written as a snapshot that https://pytorch.org/memory_viz also opens; it prints the estimated
and measured peaks. `explain` (anywhere) replays a snapshot's allocations and frees and lists
the blocks alive at the peak, largest first, with the Python line that allocated each: where the
estimate and the measurement part, this says which allocation the estimate did not see.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

from nin_profile.units import MiB


def record(args: argparse.Namespace) -> None:
    from nin_profile.engine.analysis import AnalysisConfig, analyse_model
    from nin_profile.measure.runner import run_worker, to_measurement
    from nin_profile.measure.worker import Request

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| point | estimated MiB | measured MiB | baseline MiB | err |")
    print("|---|---:|---:|---:|---:|")
    for model in args.models.split(","):
        for phase in args.phases.split(","):
            for batch in map(int, args.batches.split(",")):
                path = out / f"{model}-{phase}-{batch}.pickle"
                static = analyse_model(model, AnalysisConfig(batch=batch, device="cuda"))
                estimate = (static.train if phase == "train" else static.inference).peak
                request = Request(
                    model=model,
                    phase=phase,
                    batch=batch,
                    device="cuda",
                    warmup=2,
                    iterations=1,
                    per_layer=False,
                    memory_history=str(path),
                )
                m = to_measurement(run_worker(request, timeout_s=300), request).memory
                if m is None:
                    print(f"| {path.stem} | {estimate / MiB:,.2f} | failed | | |")
                    continue
                err = 100 * (estimate - m.peak_allocated) / m.peak_allocated
                print(
                    f"| {path.stem} | {estimate / MiB:,.2f} | {m.peak_allocated / MiB:,.2f} | "
                    f"{m.baseline_allocated / MiB:,.2f} | {err:+.2f}% |",
                    flush=True,
                )


def _site(frames: list[dict[str, Any]]) -> str:
    """The innermost frame outside torch's own files, else the innermost frame."""
    ours = [f for f in frames if "/torch/" not in f["filename"]]
    f = (ours or frames or [{"filename": "?", "line": 0, "name": "?"}])[0]
    inner = frames[0]["name"] if frames else "?"
    return f"{Path(f['filename']).name}:{f['line']} {f['name']} (in {inner})"


def explain(args: argparse.Namespace) -> None:
    with open(args.snapshot, "rb") as f:
        snapshot = pickle.load(f)
    trace = next(t for t in snapshot["device_traces"] if t)
    live: dict[int, dict[str, Any]] = {}
    held = peak = 0
    at_peak: dict[int, dict[str, Any]] = {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            held += event["size"]
        elif event["action"] == "free_requested" and event["addr"] in live:
            held -= live.pop(event["addr"])["size"]
        if held > peak:
            peak, at_peak = held, dict(live)
    events = len(trace)
    print(f"{args.snapshot}: peak {peak / MiB:,.2f} MiB above the step's start, {events} events")
    blocks = sorted(at_peak.values(), key=lambda e: -e["size"])
    for e in blocks[: args.top]:
        print(f"  {e['size'] / MiB:10,.3f} MiB  {_site(e.get('frames', []))}")
    rest = sum(e["size"] for e in blocks[args.top :])
    print(f"  {rest / MiB:10,.3f} MiB  in {max(0, len(blocks) - args.top)} smaller blocks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    rec = verbs.add_parser("record")
    rec.add_argument("--models", default="nin,alexnet,vgg11")
    rec.add_argument("--phases", default="train,inference")
    rec.add_argument("--batches", default="32")
    rec.add_argument("--out", default="snapshots")
    exp = verbs.add_parser("explain")
    exp.add_argument("snapshot")
    exp.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.verb == "record":
        record(args)
    else:
        explain(args)


if __name__ == "__main__":
    main()
