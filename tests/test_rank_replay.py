"""The replay of a rank's CPU allocations (nin_profile/measure/ranks.py, CpuTimeline) where the
profiler saw an allocation but not its free: gloo's thread let go of what a collective was
handed. Synthetic records, as `_allocations` yields them: (time, address, ±bytes, end of the
op it was made in, end of the collective it was made in)."""

from __future__ import annotations

import pytest

from nin_profile.measure import ranks
from nin_profile.measure.ranks import CpuTimeline

Record = tuple[int, int, int, int | None, int | None]
HANDED, COPY, LATER = 0xA000, 0xC000, 0xB000  # addresses


def replay(
    monkeypatch: pytest.MonkeyPatch, records: list[Record]
) -> tuple[CpuTimeline, tuple[int, int, int]]:
    monkeypatch.setattr(ranks, "_allocations", lambda prof: iter(records))
    timeline = CpuTimeline()
    return timeline, timeline.replay(None)


# an all-gather's output (100 B) made at 10, its free never seen; the collective runs 20-30
# and makes a 50 B copy of its own; a later op makes 1,000 B at 40, freed at 60
STEP: list[Record] = [
    (10, HANDED, 100, 11, None),
    (20, COPY, 50, None, 30),
    (40, LATER, 1_000, 41, None),
    (60, LATER, -1_000, None, None),
]


def test_a_reused_address_was_free_when_the_collective_it_was_handed_to_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the output's address is handed out again at 50: it was free by then, and (gloo's work
    # having let go of it) already when the collective returned at 30, before the 1,000 B
    records = [*STEP, (50, HANDED, 10, 51, None), (70, HANDED, -10, None, None)]
    timeline, (held, peak, between) = replay(monkeypatch, records)
    assert between == 1_000 + 10 == 1_010  # the 10 B at 50 beside the 1,000 B; not 100 + 1_000
    assert peak == 1_010 and held == 0
    assert timeline.unseen_frees == 2  # the output, and the collective's own copy


def test_after_the_last_collective_a_block_is_free_at_its_reuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # made after the collective, its free unseen, its address reused at 50: freed at 49
    records: list[Record] = [
        (20, COPY, 50, None, 30),
        (35, HANDED, 100, 36, None),
        (40, LATER, 1_000, 41, None),
        (50, HANDED, 100, 51, None),
        (60, LATER, -1_000, None, None),
        (70, HANDED, -100, None, None),
    ]
    _, (_, _, between) = replay(monkeypatch, records)
    assert between == 100 + 1_000 == 1_100  # at 40-49, and again at 50-59


def test_a_handed_block_never_freed_nor_reused_is_still_counted_as_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what is left: nothing tells it from memory C++ still holds (DDP's buckets)
    timeline, (held, _, between) = replay(monkeypatch, STEP)
    assert between == 100 + 1_000 == 1_100
    assert held == 100 and timeline.live == {HANDED: 100}
