"""What PyTorch's CUDA caching allocator reserves for a traced step: a simulation of its rules.

`torch.cuda.max_memory_reserved` (and most of what nvidia-smi shows) is not the peak of live
tensors but the segments the caching allocator took from cudaMalloc and keeps: a freed block is
cached for reuse, split for a smaller request, merged with free neighbours, and given back only
when an allocation would otherwise fail. How much it holds depends on the order and sizes of
every allocation and free, over the warm-up steps too, so it is simulated here, rule by rule,
from `c10/cuda/CUDACachingAllocator.cpp` (native backend, default settings: no
PYTORCH_CUDA_ALLOC_CONF, one stream):

- `round_size`: a request is rounded up to a multiple of 512 B.
- `get_pool`: requests up to 1 MiB are served from the small pool, larger from the large pool.
- `get_allocation_size`: a new segment is 2 MiB (small pool), 20 MiB (requests under 10 MiB),
  else the request rounded up to 2 MiB.
- `get_free_block`: the smallest cached block of the pool that fits, the lowest address among
  equal sizes (`BlockComparatorSize`; an unlimited `max_split_size` disables its other checks).
- `should_split` / `alloc_found_block`: the request takes the front of the block; the rest
  stays cached as its own block if it is over 1 MiB (large pool) or at least 512 B (small).
- `free_block` / `try_merge_blocks`: a freed block merges with free neighbours of its segment.
- `malloc`: with no cached block, cudaMalloc a segment; if the device is full, release every
  cached whole segment (`release_cached_blocks`) and try once more.

Checked against the allocator itself: replaying the allocations and frees an H100 recorded
(`torch.cuda.memory._record_memory_history`) gives the segments it held, to the byte, at 11
of 12 points (tests/test_allocator.py, which says why not at the twelfth).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nin_profile.units import MiB

MIN_BLOCK = 512
SMALL_REQUEST = 1 * MiB
SMALL_SEGMENT = 2 * MiB
LARGE_SEGMENT = 20 * MiB
MIN_LARGE_ALLOC = 10 * MiB
ROUND_LARGE = 2 * MiB


class OutOfMemory(Exception):
    """A request no cached block, new segment or release of the cache could serve."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"{needed} B needed")
        self.needed = needed  # what the allocator would have had to reserve to serve it


def round_size(nbytes: int) -> int:
    """A request's size as the allocator serves it."""
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


def segment_size(size: int) -> int:
    """Bytes cudaMalloc'ed for a new segment that serves a request of `size` (rounded) bytes."""
    if size <= SMALL_REQUEST:
        return SMALL_SEGMENT
    if size < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class Block:
    """A run of one segment's bytes, allocated or cached; neighbours in address order."""

    address: int
    size: int
    small: bool
    allocated: bool = False
    prev: Block | None = None
    next: Block | None = None


@dataclass
class _FreeBlocks:
    """A pool's cached blocks, ordered by (size, address) as the allocator's std::set is."""

    keys: list[tuple[int, int]] = field(default_factory=list)
    blocks: dict[tuple[int, int], Block] = field(default_factory=dict)

    def add(self, block: Block) -> None:
        key = (block.size, block.address)
        bisect.insort(self.keys, key)
        self.blocks[key] = block

    def remove(self, block: Block) -> None:
        key = (block.size, block.address)
        del self.keys[bisect.bisect_left(self.keys, key)]
        del self.blocks[key]

    def best_fit(self, size: int) -> Block | None:
        i = bisect.bisect_left(self.keys, (size, -1))
        return self.blocks[self.keys[i]] if i < len(self.keys) else None

    def whole_segments(self) -> list[Block]:
        return [b for b in self.blocks.values() if b.prev is None and b.next is None]


class CachingAllocator:
    """The allocator's bookkeeping, without the memory: `reserved` is what cudaMalloc gave it."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.peak_reserved = 0
        self.allocated = self.peak_allocated = 0
        self.segments: list[int] = []  # the size of each segment held, in cudaMalloc order
        self._free = {True: _FreeBlocks(), False: _FreeBlocks()}
        self._next_address = 0

    @property
    def reserved(self) -> int:
        """Bytes of every segment held."""
        return sum(self.segments)

    def malloc(self, nbytes: int) -> Block:
        size = round_size(nbytes)
        small = size <= SMALL_REQUEST
        free = self._free[small]
        block = free.best_fit(size)
        if block is not None:
            free.remove(block)
        else:
            block = self._new_segment(size, small)
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_REQUEST:
            remainder = Block(block.address + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = remainder
            block.next, block.size = remainder, size
            free.add(remainder)
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: Block) -> None:
        block.allocated = False
        self.allocated -= block.size
        free = self._free[block.small]
        prev, nxt = block.prev, block.next
        if prev is not None and not prev.allocated:
            free.remove(prev)
            block.address, block.size, block.prev = prev.address, prev.size + block.size, prev.prev
            if block.prev is not None:
                block.prev.next = block
        if nxt is not None and not nxt.allocated:
            free.remove(nxt)
            block.size += nxt.size
            block.next = nxt.next
            if block.next is not None:
                block.next.prev = block
        free.add(block)

    def _new_segment(self, size: int, small: bool) -> Block:
        nbytes = segment_size(size)
        if self.capacity is not None and self.reserved + nbytes > self.capacity:
            self._release_cache()
            if self.reserved + nbytes > self.capacity:
                raise OutOfMemory(self.reserved + nbytes)
        block = Block(self._next_address, nbytes, small)
        self._next_address += nbytes
        self.segments.append(nbytes)
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return block

    def _release_cache(self) -> None:
        for free in self._free.values():
            for block in free.whole_segments():
                free.remove(block)
                self.segments.remove(block.size)


def steady_reserved(
    held: Iterable[int],
    step: Sequence[tuple[int, int]],
    first_step: Mapping[int, Sequence[int]] | None = None,
    capacity: int | None = None,
    max_steps: int = 8,
) -> CachingAllocator:
    """The allocator after the `held` allocations (parameters, inputs) and as many repeats of
    `step` as it takes to stop growing (at least two, at most `max_steps`): what a measurement
    reads after its warm-up, where the warm-up reaches that steady state (at every H100 point
    measured so far, two steps did).

    step: (key, bytes) in order; bytes > 0 allocates `key`, < 0 frees it. Whatever a step leaves
    allocated (the gradients) is freed as the next step starts, as `zero_grad(set_to_none=True)`
    does. first_step: index in `step` → sizes allocated just before it in the first step only,
    and held from then on (a library's workspace, made the first time the library is called).
    capacity: the bytes the allocator may reserve; it raises OutOfMemory where the GPU's would.
    """
    allocator = CachingAllocator(capacity)
    for nbytes in held:
        allocator.malloc(nbytes)
    once = first_step or {}
    left: dict[int, Block] = {}
    for repeat in range(max_steps):
        for block in left.values():
            allocator.free(block)
        before = allocator.reserved
        live: dict[int, Block] = {}
        for index, (key, nbytes) in enumerate(step):
            for size in once.get(index, ()) if repeat == 0 else ():
                allocator.malloc(size)
            if nbytes > 0:
                live[key] = allocator.malloc(nbytes)
            elif key in live:
                allocator.free(live.pop(key))
        for size in once.get(len(step), ()) if repeat == 0 else ():
            allocator.malloc(size)
        left = live
        if repeat >= 1 and allocator.reserved == before:
            break
    return allocator
