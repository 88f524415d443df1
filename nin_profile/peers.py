"""What torchinfo and fvcore say of a model, to set beside our figures (`--compare-peers`).

Both run the model for real, on the CPU: at batch 1 and 2, from which each figure follows at
the run's batch (mult-adds, FLOPs and activation sizes grow with it; parameters do not).
They are the `peers` extra: `pip install "nin-profile[peers]"`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from nin_profile.engine.training import make_batch, token_vocabulary
from nin_profile.errors import ProfileError, user_error
from nin_profile.inputs import InputSpec
from nin_profile.models import ModelConfig, get_model, instance
from nin_profile.results import PeerFigures


def import_peers() -> tuple[Any, Any]:
    try:
        import torchinfo
        from fvcore.nn import FlopCountAnalysis
    except ImportError as exc:
        raise ProfileError(
            f"--compare-peers needs torchinfo and fvcore ({exc.name or exc} is missing): "
            'pip install "nin-profile[peers]"'
        ) from exc
    return torchinfo, FlopCountAnalysis


def _model_and_batch(
    name: str, inputs: InputSpec, classes: int, batch: int
) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = get_model(name, **vars(ModelConfig.of(inputs, classes)))
    if instance(name) is not None:  # a module handed to the Python API: theirs, not ours
        model = copy.deepcopy(model).to("cpu")
    model.eval()
    x, _ = make_batch(batch, inputs, classes, "cpu", vocabulary=token_vocabulary(model))
    return model, x


def _run_at(name: str, inputs: InputSpec, classes: int, batch: int) -> tuple[Any, Any]:
    """torchinfo's statistics and fvcore's count of `name` run at `batch` on the CPU, each the
    tool's result or what it raised: the model is built once for both."""
    torchinfo, flop_count_analysis = import_peers()
    model, x = _model_and_batch(name, inputs, classes, batch)
    try:
        stats: Any = torchinfo.summary(model, input_data=x, verbose=0, device="cpu")
    except Exception as exc:
        stats = exc.__cause__ or exc  # torchinfo wraps what the model raised in its own error
    try:
        with torch.no_grad():
            count: Any = flop_count_analysis(model, x)
            count.unsupported_ops_warnings(False)
            count.uncalled_modules_warnings(False)
            count.total()
    except Exception as exc:
        count = exc
    return stats, count


def _both_batches(one: Any, two: Any) -> tuple[tuple[Any, Any] | None, str | None]:
    """A tool's results at batch 1 and 2, or None and what it raised, in one line (a model
    the tool cannot run: fvcore's torch.jit trace refuses some that PyTorch runs)."""
    for result in (one, two):
        if isinstance(result, BaseException):
            return None, user_error(result)
    return (one, two), None


def peer_figures(name: str, inputs: InputSpec, classes: int, batch: int) -> PeerFigures:
    """torchinfo's summary and fvcore's FLOP count of `name` for `batch`, from runs at batch 1
    and 2: each figure is affine in the batch (torchinfo adds a few bytes to each input's size),
    so two points give it at any batch without running the model at that batch. A tool that
    fails on the model leaves its figures None and says why."""
    (stats1, count1), (stats2, count2) = (_run_at(name, inputs, classes, b) for b in (1, 2))
    summaries, torchinfo_error = _both_batches(stats1, stats2)
    counts, fvcore_error = _both_batches(count1, count2)

    def at(one: float, two: float) -> int:
        return int(one + (two - one) * (batch - 1))

    torchinfo: dict[str, int | None] = dict.fromkeys(_TORCHINFO_FIELDS)
    if summaries:
        s1, s2 = summaries
        torchinfo = {
            "torchinfo_params": int(s1.total_params),
            "torchinfo_mult_adds": at(s1.total_mult_adds, s2.total_mult_adds),
            "torchinfo_input_bytes": at(s1.total_input, s2.total_input),
            "torchinfo_pass_bytes": at(s1.total_output_bytes, s2.total_output_bytes),
            "torchinfo_param_bytes": int(s1.total_param_bytes),
        }
    fvcore: dict[str, Any] = {"fvcore_flops": None}
    if counts:
        c1, c2 = counts
        ops1, ops2 = c1.by_operator(), c2.by_operator()
        fvcore = {
            "fvcore_flops": at(c1.total(), c2.total()),
            "fvcore_unsupported": {str(op): int(n) for op, n in c1.unsupported_ops().items()},
            "fvcore_by_operator": {str(op): at(ops1[op], ops2[op]) for op in ops1},
        }
    return PeerFigures(
        batch=batch,
        **torchinfo,  # type: ignore[arg-type]
        **fvcore,
        torchinfo_error=torchinfo_error,
        fvcore_error=fvcore_error,
    )


_TORCHINFO_FIELDS = (
    "torchinfo_params",
    "torchinfo_mult_adds",
    "torchinfo_input_bytes",
    "torchinfo_pass_bytes",
    "torchinfo_param_bytes",
)
