"""Per rank under DDP and FSDP2: PyTorch's wrappers traced on the fake process group against
formulas derived here from their documented behaviour, and real ranks (gloo, on the CPU)
measured against the prediction."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nin_profile
from nin_profile.cli import main
from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.parallel import (
    Parallel,
    RankTrace,
    _Chunks,
    analyse_rank,
    breakdown,
    held_bytes,
    trace_rank,
    zero_estimates,
)
from nin_profile.errors import ProfileError
from nin_profile.inputs import InputSpec
from nin_profile.measure.ranks import RankRequest, measure_ranks
from nin_profile.parallel_results import ParallelProfile, RankCheck, RankProfile, ZeroEstimates
from nin_profile.render.parallel import scaling_sentence
from nin_profile.results import MemoryBreakdown, ModelProfile, PeakSite, RunConfig
from nin_profile.results import MemoryCategory as C

F32 = 4  # bytes of a float32
HALF = 2  # bytes of a bfloat16 or a float16
CFG = AnalysisConfig(batch=4, inputs=InputSpec.image(1, 8), device="cpu")
CLASSES = 7


def small_net() -> nn.Module:
    """Two blocks with parameters whose first dimensions (5 and 7) no world size here divides."""
    with torch.device("meta"):
        return nn.Sequential(
            nn.Conv2d(1, 5, 3, padding=1),  # weight 5×1×3×3, bias 5
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 8 * 8, CLASSES),  # weight 7×320, bias 7
        )


def shapes() -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in small_net().parameters()]


def gradient_bytes() -> int:
    return F32 * sum(math.prod(s) for s in shapes())  # (45 + 5 + 2240 + 7) × 4 = 9,188


def shard_bytes(world_size: int) -> int:
    """What rank 0 holds of each parameter under FSDP2: its first dimension cut into
    world_size chunks of ⌈d0 / N⌉ rows (torch.chunk; the last ones short or empty, padded
    to that size: FSDP2 pads every shard to the first chunk's size)."""
    return F32 * sum(math.ceil(s[0] / world_size) * math.prod(s[1:]) for s in shapes())


def gathered_bytes(world_size: int) -> int:
    """A block's parameters gathered whole: N padded shards each (all-gather output)."""
    return world_size * shard_bytes(world_size)


def trace(
    strategy: str,
    world_size: int,
    bucket_cap_mb: float | None = None,
    gradient_as_bucket_view: bool = False,
) -> RankTrace:
    parallel = Parallel(strategy, world_size, bucket_cap_mb, gradient_as_bucket_view)
    train, _ = trace_rank(small_net(), CFG, parallel, CLASSES, inference=False)
    return train


def largest_size(trace: RankTrace, category: C) -> int:
    """The most the storages of `category` ever held together over the traced step."""
    keys = trace.owners[category]
    held = top = 0
    for event in trace.log.events:
        if event.key in keys:
            held += event.delta
            top = max(top, held)
    return top


# ---- DDP on the fake group ------------------------------------------------------------------


def test_ddp_buckets_hold_a_copy_of_every_gradient() -> None:
    # DDP's docs: gradient_as_bucket_view "saves memory equal to the total gradients size",
    # so without it the buckets are that size beside the gradients
    t = trace("ddp", 8)
    assert held_bytes(t, [C.COMMUNICATION]) == gradient_bytes() == 9_188
    assert breakdown(t)[C.COMMUNICATION] == gradient_bytes()


def test_ddp_gradients_as_bucket_views_leave_no_bucket_beside_them() -> None:
    t = trace("ddp", 8, gradient_as_bucket_view=True)
    at_peak = breakdown(t)
    assert at_peak[C.COMMUNICATION] == 0  # the buckets are the gradients
    assert at_peak[C.GRADS] == gradient_bytes()
    # the saving is at most the gradients' size: where the peak falls, not all of them exist
    saved = breakdown(trace("ddp", 8)).peak - at_peak.peak
    assert 0 < saved <= gradient_bytes()


@pytest.mark.parametrize("cap_mb", [None, 0.004])  # DDP's default, and 4,194 B a bucket
def test_ddp_buckets_add_up_to_the_gradients_whatever_their_size(cap_mb: float | None) -> None:
    assert held_bytes(trace("ddp", 2, bucket_cap_mb=cap_mb), [C.COMMUNICATION]) == 9_188


def test_ddp_per_rank_memory_does_not_depend_on_the_world_size() -> None:
    assert breakdown(trace("ddp", 2)).peak == breakdown(trace("ddp", 1024)).peak


# ---- FSDP2 on the fake group ----------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 3, 8, 1024])
def test_fsdp_keeps_a_padded_shard_of_each_parameter(world_size: int) -> None:
    t = trace("fsdp", world_size)
    assert held_bytes(t, [C.PARAMS]) == shard_bytes(world_size)
    # momentum-free SGD keeps no state; the sharded gradients are the reduce-scatter's output
    assert breakdown(t)[C.GRADS] <= shard_bytes(world_size)
    assert largest_size(t, C.GRADS) == shard_bytes(world_size)


def test_fsdp_shards_at_three_ranks_by_hand() -> None:
    # ⌈5/3⌉ = 2 rows of the conv (2·9 + 2), ⌈7/3⌉ = 3 rows of the linear layer (3·320 + 3)
    assert shard_bytes(3) == 4 * (2 * 9 + 2 + 3 * 320 + 3) == 3_932


@pytest.mark.parametrize("world_size", [3, 1024])
def test_fsdp_gathers_each_block_whole_with_its_padding(world_size: int) -> None:
    t = trace("fsdp", world_size)
    # one block gathered at a time (resharded after forward): the larger, the linear one
    linear = F32 * world_size * (math.ceil(7 / world_size) * 320 + math.ceil(7 / world_size))
    assert largest_size(t, C.UNSHARDED_PARAMS) >= linear
    assert largest_size(t, C.UNSHARDED_PARAMS) <= gathered_bytes(world_size)


def test_fsdp_momentum_is_kept_for_the_shard_only() -> None:
    cfg = AnalysisConfig(batch=4, inputs=InputSpec.image(1, 8), device="cpu", optimizer="momentum")
    train, _ = trace_rank(small_net(), cfg, Parallel("fsdp", 3), CLASSES, inference=False)
    assert held_bytes(train, [C.OPTIMIZER]) == shard_bytes(3)


def test_the_trace_costs_the_same_at_any_world_size() -> None:
    """No process per rank, no tensor of a rank's size: 1,024 ranks trace as many events."""
    assert len(trace("fsdp", 8).log.events) == len(trace("fsdp", 1024).log.events)


# ---- FSDP2's mixed-precision policy ----------------------------------------------------------

LINEAR = [(7, 320), (7,)]  # small_net's larger block


def padded_elements(world_size: int, block: list[tuple[int, ...]]) -> int:
    """Elements of `block` gathered whole: each parameter's first dimension padded to N
    chunks of ⌈rows / N⌉ (what FSDP2's all-gather fills)."""
    return sum(world_size * math.ceil(s[0] / world_size) * math.prod(s[1:]) for s in block)


def mp_trace(
    world_size: int, param_dtype: str | None, reduce_dtype: str | None = None
) -> RankTrace:
    parallel = Parallel("fsdp", world_size, param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    train, _ = trace_rank(small_net(), CFG, parallel, CLASSES, inference=False)
    return train


@pytest.mark.parametrize("world_size", [3, 8])
def test_fsdp_param_dtype_gathers_in_16_bits_and_keeps_fp32_shards(world_size: int) -> None:
    # MixedPrecisionPolicy: "the optimizer step uses the sharded parameter in the original
    # dtype"; the all-gather and the unsharded parameter are in param_dtype
    t = mp_trace(world_size, "bf16")
    assert largest_size(t, C.UNSHARDED_PARAMS) == HALF * padded_elements(world_size, LINEAR)
    assert held_bytes(t, [C.PARAMS]) == shard_bytes(world_size)  # 4 B × ⌈rows / N⌉ × cols
    assert largest_size(t, C.GRADS) == shard_bytes(world_size)  # sharded gradients in fp32


def test_fsdp_param_dtype_computes_and_saves_activations_in_16_bits() -> None:
    # cast_forward_inputs: the batch enters the model in bf16; the ReLU saves its bf16 output
    t = mp_trace(3, "bf16")
    saved = {t.log.nbytes[key] for key in t.owners[C.ACTIVATIONS]}
    cast_input, relu_output = CFG.batch * 1 * 8 * 8, CFG.batch * 5 * 8 * 8
    assert {HALF * cast_input, HALF * relu_output} <= saved
    assert not {F32 * cast_input, F32 * relu_output} & saved


@pytest.mark.parametrize(
    ("param_dtype", "reduce_dtype", "gathered", "reduced"),
    [
        (None, None, F32, F32),
        ("bf16", None, HALF, HALF),  # reduce_dtype None: the param dtype (FSDP2's default)
        ("bf16", "fp32", HALF, F32),
        ("fp16", "bf16", HALF, HALF),
    ],
)
def test_fsdp_collectives_move_each_block_in_the_policys_dtypes(
    param_dtype: str | None, reduce_dtype: str | None, gathered: int, reduced: int
) -> None:
    # a step gathers each block twice (forward; backward, resharded after forward) and
    # reduce-scatters its padded gradient once
    elements = padded_elements(3, shapes())
    expected = (2 * gathered + reduced) * elements
    assert mp_trace(3, param_dtype, reduce_dtype).collective_bytes == expected


def test_the_policy_reaches_profile_json_and_the_report() -> None:
    net = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(320, 7))
    profile = nin_profile.profile(
        net,
        input_size=(1, 8, 8),
        batch=4,
        parallel="fsdp",
        world_size=8,
        fsdp_param_dtype="bf16",
        fsdp_reduce_dtype="fp32",
    )
    c = profile.config
    assert (c.fsdp_param_dtype, c.fsdp_reduce_dtype) == ("bf16", "fp32")
    assert RunConfig.from_dict(c.to_dict()) == c
    assert "param_dtype bf16, reduce_dtype fp32" in profile.report()
    older = {k: v for k, v in c.to_dict().items() if not k.startswith("fsdp_")}
    assert RunConfig.from_dict(older).fsdp_param_dtype is None  # files before the policy


@pytest.mark.parametrize("rows", [1, 5, 7, 96])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8, 1024])
def test_chunks_on_demand_are_fsdp2s_chunks(rows: int, world_size: int) -> None:
    from torch.distributed.fsdp._fully_shard._fsdp_common import _chunk_with_empty

    tensor = torch.empty(rows, 3, device="meta")
    expected = _chunk_with_empty(tensor, world_size, dim=0)  # PyTorch's own: the oracle
    got = _Chunks(tensor, world_size, dim=0)
    assert len(got) == len(expected) == world_size
    for rank in {0, 1 % world_size, world_size - 1}:
        assert got[rank].shape == expected[rank].shape
        assert got[rank].storage_offset() == expected[rank].storage_offset()


def test_estimators_follow_their_published_formulas() -> None:
    model = small_net()
    e = zero_estimates(model, 8)
    p, largest = 2_297, 2_247  # 45 + 5 + 2,240 + 7 parameters; the linear layer's own
    assert e.zero2 == 2 * p + int(18 * p / 8)  # DeepSpeed: 2 fp16 params + 18 bytes / N
    assert e.zero3 == 4 * largest + int(18 * p / 8)  # + the largest layer gathered (fp32)
    assert e.accelerate == 4 * (4 * p)  # float32 with Adam: 4 × the model's size


def test_vgg11s_largest_layer_is_the_chapters_first_dense_layer() -> None:
    profile = analyse_rank("vgg11", AnalysisConfig(batch=1), Parallel("fsdp", 64), 10)
    # 512·7·7·4096 + 4096 (MISSION.md: VGG's first dense layer, ≈102M)
    assert profile.estimators.zero3 - int(18 * 128_806_154 / 64) == 4 * 102_764_544


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_on_cuda_a_rank_reserves_whole_segments_over_its_peak(strategy: str) -> None:
    cfg = AnalysisConfig(batch=4, inputs=InputSpec.image(1, 8), device="cuda")
    train, _ = trace_rank(small_net(), cfg, Parallel(strategy, 4), CLASSES, inference=False)
    at_peak = breakdown(train, cfg)
    assert at_peak.reserved is not None and at_peak.reserved >= at_peak.peak
    # every block here is under 1 MiB: the caching allocator serves it from 2 MiB segments
    assert at_peak.reserved % (2 * 2**20) == 0
    assert breakdown(train).reserved is None  # no device given: the peak alone


# ---- real ranks on the CPU -----------------------------------------------------------------

NIN_SMALL = {"model": "nin", "batch": 2, "input_shape": (1, 96, 96), "threads": 1}


def predicted_peaks(strategy: str) -> tuple[int, int]:
    cfg = AnalysisConfig(batch=2, inputs=InputSpec.image(1, 96), device="cpu")
    single = analyse_model("nin", cfg).train.peak
    return analyse_rank("nin", cfg, Parallel(strategy, 2), 10).train.peak, single


def test_two_real_ddp_ranks_add_what_the_prediction_adds() -> None:
    """Two gloo ranks and one process, each in its own process, with one thread each."""
    ranks = measure_ranks(RankRequest(strategy="ddp", world_size=2, **NIN_SMALL))  # type: ignore[arg-type]
    single = measure_ranks(RankRequest(strategy="none", world_size=1, **NIN_SMALL))  # type: ignore[arg-type]
    assert "error" not in ranks and "error" not in single
    assert [r["rank"] for r in ranks["ranks"]] == [0, 1]
    rank, one = predicted_peaks("ddp")
    added = (
        max(r["peak_between_ops"] for r in ranks["ranks"]) - single["ranks"][0]["peak_between_ops"]
    )
    assert added == pytest.approx(rank - one, rel=0.10)  # the target on the CPU


def _fsdp_from_the_api() -> nin_profile.Profile:
    return nin_profile.profile(
        "nin",
        input_size=(1, 96, 96),
        batch=2,
        device="cpu",
        measure=True,
        parallel="fsdp",
        world_size=2,
        cpu_time_budget=5,
        iterations=1,
    )


def _real_rank_check(profile: nin_profile.Profile) -> tuple[RankCheck, int | None]:
    par = profile["nin"].parallel
    assert par is not None and par.strategy == "fsdp"
    (check,) = par.checks
    return check, check.added_measured(between_ops=True)


def test_fsdp_with_real_ranks_from_the_python_api() -> None:
    profile = _fsdp_from_the_api()
    check, added = _real_rank_check(profile)
    if check.error is not None or added != pytest.approx(check.added_predicted, rel=0.10):
        # Under load, 3 runs in 33 read a rank's peak between ops 139,160 to 4,723,200 B
        # high: a block handed to a collective whose free gloo's thread made where the
        # profiler does not record it, still open when the step ended (measure/ranks.py's
        # docstring). Measured once more; the figures shown if they are off again.
        first = (check.error, added)
        profile = _fsdp_from_the_api()
        check, added = _real_rank_check(profile)
        assert check.error is None, (check.error, first)
        assert added == pytest.approx(check.added_predicted, rel=0.10), first
    assert check.error is None, check.error
    assert len(check.ranks) == 2 and check.threads == 1
    assert added is not None
    assert "### Measured with real ranks" in profile.report()


# ---- the command line and profile.json -------------------------------------------------------


def test_a_static_run_writes_the_per_rank_section_chart_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--static", "--models", "nin", "--batch", "8", "--parallel", "fsdp"]
    assert main([*args, "--world-size", "1,8,1024", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Per rank: FSDP2" in report and "**--batch 8 is each rank's batch**" in report
    assert "DeepSpeed ZeRO-3" in report and (out / "ranks_nin.png").exists()
    loaded = nin_profile.Profile.load(out)
    assert loaded.config.world_sizes == (1, 8, 1024)
    par = loaded["nin"].parallel
    assert par is not None and [p.world_size for p in par.points] == [1, 8, 1024]
    assert ParallelProfile.from_dict(par.to_dict()) == par


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--world-size", "8"], "--world-size needs --parallel ddp or --parallel fsdp"),
        (["--parallel", "fsdp"], "--parallel fsdp needs --world-size N"),
        (["--parallel", "fsdp", "--world-size", "8", "--bucket-cap-mb", "4"], "DDP's options"),
        (["--parallel", "ddp", "--world-size", "8", "--no-reshard-after-forward"], "FSDP2's"),
        (["--parallel", "ddp", "--world-size", "0"], "must be a positive whole number"),
        (
            ["--parallel", "ddp", "--world-size", "8", "--fsdp-param-dtype", "bf16"],
            "--fsdp-param-dtype needs --parallel fsdp",
        ),
        (["--fsdp-reduce-dtype", "fp32"], "--fsdp-reduce-dtype needs --parallel fsdp"),
    ],
)
def test_bad_parallel_options_get_one_line(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) if "0" in args else _no_exit():
        code = main(["--static", "--models", "nin", "--out", str(tmp_path / "o"), *args])
        assert code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("sizes", "words"),
    [
        ("1,8", "--world-size 1,8 with a measured run: real ranks are started for one"),
        ("4096", "--world-size 4096 with a measured run needs a core for each rank"),
    ],
)
def test_a_measured_run_refuses_what_it_cannot_start(
    sizes: str, words: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    args = ["--models", "nin", "--device", "cpu", "--parallel", "ddp", "--world-size", sizes]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before any work


class _no_exit:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


class TiedBlocks(nn.Module):
    """Two top-level blocks sharing one weight: FSDP2's default wrapping cannot shard it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def test_fsdp_refuses_tied_blocks_in_one_line_and_ddp_takes_them() -> None:
    with pytest.raises(ProfileError, match=r"b\.weight is shared by blocks a and b") as info:
        nin_profile.profile(TiedBlocks(), input_size=(1, 8, 8), parallel="fsdp", world_size=8)
    assert "\n" not in str(info.value)
    profile = nin_profile.profile(TiedBlocks(), input_size=(1, 8, 8), parallel="ddp", world_size=8)
    assert profile.models[0].parallel is not None


def test_the_api_refuses_a_world_size_without_a_strategy() -> None:
    with pytest.raises(ProfileError, match="needs --parallel"):
        nin_profile.profile("nin", world_size=8)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"parallel": "ddp", "fsdp_param_dtype": "bf16"},
            "--fsdp-param-dtype needs --parallel fsdp",
        ),
        ({"parallel": "fsdp", "fsdp_param_dtype": "fp32"}, "choose one of bf16, fp16"),
        ({"parallel": "fsdp", "fsdp_reduce_dtype": "fp8"}, "choose one of fp32, bf16, fp16"),
    ],
)
def test_the_api_refuses_a_policy_it_cannot_apply(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ProfileError, match=words) as info:
        nin_profile.profile("nin", world_size=8, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "options", [{"precision": "amp-bf16"}, {"compare_precisions": ("fp32", "bf16")}]
)
def test_the_wrappers_refuse_a_lower_precision_in_one_line(options: dict[str, Any]) -> None:
    # autocast under DDP/FSDP2 is not traced: refused before any analysis rather than
    # predicted as if in fp32; FSDP2's own policy is pointed to
    with pytest.raises(ProfileError, match="fp32 only") as info:
        nin_profile.profile("nin", parallel="fsdp", world_size=8, **options)
    assert "\n" not in str(info.value) and "--fsdp-param-dtype" in str(info.value)


def test_a_profile_without_parallel_reads_as_before() -> None:
    d = analyse_model("nin", AnalysisConfig(batch=1)).to_dict()
    assert d["parallel"] is None
    del d["parallel"]  # profile.json written before --parallel
    assert ModelProfile.from_dict(d).parallel is None


def _point(world_size: int, params: int, activations: int) -> RankProfile:
    site = PeakSite("forward", "", "")
    train = MemoryBreakdown(
        params + activations, {C.PARAMS: params, C.ACTIVATIONS: activations}, site
    )
    return RankProfile(world_size, 8, train, train, 0, ZeroEstimates(0, 0, 0))


def test_where_more_ranks_stop_paying_is_computed_from_the_peaks() -> None:
    single = analyse_model("nin", AnalysisConfig(batch=1))
    # params 800 MiB shared out, activations 200 MiB whole: peaks 1,000, 300, 212.5, 200.8
    points = tuple(_point(n, 800 * 2**20 // n, 200 * 2**20) for n in (1, 8, 64, 1024))
    words = scaling_sentence(single, ParallelProfile("fsdp", points))
    # 1→8: 70% lower, 8→64: 29.2% lower (212.5 / 300), 64→1,024: 5.5% lower (200.8 / 212.5)
    assert "from 1 to 8 ranks 70.0% lower, from 8 to 64 ranks 29.2% lower" in words
    assert "from 64 to 1,024 ranks 5.5% lower" in words
    assert "each step saves at least 5%" in words
    points = (*points, _point(4096, 800 * 2**20 // 4096, 200 * 2**20))  # 0.3% lower (200.2 / 200.8)
    words = scaling_sentence(single, ParallelProfile("fsdp", points))
    assert "From 1,024 ranks on, more ranks save less than 5% a step" in words
    assert "saved activations 200.0 MiB (100% of the peak)" in words


def test_the_largest_batch_a_rank_fits_is_the_edge_of_the_budget() -> None:
    profile = nin_profile.profile(
        "nin",
        input_size=(1, 96, 96),
        batch=8,
        parallel="fsdp",
        world_size=8,
        memory_budget="64MiB",
        device="cpu",
    )
    par = profile["nin"].parallel
    assert par is not None
    (fit,) = par.points[0].fits
    assert fit.batch is not None and fit.limit_bytes == 64 * 2**20

    def peak(batch: int) -> int:
        cfg = AnalysisConfig(batch=batch, inputs=InputSpec.image(1, 96), device="cpu")
        return analyse_rank("nin", cfg, Parallel("fsdp", 8), 10).train.peak

    # the largest: its step fits the budget on the CPU, one example more does not
    assert peak(fit.batch) <= fit.limit_bytes < peak(fit.batch + 1)
