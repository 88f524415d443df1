"""nin_profile from Python: one call, `profile(...)`, that the command line uses too.

>>> import nin_profile
>>> p = nin_profile.profile("nin", "alexnet", batch=128)           # doctest: +SKIP
>>> p.models_frame()[["params", "flops_forward", "train_peak_bytes"]]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from nin_profile.engine.precision import get_precision
from nin_profile.environment import resolve_device
from nin_profile.errors import DeviceUnavailable, ProfileError, UnknownModel
from nin_profile.inputs import InputSpec
from nin_profile.results import Profile, RunConfig

ModelLike = nn.Module | str
"""A model: an nn.Module instance, a registered name ('nin') or an import path
('torchvision.models:resnet18')."""

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "momentum", "adam")
PARALLEL = ("none", "ddp", "fsdp")
# FSDP2's mixed-precision policy: what --fsdp-param-dtype and --fsdp-reduce-dtype take
FSDP_PARAM_DTYPES = ("bf16", "fp16")
FSDP_REDUCE_DTYPES = ("fp32", "bf16", "fp16")


def model_names(names: Sequence[str]) -> tuple[str, ...]:
    """Registered names and import paths, each once; one line on anything else."""
    from nin_profile.models import instance, list_models

    if not names:
        raise ProfileError("no model given; name at least one (see --list-models)")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ProfileError(f"--models names {', '.join(twice)} more than once; give each once")
    known = [s.name for s in list_models()]
    for name in names:
        if ":" not in name and name not in known and instance(name) is None:
            raise UnknownModel(name, known)
    return tuple(names)


def input_spec(
    shape: tuple[int, ...], token_ids: bool, batch_dim: int, name: str = "batch_dim"
) -> InputSpec:
    """One example of the input, the batch's place in it checked: one of 0 (first) to
    len(shape) (last)."""
    if not isinstance(batch_dim, int) or isinstance(batch_dim, bool):
        raise ProfileError(f"{name} must be a whole number, got {batch_dim!r}")
    if not 0 <= batch_dim <= len(shape):
        raise ProfileError(
            f"{name} {batch_dim}: an example of {len(shape)} dims puts the batch in dim 0 to "
            f"{len(shape)}"
        )
    if token_ids and batch_dim:
        # the loss reads logits as (batch, classes) or (batch, steps, classes)
        raise ProfileError(
            f"token ids with {name} {batch_dim}: a time-first language model's loss is not "
            "traced (its logits are read batch first); give the batch first"
        )
    return InputSpec(shape, token_ids, batch_dim)


def input_fields(
    inputs: InputSpec, models: Sequence[str], channels_last: bool = False
) -> dict[str, Any]:
    """RunConfig's fields for one example of `inputs`: channels and image_size for square
    images (what the built-in models are built for); else input_shape and token_ids, for
    models of the user's own. A built-in model on other inputs, or channels_last on other than
    images, is one line."""
    if image := inputs.square_image:
        return {"channels": image[0], "image_size": image[1]}
    from nin_profile.models import is_built_in

    built_in = [name for name in models if is_built_in(name)]
    if built_in:
        verb = "is" if len(built_in) == 1 else "are"
        raise ProfileError(
            f"{', '.join(built_in)} {verb} built for square images (channels × side × side), "
            f"not {inputs.describe()}; other inputs are for models of your own"
        )
    if channels_last and (inputs.token_ids or len(inputs.shape) != 3 or inputs.batch_dim):
        where = f" with {inputs.batch_place}" if inputs.batch_dim else ""
        raise ProfileError(
            "channels_last lays out images (channels × height × width, the batch first), not "
            f"{inputs.describe()}{where}"
        )
    return {
        "channels": None,
        "image_size": None,
        "input_shape": inputs.shape,
        "token_ids": inputs.token_ids,
        "batch_dim": inputs.batch_dim,
    }


def check_device(device: str, static: bool, max_batch: bool) -> str:
    """The device a run measures on or predicts for ('auto' resolved), or one line why not."""
    from nin_profile.environment import cuda_available

    if device not in DEVICES:
        raise ProfileError(f"device {device!r}: choose one of {', '.join(DEVICES)}")
    resolved = resolve_device(device)
    if resolved == "cuda" and not static and not cuda_available():
        raise DeviceUnavailable(
            "--device cuda asks for a measurement, but CUDA is not available here; "
            "use --device cpu to measure on the CPU, or --static --device cuda to predict "
            "CUDA memory without a GPU"
        )
    if max_batch and (static or resolved != "cuda"):
        raise ProfileError(
            "--max-batch runs real training steps until one runs out of GPU memory, so it needs "
            "--device cuda without --static (on the CPU, running out of memory swaps or kills "
            "the machine); to predict instead, use --memory-budget SIZE"
        )
    return resolved


def check_parallel(
    parallel: str,
    world_sizes: Sequence[int],
    bucket_cap_mb: float | None = None,
    gradient_as_bucket_view: bool = False,
    reshard_after_forward: bool = True,
    measured_on: str | None = None,
    precisions: Sequence[str] = ("fp32",),
    fsdp_param_dtype: str | None = None,
    fsdp_reduce_dtype: str | None = None,
) -> dict[str, Any]:
    """RunConfig's per-rank fields, or one line on options that do not go together.
    measured_on: the device real ranks are measured on (None for --static); precisions: the
    run's and those compared; fsdp_param_dtype, fsdp_reduce_dtype: FSDP2's mixed-precision
    policy."""
    if parallel not in PARALLEL:
        raise ProfileError(f"parallel {parallel!r}: choose one of {', '.join(PARALLEL)}")
    lower = [p for p in precisions if p != "fp32"]
    if parallel != "none" and lower:
        instead = (
            "; FSDP2's own mixed precision is --fsdp-param-dtype bf16|fp16"
            if parallel == "fsdp"
            else ""
        )
        raise ProfileError(
            f"--parallel {parallel} runs in fp32 only for now ({', '.join(lower)} given): "
            f"autocast under the wrappers is not traced{instead}"
        )
    policy = _fsdp_policy(parallel, fsdp_param_dtype, fsdp_reduce_dtype)
    if parallel == "none":
        given = [
            name
            for name, value in (
                ("--world-size", world_sizes),
                ("--bucket-cap-mb", bucket_cap_mb),
                ("--gradient-as-bucket-view", gradient_as_bucket_view),
                ("--no-reshard-after-forward", not reshard_after_forward),
            )
            if value
        ]
        if given:
            raise ProfileError(f"{', '.join(given)} needs --parallel ddp or --parallel fsdp")
        return {}
    if not world_sizes:
        raise ProfileError(
            f"--parallel {parallel} needs --world-size N (or several: --world-size 1,8,64,1024)"
        )
    if any(not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in world_sizes):
        raise ProfileError(f"world sizes must be positive whole numbers, got {list(world_sizes)}")
    if parallel == "fsdp" and (bucket_cap_mb is not None or gradient_as_bucket_view):
        raise ProfileError(
            "--bucket-cap-mb and --gradient-as-bucket-view are DDP's options; FSDP2 has no buckets"
        )
    if parallel == "ddp" and not reshard_after_forward:
        raise ProfileError("--no-reshard-after-forward is FSDP2's option; DDP does not shard")
    if bucket_cap_mb is not None and not (_finite(bucket_cap_mb) and bucket_cap_mb > 0):
        raise ProfileError(
            f"--bucket-cap-mb must be a finite number above 0, got {bucket_cap_mb!r}"
        )
    if measured_on is not None:
        from nin_profile.parallel_run import check_real_ranks

        check_real_ranks(world_sizes, measured_on)
    return {
        "parallel": parallel,
        "world_sizes": ascending_once(tuple(world_sizes)),
        "bucket_cap_mb": bucket_cap_mb,
        "gradient_as_bucket_view": gradient_as_bucket_view,
        "reshard_after_forward": reshard_after_forward,
        **policy,
    }


def _fsdp_policy(
    parallel: str, param_dtype: str | None, reduce_dtype: str | None
) -> dict[str, str | None]:
    """RunConfig's fields of FSDP2's mixed-precision policy, or one line why not."""
    given = [
        name
        for name, value in (
            ("--fsdp-param-dtype", param_dtype),
            ("--fsdp-reduce-dtype", reduce_dtype),
        )
        if value is not None
    ]
    if given and parallel != "fsdp":
        raise ProfileError(
            f"{', '.join(given)} needs --parallel fsdp: it is FSDP2's mixed-precision policy"
        )
    for name, value, allowed in (
        ("fsdp_param_dtype", param_dtype, FSDP_PARAM_DTYPES),
        ("fsdp_reduce_dtype", reduce_dtype, FSDP_REDUCE_DTYPES),
    ):
        if value is not None and value not in allowed:
            raise ProfileError(f"{name} {value!r}: choose one of {', '.join(allowed)}")
    if parallel != "fsdp":
        return {}
    return {"fsdp_param_dtype": param_dtype, "fsdp_reduce_dtype": reduce_dtype}


def run(config: RunConfig, on_progress: Callable[[Any], None] | None = None) -> Profile:
    """Analyse, measure, sweep and fit as `config` says: what `profile` and the CLI call."""
    from nin_profile.run import run_profile

    if config.compare_peers:
        from nin_profile.peers import import_peers

        import_peers()  # missing peers: one line now, not after the analysis
    return run_profile(config, on_progress) if on_progress else run_profile(config)


def profile(
    *models: ModelLike,
    input_size: Sequence[int] = (1, 224, 224),
    token_ids: bool = False,
    batch_dim: int = 0,
    batch: int = 128,
    device: str = "auto",
    optimizer: str = "sgd",
    precision: str = "fp32",
    channels_last: bool = False,
    compare_precisions: Iterable[str] = (),
    classes: int | None = None,
    measure: bool = False,
    sweep_batches: Iterable[int] = (),
    memory_budget: int | str | None = None,
    cuda_context: int | str | None = None,
    max_batch: bool = False,
    cpu_time_budget: float = 120.0,
    warmup: int = 3,
    iterations: int = 20,
    compare_peers: bool = False,
    parallel: str = "none",
    world_size: int | Iterable[int] = (),
    bucket_cap_mb: float | None = None,
    gradient_as_bucket_view: bool = False,
    reshard_after_forward: bool = True,
    fsdp_param_dtype: str | None = None,
    fsdp_reduce_dtype: str | None = None,
) -> Profile:
    """Profile `models` (nn.Module instances, registered names such as "nin", or import paths
    "package.module:callable") for one batch of inputs of `input_size` each: (channels, height,
    width) images, or any shape a model of your own takes ((100, 40): 100 steps of 40 features);
    with `token_ids`, int64 token ids for a model that starts with an nn.Embedding ((512,): 512
    tokens an example). `batch_dim` is where the batch goes in the input: 0, first; 1 for a
    time-first recurrent model (`batch_first=False`) that takes (time, batch, features).

    Estimates every figure without running (static analysis on meta tensors); with
    `measure=True` also measures on `device` ("auto": CUDA where present, else the CPU), each
    measurement in a process of its own. A module instance is never changed: the analysis
    works on a meta copy (no weight is copied), a measurement on a copy loaded in its worker
    process (whose class must be importable there: not defined in a notebook). The other
    keywords are the command line's flags (`--sweep-batch`, `--memory-budget 6GiB`,
    `parallel="fsdp", world_size=(8, 64)`, `fsdp_param_dtype="bf16"`, `precision="amp-bf16"`,
    `compare_precisions=("fp32", "amp-fp16")`, ...); sizes are bytes or strings with a unit;
    with `parallel`, `batch` is each rank's batch. Returns the Profile the command line writes as
    profile.json. Bad input raises ProfileError with one line saying why."""
    from nin_profile.models import eager, forget_instance, register_instance

    if not isinstance(token_ids, bool):
        raise ProfileError(f"token_ids must be True or False, got {token_ids!r}")
    inputs = input_spec(_shape(input_size), token_ids, batch_dim)
    static = not measure
    resolved = check_device(device, static, max_batch)
    if optimizer not in OPTIMIZERS:
        raise ProfileError(f"optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    compared = tuple(compare_precisions)
    for name in (precision, *compared):
        get_precision(name)  # one line on an unknown name
    if len(set(compared)) != len(compared):
        raise ProfileError(f"compare_precisions {compared!r} names a precision more than once")
    sizes = (world_size,) if isinstance(world_size, int) else tuple(world_size)
    per_rank = check_parallel(
        parallel,
        sizes,
        bucket_cap_mb,
        gradient_as_bucket_view,
        reshard_after_forward,
        None if static else resolved,
        (precision, *compared),
        fsdp_param_dtype,
        fsdp_reduce_dtype,
    )
    names: list[str] = []
    registered: list[str] = []
    try:
        for model in models:
            if isinstance(model, nn.Module):
                model = eager(f"the {type(model).__name__} given", model)
                _check_importable(model, measure)
                name = register_instance(model, set(names))
                registered.append(name)
                names.append(name)
            elif isinstance(model, str):
                names.append(model)
            else:
                raise ProfileError(
                    f"a model must be an nn.Module, a name or an import path, not a "
                    f"{type(model).__name__}"
                )
        config = RunConfig(
            models=model_names(names),
            batch=_positive("batch", batch),
            device=resolved,
            **input_fields(inputs, names, channels_last),
            classes=classes,
            optimizer=optimizer,
            precision=precision,
            channels_last=channels_last,
            compare_precisions=compared,
            static=static,
            sweep_batches=ascending_once(tuple(_positive("sweep batch", b) for b in sweep_batches)),
            max_batch=max_batch,
            memory_budget=_size("memory_budget", memory_budget),
            cuda_context=_size("cuda_context", cuda_context),
            cpu_time_budget=_seconds("cpu_time_budget", cpu_time_budget),
            warmup=_positive("warmup", warmup),
            iterations=_positive("iterations", iterations),
            compare_peers=compare_peers,
            **per_rank,
        )
        return run(config)
    finally:
        for name in registered:
            forget_instance(name)


def ascending_once(values: tuple[int, ...]) -> tuple[int, ...]:
    """Batch sizes or world sizes in ascending order; one given twice is refused."""
    twice = sorted({n for n in values if values.count(n) > 1})
    if twice:
        raise ProfileError(f"{', '.join(map(str, twice))} given more than once; give each once")
    return tuple(sorted(values))


def _shape(input_size: Sequence[int]) -> tuple[int, ...]:
    """One example's sizes, each a positive whole number."""
    sizes = tuple(input_size) if isinstance(input_size, (tuple, list)) else ()
    if not sizes:
        raise ProfileError(
            f"input_size {input_size!r}: give one example's sizes as a tuple "
            "((channels, height, width) for images)"
        )
    return tuple(_positive("each size in input_size", n) for n in sizes)


def _positive(what: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ProfileError(f"{what} must be a positive whole number, got {value!r}")
    return value


def _finite(value: object) -> bool:
    """A finite int or float (not a bool, not nan or inf)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value)  # type: ignore[arg-type]


def _seconds(what: str, value: float) -> float:
    """A time budget: a finite number of seconds, 0 or more (0: no limit)."""
    if not _finite(value) or value < 0:
        raise ProfileError(f"{what} must be a finite number of seconds, 0 or more, got {value!r}")
    return float(value)


def _size(what: str, value: int | str | None) -> int | None:
    from nin_profile.measure.plan import parse_bytes

    if value is None or isinstance(value, int):
        return value
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise ProfileError(f"{what}: {exc}") from exc


def _check_importable(model: nn.Module, measure: bool) -> None:
    if measure and type(model).__module__ == "__main__":
        raise ProfileError(
            f"measure=True needs the worker process to import {type(model).__name__}, which "
            "is defined in __main__ (a notebook or a script): define it in a module (a .py "
            "file), or profile it with measure=False"
        )
