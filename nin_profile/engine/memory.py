"""Allocations and frees of a traced step, and the peak they reach.

Storages are followed, not tensors: a view or an in-place op allocates nothing, and a storage is
freed when its last tensor dies (a weakref finalizer on the storage says when). Sizes are
rounded up to the target allocator's block: the CUDA caching allocator hands out multiples of
512 bytes, and its "allocated" statistic counts the rounded size.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from nin_profile.results import MemoryBreakdown, MemoryCategory, PeakSite

TRACE_DEVICE = "meta"


@dataclass(frozen=True)
class Event:
    """One allocation (`delta` > 0) or free (`delta` < 0) of the storage `key`, in bytes."""

    key: int
    delta: int
    site: PeakSite
    inside: bool = False  # inside one op of the device: a kernel's scratch, a fused op's insides


def round_up(nbytes: int, block: int) -> int:
    return -(-nbytes // block) * block


class AllocationLog:
    """Records every storage on the trace device as it is allocated and freed, in order."""

    def __init__(self, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.events: list[Event] = []
        self.nbytes: dict[int, int] = {}
        self.site = PeakSite("setup", "", "")
        self._keys: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        # events recorded inside one op of the device (`one_op`), and the number of events
        # recorded when each such op ended: the moments between ops are after the other
        # events and at these ends
        self._inside = 0
        self.op_ends: list[int] = []

    def key_of(self, tensor: torch.Tensor, device: str = TRACE_DEVICE) -> int | None:
        """The key of the tensor's storage, recording its allocation on first sight. Meta
        storages only: a meta tensor's, or a fake tensor's (whose device is another); `device`
        "cpu" for a real CPU tensor a CPU step holds beside them (tracing.py)."""
        storage = tensor.untyped_storage()
        if storage.device.type != device:
            return None
        key = self._keys.get(id(storage))
        if key is None and storage.nbytes() > 0:
            key = len(self.nbytes)
            self._keys[id(storage)] = key
            self.nbytes[key] = storage.nbytes()
            self._record(key, +1)
            self._finalizers.append(weakref.finalize(storage, self._free, id(storage), key))
        return key

    def held_from_start(self, sizes: Iterable[int], site: PeakSite) -> set[int]:
        """Record allocations that exist before the first event and outlive the last (what the
        previous steps left held, such as a library's workspace); their keys."""
        keys = set()
        for nbytes in sizes:
            key = len(self.nbytes)
            self.nbytes[key] = nbytes
            self.events.insert(0, Event(key, round_up(nbytes, self.block_bytes), site))
            self.op_ends = [end + 1 for end in self.op_ends]
            keys.add(key)
        return keys

    def scratch(self, nbytes: int) -> None:
        """Record memory an op allocates and frees inside itself (a kernel's scratchpad)."""
        if nbytes > 0:
            key = len(self.nbytes)
            self.nbytes[key] = nbytes
            with self.one_op():
                self._record(key, +1)
                self._record(key, -1)

    @contextlib.contextmanager
    def one_op(self) -> Iterator[None]:
        """What is recorded inside runs inside one op of the device: the ops a stand-in runs
        for a fused kernel, a composite op the device runs whole."""
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1
            if not self._inside:
                self.op_ends.append(len(self.events))

    def keys_of(self, tensors: Iterable[torch.Tensor]) -> set[int]:
        return {k for t in tensors if (k := self.key_of(t)) is not None}

    def close(self) -> None:
        """Stop listening for frees: storages that die after the trace are not part of it."""
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()

    def _free(self, storage_id: int, key: int) -> None:
        self._keys.pop(storage_id, None)
        self._record(key, -1)

    def _record(self, key: int, sign: int) -> None:
        delta = sign * round_up(self.nbytes[key], self.block_bytes)
        self.events.append(Event(key, delta, self.site, inside=self._inside > 0))


@contextlib.contextmanager
def one_op() -> Iterator[None]:
    """`AllocationLog.one_op` of the trace running now, if one is (stand-ins call it without
    knowing the trace: kernels.py, fastpath.py)."""
    log = traced("log")
    with log.one_op() if isinstance(log, AllocationLog) else contextlib.nullcontext():
        yield


def traced(attribute: str) -> object:
    """`attribute` of the trace running now (the innermost dispatch mode that has it: a
    StepTracer's `log`, `inference`), for code the trace calls without knowing it; else
    None."""
    for mode in reversed(_get_current_dispatch_mode_stack()):
        if attribute in vars(mode):
            return vars(mode)[attribute]
    return None


def peak_between_ops(events: list[Event], op_ends: Iterable[int]) -> int:
    """The highest total at a moment between the device's ops: after each event outside an
    op, and where an op ends (what it allocated inside and still holds, its outputs,
    counted; what it freed inside, not)."""
    ends = set(op_ends)
    total = peak = 0
    for index, event in enumerate(events):
        if index in ends:
            peak = max(peak, total)
        total += event.delta
        if not event.inside:
            peak = max(peak, total)
    return max(peak, total) if len(events) in ends else peak


def log_breakdown(
    log: AllocationLog, category_of: Callable[[int], MemoryCategory]
) -> MemoryBreakdown:
    """`peak_breakdown` of the log's events, with the peak between the device's ops where the
    log recorded anything inside one."""
    breakdown = peak_breakdown(log.events, category_of)
    between = peak_between_ops(log.events, log.op_ends)
    if between == breakdown.peak:
        return breakdown
    return replace(breakdown, between_ops=between)


def peak_breakdown(
    events: Iterable[Event], category_of: Callable[[int], MemoryCategory]
) -> MemoryBreakdown:
    """Replay allocations and frees; return what is alive, by category, when the total peaks."""
    live: dict[MemoryCategory, int] = dict.fromkeys(MemoryCategory, 0)
    total = peak = 0
    at_peak = dict(live)
    site = PeakSite("setup", "", "")
    for event in events:
        live[category_of(event.key)] += event.delta
        total += event.delta
        if total > peak:
            peak, at_peak, site = total, dict(live), event.site
    return MemoryBreakdown(peak=peak, by_category=at_peak, site=site)
