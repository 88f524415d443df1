"""Run a worker process per measurement and turn what it says into a PhaseMeasurement."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from nin_profile.measure.worker import Request
from nin_profile.results import (
    Ceilings,
    MeasuredMemory,
    MemoryBreakdown,
    PhaseMeasurement,
    Timing,
)
from nin_profile.units import fmt_bytes

ProgressCallback = Callable[[str, int, int], None]


def _ignore(stage: str, done: int, total: int) -> None:
    pass


def run_worker(
    request: Request, on_progress: ProgressCallback = _ignore, timeout_s: float | None = None
) -> dict[str, Any]:
    """The worker's result, or an error result saying how the process ended without one."""
    command = [sys.executable, "-m", "nin_profile.measure.worker", json.dumps(asdict(request))]
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
        if timer:
            timer.start()
        result: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                message = _parse(line)
                if "progress" in message:
                    p = message["progress"]
                    on_progress(p["stage"], p["done"], p["total"])
                elif "result" in message:
                    result = message["result"]
            returncode = proc.wait()
        finally:
            if timer:
                timer.cancel()
        if result is not None:
            return result
        stderr.seek(0)
        return {
            "error": {
                "kind": "crashed",
                "message": _crash_message(returncode, stderr.read(), timeout_s),
            }
        }


def _parse(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return {}  # a library printed something on stdout: not ours
    return message if isinstance(message, dict) else {}


def _crash_message(returncode: int, stderr: str, timeout_s: float | None) -> str:
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
    if returncode == -9 and timeout_s:
        return f"killed after the {timeout_s:.0f} s time limit"
    if returncode < 0:
        return f"the process ended on signal {-returncode} ({last[0]})"
    return f"the process exited with code {returncode} without a result ({last[0]})"


def to_measurement(
    raw: dict[str, Any],
    request: Request,
    flops_per_iter: int | None = None,
    predicted: MemoryBreakdown | None = None,
    notes: tuple[str, ...] = (),
) -> PhaseMeasurement:
    """A worker's raw result as a PhaseMeasurement, with achieved TFLOP/s from counted FLOPs."""
    name = raw.get("device_name", request.device)
    total = raw.get("total_memory")
    error = raw.get("error")
    timing = Timing(**raw["timing"]) if raw.get("timing") else None
    if timing and flops_per_iter:
        timing = Timing(
            **{**asdict(timing), "tflops": flops_per_iter / (timing.ms_per_iter / 1e3) / 1e12}
        )
    return PhaseMeasurement(
        phase=request.phase,
        batch=request.batch,
        device_name=name,
        total_memory=total,
        memory=MeasuredMemory(**raw["memory"]) if raw.get("memory") else None,
        timing=timing,
        predicted=predicted,
        layer_deltas=raw.get("layer_deltas", {}),
        layer_ms=raw.get("layer_ms", {}),
        ceilings=Ceilings(**raw["ceilings"]) if raw.get("ceilings") else None,
        notes=(*notes, *raw.get("notes", ())),
        error=_error_text(error, request, name, total) if error else None,
    )


def _error_text(error: dict[str, str], request: Request, device: str, total: int | None) -> str:
    where = f"{device}, {fmt_bytes(total)}" if total else device
    if error["kind"] == "out_of_memory":
        return f"out of memory at batch {request.batch} on {where}"
    if error["kind"] == "crashed":
        return f"crashed at batch {request.batch} on {where}: {error['message']}"
    return f"failed at batch {request.batch} on {where}: {error['message']}"
