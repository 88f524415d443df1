"""A run's per-rank figures (--parallel ddp|fsdp): rank 0 predicted at each world size (and the
largest per-rank batch for --memory-budget), and, unless --static, real ranks measured beside
one process at the same batch where this machine has a core (or a GPU) for each."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from nin_profile.engine.parallel import Parallel, analyse_rank, rank_train_peak
from nin_profile.errors import ProfileError
from nin_profile.measure.plan import largest_fitting
from nin_profile.measure.ranks import RankRequest, backend, default_threads
from nin_profile.measure.runner import run_worker
from nin_profile.parallel_results import (
    ParallelProfile,
    RankCheck,
    RankMeasurement,
    RankProfile,
)
from nin_profile.results import BatchFit, ModelProfile, RunConfig
from nin_profile.run import ProgressEvent, Run, _context, analysis_config
from nin_profile.units import fmt_bytes

T = TypeVar("T")


def parallel_of(config: RunConfig, world_size: int) -> Parallel:
    return Parallel(
        strategy=config.parallel,
        world_size=world_size,
        bucket_cap_mb=config.bucket_cap_mb,
        gradient_as_bucket_view=config.gradient_as_bucket_view,
        reshard_after_forward=config.reshard_after_forward,
        param_dtype=config.fsdp_param_dtype,
        reduce_dtype=config.fsdp_reduce_dtype,
    )


def rank_points(run: Run, static: ModelProfile) -> tuple[RankProfile, ...]:
    """Rank 0 predicted at every world size of the run (and its --memory-budget fit)."""
    return tuple(_point(run, static, size) for size in run.config.world_sizes)


def parallel_profile(
    run: Run, profile: ModelProfile, points: tuple[RankProfile, ...]
) -> ParallelProfile:
    """The predicted `points`; unless --static, real ranks measured beside at the one world
    size (check_real_ranks refused any other run)."""
    c = run.config
    checks = () if c.static else tuple(_check(run, profile, size) for size in c.world_sizes)
    return ParallelProfile(c.parallel, points, checks)


def check_real_ranks(world_sizes: Sequence[int], device: str) -> None:
    """One line, before any work, where a measured run cannot start its ranks: several
    world sizes (each would be a run of its own), or more ranks than this machine has cores
    (or GPUs) for."""
    listed = ",".join(map(str, world_sizes))
    if len(world_sizes) > 1:
        raise ProfileError(
            f"--world-size {listed} with a measured run: real ranks are started for one world "
            "size; predict several with --static, or measure one (--world-size 2)"
        )
    (size,) = world_sizes
    room = real_ranks(device)
    unit = "GPU" if device == "cuda" else "core"
    if size > room:
        raise ProfileError(
            f"--world-size {size} with a measured run needs a {unit} for each rank and this "
            f"machine has {room}: measure at most {room} ranks, or predict {size} with --static"
        )


def real_ranks(device: str) -> int:
    """How many ranks this machine runs at once: a GPU each, or a core each."""
    if device == "cuda":
        import torch

        return torch.cuda.device_count()
    return os.cpu_count() or 1


def rank_profile(
    run: Run, name: str, batch: int, world_size: int, classes: int | None
) -> RankProfile:
    """Rank 0 at `world_size` with `batch` examples a rank; one line on a failure."""
    c = run.config
    return _explained(
        name,
        world_size,
        c.parallel,
        lambda: analyse_rank(name, analysis_config(c, batch), parallel_of(c, world_size), classes),
    )


def _explained(name: str, world_size: int, strategy: str, work: Callable[[], T]) -> T:
    where = f"{name} under {strategy.upper()} at world size {world_size}"
    try:
        return work()
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc}") from exc
    except Exception as exc:  # a model PyTorch's wrappers refuse, or one they break
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ProfileError(f"{where}: {type(exc).__name__}: {first}") from exc


def _point(run: Run, profile: ModelProfile, world_size: int) -> RankProfile:
    c = run.config
    run.on_progress(
        ProgressEvent(f"{profile.name} · {c.parallel} · {world_size} ranks", "per rank", 0, 1)
    )
    point = rank_profile(run, profile.name, c.batch, world_size, profile.classes)
    if c.memory_budget:
        point = replace(point, fits=(_fit(run, profile, point, c.memory_budget),))
    return point


def _fit(run: Run, profile: ModelProfile, point: RankProfile, budget: int) -> BatchFit:
    """The largest per-rank batch whose predicted training step fits `budget`: on a GPU, the
    caching allocator simulated within `budget` less the CUDA context (as for one process);
    on the CPU, the peak. A search over traced steps, from where the peak (nearly affine in
    the batch) would reach it."""
    c = run.config
    context, source = _context(run) if c.device == "cuda" else (0, "")
    within = budget - context
    parallel = parallel_of(c, point.world_size)

    def needs(batch: int) -> int:
        cfg = analysis_config(c, batch, memory_limit=within if c.device == "cuda" else None)
        return _explained(
            profile.name,
            point.world_size,
            c.parallel,
            lambda: rank_train_peak(profile.name, cfg, parallel, profile.classes),
        )

    at_one = needs(1)
    at_batch = point.train.peak if point.train.reserved is None else point.train.reserved
    per_example = max(1.0, (at_batch - at_one) / max(1, c.batch - 1))
    guess = max(1, int((within - at_one) / per_example) + 1)
    # nearly affine in the batch: the guess is checked with its neighbour first, then steps
    # of 2, 4, 8... examples
    batch, _ = largest_fitting(lambda b: needs(b) <= within, guess, first_step=1 / guess)
    how = f"predicted: the largest whose training step on rank 0 fits in {fmt_bytes(budget)}"
    if c.device == "cuda":
        how += (
            f" less a CUDA context of {fmt_bytes(context)} ({source}), the caching allocator "
            "simulated as for one process; NCCL's own buffers are not counted"
        )
    return BatchFit("train", batch or None, budget, how)


def _check(run: Run, profile: ModelProfile, world_size: int) -> RankCheck:
    """Real ranks at the batch the training step was measured at, beside one process
    measured the same way (same batch, same threads) and both predictions at that batch."""
    c = run.config
    measured = profile.measured.get("train")
    batch = measured.batch if measured else c.batch
    threads = default_threads(world_size) if c.device == "cpu" else 1
    predicted_rank = rank_profile(run, profile.name, batch, world_size, profile.classes)
    request = RankRequest(
        model=run.worker_model(profile.name),
        strategy=c.parallel,
        world_size=world_size,
        batch=batch,
        device=c.device,
        input_shape=c.inputs.shape,
        token_ids=c.inputs.token_ids,
        batch_dim=c.inputs.batch_dim,
        classes=run.classes.get(profile.name, c.classes),
        optimizer=c.optimizer,
        bucket_cap_mb=c.bucket_cap_mb,
        gradient_as_bucket_view=c.gradient_as_bucket_view,
        reshard_after_forward=c.reshard_after_forward,
        param_dtype=c.fsdp_param_dtype,
        reduce_dtype=c.fsdp_reduce_dtype,
        threads=threads,
    )
    task = f"{profile.name} · {c.parallel} · {world_size} real ranks · batch {batch}"
    ranks = _run(run, request, task)
    single = _run(run, replace(request, strategy="none", world_size=1), f"{task} · one process")
    error = ranks.get("error") or single.get("error")
    return RankCheck(
        world_size=world_size,
        batch=batch,
        device=c.device,
        threads=threads,
        backend=backend(c.device),
        predicted_rank=predicted_rank.train.peak,
        predicted_single=run.analyse_at(profile, batch).train.peak,
        ranks=tuple(_measurement(r) for r in ranks.get("ranks", ())),
        single=next((_measurement(r) for r in single.get("ranks", ())), None),
        error=error["message"] if error else None,
    )


def _run(run: Run, request: RankRequest, task: str) -> dict[str, Any]:
    """The launcher's result: it runs in a worker process, as any measurement does."""
    return run_worker(
        request, lambda stage, done, total: run.on_progress(ProgressEvent(task, stage, done, total))
    )


def _measurement(raw: dict[str, object]) -> RankMeasurement:
    return RankMeasurement(**raw)  # type: ignore[arg-type]
