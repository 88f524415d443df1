"""Peak memory as the CPU allocator sees it, from the profiler's allocation records: at its
highest, and at its highest between ops (without what a kernel allocates and frees inside
one aten op: im2col columns, oneDNN's reorders and scratchpads)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from torch._C._profiler import _EventType, _ExtraFields_Allocation, _ProfilerEvent
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

from nin_profile.engine.accumulation import as_without_a_mode, summing_in_place


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


def cpu_peak_during(work: Callable[[], None], counted: Collection[int] = ()) -> int:
    """Bytes the CPU allocator holds at its highest during `work`, above what it held before.

    Replays every allocation and free the profiler recorded (`alloc_size` is negative for a
    free), in time order; memory already held when `work` starts is not part of the figure.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    held = peak = 0
    for _, fields in _made_and_freed_inside(prof, counted):
        held += fields.alloc_size
        peak = max(peak, held)
    return peak


def _made_and_freed_inside(
    prof: profile, counted: Collection[int] = ()
) -> list[tuple[int, _ExtraFields_Allocation]]:
    """The CPU's allocations in time order, and the frees of what was allocated among them
    or is `counted` (the addresses of the storages the caller's figure holds from before:
    parameters, buffers, optimizer state, the batch; a buffer replaced out of place frees
    its old storage). A free of other memory held from before (state a model keeps from its
    last step, a weight a pruning hook recomputes) is left out, as that memory is not in the
    figure either, and the trace, which sees the same step, neither counts it nor its free."""
    events = sorted(
        ((t, f) for t, f in _allocations(prof) if f.device.type == "cpu"), key=lambda p: p[0]
    )
    live: set[int] = set(counted)
    kept = []
    for time, fields in events:
        if fields.alloc_size > 0:
            live.add(fields.ptr)
        elif fields.ptr in live:
            live.discard(fields.ptr)
        else:
            continue
        kept.append((time, fields))
    return kept


# (start, end) in ns of one op's run, and the op's name
Window = tuple[int, int, str]


def _outermost_windows(prof: profile, is_op: Callable[[_ProfilerEvent], bool]) -> list[Window]:
    """Every outermost event `is_op` picks (inside autograd's engine frames too); an op
    nested in one is inside its window already."""
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    windows = []
    pending: list[_ProfilerEvent] = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        if is_op(event):
            windows.append((event.start_time_ns, event.end_time_ns, event.name))
        else:
            pending.extend(event.children)
    return windows


def _is_aten_op(event: _ProfilerEvent) -> bool:
    return event.tag == _EventType.TorchOp and event.name.startswith("aten::")


def _op_around(start: int, end: int, windows: list[Window]) -> str | None:
    """The op whose run holds [start, end], if one does."""
    return next(
        (name for w_start, w_end, name in windows if w_start <= start <= end <= w_end), None
    )


def cpu_peak_between_ops(work: Callable[[], None]) -> int:
    """As `cpu_peak_during`, without the allocations a kernel frees before its op returns:
    the figure a trace of the ops' tensors can predict (CUDA's "peak between ops"). An op is
    an outermost aten op of the profile: under autocast, the casts autocast makes for an op
    (a weight's half copy, freed when the op returns) fall inside that op's window."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    return _peak_between(prof, _outermost_windows(prof, _is_aten_op)).peak


_DISPATCHED = "nin_profile::dispatched_op "


class _DispatchedOps(TorchDispatchMode):
    """Marks each op a dispatch mode sees (below autograd and autocast) in the profile, by
    name."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        func, args = as_without_a_mode(func, args, kwargs)  # the engine's sums, in place
        with record_function(_DISPATCHED + func.overloadpacket.__name__):
            return func(*args, **kwargs)


@dataclass(frozen=True)
class BetweenOps:
    """The allocator's highest point without what kernels allocate and free inside their op;
    the most one op held inside itself (above what it was handed and what it returned), and
    which op that was (`conv2d`, `_fft_c2r`; "" where none held any)."""

    peak: int
    largest_scratch: int
    largest_scratch_op: str


def cpu_peak_between_dispatched_ops(
    work: Callable[[], None], counted: Collection[int] = ()
) -> BetweenOps:
    """As `cpu_peak_between_ops`, with an op being what a dispatch mode sees, as the CUDA
    measurement's KernelScratch and the estimate's trace see them: autocast's casts are ops
    of their own there (`_to_copy`), so a weight's half copy counts while the op using it
    runs. The work runs under a dispatch mode, which in training makes autograd add a
    gradient from two uses out of place: it adds them in place, as a step without a mode
    does (engine/accumulation.py)."""
    with (
        summing_in_place(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        _DispatchedOps(),
    ):
        work()
    windows = _outermost_windows(prof, lambda e: e.name.startswith(_DISPATCHED))
    between = _peak_between(prof, windows, counted)
    return BetweenOps(
        between.peak, between.largest_scratch, between.largest_scratch_op.removeprefix(_DISPATCHED)
    )


def _peak_between(
    prof: profile, windows: list[Window], counted: Collection[int] = ()
) -> BetweenOps:
    """The allocator's highest point without the allocations freed inside the window they
    were made in, and the most such allocations held at once, in which window."""
    events = _made_and_freed_inside(prof, counted)
    allocated_at: dict[int, int] = {}
    scratch: dict[int, str] = {}  # index into `events` of an allocation or free inside an op
    for index, (time, fields) in enumerate(events):
        if fields.alloc_size > 0:
            allocated_at[fields.ptr] = index
            continue
        start = allocated_at.pop(fields.ptr, None)
        if start is not None and (op := _op_around(events[start][0], time, windows)):
            scratch[start] = scratch[index] = op
    held = peak = inside = largest = 0
    largest_op = ""
    for index, (_, fields) in enumerate(events):
        if index in scratch:
            inside += fields.alloc_size
            if inside > largest:
                largest, largest_op = inside, scratch[index]
            continue
        held += fields.alloc_size
        peak = max(peak, held)
    return BetweenOps(peak, largest, largest_op)
