"""Run a worker process per measurement and turn what it says into a PhaseMeasurement."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from nin_profile.measure.worker import SYS_PATH, Request, TimingRequest

if TYPE_CHECKING:
    from nin_profile.measure.ranks import RankRequest
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


class _Worker:
    """A worker process and the file its stderr goes to. Started with `--stdin`, it imports
    torch and the models, then waits for one request line: it touches no device before."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in discard)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nin_profile.measure.worker", "--stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def usable(self) -> bool:
        """Still waiting, and started under the environment a new worker would get now."""
        return self.proc.poll() is None and self.env == dict(os.environ)

    def send(self, request: Request | TimingRequest | RankRequest) -> None:
        assert self.proc.stdin is not None
        try:
            # the folders this process imports from (a notebook's sys.path.insert included):
            # the worker imports the user's model from them too
            payload = {**asdict(request), SYS_PATH: sys.path}
            self.proc.stdin.write(json.dumps(payload) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died while starting: the result says how it ended

    def discard(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            if stream is not None:
                stream.close()


_spare: list[_Worker] = []  # at most one, started ahead of the next request


def _discard_spare() -> None:
    while _spare:
        _spare.pop().discard()


atexit.register(_discard_spare)


def _take_worker() -> _Worker:
    """The worker started ahead, if it can serve a request now; else a new one."""
    spare = _spare.pop() if _spare else None
    if spare is not None and spare.usable():
        return spare
    if spare is not None:
        spare.discard()
    return _Worker()


def run_worker(
    request: Request | TimingRequest | RankRequest,
    on_progress: ProgressCallback = _ignore,
    timeout_s: float | None = None,
    start_next: bool | None = None,
) -> dict[str, Any]:
    """The worker's result, or an error result saying how the process ended without one.

    Each request gets a process of its own. With `start_next` (default: on CUDA, where the
    host's cores are idle while the GPU works) the process for the next request is started as
    soon as this one has its request, so that importing torch, seconds of a short measurement,
    overlaps the measurement instead of preceding it; on the CPU it would compete for the cores
    being timed.
    """
    worker = _take_worker()
    worker.send(request)
    device = request.entries[0].device if isinstance(request, TimingRequest) else request.device
    if device == "cuda" if start_next is None else start_next:
        _spare.append(_Worker())
    try:
        result, returncode = _collect(worker, on_progress, timeout_s)
        if result is not None:
            return result
        worker.stderr.seek(0)
        message = _crash_message(returncode, worker.stderr.read(), timeout_s)
        return {"error": {"kind": "crashed", "message": message}}
    finally:
        worker.discard()


def _collect(
    worker: _Worker, on_progress: ProgressCallback, timeout_s: float | None
) -> tuple[dict[str, Any] | None, int]:
    """Read the worker's messages until it exits (killed at `timeout_s`): (result, exit code)."""
    proc = worker.proc
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
        return result, proc.wait()
    finally:
        if timer:
            timer.cancel()


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


def timing_of(raw: dict[str, Any] | None, flops_per_iter: int | None) -> Timing | None:
    """A worker's timing, with the achieved TFLOP/s of `flops_per_iter` counted FLOPs."""
    if not raw:
        return None
    timing = Timing(**raw)
    if flops_per_iter:
        tflops = flops_per_iter / (timing.ms_per_iter / 1e3) / 1e12
        timing = Timing(**{**asdict(timing), "tflops": tflops})
    return timing


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
    timing = timing_of(raw.get("timing"), flops_per_iter)
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
