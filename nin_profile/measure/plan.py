"""How much to measure: batch and iterations within a time budget, and searches over batch size."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """What one measurement runs: the batch, warm-up and timed iterations, and why if shortened."""

    batch: int
    warmup: int
    iterations: int
    note: str | None = None
    time_limit_s: float | None = None


# What a CPU plan assumes a thread computes: the counted FLOPs of the default models' training
# steps ran at 45-78 GFLOP/s per thread on the project's 2-core machine at batch 4 (NiN 78,
# AlexNet 48, VGG-11 60; `make report` on an idle machine, 2026-11-27); a plan assumes 40. An
# assumption, not a measurement: it makes the same command pick the same batch on the same
# machine, whatever else the machine is doing.
CPU_PLANNING_FLOPS_PER_THREAD = 40e9
# How many times longer a CPU plan assumes a step takes in a precision than in float32: this
# CPU has no fp16 arithmetic (a training step of NiN and of AlexNet at batch 4 took 2.8-5.1×
# its float32 time in fp16 and AMP fp16, 0.1-1.6× in bf16 and AMP bf16; 2026-11-27). Also an
# assumption, for the same reason.
CPU_PLANNING_SLOWDOWN = {"amp-fp16": 4.0, "fp16": 4.0}
MIN_ROUNDS = 5  # timed rounds a CPU plan keeps, whatever the budget: a median and a spread
# Iterations each (model, phase) runs besides the timed rounds: warm-up, memory step and the
# step between ops in its memory worker, warm-up in the timing worker; inference also times
# each layer alone (one untimed and five timed runs of every layer: six forward passes).
_FIXED_ITERATIONS = {"train": 4, "inference": 4 + 6}
PHASE_SHARE = 0.5  # of the budget, for each phase's batch


@dataclass(frozen=True)
class CpuPlan:
    """How a CPU run measures: one batch per phase for every model, and how many interleaved
    timing rounds; `note` says why a batch is not the one asked for."""

    batches: Mapping[str, int]
    rounds: int
    time_limit_s: float | None = None
    note: str | None = None


def plan_cpu_run(
    batch: int,
    flops_at: Mapping[str, Callable[[int], int]],
    flops_per_s: float,
    budget_s: float,
    iterations: int,
) -> CpuPlan:
    """For each phase, the largest batch (halving from `batch`) at which every model's
    warm-up, memory step, `MIN_ROUNDS` timed rounds (and, for inference, the per-layer timing)
    fit `PHASE_SHARE` of `budget_s`, at `flops_per_s`; then as many rounds (up to
    `iterations`) as the whole budget holds. `flops_at[phase](b)`: the counted FLOPs of one
    iteration of every model of the run at batch b. A budget of 0 keeps `batch` and
    `iterations`."""
    if budget_s <= 0:
        return CpuPlan(dict.fromkeys(flops_at, batch), iterations)

    def seconds(phase: str, b: int) -> float:
        return flops_at[phase](b) / flops_per_s

    batches = {}
    for phase in flops_at:
        chosen = batch
        per_phase = _FIXED_ITERATIONS[phase] + MIN_ROUNDS
        while chosen > 1 and per_phase * seconds(phase, chosen) > PHASE_SHARE * budget_s:
            chosen //= 2
        batches[phase] = chosen
    fixed = sum(_FIXED_ITERATIONS[p] * seconds(p, b) for p, b in batches.items())
    per_round = sum(seconds(p, b) for p, b in batches.items())
    rounds = max(MIN_ROUNDS, min(iterations, int((budget_s - fixed) / max(per_round, 1e-9))))
    note = None
    if any(b != batch for b in batches.values()):
        shown = ", ".join(f"{p} at batch {b}" for p, b in batches.items())
        rate = f"{flops_per_s / 1e9:.0f} GFLOP/s"
        note = (
            f"measured on the CPU {shown}, not {batch}, every model alike: at {batch}, one "
            f"iteration of every model would take about "
            f"{sum(seconds(p, batch) for p in flops_at):.0f} s at "
            f"the {rate} the plan assumes, and {MIN_ROUNDS} timed rounds would not fit "
            f"--cpu-time-budget {budget_s:g} s"
        )
    return CpuPlan(batches, rounds, time_limit_s=budget_s, note=note)


def plan_cpu(
    batch: int,
    flops_at: Callable[[int], int],
    flops_per_s: float,
    budget_s: float,
    iterations: int,
) -> Plan:
    """One measurement in a process of its own (a sweep point): the largest batch (halving
    from `batch`) whose warm-up, memory run and at least one timed iteration fit `budget_s` at
    `flops_per_s`; then as many timed iterations as still fit."""

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
