"""Allocations and frees of a traced step, and the peak they reach.

Storages are followed, not tensors: a view or an in-place op allocates nothing, and a storage is
freed when its last tensor dies (a weakref finalizer on the storage says when). Sizes are
rounded up to the target allocator's block: the CUDA caching allocator hands out multiples of
512 bytes, and its "allocated" statistic counts the rounded size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from nin_profile.results import MemoryBreakdown, MemoryCategory, PeakSite

TRACE_DEVICE = "meta"


@dataclass(frozen=True)
class Event:
    """One allocation (`delta` > 0) or free (`delta` < 0) of the storage `key`, in bytes."""

    key: int
    delta: int
    site: PeakSite


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
            keys.add(key)
        return keys

    def scratch(self, nbytes: int) -> None:
        """Record memory an op allocates and frees inside itself (a kernel's scratchpad)."""
        if nbytes > 0:
            key = len(self.nbytes)
            self.nbytes[key] = nbytes
            self._record(key, +1)
            self._record(key, -1)

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
        self.events.append(
            Event(key, sign * round_up(self.nbytes[key], self.block_bytes), self.site)
        )


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
