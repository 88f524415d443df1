"""The report's per-rank section (--parallel ddp|fsdp): rank 0's memory at each world size by
category, the estimators people use beside it, where sharding stops paying, the largest batch a
rank fits, and real ranks measured beside one process. Pure: no model, no device, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from nin_profile.parallel_results import ParallelProfile, RankCheck, RankProfile
from nin_profile.render.general import chart, join
from nin_profile.render.sections import Section
from nin_profile.render.text import display, listing, md_table, rel_error
from nin_profile.results import BatchFit, MemoryBreakdown, MemoryCategory, ModelProfile, Profile
from nin_profile.units import fmt_bytes, fmt_int, fmt_mib, fmt_percent

STRATEGY_NAMES = {"ddp": "DistributedDataParallel", "fsdp": "FSDP2 (fully_shard)"}
# The categories a rank's table and chart show, in this order (bottom of the stack first).
RANK_CATEGORIES = (
    MemoryCategory.PARAMS,
    MemoryCategory.UNSHARDED_PARAMS,
    MemoryCategory.GRADS,
    MemoryCategory.OPTIMIZER,
    MemoryCategory.COMMUNICATION,
    MemoryCategory.WORKSPACE,
    MemoryCategory.BUFFERS,
    MemoryCategory.INPUT,
    MemoryCategory.ACTIVATIONS,
    MemoryCategory.TRANSIENT,
)
RANK_TITLES = {
    MemoryCategory.PARAMS: "parameters (this rank's)",
    MemoryCategory.UNSHARDED_PARAMS: "gathered parameters",
    MemoryCategory.GRADS: "gradients",
    MemoryCategory.OPTIMIZER: "optimizer state",
    MemoryCategory.COMMUNICATION: "communication",
    MemoryCategory.WORKSPACE: "workspace",
    MemoryCategory.BUFFERS: "buffers",
    MemoryCategory.INPUT: "input",
    MemoryCategory.ACTIVATIONS: "saved activations",
    MemoryCategory.TRANSIENT: "transient",
}
MODEL_STATES = (MemoryCategory.PARAMS, MemoryCategory.GRADS, MemoryCategory.OPTIMIZER)
# A step of world size that lowers the per-rank peak by less than this no longer pays.
STILL_PAYS = 0.05


def _parallel(profile: Profile) -> list[tuple[ModelProfile, ParallelProfile]]:
    return [(m, m.parallel) for m in profile.models if m.parallel is not None]


def shown_categories(points: Sequence[MemoryBreakdown]) -> list[MemoryCategory]:
    return [c for c in RANK_CATEGORIES if c is MemoryCategory.PARAMS or any(b[c] for b in points)]


def how_wrapped(profile: Profile) -> str:
    """The wrapper and its options, in words."""
    c = profile.config
    if c.parallel == "ddp":
        cap = (
            f"buckets of {c.bucket_cap_mb:g} MiB"
            if c.bucket_cap_mb is not None
            else "DDP's default buckets (25 MiB, the first 1 MiB)"
        )
        view = (
            "gradients as views into the buckets"
            if c.gradient_as_bucket_view
            else "gradients apart from the buckets (gradient_as_bucket_view off)"
        )
        return f"`DistributedDataParallel` with {cap} and {view}"
    reshard = (
        "each block's gathered parameters freed after its forward and gathered again for its "
        "backward (reshard_after_forward)"
        if c.reshard_after_forward
        else "each block's gathered parameters kept from its forward to its backward "
        "(reshard_after_forward off)"
    )
    return (
        "FSDP2: `fully_shard` on each block (each direct child of the model that holds "
        f"parameters), then on the model itself; {reshard}; {policy_words(profile)}"
    )


def policy_words(profile: Profile) -> str:
    """FSDP2's mixed-precision policy in words (MixedPrecisionPolicy's defaults followed)."""
    c = profile.config
    param, reduce = c.fsdp_param_dtype, c.fsdp_reduce_dtype or c.fsdp_param_dtype
    if param is None and reduce is None:
        return (
            "no mixed-precision policy (parameters, gradients and collectives in the model's dtype)"
        )
    gathered = (
        f"each block gathered and its forward and backward computed in {param} (its inputs "
        f"cast to {param}, its saved activations in {param}), the shards, the sharded "
        "gradients and the optimizer state kept in the model's dtype"
        if param
        else "parameters gathered and computed in the model's dtype"
    )
    default = " (FSDP2's default: the param dtype)" if c.fsdp_reduce_dtype is None else ""
    return (
        f"FSDP2's mixed-precision policy (`MixedPrecisionPolicy`, param_dtype {param or 'unset'}, "
        f"reduce_dtype {c.fsdp_reduce_dtype or 'unset'}): {gathered}; gradients reduce-scattered "
        f"in {reduce}{default}; one process, without the wrapper, runs without it"
    )


def intro(profile: Profile) -> str:
    c = profile.config
    sizes = listing([fmt_int(n) for n in c.world_sizes])
    return (
        f"Rank 0 of {sizes} ranks under {how_wrapped(profile)}. **--batch {c.batch} is each "
        f"rank's batch** (a global batch of {c.batch} × the world size). Predicted without a "
        "GPU and without starting a process for the other ranks: PyTorch's own wrapper runs on "
        "a process group of the `fake` backend, on meta (DDP) or fake CPU tensors (FSDP2), and "
        "every allocation and free it makes is traced, so that the buckets, the all-gather "
        "and reduce-scatter buffers, the shards and the gathered blocks, and when each is "
        "alive, come from the library itself. Each table gives rank 0's training step at its "
        "peak, by category, and the peak of its inference pass (eval mode, no_grad, through "
        "the wrapper)."
    )


def rank_table(points: Sequence[RankProfile], single: ModelProfile) -> str:
    """One row per world size, with one process (no wrapper) at the top."""
    shown = shown_categories([p.train for p in points])
    budget = any(p.fits for p in points)
    cuda = single.train.reserved is not None and all(p.train.reserved for p in points)
    headers = [
        "Ranks",
        *(f"{RANK_TITLES[cat]} (MiB)" for cat in shown),
        "train peak (MiB)",
        *(["train reserved, simulated (MiB)"] if cuda else []),
        "inference peak (MiB)",
        "collectives / step (MiB)",
    ]
    if budget:
        headers.append("largest batch a rank fits")
    rows = [
        [
            "one process",
            *(fmt_mib(single.train[cat]) for cat in shown),
            fmt_mib(single.train.peak),
            *([fmt_mib(single.train.reserved)] if cuda else []),
            fmt_mib(single.inference.peak),
            "–",
            *([_fit_words(single.fits)] if budget else []),
        ]
    ]
    for p in points:
        rows.append(
            [
                fmt_int(p.world_size),
                *(fmt_mib(p.train[cat]) for cat in shown),
                fmt_mib(p.train.peak),
                *([fmt_mib(p.train.reserved)] if cuda else []),
                fmt_mib(p.inference.peak),
                fmt_mib(p.collective_bytes),
                *([_fit_words(p.fits)] if budget else []),
            ]
        )
    return md_table(headers, rows, [False] + [True] * (len(headers) - 1))


def _fit_words(fits: Sequence[BatchFit]) -> str:
    fit = next((f for f in fits if f.phase == "train"), None)
    if fit is None:
        return "–"
    return fmt_int(fit.batch) if fit.batch else "none"


def scaling_sentence(m: ModelProfile, par: ParallelProfile) -> str:
    """Where more ranks stop lowering the per-rank peak, and what is left when they do."""
    points = sorted(par.points, key=lambda p: p.world_size)
    name = display(m.name)
    if par.strategy == "ddp":
        added = points[-1].train.peak - m.train.peak
        comm = points[-1].train[MemoryCategory.COMMUNICATION]
        return (
            f"Under DDP every rank holds the whole model: {name}'s per-rank peak is "
            f"{fmt_bytes(points[-1].train.peak)} at {ranks(points[-1].world_size)}, "
            f"{fmt_bytes(added)} more than one process, of which {fmt_bytes(comm)} are the "
            "gradient buckets (beside the gradients unless gradient_as_bucket_view); more ranks "
            "do not lower it."
        )
    if len(points) < 2:
        return _held_words(name, points[0]) + "."
    steps = []
    stops = None
    for before, after in pairwise(points):
        drop = (before.train.peak - after.train.peak) / before.train.peak
        steps.append(
            f"from {fmt_int(before.world_size)} to {fmt_int(after.world_size)} ranks "
            + (f"{100 * drop:.1f}% lower" if drop >= 0 else f"{-100 * drop:.1f}% higher")
        )
        if stops is None and drop < STILL_PAYS:
            stops = before
    text = f"{name[:1].upper()}{name[1:]}'s per-rank peak: {', '.join(steps)}"
    if stops is None:
        return text + f" (each step saves at least {100 * STILL_PAYS:.0f}%)."
    text += (
        f". From {ranks(stops.world_size)} on, more ranks save less than "
        f"{100 * STILL_PAYS:.0f}% a step: {_held_words(name, points[-1])}."
    )
    return text + _padding_words(points)


def ranks(n: int) -> str:
    return f"{fmt_int(n)} rank{'' if n == 1 else 's'}"


def _padding_words(points: Sequence[RankProfile]) -> str:
    """Where a block gathers more at the largest world size than at the one before: FSDP2
    pads each parameter's first dimension to a multiple of the world size."""
    before, last = points[-2], points[-1]
    gathered = MemoryCategory.UNSHARDED_PARAMS
    if last.train[gathered] <= before.train[gathered]:
        return ""
    return (
        f" The gathered block grows from {fmt_bytes(before.train[gathered])} at "
        f"{ranks(before.world_size)} to {fmt_bytes(last.train[gathered])} at "
        f"{ranks(last.world_size)}: FSDP2 pads each parameter's first dimension to a multiple "
        f"of the world size (a layer of fewer output channels than ranks gathers "
        f"{fmt_int(last.world_size)} rows at {ranks(last.world_size)}), and the all-gather and "
        "reduce-scatter buffers grow with it."
    )


def _held_words(name: str, point: RankProfile) -> str:
    """What sharding does not shrink, at `point`."""
    b = point.train
    states = sum(b[c] for c in MODEL_STATES)
    left = b.peak - states
    flowing = b[MemoryCategory.INPUT] + b[MemoryCategory.TRANSIENT]
    return (
        f"at {ranks(point.world_size)} the shards of parameters, gradients and "
        f"optimizer state are {fmt_bytes(states)}, and the rest of the peak, "
        f"{fmt_bytes(left)} ({fmt_percent(left, b.peak, 0)}), is what sharding leaves whole: "
        f"saved activations {fmt_bytes(b[MemoryCategory.ACTIVATIONS])} "
        f"({fmt_percent(b[MemoryCategory.ACTIVATIONS], b.peak, 0)} of the peak), "
        f"the gathered block {fmt_bytes(b[MemoryCategory.UNSHARDED_PARAMS])}, "
        f"communication buffers {fmt_bytes(b[MemoryCategory.COMMUNICATION])}, "
        f"the input and what flows back {fmt_bytes(flowing)}"
    )


def estimators_table(profile: Profile) -> str:
    rows = []
    for m, par in _parallel(profile):
        for p in par.points:
            e = p.estimators
            rows.append(
                [
                    m.name,
                    fmt_int(p.world_size),
                    fmt_mib(p.train.peak),
                    fmt_mib(e.zero2),
                    fmt_mib(e.zero3),
                    fmt_mib(e.accelerate),
                    fmt_mib(sum(p.train[c] for c in MODEL_STATES)),
                    fmt_mib(p.train.peak - sum(p.train[c] for c in MODEL_STATES)),
                ]
            )
    headers = [
        "Model",
        "Ranks",
        "ours: peak (MiB)",
        "DeepSpeed ZeRO-2 (MiB)",
        "DeepSpeed ZeRO-3 (MiB)",
        "accelerate (MiB)",
        "ours: model states (MiB)",
        "ours: the rest (MiB)",
    ]
    return md_table(headers, rows, [False] + [True] * 7)


def estimators_words(profile: Profile) -> str:
    optimizer = profile.config.optimizer
    return (
        "DeepSpeed's `estimate_zero2_model_states_mem_needs` "
        "(deepspeed/runtime/zero/stage_1_and_2.py) and `estimate_zero3_model_states_mem_needs` "
        "(stage3.py), without offload, for N GPUs on one node, give `2 * P + int(18 * P / N)` "
        "and `4 * L + int(18 * P / N)` bytes a GPU, P the parameters counted once, L the "
        "largest module's own parameters; DeepSpeed's comment reads 2 = fp16 parameters and "
        "18 = fp16 and fp32 gradients, fp32 parameters and Adam's two fp32 moments: the model "
        "states of fp16 training with Adam, whatever the batch. `accelerate estimate-memory` "
        "(accelerate/commands/estimate.py) gives for float32 training with Adam the largest "
        "of its stages, the step's 4 × the model's size, for one device whatever N. All three "
        "count model states only: none counts saved activations, the input, the gradients "
        "flowing back, DDP's buckets or FSDP2's all-gather and reduce-scatter buffers, and "
        "ZeRO-3's one gathered layer stands where FSDP2 gathers a whole block; they assume "
        f"Adam (this run trains with {optimizer}) and, for DeepSpeed, mixed precision. Ours "
        "counts what the wrapper allocates in this run; 'model states' is our parameters, "
        "gradients and optimizer state at the peak, 'the rest' what the estimators leave out."
    )


def checks_table(profile: Profile) -> str:
    rows = [_check_row(m.name, c) for m, par in _parallel(profile) for c in par.checks]
    headers = [
        "Model",
        "Ranks",
        "Batch a rank",
        "Threads",
        "Backend",
        "rank: est. (MiB)",
        "rank: meas., worst (MiB)",
        "one process: est. (MiB)",
        "one process: meas. (MiB)",
        "added: est. (MiB)",
        "added: meas. (MiB)",
        "err",
    ]
    return md_table(headers, rows, [False] + [True] * 11)


def _pair(peak: int | None, between: int | None) -> str:
    """'84.886 / 79.096': peak allocated / between ops (MiB)."""
    if between is None:
        return fmt_mib(peak, 3)
    return f"{fmt_mib(peak, 3)} / {fmt_mib(between, 3)}"


def _check_row(name: str, check: RankCheck) -> list[str]:
    head = [name, fmt_int(check.world_size), fmt_int(check.batch)]
    if check.error or check.worst is None or check.single is None:
        return [*head, "", "", f"failed: {check.error or 'no rank reported'}", *[""] * 6]
    between = [r.peak_between_ops for r in check.ranks if r.peak_between_ops is not None]
    added_between = check.added_measured(between_ops=True)
    added = check.added_measured()
    return [
        *head,
        str(check.threads),
        check.backend,
        fmt_mib(check.predicted_rank, 3),
        _pair(check.worst.peak_allocated, max(between) if between else None),
        fmt_mib(check.predicted_single, 3),
        _pair(check.single.peak_allocated, check.single.peak_between_ops),
        fmt_mib(check.added_predicted, 3),
        _pair(added, added_between),
        " / ".join(
            rel_error(check.added_predicted, a) for a in (added, added_between) if a is not None
        ),
    ]


def checks_words(profile: Profile) -> str:
    checks = [c for _, par in _parallel(profile) for c in par.checks]
    backends = sorted({c.backend for c in checks})
    return (
        f"Each rank ran in a process of its own, started by torch.multiprocessing and joined "
        f"over loopback ({listing(backends)}), and measured its training step as a worker "
        "measures one process (the peak from the profiler's allocation records on the CPU); "
        "one process without the wrapper was measured the same way, at the same batch and "
        "with the same threads, so that what the wrapper adds per rank is measured both ways. "
        "'worst' is the rank with the highest peak. Where two figures stand as a / b, a is "
        "the peak allocated and b the peak between ops, which leaves out what an op "
        "allocates and frees before it is done (a CPU convolution's unfolded input, the "
        "temporary a gloo collective makes on its own thread): the figure a trace of tensors "
        "predicts, as on CUDA. err = (est. − meas.) / meas. of what the wrapper adds, against "
        "each."
    )


def parallel_section(profile: Profile, charts: bool) -> str:
    c = profile.config
    title = f"## Per rank: {STRATEGY_NAMES.get(c.parallel, c.parallel)}"
    parts = [title, intro(profile)]
    fit = next((f for _, par in _parallel(profile) for p in par.points for f in p.fits), None)
    if fit:
        parts.append(
            f"Largest batch a rank fits: {fit.how}. One process's, in each table's first row, "
            "is found the same way."
        )
    for m, par in _parallel(profile):
        parts += [
            f"### {display(m.name)}",
            rank_table(par.points, m),
            scaling_sentence(m, par),
            chart(profile, "ranks", f"{m.name}: memory per rank", charts, model=m.name),
        ]
    parts += [
        "### Beside the estimators people use",
        estimators_table(profile),
        estimators_words(profile),
    ]
    if any(par.checks for _, par in _parallel(profile)):
        parts += ["### Measured with real ranks", checks_table(profile), checks_words(profile)]
    return join(*parts)


PARALLEL = Section("parallel", parallel_section, lambda p: bool(_parallel(p)))
