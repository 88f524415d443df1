"""Today's CUDA estimates against what the H100 measured (the committed reports, tests/h100.py),
with no GPU: a change to the estimate that a GPU would catch fails here first.

The target is the README's: the estimated peak within 2% of the peak between ops (what a trace
of tensors can see; cuDNN's workspace inside a convolution is not in it). Dropping a term the
H100 showed, such as the cuBLAS workspaces (32 MiB a thread running a matmul), fails it: AlexNet's
inference at batch 1 would be 33 MiB, 15%, low.
"""

from __future__ import annotations

import pytest
from h100 import H100Point, h100_points

from nin_profile.results import MemoryCategory

# NiN's gradual head at batch 1, training: the H100 held 725,504 B (709 KiB) more between ops
# than the estimate, and reserved one more 20 MiB segment (50 MiB against 30). The same blocks
# without the gradual head (nin, nin_single_1x1) are exact at batch 1, so the miss is in the
# 384→96→24→10 head; it is 0.1% at batch 128. Not explained yet (the sweep that found it was the
# only run of this model on a GPU).
UNEXPLAINED = {"nin_gradual_head-train-1-sgd"}


def points() -> list[object]:
    miss = pytest.mark.xfail(strict=True, reason="709 KiB unexplained at batch 1 (see above)")
    return [
        pytest.param(p, id=f"{p.report}:{p.id}", marks=[miss] if p.id in UNEXPLAINED else [])
        for p in h100_points()
    ]


def test_every_committed_h100_report_is_read() -> None:
    # main job: 6 models × 2 phases at batch 128 = 12; momentum and Adam: 2 models × 2 phases
    # × 2 = 8; first sweep (nin, alexnet, vgg11 × 2 phases × 4 batches = 24) less its 6 points
    # at batch 128 = 18; NiN-variants sweep (24) less NiN's 8 (in the first) and the variants'
    # 4 at batch 128 = 12. A point measured twice is held once.
    assert len(h100_points()) == 12 + 8 + 18 + 12


@pytest.mark.parametrize("point", points())
def test_the_estimate_is_within_2_percent_of_the_h100_peak_between_ops(point: H100Point) -> None:
    between = point.memory.peak_between_ops
    assert between is not None
    estimated = point.estimate().peak
    assert abs(estimated - between) <= 0.02 * between, (estimated, between)


@pytest.mark.parametrize("model", ["nin", "vgg11"])
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_the_optimizer_state_moves_the_reserve_as_on_the_h100(model: str, optimizer: str) -> None:
    """The state torch.optim creates in the first step (a momentum buffer a parameter, Adam's
    two moments) is placed where it is created: the reserve it adds to plain SGD's is the H100's,
    to the byte (NiN: +2 MiB with momentum, +6 MiB with Adam; VGG-11: +0 and +2 MiB, its
    cached blocks take most of it), and so is what it adds to the peak (its own size; VGG-11 with
    momentum was 128 KiB, 0.03%, under it on the H100)."""
    by_key = {(p.model, p.phase, p.batch, p.config.optimizer): p for p in h100_points()}
    sgd, other = by_key[(model, "train", 128, "sgd")], by_key[(model, "train", 128, optimizer)]
    est_sgd, est_other = sgd.estimate(), other.estimate()
    assert est_sgd.reserved is not None and est_other.reserved is not None
    assert sgd.memory.peak_reserved is not None and other.memory.peak_reserved is not None
    assert est_other.reserved - est_sgd.reserved == (
        other.memory.peak_reserved - sgd.memory.peak_reserved
    )
    state = est_other[MemoryCategory.OPTIMIZER]
    assert state > 0 and est_sgd[MemoryCategory.OPTIMIZER] == 0
    assert sgd.memory.peak_between_ops is not None and other.memory.peak_between_ops is not None
    measured_rise = other.memory.peak_between_ops - sgd.memory.peak_between_ops
    assert est_other.peak - est_sgd.peak == state
    assert abs(measured_rise - state) <= 0.001 * state
