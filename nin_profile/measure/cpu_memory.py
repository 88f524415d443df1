"""Peak memory as the CPU allocator sees it, from the profiler's allocation records: at its
highest, and at its highest between ops (without what a kernel allocates and frees inside
one aten op: im2col columns, oneDNN's reorders and scratchpads)."""

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


def _op_windows(prof: profile) -> list[tuple[int, int]]:
    """(start, end) in ns of every outermost aten op (inside autograd's engine frames too)."""
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    windows = []
    pending: list[_ProfilerEvent] = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        if event.tag == _EventType.TorchOp and event.name.startswith("aten::"):
            windows.append((event.start_time_ns, event.end_time_ns))
        else:
            pending.extend(event.children)
    return windows


def _inside_one_op(start: int, end: int, windows: list[tuple[int, int]]) -> bool:
    return any(w_start <= start and end <= w_end for w_start, w_end in windows)


def cpu_peak_between_ops(work: Callable[[], None]) -> int:
    """As `cpu_peak_during`, without the allocations a kernel frees before its op returns:
    the figure a trace of the ops' tensors can predict (CUDA's "peak between ops")."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    windows = _op_windows(prof)
    events = sorted(
        ((t, f) for t, f in _allocations(prof) if f.device.type == "cpu"), key=lambda p: p[0]
    )
    allocated_at: dict[int, int] = {}
    scratch: set[int] = set()  # indices into `events` of allocations and frees inside one op
    for index, (time, fields) in enumerate(events):
        if fields.alloc_size > 0:
            allocated_at[fields.ptr] = index
            continue
        start = allocated_at.pop(fields.ptr, None)
        if start is not None and _inside_one_op(events[start][0], time, windows):
            scratch.update((start, index))
    held = peak = 0
    for index, (_, fields) in enumerate(events):
        if index not in scratch:
            held += fields.alloc_size
            peak = max(peak, held)
    return peak
