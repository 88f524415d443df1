"""Peak memory as the CPU allocator sees it, from the profiler's allocation records."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch._C._profiler import _EventType, _ExtraFields_Allocation, _ProfilerEvent
from torch.profiler import ProfilerActivity, profile


def _allocations(prof: profile) -> Iterator[tuple[int, _ExtraFields_Allocation]]:
    """(start time in ns, allocation record) of every allocation and free in the profile."""
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    pending: list[_ProfilerEvent] = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        fields = event.extra_fields
        if event.tag == _EventType.Allocation and isinstance(fields, _ExtraFields_Allocation):
            yield event.start_time_ns, fields
        pending.extend(event.children)


def cpu_peak_during(work: Callable[[], None]) -> int:
    """Bytes the CPU allocator holds at its highest during `work`, above what it held before.

    Replays every allocation and free the profiler recorded (`alloc_size` is negative for a
    free), in time order; memory already held when `work` starts is not part of the figure.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    held = peak = 0
    for _, fields in sorted(_allocations(prof), key=lambda pair: pair[0]):
        if fields.device.type == "cpu":
            held += fields.alloc_size
            peak = max(peak, held)
    return peak
