"""Per-rank results of a data-parallel (DDP) or sharded (FSDP2) run, as numbers: frozen
dataclasses with `to_dict`/`from_dict`, no formatting (results.py's rules).

Every figure is per rank: memory in bytes, for a per-rank batch of `batch` examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from nin_profile.results import BatchFit, MemoryBreakdown


@dataclass(frozen=True)
class ZeroEstimates:
    """What the estimators people use say for one rank, by their own rules (bytes).

    zero2, zero3: DeepSpeed's `estimate_zero2_model_states_mem_needs` and
    `estimate_zero3_model_states_mem_needs` without offload: 2·P + 18·P/N and
    4·L + 18·P/N (P parameters, N ranks, L the largest layer's own parameters), model states
    of fp16 training with Adam and fp32 master weights. accelerate: `accelerate
    estimate-memory`'s "Training using Adam" for float32, 4 × the model's size (its largest
    of model, gradients, optimizer and step sizes), for one device, whatever N."""

    zero2: int
    zero3: int
    accelerate: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RankProfile:
    """Rank 0 of `world_size` ranks, predicted: its training step and its inference pass
    (eval mode, no_grad, through the wrapper, after training) at `batch` examples per rank.

    collective_bytes: what the step's collectives move through rank 0's buffers: the sum over
    them of each one's largest buffer (a bucket all-reduced, an all-gather's whole output, a
    reduce-scatter's whole input). fits: the largest per-rank batch within --memory-budget."""

    world_size: int
    batch: int
    train: MemoryBreakdown
    inference: MemoryBreakdown
    collective_bytes: int
    estimators: ZeroEstimates
    fits: tuple[BatchFit, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "batch": self.batch,
            "train": self.train.to_dict(),
            "inference": self.inference.to_dict(),
            "collective_bytes": self.collective_bytes,
            "estimators": self.estimators.to_dict(),
            "fits": [f.to_dict() for f in self.fits],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankProfile:
        return cls(
            world_size=d["world_size"],
            batch=d["batch"],
            train=MemoryBreakdown.from_dict(d["train"]),
            inference=MemoryBreakdown.from_dict(d["inference"]),
            collective_bytes=d["collective_bytes"],
            estimators=ZeroEstimates(**d["estimators"]),
            fits=tuple(BatchFit(**f) for f in d.get("fits", ())),
        )


@dataclass(frozen=True)
class RankMeasurement:
    """One process's training step, measured in that process (bytes). rank: its rank, or
    None for the single process without a wrapper measured beside the ranks.

    peak_allocated: the CPU allocator's peak during the step (or CUDA's), with what was held
    when it began (baseline_allocated: the model, the wrapper's buffers, the optimizer state,
    the batch). peak_between_ops (CPU): the same without what an op (a kernel, or a
    collective's own work on gloo's threads) allocated and freed before it was done: what a
    trace of tensors predicts. unseen_frees: allocations whose free the profiler did not
    record (freed on a thread it does not follow), released where measure/ranks.py says."""

    rank: int | None
    peak_allocated: int
    baseline_allocated: int
    peak_between_ops: int | None = None
    unseen_frees: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RankCheck:
    """Real ranks beside the prediction, at one per-rank batch: every rank's training step
    measured in its own process, and one process without the wrapper measured the same way
    (same batch, same threads), so that what the wrapper adds per rank is measured both ways.

    predicted_rank, predicted_single: the training peaks predicted for rank 0 and for one
    process at this batch."""

    world_size: int
    batch: int
    device: str
    threads: int
    backend: str
    predicted_rank: int
    predicted_single: int
    ranks: tuple[RankMeasurement, ...] = ()
    single: RankMeasurement | None = None
    error: str | None = None

    @property
    def worst(self) -> RankMeasurement | None:
        """The rank with the highest peak."""
        return max(self.ranks, key=lambda r: r.peak_allocated, default=None)

    @property
    def added_predicted(self) -> int:
        return self.predicted_rank - self.predicted_single

    def added_measured(self, between_ops: bool = False) -> int | None:
        """The worst rank's peak (allocated, or between ops) less the single process's."""

        def figure(m: RankMeasurement) -> int | None:
            return m.peak_between_ops if between_ops else m.peak_allocated

        ranks = [f for r in self.ranks if (f := figure(r)) is not None]
        single = figure(self.single) if self.single else None
        if not ranks or single is None:
            return None
        return max(ranks) - single

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranks"] = [r.to_dict() for r in self.ranks]
        d["single"] = self.single.to_dict() if self.single else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankCheck:
        single = d.get("single")
        return cls(
            **{
                **d,
                "ranks": tuple(RankMeasurement(**r) for r in d.get("ranks", ())),
                "single": RankMeasurement(**single) if single else None,
            }
        )


@dataclass(frozen=True)
class ParallelProfile:
    """One model under DDP or FSDP2: rank 0 predicted at each world size, and real ranks
    measured where the run measured them."""

    strategy: str
    points: tuple[RankProfile, ...]
    checks: tuple[RankCheck, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "points": [p.to_dict() for p in self.points],
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParallelProfile:
        return cls(
            strategy=d["strategy"],
            points=tuple(RankProfile.from_dict(p) for p in d["points"]),
            checks=tuple(RankCheck.from_dict(c) for c in d.get("checks", ())),
        )
