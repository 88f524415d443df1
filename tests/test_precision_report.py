"""--precision, --channels-last and --compare-precision from the user's side: the flags, the
config in profile.json, the headings, the comparison's tables, sentence and chart, and one
measured CPU run in two precisions against its estimates.

The report tests use the golden profile of tests/test_report.py with precisions added by hand:
their numbers are made up so that a test can change them and watch the words follow.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Rectangle
from run_configs import small_run

from nin_profile import api
from nin_profile.cli import build_parser, precision_list
from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.precision import PRECISION_NAMES, cuda_amp_note
from nin_profile.errors import ProfileError
from nin_profile.inputs import InputSpec
from nin_profile.measure.plan import Plan
from nin_profile.render.charts import all_charts
from nin_profile.render.markdown import render_report
from nin_profile.render.precision import verdict
from nin_profile.render.precision_terminal import precision_table
from nin_profile.results import (
    SCRATCH_NOTE,
    MemoryBreakdown,
    MemoryCategory,
    ModelProfile,
    PeakSite,
    PrecisionProfile,
    Profile,
    RunConfig,
)
from nin_profile.run import Run, _predicted_fit, predicted
from nin_profile.units import MiB, fmt_bytes

PROFILE = Path(__file__).parent / "golden" / "profile_cpu.json"
C = MemoryCategory


def breakdown(**mib: int) -> MemoryBreakdown:
    """A peak of these categories (in MiB), summing to the peak."""
    sizes = {c: mib.get(c.value, 0) * MiB for c in MemoryCategory}  # every one, as a file has
    return MemoryBreakdown(sum(sizes.values()), sizes, PeakSite("backward", "0", "op"))


def precisions(params: int, activations: int, int64: int) -> tuple[PrecisionProfile, ...]:
    """fp32 and AMP fp16 of a model holding `params` MiB of parameters (and as much again in
    gradients) and saving `activations` MiB, `int64` of them max-pool indices: AMP halves the
    float activations, keeps the int64 ones and the float32 state, and adds weight copies of
    half the parameters' bytes."""
    amp_saved = (activations - int64) // 2 + int64
    by_dtype = {"float32": (activations - int64) * MiB, "int64": int64 * MiB}
    half = {"float16": (activations - int64) // 2 * MiB, "int64": int64 * MiB}
    fp32 = breakdown(params=params, grads=params, activations=activations)
    amp = breakdown(params=params, grads=params, activations=amp_saved, weight_copies=params // 2)
    inference = breakdown(params=params, activations=activations // 4)
    return (
        PrecisionProfile("fp32", activations * MiB, by_dtype, fp32, inference),
        PrecisionProfile("amp-fp16", amp_saved * MiB, half, amp, inference),
    )


def compared(profile: Profile, figures: dict[str, tuple[int, int, int]]) -> Profile:
    def add(m: ModelProfile) -> ModelProfile:
        return replace(m, precisions=precisions(*figures[m.name])) if m.name in figures else m

    config = replace(profile.config, compare_precisions=("fp32", "amp-fp16"))
    return replace(profile, config=config, models=tuple(add(m) for m in profile.models))


@pytest.fixture(scope="module")
def profile() -> Profile:
    golden = Profile.from_dict(json.loads(PROFILE.read_text()))
    # (params, saved activations, of them int64) in MiB: NiN all activations, AlexNet heavy in
    # parameters, VGG-11 between
    return compared(
        golden, {"nin": (2, 100, 20), "alexnet": (200, 100, 20), "vgg11": (100, 400, 100)}
    )


def test_the_flags_parse_and_refuse_with_one_line() -> None:
    args = build_parser().parse_args(
        ["--precision", "amp-bf16", "--channels-last", "--compare-precision"]
    )
    assert (args.precision, args.channels_last) == ("amp-bf16", True)
    assert args.compare_precision == PRECISION_NAMES  # the flag alone: every precision
    assert precision_list(" fp32, bf16 ") == ("fp32", "bf16")
    for bad, words in [("fp32,fp64", "fp64: choose from"), ("fp32,fp32", "more than once")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            precision_list(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp64"}, "precision 'fp64': choose one of fp32, amp-fp16"),
        ({"compare_precisions": ["bf16", "bf16"]}, "names a precision more than once"),
    ],
)
def test_the_api_refuses_a_bad_precision_before_any_work(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ProfileError, match=message):
        api.profile("nin", **kwargs)  # type: ignore[arg-type]


def test_the_config_keeps_the_precision_and_reads_older_files() -> None:
    config = small_run(("nin",), precision="amp-fp16", channels_last=True)
    config = replace(config, compare_precisions=("fp32", "bf16"))
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in config.to_dict().items() if k not in ("precision", "channels_last")}
    old.pop("compare_precisions")
    older = RunConfig.from_dict({**old, "dtype": "float32"})  # before precisions: always float32
    assert (older.precision, older.channels_last, older.compare_precisions) == ("fp32", False, ())


def test_the_comparison_round_trips_through_json(profile: Profile) -> None:
    assert Profile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_every_heading_names_the_precision(profile: Profile) -> None:
    config = replace(profile.config, precision="amp-bf16", channels_last=True)
    text = render_report(replace(profile, config=config))
    conditions = text.split("\n\n")[1]
    assert "AMP bf16 (autocast around the forward and the loss" in conditions
    assert "model and batch in channels_last" in conditions
    layout = text[text.index("## Memory format: channels_last") :].split("\n## ")[0]
    assert "oneDNN's channels-last convolutions" in layout
    assert "inside one op" not in layout  # the golden run measured no peak between ops
    # NiN's training step measured 3 MiB above its peak between ops: the largest scratch
    nin = next(m for m in profile.models if m.name == "nin")
    pm = nin.measured["train"]
    assert pm.memory is not None
    memory = replace(pm.memory, peak_between_ops=pm.memory.peak_allocated - 3 * MiB)
    nin = replace(nin, measured={**nin.measured, "train": replace(pm, memory=memory)})
    models = tuple(nin if m.name == "nin" else m for m in profile.models)
    text = render_report(replace(profile, config=config, models=models))
    assert "the most a kernel held inside one op was 3.0 MiB (nin's training step)" in text


def test_the_verdict_is_computed_from_the_numbers(profile: Profile) -> None:
    # Training peaks, fp32 → AMP fp16 (MiB): NiN 2+2+100 = 104 → 2+2+(40+20)+1 = 65, a 38%
    # cut; AlexNet 200+200+100 = 500 → 200+200+60+100 = 560, raised 12%; VGG-11 100+100+400 =
    # 600 → 100+100+(150+100)+50 = 500, a 17% cut.
    text = verdict(profile)
    assert "AMP fp16 cuts NiN's estimated training peak by 38% (104.0 MiB → 65.0 MiB)" in text
    assert "AlexNet's raised by 12% (500.0 MiB → 560.0 MiB)" in text
    assert "VGG-11's by 17% (600.0 MiB → 500.0 MiB)" in text
    assert "NiN gains more than AlexNet and VGG-11" in text
    # NiN: activations 100 of 104 MiB (96%); int64 20 of the 60 MiB saved under AMP (33%)
    assert "NiN's fp32 peak is 96% activations, of which 20.0 MiB of int64 stays (33%" in text
    # NiN's parameters made as heavy as AlexNet's: 200+200+100 → 200+200+60+100, raised 12%
    # for both; VGG-11 still cut 17%: NiN gains less than VGG-11 and not more than AlexNet
    heavier = compared(profile, {"nin": (200, 100, 20)})
    assert "NiN gains less than AlexNet and VGG-11" in verdict(heavier)


def test_the_verdict_says_what_the_measured_whole_peaks_did(profile: Profile) -> None:
    # the estimate predicts the peak between ops; the CPU's whole peak adds what 16-bit
    # kernels allocate inside themselves, and may rise where the estimate falls: the golden
    # profile's NiN training measurement for fp32, and for AMP the same with a whole peak
    # 10% higher and a note naming the op with the most scratch
    nin = next(m for m in profile.models if m.name == "nin")
    fp32, amp = nin.precisions
    train = nin.measured["train"]
    assert train.memory is not None
    higher = replace(train.memory, peak_allocated=train.memory.peak_allocated * 11 // 10)
    scratch_note = f"{SCRATCH_NOTE}: 1.58 MiB in convolution_backward"
    amp_train = replace(train, memory=higher, notes=(*train.notes, scratch_note))
    measured_nin = replace(
        nin,
        precisions=(
            replace(fp32, measured={"train": train}),
            replace(amp, measured={"train": amp_train}),
        ),
    )
    models = tuple(measured_nin if m.name == "nin" else m for m in profile.models)
    text = verdict(replace(profile, models=models))
    before, after = fmt_bytes(train.memory.peak_allocated), fmt_bytes(higher.peak_allocated)
    assert (
        "Measured, the whole training peak (what kernels allocate and free inside their ops "
        f"included, which the estimate leaves out) went NiN's {before} → {after} (+10%; the "
        "most scratch inside one op: 1.58 MiB in convolution_backward)." in text
    )
    section = render_report(replace(profile, models=models))
    assert "| Train peak meas. (MiB) | vs ref. | between ops meas. (MiB) | est. err |" in section


def test_the_section_has_its_tables_and_chart(profile: Profile) -> None:
    text = render_report(profile)
    section = text[text.index("## What lower precision buys") :]
    section = section[: section.index("\n## ", 1)]
    # NiN's row: training peak 104 → 65 MiB is -38%; inference the same (AMP's made-up
    # inference equals fp32's); saved 60 MiB of which 20 int64; 2+2 MiB of float32 state;
    # 1 MiB of weight copies (inference: 2 MiB of parameters + 100 / 4 of activations)
    assert "| nin | AMP fp16 | 65.0 | -38% | 27.0 | +0% | 60.0 | 20.0 | 4.0 | 1.0 |" in section
    assert "![Memory by precision](precision.png)" in section
    assert "Largest training batch" not in section  # no --memory-budget in this run


def test_the_chart_says_estimated_and_its_labels_stay_apart(profile: Profile) -> None:
    fig = all_charts(profile)["precision.png"]
    assert "estimated" in fig.axes[0].get_title()
    assert "fp32" not in fig.axes[0].get_title()  # the run's own precision is not the chart's
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ticks = [t for t in fig.axes[-1].get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in ticks] == ["fp32", "AMP\nfp16"] * 3
    names = [t for t in fig.axes[-1].texts if t.get_text() in ("nin", "alexnet", "vgg11")]
    boxes = [t.get_window_extent(renderer) for t in ticks + names]
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])
    frames = [ax.get_window_extent(renderer) for ax in fig.axes]
    for legend in filter(None, (ax.get_legend() for ax in fig.axes)):
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(frame) for frame in frames)


def test_the_chart_shows_measured_time_where_the_run_timed_it(profile: Profile) -> None:
    # the golden profile's own measurements (batch 2, timed) given to NiN's fp32 entry
    nin = next(m for m in profile.models if m.name == "nin")
    fp32, amp = nin.precisions
    timed = replace(nin, precisions=(replace(fp32, measured=dict(nin.measured)), amp))
    models = tuple(timed if m.name == "nin" else m for m in profile.models)
    fig = all_charts(replace(profile, models=models))["precision.png"]
    assert len(fig.axes) == 3 and fig.axes[0].get_title().startswith("Memory and time")
    assert "measured" in fig.axes[2].get_ylabel()
    # NiN fp32's training bar: the measured median over the batch, ms per example
    train = nin.measured["train"]
    assert train.timing is not None
    heights = [bar.get_height() for bar in fig.axes[2].patches if isinstance(bar, Rectangle)]
    assert train.timing.ms_per_iter / train.batch in heights


@pytest.mark.parametrize(
    ("precision", "channels_last", "phase"),
    [("amp-bf16", False, "train"), ("amp-bf16", False, "inference"), ("bf16", True, "train")],
)
def test_the_worker_measures_a_precision_where_the_estimate_says(
    precision: str, channels_last: bool, phase: str
) -> None:
    # NiN at 96 px (its smallest round size), batch 2, in the worker a CPU run uses: AMP bf16
    # under torch.autocast("cpu"), the bf16 model cast with .to() and put in channels_last.
    # Oracle: the CPU allocator's peak between the ops a dispatch mode sees, in a real step.
    config = replace(small_run(("nin",), batch=2, cpu_time_budget=0), image_size=96)
    run = Run(replace(config, precision=precision, channels_last=channels_last), lambda e: None)
    static = run.analyse("nin")
    pm = run.measure("nin", phase, Plan(2, warmup=1, iterations=0), static, per_layer=False)
    assert pm.memory and pm.predicted, pm.error
    assert pm.memory.peak_between_ops == pm.predicted.peak == predicted(static, phase).peak


def test_amp_predicted_for_cuda_without_a_gpu_says_so() -> None:
    note = cuda_amp_note("cuda", ("fp32", "amp-fp16", "amp-bf16"), measured=False)
    assert note and note.startswith("amp-fp16 and amp-bf16 for CUDA")
    assert "estimated only (checked on an H200" in note
    assert cuda_amp_note("cuda", ("amp-fp16",), measured=True) is None  # measured: the errors
    assert cuda_amp_note("cpu", ("amp-fp16",), measured=False) is None  # CPU: PyTorch's own
    assert cuda_amp_note("cuda", ("fp32", "bf16"), measured=False) is None  # no autocast


def test_a_static_comparison_from_the_api_fills_every_precision() -> None:
    # NiN and VGG-11 at 96 px, batch 2, estimated for the CPU in fp32 and AMP bf16; the run's
    # own precision's figures are its estimate's
    result = api.profile(
        "nin",
        "vgg11",
        input_size=(1, 96, 96),
        batch=2,
        device="cpu",
        precision="amp-bf16",
        compare_precisions=["fp32", "amp-bf16"],
    )
    assert result.config.compare_precisions == ("fp32", "amp-bf16")
    for m in result.models:
        fp32, amp = m.precisions
        assert (fp32.precision, amp.precision) == ("fp32", "amp-bf16")
        assert (amp.train, amp.inference) == (m.train, m.inference)
        assert amp.saved_bytes_by_dtype == m.saved_bytes_by_dtype
        assert sum(fp32.saved_bytes_by_dtype.values()) == fp32.activation_bytes_saved
        assert (
            "bfloat16" in amp.saved_bytes_by_dtype and "bfloat16" not in fp32.saved_bytes_by_dtype
        )
        # max-pool indices are int64 in both: the same bytes
        assert amp.saved_bytes_by_dtype["int64"] == fp32.saved_bytes_by_dtype["int64"]
    text = result.report()
    assert "**Does NiN gain more from AMP?** AMP bf16 cuts NiN's estimated training peak" in text


def test_the_largest_batch_in_a_precision_is_that_precisions() -> None:
    # NiN at 96 px as a bf16 model for 64 MiB on the CPU: the batch found fits in bf16 and one
    # more does not, each checked by an estimate of its own; in fp32 fewer fit
    config = replace(small_run(("nin",), batch=2), image_size=96)
    run = Run(config, lambda e: None)
    limit = 64 * MiB

    def peak(batch: int, precision: str) -> int:
        cfg = AnalysisConfig(
            batch=batch, inputs=InputSpec.image(1, 96), device="cpu", precision=precision
        )
        return analyse_model("nin", cfg).train.peak

    fit = _predicted_fit(run, run.analyse("nin", precision="bf16"), "train", limit, "bf16")
    assert fit.batch and peak(fit.batch, "bf16") <= limit < peak(fit.batch + 1, "bf16")
    fp32 = _predicted_fit(run, run.analyse("nin"), "train", limit)
    assert fp32.batch and fp32.batch < fit.batch


def test_the_terminal_shows_the_comparison_in_80_columns(profile: Profile) -> None:
    from rich.console import Console

    table = precision_table(profile)
    assert table is not None and table.row_count == 6  # NiN, AlexNet, VGG-11 × fp32, AMP fp16
    console = Console(width=200, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    # NiN's AMP row: 65.0 MiB, -38% against 104.0 MiB (see the verdict's test)
    assert any(line.split()[:5] == ["nin", "AMP", "fp16", "65.0", "-38%"] for line in lines)
    assert precision_table(replace(profile, models=())) is None
