"""What profile.json records of the software the figures come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nin_profile.environment import collect_environment, cudnn_version
from nin_profile.render.general import conditions
from nin_profile.results import Profile


@pytest.mark.parametrize(
    ("code", "version"),
    [
        (91900, "9.19.0"),  # cuDNN 9: major * 10_000 + minor * 100 + patch (the H100's)
        (90100, "9.1.0"),
        (8902, "8.9.2"),  # cuDNN 8: major * 1_000 + minor * 100 + patch
    ],
)
def test_cudnn_version_is_decoded_from_torchs_integer(
    monkeypatch: pytest.MonkeyPatch, code: int, version: str
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: code)
    assert cudnn_version() == version


def test_a_cpu_run_records_no_cuda_stack() -> None:
    env = collect_environment("cpu", measured=True)
    assert env.cudnn is None and env.driver is None


def test_the_report_names_the_cuda_stack_it_was_measured_with() -> None:
    # reports/nvidia-h100-80gb-hbm3 was measured where nvidia-smi showed driver 580.159.04 and
    # torch 2.11.0+cu130 reported cuDNN 91900.
    path = Path(__file__).parents[1] / "reports/nvidia-h100-80gb-hbm3/profile.json"
    profile = Profile.from_dict(json.loads(path.read_text()))
    assert "(CUDA 13.0, cuDNN 9.19.0, driver 580.159.04)" in conditions(profile)
