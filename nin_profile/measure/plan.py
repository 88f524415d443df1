"""How much to measure: batch and iterations within a time budget, and searches over batch size."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """What one measurement runs: the batch, warm-up and timed iterations, and why if shortened."""

    batch: int
    warmup: int
    iterations: int
    note: str | None = None
    time_limit_s: float | None = None


def cpu_flops_per_second(repeats: int = 3) -> float:
    """Counted FLOPs per second of a small NiN training step on this CPU (a planning figure)."""
    import torch

    from nin_profile.analysis import AnalysisConfig, analyse_model
    from nin_profile.models import get_model

    batch, side = 4, 96
    flops = analyse_model("nin", AnalysisConfig(batch=batch, image_size=side, device="cpu"))
    torch.manual_seed(0)
    model = get_model("nin", image_size=side)
    x, y = torch.randn(batch, 1, side, side), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(repeats + 1):  # the first pays for one-time setup
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - start)
    return flops.flops_train_step / min(times[1:])


def plan_cpu(
    batch: int,
    flops_at: Callable[[int], int],
    flops_per_s: float,
    budget_s: float,
    iterations: int,
) -> Plan:
    """The largest batch (halving from `batch`) whose warm-up, memory run and at least one timed
    iteration fit `budget_s` at `flops_per_s`; then as many timed iterations as still fit."""

    def seconds(b: int) -> float:
        return flops_at(b) / flops_per_s

    chosen = batch
    while chosen > 1 and 3 * seconds(chosen) > budget_s:
        chosen //= 2
    fitting = int(budget_s / max(seconds(chosen), 1e-9)) - 2
    note = None
    if chosen < batch:
        note = (
            f"measured at batch {chosen}, not {batch}: at {batch} one step could take up to "
            f"{seconds(batch):.0f} s on this CPU, over the {budget_s:.0f} s this measurement "
            "has of --cpu-time-budget"
        )
    iterations = max(1, min(iterations, fitting))
    return Plan(chosen, warmup=1, iterations=iterations, note=note, time_limit_s=budget_s)


def largest_fitting(
    fits: Callable[[int], bool],
    guess: int,
    ceiling: int = 2**24,
    precision: float = 0.0,
    first_step: float = 1.0,
) -> tuple[int, int | None]:
    """(largest batch known to fit, smallest known not to fit) for a monotone `fits`.

    Brackets the boundary by stepping from `guess`, the first step `first_step` × guess and
    each further step in the same direction twice the last (up to doubling the batch), then
    bisects until the bracket is within `precision` of the answer (0: exact). A good guess
    wants a small first step: a prediction within 2% of the truth is bracketed in two runs.
    (0, 1) when batch 1 fails.
    """
    guess = max(1, min(guess, ceiling))
    step = first_step
    if fits(guess):
        fit, fail = guess, None
        while fail is None and fit < ceiling:
            candidate = min(max(fit + 1, int(fit * (1 + step))), ceiling)
            if fits(candidate):
                fit, step = candidate, min(2 * step, 1.0)
            else:
                fail = candidate
        if fail is None:
            return fit, None
    else:
        fit, fail = 0, guess
        while fit == 0 and fail > 1:
            candidate = max(1, min(fail - 1, int(fail / (1 + step))))
            if fits(candidate):
                fit = candidate
            else:
                fail, step = candidate, min(2 * step, 1.0)
        if fit == 0:
            return 0, 1
    while fail - fit > max(1, int(fit * precision)):
        middle = (fit + fail) // 2
        if fits(middle):
            fit = middle
        else:
            fail = middle
    return fit, fail


def parse_bytes(text: str) -> int:
    """'6GiB', '6000MiB', '512 KiB', '6e9B', '6GB' (decimal) → bytes; a bare number is refused
    (6 bytes or 6 GiB? the user must say)."""
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "b": 1,
    }
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number) :]
    if not unit and _is_number(number):
        raise ValueError(f"give a unit: {number}GiB, {number}MiB, {number}GB or {number}B")
    if not unit:
        raise ValueError(f"{text!r} is not a size such as 6GiB or 512MiB")
    if unit not in units:
        raise ValueError(f"unknown unit in {text!r}; use B, KiB, MiB, GiB (or kB, MB, GB)")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 6GiB or 512MiB") from None
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return int(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
