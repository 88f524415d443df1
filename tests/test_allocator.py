"""The caching-allocator simulation: its rules worked by hand from CUDACachingAllocator.cpp, and
the reserve it predicts against what an H100 reserved (torch.cuda.max_memory_reserved, at every
point of the committed reports/nvidia-h100-80gb-hbm3*/profile.json: tests/h100.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from h100 import H100Point, h100_points
from run_configs import small_run

from nin_profile.engine.allocator import CachingAllocator, round_size, segment_size, steady_reserved
from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.run import run_profile
from nin_profile.units import MiB


def test_sizes_by_hand() -> None:
    assert round_size(1) == 512  # the smallest block
    assert round_size(513) == 1024  # rounded up to a multiple of 512
    assert segment_size(1 * MiB) == 2 * MiB  # small pool: 2 MiB segments
    assert segment_size(1 * MiB + 512) == 20 * MiB  # large pool, under 10 MiB: 20 MiB
    assert segment_size(10 * MiB) == 10 * MiB  # 10 MiB and over: rounded up to 2 MiB
    assert segment_size(11 * MiB) == 12 * MiB


def test_a_freed_block_is_split_for_a_smaller_request_and_merged_back() -> None:
    alloc = CachingAllocator()
    a = alloc.malloc(3 * MiB)  # a new 20 MiB segment; the 17 MiB behind it stays cached
    b = alloc.malloc(5 * MiB)  # carved out of those 17 MiB: nothing new reserved
    assert alloc.reserved == 20 * MiB and alloc.allocated == 8 * MiB
    alloc.free(a)
    alloc.free(b)  # a, b and the 12 MiB behind them merge into the whole segment again
    alloc.malloc(19 * MiB)  # so 19 MiB fits in it
    assert alloc.reserved == 20 * MiB


def test_a_remainder_of_one_mib_or_less_is_not_split_off() -> None:
    alloc = CachingAllocator()
    block = alloc.malloc(12 * MiB + 1)  # rounds to 12 MiB + 512 B, in a new 14 MiB segment
    assert block.size == 12 * MiB + 512  # the rest, 2 MiB - 512 B > 1 MiB, is split off
    alloc.free(block)  # and merges back: one free 14 MiB block
    block = alloc.malloc(13 * MiB)  # behind 13 MiB only 1 MiB would be left: not split
    assert block.size == 14 * MiB and alloc.reserved == 14 * MiB


def test_best_fit_takes_the_smallest_cached_block_that_fits() -> None:
    alloc = CachingAllocator()
    big, small = alloc.malloc(40 * MiB), alloc.malloc(12 * MiB)
    alloc.free(big)
    alloc.free(small)
    assert alloc.malloc(11 * MiB).address == small.address  # not the 40 MiB block


def test_the_step_repeats_until_the_reserve_stops_growing() -> None:
    # Allocate 6 (a), 12 (b), 12 (c) MiB, free b, allocate 14 (d), free c; a and d are left
    # over, freed as the next step starts. Segments: A, B, ... in cudaMalloc order.
    # Step 1: a takes a new 20 MiB A (14 left), b 12 of those 14, c a new 12 MiB B; b's free
    # merges back to 14 in A, which d takes: 32 MiB. Step 2 (A: 20, B: 12 free): a best-fits B,
    # b takes 12 of A, c fits neither rest (6, 8): new 12 MiB C, 44 MiB; d takes 14 of A again.
    # Step 3 (B: 12, C: 12, A: 20 free): a takes B, b C, c 12 of A; d fits no rest (6, 8, 12):
    # new 14 MiB D, 58 MiB. Step 4 reuses them all (c takes D, d A): steady at 58 MiB.
    mib = [6, 12, 12, -12, 14, -12]
    keys = [0, 1, 2, 1, 3, 2]
    step = [(key, n * MiB) for key, n in zip(keys, mib, strict=True)]
    assert [steady_reserved([], step, max_steps=m).peak_reserved // MiB for m in (1, 2, 3)] == [
        32,
        44,
        58,
    ]
    assert steady_reserved([], step).peak_reserved == 58 * MiB


# The points where the simulation reserves what the H100 reserved, to the byte: cuDNN's
# workspaces (allocated and freed inside a convolution; only the GPU knows their sizes, so the
# simulation has none) fit there in blocks the step had cached anyway. These are the points
# where it matched when it was written: losing one is a regression. At the other points the
# workspaces made the allocator reserve more (as much as 35% more in training). Points are
# model-phase-batch-optimizer, from every committed H100 report (tests/h100.py).
EXACT = {
    "nin-train-1-sgd",
    "nin-inference-1-sgd",
    "nin-inference-32-sgd",
    "nin_single_1x1-train-1-sgd",
    "nin_single_1x1-inference-1-sgd",
    "nin_single_1x1-inference-32-sgd",
    "nin_gradual_head-inference-1-sgd",
    "nin_gradual_head-inference-32-sgd",
    "alexnet-train-1-sgd",
    "alexnet-inference-1-sgd",
    "alexnet-inference-32-sgd",
    "vgg11-inference-1-sgd",
    "vgg11-inference-32-sgd",
    "vgg11-inference-128-sgd",
    "vgg11-inference-256-sgd",
    "vgg11-inference-128-momentum",  # inference keeps no optimizer state: as with SGD
    "vgg11-inference-128-adam",
    "vgg11_narrow-inference-128-sgd",
}


@pytest.mark.parametrize("point", h100_points(), ids=lambda p: f"{p.report}:{p.id}")
def test_estimated_reserve_against_the_h100(point: H100Point) -> None:
    breakdown = point.estimate()
    assert breakdown.reserved is not None
    if point.id in EXACT:
        assert breakdown.reserved == point.memory.peak_reserved
    else:  # cuDNN's workspaces are missing: below the H100's reserve, above the live peak
        assert point.memory.peak_reserved is not None
        assert breakdown.peak <= breakdown.reserved < point.memory.peak_reserved


def test_every_exact_point_is_measured() -> None:
    assert EXACT.issubset(p.id for p in h100_points())


def test_no_reserve_is_estimated_for_the_cpu() -> None:
    profile = analyse_model("nin", AnalysisConfig(batch=2, device="cpu"))
    assert profile.train.reserved is None and profile.inference.reserved is None


H100_MAX_BATCH = Path(__file__).parents[1] / "reports/nvidia-h100-80gb-hbm3-max-batch/profile.json"


def test_memory_budget_is_near_the_largest_batch_the_h100_ran() -> None:
    """`--memory-budget` against `--max-batch` on the H100 (reports/...-max-batch, measured with
    `python -m nin_profile --device cuda --models nin --max-batch`): training ran batch 8,985
    and not 9,065; inference ran 34,274 and not 34,614. The budget is the H100's memory, the
    context the 518 MiB measured there."""
    measured = json.loads(H100_MAX_BATCH.read_text())["models"][0]
    limit = measured["fits"][0]["limit_bytes"]  # 85,017,493,504 B
    config = small_run(
        ("nin",),
        batch=128,
        device="cuda",
        static=True,
        memory_budget=limit,
        cuda_context=518 * MiB,
    )
    fits = {fit.phase: fit.batch or 0 for fit in run_profile(config).models[0].fits}
    assert 34_274 <= fits["inference"] < 34_614  # within the measured bracket
    # Training: neither cuDNN's workspaces nor the kernels CUDA loads as the step first runs
    # are in the simulation, so it predicts a batch the H100 could not run: at most 2% over the
    # last one that ran (it was 18% over when it fitted the estimated peak alone).
    assert 8_985 <= fits["train"] <= 8_985 * 1.02


# The rules against the allocator itself, without a GPU. tests/data/h100_allocator_histories.json
# holds what the H100's allocator did at 12 points (nin, alexnet, vgg11; train, inference; batch
# 32, 128): recorded with `python bench/memory_snapshot.py record` (torch 2.11.0+cu130, two
# warm-up steps, then one with torch.cuda.memory._record_memory_history on) and extracted from
# its snapshots by bench/extract_allocator_histories.py (which documents the format). Each point
# is the blocks held before the first step (parameters, inputs, optimizer state), the recorded
# step's own allocations and frees in order, and the cuBLAS workspaces, placed in the first step
# where its thread first runs a matrix product; replayed through steady_reserved, they must give
# the segments the snapshot held after the recorded step, to the byte. steady_reserved repeats
# the step until the reserve stops growing, not exactly 2 + 1 times as the recording did: at
# every point the segments after 2, 3 or more repeats are the same.
H100_HISTORIES = Path(__file__).parent / "data/h100_allocator_histories.json"


def h100_histories() -> list[object]:
    """Each point as steady_reserved's inputs (held, step, first_step) and the segments
    measured."""
    short = pytest.mark.xfail(
        strict=True,
        reason="one 1,568 MiB segment short: an allocation of the first step only, which the "
        "recorded (third) step cannot show",
    )
    params: list[object] = []
    for point in json.loads(H100_HISTORIES.read_text())["points"]:
        sizes: list[int] = []  # n > 0 allocates n bytes (allocation k), -k frees allocation k
        step: list[tuple[int, int]] = []
        for n in point["step"]:
            if n > 0:
                sizes.append(n)
            step.append((len(sizes), n) if n > 0 else (-n, -sizes[-n - 1]))
        first_step = {int(index): ws for index, ws in point["first_step"].items()}
        name = f"{point['model']}-{point['phase']}-{point['batch']}"
        assert sum(point["measured_segments"]) == point["measured_reserved"]
        params.append(
            pytest.param(
                point["held"],
                step,
                first_step,
                point["measured_segments"],
                id=name,
                marks=[short] if name == "vgg11-train-128" else [],
            )
        )
    return params


@pytest.mark.parametrize(("held", "step", "first_step", "measured"), h100_histories())
def test_replaying_the_h100_allocator_history_gives_its_segments(
    held: list[int],
    step: list[tuple[int, int]],
    first_step: dict[int, list[int]],
    measured: list[int],
) -> None:
    result = steady_reserved(held, step, first_step)
    assert sorted(result.segments) == measured
    assert result.reserved == sum(measured)
