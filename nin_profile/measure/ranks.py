"""Per-rank memory measured with real ranks: `world_size` processes started by
torch.multiprocessing (spawn), joined in a process group over loopback (gloo on the CPU, NCCL
with a GPU per rank), each training the model under DistributedDataParallel or FSDP2 and
measuring its own step as a worker measures one process's.

The worker that gets a RankRequest is the launcher: it holds the group's TCPStore (on a port
the system picks, so that two runs never collide) and starts the ranks; each rank sends its
figures back through a queue. strategy "none" runs one process without a wrapper and without a
group, measured the same way (the same threads), for the comparison: what the wrapper adds.

On the CPU the peak comes from the profiler's allocation records, as for one process. Gloo runs
each collective on a thread of its own and makes copies for it there and in the calling
thread (its reduce-scatter copies its input; its all-gather fills a temporary before the
output), held by the collective's work until gloo's thread lets go of it, a moment after the
collective returns or, for a prefetching all-gather, while the step goes on. Two figures come
of it: the peak allocated, with those copies where the profiler saw them freed; and the peak
between ops, without what an op allocated and freed before it was done (a convolution's
unfolded input) nor what a collective made for its own work: what a trace of the program's
tensors predicts, as the peak between ops on CUDA. Where the profiler records an allocation
but not its free (freed on a thread it did not follow), a collective's copy is taken as freed
when the collective returns. A block whose address is handed out again was free by then;
made before a collective, it is taken as freed when the first collective begun after it was
made returns, if sooner: gloo's work holds what it was handed (an all-gather's output, a
reduce-scatter's input), and under load gloo's thread, not the caller, can be the last to let
go of it, outside any event the profiler records (about 9% of the outputs of 800 asynchronous
all-gathers, none seen freed off the main thread). `unseen_frees` counts them all. Taking the
free at the reuse alone, one run in a helper's 33 (NiN under FSDP2, 2 gloo ranks, a loaded
2-core machine) read a rank's peak between ops 139,160 B high; replayed with this rule, its
records come to the other runs' byte. Left: a handed block still open when the step ends (its
free unseen, its address not reused) is counted as held; 3 of the 33 runs read 139,160 to
4,723,200 B high so (telling it from a buffer C++ still holds, as DDP's buckets, needs more
than the profiler gives). The rule undercounts where the caller really keeps a handed block
past the next collective and its free goes unseen (not observed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nin_profile.engine.training import (
    TrainingLoss,
    make_batch,
    make_optimizer,
    token_vocabulary,
    training_step,
)
from nin_profile.inputs import IMAGES_224, InputSpec
from nin_profile.models import DEFAULT_CLASSES, ModelConfig, get_model

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RankRequest:
    """Measure `world_size` ranks of `strategy` ("ddp", "fsdp"; "none": one process, no
    wrapper), each training `batch` examples a step with `threads` threads."""

    model: str
    strategy: str
    world_size: int
    batch: int
    device: str = "cpu"
    input_shape: tuple[int, ...] = IMAGES_224.shape  # one example's (InputSpec.shape)
    token_ids: bool = False
    batch_dim: int = 0  # InputSpec.batch_dim
    classes: int | None = DEFAULT_CLASSES
    optimizer: str = "sgd"
    bucket_cap_mb: float | None = None
    gradient_as_bucket_view: bool = False
    reshard_after_forward: bool = True
    param_dtype: str | None = None  # FSDP2's mixed-precision policy (parallel.mp_policy)
    reduce_dtype: str | None = None
    threads: int = 1
    warmup: int = 2  # the optimizer state; then DDP's rebuilt buckets


def backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def measure_ranks(req: RankRequest) -> dict[str, Any]:
    """Start the ranks, wait for them, and collect one result each (in rank order)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    store = None
    if req.strategy != "none":
        import torch.distributed as dist

        store = dist.TCPStore(HOST, 0, req.world_size + 1, is_master=True, wait_for_workers=False)
    port = store.port if store is not None else 0
    nprocs = 1 if req.strategy == "none" else req.world_size
    result: dict[str, Any] = {"backend": backend(req.device), "threads": req.threads}
    try:
        mp.start_processes(
            _rank_main, args=(asdict(req), port, queue), nprocs=nprocs, start_method="spawn"
        )
    except Exception as exc:  # a rank that raised or died: the others' figures mean nothing
        result["error"] = {"kind": "failed", "message": _first_line(exc)}
        return result
    ranks = sorted((queue.get() for _ in range(nprocs)), key=lambda r: r["rank"])
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        result["error"] = {"kind": "failed", "message": f"rank: {errors[0]}"}
    result["ranks"] = [r for r in ranks if "error" not in r]
    return result


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _rank_main(rank: int, request: dict[str, Any], port: int, queue: Any) -> None:
    """One rank, in a process of its own: join the group, measure, report, leave."""
    import torch.distributed as dist

    req = RankRequest(**request)
    torch.set_num_threads(req.threads)
    if req.device == "cuda":
        torch.cuda.set_device(rank)
    grouped = req.strategy != "none"
    if grouped:
        store = dist.TCPStore(HOST, port, req.world_size + 1, is_master=False)
        dist.init_process_group(
            backend(req.device), store=store, rank=rank, world_size=req.world_size
        )
    try:
        figures = measure_rank(req)
        queue.put({"rank": rank if grouped else None, **figures})
    except Exception as exc:
        queue.put({"rank": rank, "error": _first_line(exc)})
    finally:
        if grouped:
            dist.destroy_process_group()


@dataclass
class _Step:
    module: nn.Module  # what is called: the wrapper
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer

    def __call__(self) -> None:
        training_step(self.module, self.loss_fn, self.optimizer, self.x, self.y)


def _setup(req: RankRequest) -> _Step:
    """The model (seed 0, as the workers build it), wrapped, its batch and optimizer, after
    `req.warmup` steps; gradients cleared as each step begins."""
    torch.manual_seed(0)
    device = torch.device(req.device, torch.cuda.current_device()) if req.device == "cuda" else None
    inputs = InputSpec(req.input_shape, req.token_ids, req.batch_dim)
    model = get_model(req.model, **vars(ModelConfig.of(inputs, req.classes))).to(device or "cpu")
    module = wrap(model, req)
    model.train()
    classes, vocabulary = req.classes or 1, token_vocabulary(model)
    x, y = make_batch(req.batch, inputs, classes, device or "cpu", vocabulary=vocabulary)
    optimizer = make_optimizer(req.optimizer, model.parameters())
    step = _Step(module, model, x, y, TrainingLoss(req.classes, inputs.token_steps), optimizer)
    for _ in range(req.warmup):
        step.optimizer.zero_grad(set_to_none=True)
        step()
    step.optimizer.zero_grad(set_to_none=True)
    return step


def wrap(model: nn.Module, req: RankRequest) -> nn.Module:
    """DDP, or FSDP2 on each block and then the model (parallel.default_blocks) with the
    request's mixed-precision policy, as the prediction wraps it; the model itself for
    "none"."""
    if req.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model,
            device_ids=[torch.cuda.current_device()] if req.device == "cuda" else None,
            init_sync=False,  # every rank built the same weights (seed 0): nothing to broadcast
            bucket_cap_mb=req.bucket_cap_mb,
            gradient_as_bucket_view=req.gradient_as_bucket_view,
        )
    if req.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from nin_profile.engine.parallel import default_blocks, mp_policy

        policy = mp_policy(req.param_dtype, req.reduce_dtype)
        for block in [*default_blocks(model), model]:
            fully_shard(block, reshard_after_forward=req.reshard_after_forward, mp_policy=policy)
    return model


def measure_rank(req: RankRequest) -> dict[str, Any]:
    """This process's training step: its peak, its peak between ops, and what was held when
    it began."""
    if req.device == "cuda":
        return _measure_on_cuda(req)
    from torch.profiler import ProfilerActivity, profile

    timeline = CpuTimeline()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as setup_profile:
        step = _setup(req)
    baseline, _, _ = timeline.replay(setup_profile)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as step_profile:
        step()
    _, peak, between = timeline.replay(step_profile)
    return {
        "peak_allocated": peak,
        "peak_between_ops": between,
        "baseline_allocated": baseline,
        "unseen_frees": timeline.unseen_frees,
    }


def _measure_on_cuda(req: RankRequest) -> dict[str, Any]:
    step = _setup(req)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return {
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "peak_between_ops": None,
        "baseline_allocated": baseline,
        "unseen_frees": 0,
    }


@dataclass
class _Block:
    """One allocation: when it was made and freed, and the op it was made in."""

    made: int
    size: int
    op_end: int | None  # the end of the outermost op it was made in
    collective_end: int | None  # the end of the collective it was made in
    freed: int | None = None

    @property
    def scratch(self) -> bool:
        """Memory inside one op: freed before the op that made it returned, or made by a
        collective for its own work (gloo's copies, released when gloo's thread is done)."""
        if self.freed is None:
            return False
        if self.collective_end is not None:
            return True
        return self.op_end is not None and self.freed <= self.op_end


class CpuTimeline:
    """The CPU allocator's bytes in use, replayed from the profiler's allocation records of
    one session after another (what one leaves allocated, the next starts with)."""

    def __init__(self) -> None:
        self.live: dict[int, int] = {}  # address → bytes
        self.unseen_frees = 0

    def replay(self, prof: Any) -> tuple[int, int, int]:
        """(bytes in use after the session, the most in use during it, the most in use
        between ops: without what an op allocated and freed before it returned)."""
        held = between = sum(self.live.values())
        blocks, prior_frees = self._blocks(prof)
        events = [(t, -size, False) for t, size in prior_frees]
        for block in blocks:
            events.append((block.made, block.size, block.scratch))
            if block.freed is not None:
                events.append((block.freed, -block.size, block.scratch))
        peak, peak_between = held, between
        for _, delta, scratch in sorted(events, key=lambda e: (e[0], e[1])):
            held += delta
            peak = max(peak, held)
            if not scratch:
                between += delta
                peak_between = max(peak_between, between)
        return held, peak, peak_between

    def _blocks(self, prof: Any) -> tuple[list[_Block], list[tuple[int, int]]]:
        """The session's allocations, each with its free (seen, or as the module's docstring
        says where unseen), and the frees of allocations made before the session."""
        blocks: list[_Block] = []
        prior_frees: list[tuple[int, int]] = []
        open_blocks: dict[int, _Block] = {}
        unseen: list[_Block] = []  # made here, freed where the profiler did not follow
        for time, address, size, op_end, collective_end in sorted(_allocations(prof)):
            if size > 0 and (address in open_blocks or address in self.live):
                if address in open_blocks:
                    unseen.append(open_blocks[address])
                self._free(address, time - 1, open_blocks, prior_frees)  # unseen: reused now
                self.unseen_frees += 1
            if size > 0:
                open_blocks[address] = _Block(time, size, op_end, collective_end)
                blocks.append(open_blocks[address])
            elif address in open_blocks or address in self.live:
                self._free(address, time, open_blocks, prior_frees)
        for address, block in open_blocks.items():
            if block.collective_end is not None:  # held by the collective's work
                block.freed = block.collective_end
                self.unseen_frees += 1
            else:
                self.live[address] = block.size
        # a reused block made before a collective: free when that collective returned (what
        # it was handed, gloo's thread let go of), if sooner than the reuse
        ends = sorted((b.made, b.collective_end) for b in blocks if b.collective_end is not None)
        for block in unseen:
            end = next((e for made, e in ends if made > block.made), None)
            if block.collective_end is None and end is not None and block.freed is not None:
                block.freed = min(end, block.freed)
        return blocks, prior_frees

    def _free(
        self,
        address: int,
        time: int,
        open_blocks: dict[int, _Block],
        prior_frees: list[tuple[int, int]],
    ) -> None:
        if address in open_blocks:
            open_blocks.pop(address).freed = time
        else:
            prior_frees.append((time, self.live.pop(address)))


_OPS = ("aten::", "c10d::", "fsdp::", "gloo:")  # what bounds a kernel's scratch
# A collective, as the calling thread sees it (c10d::) and as gloo's thread runs it (gloo:).
_COLLECTIVES = ("c10d::", "gloo:")


def _allocations(prof: Any) -> Iterator[tuple[int, int, int, int | None, int | None]]:
    """(time, address, bytes ±, end of the outermost op it was made in, end of the collective
    it was made in) of every CPU allocation and free the profiler recorded."""
    from torch._C._profiler import _EventType, _ExtraFields_Allocation

    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    roots = prof.profiler.kineto_results.experimental_event_tree()
    pending: list[tuple[Any, int | None, int | None]] = [(e, None, None) for e in roots]
    while pending:
        event, op_end, collective_end = pending.pop()
        fields = event.extra_fields
        if event.tag == _EventType.Allocation and isinstance(fields, _ExtraFields_Allocation):
            if fields.device.type == "cpu":
                yield event.start_time_ns, fields.ptr, fields.alloc_size, op_end, collective_end
            continue
        if op_end is None and event.name.startswith(_OPS):
            op_end = event.end_time_ns
        if collective_end is None and event.name.startswith(_COLLECTIVES):
            collective_end = event.end_time_ns
        pending.extend((child, op_end, collective_end) for child in event.children)


def default_threads(world_size: int) -> int:
    """Threads for each rank: the machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // world_size)
