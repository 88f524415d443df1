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

import pytest
from run_configs import small_run

from nin_profile.cli import main
from nin_profile.render.charts import (
    all_charts,
    layer_costs,
    roofline,
)
from nin_profile.render.markdown import render_report
from nin_profile.render.names import chart_plan
from nin_profile.report import ChartPool, chart_pngs
from nin_profile.results import ModelProfile, Profile, Timing
from nin_profile.run import run_profile
from nin_profile.units import MiB, fmt_mib, fmt_scaled

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


def summary_rows(text: str) -> dict[str, list[str]]:
    section = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[2:]}  # past the rule


def test_every_summary_figure_agrees_with_the_profile(profile: Profile) -> None:
    rows = summary_rows(render_report(profile))
    assert set(rows) == {m.name for m in profile.models}
    for m in profile.models:
        row = rows[m.name]
        assert row[1] == f"{m.params:,}"
        assert row[2] == fmt_scaled(m.macs_forward, 1e9)
        assert row[3] == fmt_scaled(m.flops_forward, 1e9)
        assert row[4] == fmt_scaled(m.flops_train_step, 1e9)
        assert row[5] == fmt_mib(m.activation_bytes_saved)
        train = m.measured["train"]
        assert train.memory and train.predicted
        assert row[6] == fmt_mib(train.predicted.peak)
        assert row[7] == fmt_mib(train.memory.peak_allocated)


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
    slow = Timing(
        ms_per_iter=1e6, ms_spread=0.0, examples_per_s=1.0, tflops=None, iterations=1, clock="test"
    )
    slower = replace(
        nin, measured={**nin.measured, "train": replace(nin.measured["train"], timing=slow)}
    )
    text = render_report(replace(profile, models=(slower, *profile.models[1:])))
    assert "the chapter's remark that NiN can take longer holds here" in text


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
    assert "nin train: out of memory at batch 2 on CPU (2 threads)" in text
    assert summary_rows(text)["nin"][7] == "failed"


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
    section = text.split("### (c)", 1)[1].split("\n### ", 1)[0]
    assert "reserved est. (MiB)" in section
    row = next(line for line in section.splitlines() if line.startswith("| nin |"))
    # 40 MiB estimated against 50 MiB measured: (40 - 50) / 50 = -20.0%
    assert "| 40.0 |" in row and "| 50.0 | -20.0% |" in row
    assert "-20.0% from the 40.0 MiB its simulation" in section
