"""The report: rendered from a fixed profile (a real CPU run at batch 2, tests/golden), checked
against golden files, against the profile's own numbers, and for charts' series and labels.

Regenerate the golden report with `pytest tests/test_report.py --update-golden` after a
deliberate change, and read the diff.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from run_configs import small_run
from torch import nn

from nin_profile.cli import main
from nin_profile.render.charts import (
    all_charts,
    layer_costs,
    roofline,
)
from nin_profile.render.markdown import render_report
from nin_profile.render.names import chart_plan
from nin_profile.render.text import layer_label
from nin_profile.report import ChartPool, chart_pngs
from nin_profile.results import MemoryCategory, ModelProfile, Profile, Timing
from nin_profile.run import run_profile
from nin_profile.units import MiB, fmt_mib, fmt_number, fmt_scaled

GOLDEN = Path(__file__).parent / "golden"
PROFILE = GOLDEN / "profile_cpu.json"
REPORT = GOLDEN / "report.md"


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.from_dict(json.loads(PROFILE.read_text()))


def model(profile: Profile, name: str) -> ModelProfile:
    return next(m for m in profile.models if m.name == name)


def test_the_report_matches_the_golden_file(profile: Profile, update_golden: bool) -> None:
    text = render_report(profile)
    if update_golden:
        REPORT.write_text(text)
    assert text == REPORT.read_text()


def test_the_fixture_round_trips_through_json(profile: Profile) -> None:
    assert Profile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def table_rows(text: str, heading: str, first: str = "| ") -> list[list[str]]:
    """The cells of the first table under `heading`, past its header and rule."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next((i for i, line in enumerate(lines[start:], start) if not line.startswith("|")), None)
    rows = [line.strip("|").split("|") for line in lines[start:end]]
    return [[c.strip() for c in cells] for cells in rows[2:]]  # past the header and the rule


def summary_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells for cells in table_rows(text, "## Summary")}


def test_every_summary_figure_agrees_with_the_profile(profile: Profile) -> None:
    """The summary gives the estimates at the requested batch, per batch and per example."""
    rows = summary_rows(render_report(profile))
    assert set(rows) == {m.name for m in profile.models}
    b = profile.config.batch
    for m in profile.models:
        row = rows[m.name]
        assert row[1] == f"{m.params:,}"
        assert row[2] == fmt_scaled(m.macs_forward, 1e9)
        assert row[3] == fmt_scaled(m.flops_forward, 1e9)
        assert row[4] == fmt_scaled(m.flops_train_step, 1e9)
        assert row[5] == fmt_mib(m.activation_bytes_saved)
        assert row[6] == fmt_mib(m.train.peak)
        growing = (MemoryCategory.INPUT, MemoryCategory.ACTIVATIONS, MemoryCategory.TRANSIENT)
        assert row[7] == fmt_mib(sum(m.train[c] for c in growing) / b, 2)
        assert row[8] == fmt_mib(m.inference.peak)


def test_each_measured_peak_stands_beside_the_estimate_at_its_own_batch(
    profile: Profile,
) -> None:
    text = render_report(profile)
    rows = {(r[0], r[1]): r for r in table_rows(text, "**Memory**")}
    for m in profile.models:
        for phase, pm in m.measured.items():
            assert pm.memory and pm.predicted
            row = rows[m.name, phase]
            assert row[2] == str(pm.batch)
            assert row[3] == fmt_mib(pm.predicted.peak)
            assert row[4] == fmt_mib(pm.memory.peak_allocated)
            error = 100 * (pm.predicted.peak - pm.memory.peak_allocated) / pm.memory.peak_allocated
            assert row[5] == f"{error:+.1f}%"


def test_a_measured_sentence_says_below_where_the_estimate_is_low(profile: Profile) -> None:
    nin = model(profile, "nin").measured["train"]
    assert nin.memory and nin.predicted and nin.predicted.peak < nin.memory.peak_allocated
    share = 100 * (nin.memory.peak_allocated - nin.predicted.peak) / nin.memory.peak_allocated
    assert f"{fmt_mib(nin.predicted.peak)} MiB, is {share:.1f}% below it" in render_report(profile)


def test_ratios_in_the_text_are_computed(profile: Profile) -> None:
    text = render_report(profile)
    nin, alexnet, vgg = (model(profile, n) for n in ("nin", "alexnet", "vgg11"))
    assert f"{alexnet.params / nin.params:.1f}× fewer than AlexNet" in text
    assert f"{vgg.params / nin.params:.1f}× fewer than VGG-11" in text
    first_dense = next(layer for layer in alexnet.layers if layer.type == "Linear")
    assert (
        f"AlexNet's first dense layer ({first_dense.name}) holds {first_dense.params / 1e6:.1f} M"
        in text
    )


def test_sentences_follow_the_numbers_when_they_change(profile: Profile) -> None:
    nin = model(profile, "nin")
    alexnet = model(profile, "alexnet")
    bigger = replace(nin, params=2 * alexnet.params)
    text = render_report(replace(profile, models=(bigger, *profile.models[1:])))
    assert f"NiN has {2 * alexnet.params:,} parameters: 2.0× more than AlexNet" in text
    slow = timing(1e6, spread=0.01)
    slower = replace(
        nin, measured={**nin.measured, "train": replace(nin.measured["train"], timing=slow)}
    )
    text = render_report(replace(profile, models=(slower, *profile.models[1:])))
    assert "the chapter's remark that NiN can take longer holds here" in text


def timing(ms: float, spread: float, iterations: int = 9) -> Timing:
    """A timing whose middle half spans `spread` of its median, centred on it."""
    return Timing(
        ms_per_iter=ms,
        ms_spread=spread * ms,
        examples_per_s=1.0,
        tflops=None,
        iterations=iterations,
        clock="test",
        ms_q1=ms * (1 - spread / 2),
        ms_q3=ms * (1 + spread / 2),
        interleaved=True,
    )


def with_train_time(m: ModelProfile, t: Timing) -> ModelProfile:
    return replace(m, measured={**m.measured, "train": replace(m.measured["train"], timing=t)})


@pytest.mark.parametrize(
    ("nin_ms", "spread", "verdict"),
    [
        # Nine iterations each; a median's standard error is 0.929 × IQR / √9. NiN 8% slower
        # than AlexNet, both within a 2% band: errors 0.62% each, twice their combined
        # 1.75%, under the 2% floor: a difference beyond ±2%
        (108.0, 0.02, "so a NiN step takes 8% more time (beyond the ±2% noise)"),
        # NiN spread over 20%: error 6.19%, combined with AlexNet's 6.22%, twice 12.4%: 8% is
        # within it
        (108.0, 0.20, "within noise (±12%)"),
        # 1% apart with no spread at all: under the 2% floor, within noise
        (101.0, 0.0, "within noise (±2%)"),
    ],
)
def test_a_verdict_on_time_is_stated_only_beyond_the_noise(
    profile: Profile, nin_ms: float, spread: float, verdict: str
) -> None:
    nin, alexnet = model(profile, "nin"), model(profile, "alexnet")
    b = nin.measured["train"].batch
    assert alexnet.measured["train"].batch == b
    models = {
        "nin": with_train_time(nin, timing(nin_ms, spread)),
        "alexnet": with_train_time(alexnet, timing(100.0, 0.02)),
    }
    text = render_report(
        replace(profile, models=tuple(models.get(m.name, m) for m in profile.models))
    )
    assert verdict in text


def test_the_conditions_name_layers_a_model_keeps_in_its_own_dtype(profile: Profile) -> None:
    # fp32 leaves a model's float64 layers as built: "everything in float32" says which not
    nin = model(profile, "nin")
    float64 = replace(nin, saved_bytes_by_dtype={**nin.saved_bytes_by_dtype, "float64": 8})
    text = render_report(replace(profile, models=(float64, *profile.models[1:])))
    assert (
        "fp32 (everything in float32), but for the layers built in another dtype, kept as "
        "built: nin (float64), optimizer sgd." in text
    )
    assert "kept as built" not in render_report(profile)


def test_scratch_above_the_peak_between_ops_is_never_negative(profile: Profile) -> None:
    # on the CPU the peak between ops comes from a second run under a dispatch mode, which can
    # hold a few bytes more than the whole run did: no op's
    # scratch took the whole peak above it, so the column says 0, not a negative size
    nin = model(profile, "nin")
    train = nin.measured["train"]
    assert train.memory is not None
    above = replace(train.memory, peak_between_ops=train.memory.peak_allocated + 544)
    measured = {**nin.measured, "train": replace(train, memory=above)}
    text = render_report(replace(profile, models=(replace(nin, measured=measured),)))
    row = next(r for r in table_rows(text, "**Memory**") if r[:2] == ["nin", "train"])
    assert row[8] == "0.0"


def test_a_failed_measurement_is_shown_not_hidden(profile: Profile) -> None:
    nin = model(profile, "nin")
    failed = replace(
        nin.measured["train"],
        memory=None,
        timing=None,
        error="out of memory at batch 2 on CPU (2 threads)",
    )
    text = render_report(
        replace(
            profile,
            models=(replace(nin, measured={**nin.measured, "train": failed}), *profile.models[1:]),
        )
    )
    assert "- out of memory at batch 2 on CPU (2 threads) (nin train)" in text
    row = next(r for r in table_rows(text, "**Memory**") if r[:2] == ["nin", "train"])
    assert row[4] == "out of memory at batch 2 on CPU (2 threads)"


def test_every_linked_chart_is_rendered(profile: Profile) -> None:
    text = render_report(profile)
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    assert linked == {spec.file for spec in chart_plan(profile)}
    assert "sweep.png" in linked
    assert set(all_charts(profile)) == linked


def test_without_charts_the_report_links_none(profile: Profile) -> None:
    assert "![" not in render_report(profile, charts=False)


def test_layer_chart_has_a_bar_per_layer(profile: Profile) -> None:
    nin = model(profile, "nin")
    fig = layer_costs(profile, nin)
    params_ax = fig.axes[0]
    assert len(params_ax.patches) == len([layer for layer in nin.layers if layer.name != "loss"])
    assert params_ax.get_yticklabels()[0].get_text() == "0.0 Conv2d"


def test_roofline_uses_the_measured_roofs_when_layers_were_timed(profile: Profile) -> None:
    (ax,) = roofline(profile).axes
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("roofs (measured):") for label in labels)
    assert "nin: 1×1 convolutions" in labels
    assert "achieved GFLOP/s" in ax.get_ylabel()
    static = replace(profile, models=tuple(replace(m, measured={}) for m in profile.models))
    (ax,) = roofline(static).axes
    assert "forward GFLOPs" in ax.get_ylabel()


def test_render_rebuilds_a_report_from_a_saved_profile(tmp_path: Path, profile: Profile) -> None:
    saved = tmp_path / "run"
    saved.mkdir()
    shutil.copy(PROFILE, saved / "profile.json")
    assert main(["--render", str(saved / "profile.json")]) == 0
    assert (saved / "report.md").read_text() == render_report(profile)
    assert {p.name for p in saved.iterdir()} >= {spec.file for spec in chart_plan(profile)}
    assert Profile.from_dict(json.loads((saved / "profile.json").read_text())) == profile


def test_worker_processes_render_the_same_charts(profile: Profile) -> None:
    with ChartPool(2) as pool:
        assert pool.render(profile) == chart_pngs(profile)


def test_charts_are_rendered_here_when_a_worker_dies(profile: Profile) -> None:
    counts: list[tuple[int, int]] = []
    with ChartPool(2) as pool:

        def kill_workers_after_the_first_chart(done: int, total: int) -> None:
            counts.append((done, total))
            for process in pool._executor._processes.values():  # a test may reach inside
                if done == 1 and process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGKILL)

        pngs = pool.render(profile, kill_workers_after_the_first_chart)
        assert pool._executor._broken  # so the charts after the first came from the fallback
    assert pngs == chart_pngs(profile)
    total = len(chart_plan(profile))
    assert counts == [(done, total) for done in range(1, total + 1)]  # one count, no restart


def test_a_profile_unpickles_without_importing_torch(tmp_path: Path) -> None:
    """Chart workers are sent the profile pickled: a torch object in it (such as torch's
    TorchVersion) would make each of them import torch, seconds of a two-core run."""
    path = tmp_path / "profile.pickle"
    path.write_bytes(pickle.dumps(run_profile(small_run(("nin",), static=True))))
    code = (
        f"import pickle, sys; pickle.loads(open({str(path)!r}, 'rb').read()); "
        "assert 'torch' not in sys.modules, 'unpickling imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_estimated_reserve_is_shown_beside_the_measured_one(profile: Profile) -> None:
    nin = model(profile, "nin")
    train = nin.measured["train"]
    assert train.memory is not None and train.predicted is not None
    reserved = 40 * MiB
    measured = replace(
        train,
        memory=replace(train.memory, peak_reserved=50 * MiB),
        predicted=replace(train.predicted, reserved=reserved),
    )
    cuda_like = replace(
        nin,
        train=replace(nin.train, reserved=reserved),
        measured={**nin.measured, "train": measured},
    )
    text = render_report(replace(profile, models=(cuda_like, *profile.models[1:])))
    row = next(r for r in table_rows(text, "**Memory**") if r[:2] == ["nin", "train"])
    # 40 MiB estimated against 50 MiB measured: (40 - 50) / 50 = -20.0%
    assert row[6:9] == ["40.0", "50.0", "-20.0%"]
    section = text.split("### (c)", 1)[1].split("\n### ", 1)[0]
    assert "its simulation without cuDNN's workspaces, 40.0 MiB, is 20.0% below it" in section


def test_a_run_of_other_models_gets_a_report_about_them(profile: Profile) -> None:
    """No NiN in the run: the title names the models, no exercise or claim of the chapter is
    shown, and the general comparison speaks of the models there are."""
    others = tuple(m for m in profile.models if m.name in ("alexnet", "vgg11"))
    text = render_report(replace(profile, models=others, notes=()))
    assert text.startswith("# Parameters, computation and memory of AlexNet and VGG-11\n")
    assert "Exercise" not in text and "chapter" not in text and "NiN" not in text
    assert "## Comparison of the models" in text
    assert "Of the 2 models, VGG-11 has the most parameters (128,806,154) and AlexNet the" in text
    assert text.count("![memory of a training step by category]") == 1


def test_the_chapters_models_get_the_exercises_and_no_general_comparison(
    profile: Profile,
) -> None:
    text = render_report(profile)
    for heading in ("## Exercise 3", "## Exercise 2", "## Exercise 4", "## The chapter's claims"):
        assert heading in text
    assert "## Comparison of the models" not in text
    assert text.count("![memory of a training step by category]") == 1


def test_notes_of_one_kind_are_one_line(profile: Profile) -> None:
    noted = tuple(
        replace(
            m,
            measured={
                phase: replace(pm, notes=(f"no kernel-scratch figures: RuntimeError {i}",))
                for i, (phase, pm) in enumerate(m.measured.items())
            },
        )
        for m in profile.models
    )
    text = render_report(replace(profile, models=noted))
    lines = [line for line in text.splitlines() if line.startswith("- no kernel-scratch")]
    assert len(lines) == 1
    assert (
        "nin train RuntimeError 0; nin inference RuntimeError 1; nin_single_1x1 train" in lines[0]
    )


def test_parameters_without_a_gradient_are_one_note_naming_them(profile: Profile) -> None:
    five = {f"blocks.{i}.weight": 10 * (i + 1) for i in range(5)}  # 10+20+30+40+50 = 150
    noted = tuple(
        replace(m, without_grad=five if m.name == "nin" else {"head.bias": 7})
        if m.name in ("nin", "alexnet")
        else m
        for m in profile.models
    )
    text = render_report(replace(profile, models=noted))
    lines = [line for line in text.splitlines() if "gives no gradient" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        "nin: 150 in 5 tensors (blocks.0.weight, blocks.1.weight, blocks.2.weight, "
        "blocks.3.weight and 1 more); alexnet: 7 in 1 tensor (head.bias)"
    )
    assert "gives no gradient" not in render_report(profile)


def test_the_op_with_the_most_scratch_is_named_once(profile: Profile) -> None:
    """The scratch figures are a column of the measured table; which op held the most is said
    once in its text, not in a note per measurement."""
    scratch = {
        "nin": "256.1 MiB in convolution_backward (backward)",
        "alexnet": "25.3 MiB in conv2d",
    }
    noted = tuple(
        replace(
            m,
            measured={
                **m.measured,
                "train": replace(
                    m.measured["train"],
                    notes=(f"largest scratch inside one op: {scratch[m.name]}",),
                ),
            },
        )
        if m.name in scratch
        else m
        for m in profile.models
    )
    text = render_report(replace(profile, models=noted))
    assert "largest scratch inside one op" not in text
    expected = (
        "The most scratch one op held, at any moment: 256.1 MiB in convolution_backward "
        "(backward), in nin's training step"
    )
    assert expected in text


def test_the_method_section_defines_every_memory_category(profile: Profile) -> None:
    method = render_report(profile).split("## How the figures are made", 1)[1]
    for term in (
        "parameters",
        "gradients",
        "optimizer state",
        "workspace",
        "input",
        "saved activations",
        "transient",
        "reserved",
        "CUDA context",
    ):
        assert f"- **{term}**:" in method


def test_layers_are_named_with_their_spec(profile: Profile) -> None:
    text = render_report(profile)
    assert "| 0.0 Conv2d 11×11/4, 1→96 |" in text
    assert "| 1 MaxPool2d 3×3/2 |" in text
    assert "| 14 Linear 6400→4096 |" in text


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (2048, 0, "2,048"),  # enough digits already: as asked
        (1.4, 0, "1.4"),  # a small model's MiB in a column of whole MiB
        (0.0063, 1, "0.0063"),  # its GFLOPs in a column of one decimal
        (-0.004, 0, "-0.0040"),
        (0.0996, 2, "0.10"),  # rounds to 0.10, two significant digits, not 0.100
        (9.96, 0, "10"),  # rounds to 10: no decimal needed
        (0.0, 1, "0.0"),
        (-0.0, 0, "0"),
        (1e-12, 0, "1e-12"),
    ],
)
def test_small_figures_keep_two_significant_digits(value: float, digits: int, text: str) -> None:
    assert fmt_number(value, digits) == text


@pytest.mark.parametrize(
    ("module", "label"),
    [
        ("nn.Conv2d(1, 96, 11, 4)", "0 Conv2d 11×11/4, 1→96"),
        ("nn.Conv1d(40, 16, 5)", "0 Conv1d 5, 40→16"),  # one size, not 5×5
        ("nn.Conv1d(40, 16, 3, stride=2)", "0 Conv1d 3/2, 40→16"),
        ("nn.Conv3d(3, 8, 3)", "0 Conv3d 3×3×3, 3→8"),  # the depth too
        ("nn.MaxPool3d(2)", "0 MaxPool3d 2×2×2/2"),
        ("nn.MaxPool3d((1, 2, 2))", "0 MaxPool3d 1×2×2/1×2×2"),  # each stride, the first 1
        ("nn.Conv2d(3, 8, (1, 3), stride=(2, 1))", "0 Conv2d 1×3/2×1, 3→8"),
        ("nn.Linear(3, 4)", "0 Linear 3→4"),
    ],
)
def test_layer_labels_give_each_dimensions_size(module: str, label: str) -> None:
    built = eval(module, {"nn": nn})
    layer = SimpleNamespace(name="0", type=type(built).__name__, spec=built.extra_repr())
    assert layer_label(layer) == label  # type: ignore[arg-type]
