"""A profile from Python: by name, as DataFrames, as markdown in a notebook, saved and loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nin_profile.results import MemoryCategory, Profile

GOLDEN = Path(__file__).parent / "golden" / "profile_cpu.json"


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.from_dict(json.loads(GOLDEN.read_text()))


def test_a_model_by_name(profile: Profile) -> None:
    assert profile["nin"].params == 1_992_166  # tests/golden/params.json
    with pytest.raises(KeyError, match="no model 'resnet' in this profile; it has nin, "):
        profile["resnet"]


def test_the_models_frame_holds_numbers_with_units_in_the_names(profile: Profile) -> None:
    frame = profile.models_frame()
    assert list(frame.index) == list(profile.names)
    nin = profile["nin"]
    row = frame.loc["nin"]
    assert row["params"] == nin.params
    assert row["flops_forward"] == 2 * row["macs_forward"]
    assert row["train_peak_bytes"] == nin.train.peak
    assert row["train_activations_bytes"] == nin.train[MemoryCategory.ACTIVATIONS]
    measured = nin.measured["train"]
    assert measured.memory is not None and measured.timing is not None
    assert row["train_peak_allocated_bytes"] == measured.memory.peak_allocated
    assert row["train_ms_per_iter"] == measured.timing.ms_per_iter
    assert pd.api.types.is_integer_dtype(frame["params"])
    memory = [c for c in frame.columns if "peak" in c or "reserved" in c or "nvml" in c]
    assert memory and all(c.endswith("_bytes") for c in memory)  # bytes, and says so


def test_the_layers_frame_has_every_layer_with_a_model_column(profile: Profile) -> None:
    frame = profile.layers_frame()
    assert len(frame) == sum(len(m.layers) for m in profile.models)
    nin = frame[frame["model"] == "nin"]
    assert nin["params"].sum() == profile["nin"].params
    first = nin.iloc[0]
    assert first["name"] == "0.0" and first["params"] == 11_712  # 96*1*11*11 + 96
    assert first["output_shape"] == (2, 96, 54, 54)


def test_a_notebook_shows_the_summary_not_a_dataclass(profile: Profile) -> None:
    shown = profile._repr_markdown_()
    assert "| Model | Params |" in shown and "| nin | 1,992,166 |" in shown
    assert "**Memory**" in shown  # the measurements
    assert len(repr(profile)) < 200 and repr(profile).startswith("Profile(nin, nin_single_1x1")


def test_save_writes_what_the_command_line_writes_and_load_reads_it(
    profile: Profile, tmp_path: Path
) -> None:
    files = profile.save(tmp_path / "out", charts=False)
    assert files == ["profile.json", "layers.csv", "report.md"]
    assert (tmp_path / "out" / "report.md").read_text() == profile.report()
    assert Profile.load(tmp_path / "out") == profile
    assert Profile.load(tmp_path / "out" / "profile.json") == profile
