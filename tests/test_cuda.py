"""Measurements on a real CUDA GPU. Skipped without one; issue 5 runs them on an H100/H200."""

from __future__ import annotations

import pytest
import torch

from nin_profile.analysis import AnalysisConfig, analyse_model
from nin_profile.measure.runner import run_worker, to_measurement
from nin_profile.measure.worker import Request
from nin_profile.results import PhaseMeasurement

pytestmark = pytest.mark.cuda


def measure(name: str, phase: str, batch: int) -> PhaseMeasurement:
    request = Request(model=name, phase=phase, batch=batch, device="cuda", warmup=2, iterations=5)
    return to_measurement(run_worker(request, timeout_s=300), request)


def test_a_training_step_is_measured_by_the_allocator_and_nvml() -> None:
    m = measure("nin", "train", 32)
    assert m.error is None, m.error
    assert m.memory is not None and m.timing is not None
    assert 0 < m.memory.baseline_allocated < m.memory.peak_allocated
    assert m.memory.peak_reserved is not None and m.memory.peak_allocated <= m.memory.peak_reserved
    assert m.memory.cuda_context is not None and m.memory.cuda_context > 0
    if m.memory.nvml_process is not None:  # NVML may not list the process inside a container
        assert m.memory.nvml_process >= m.memory.peak_reserved
    assert m.memory.nvml_device is not None and m.memory.nvml_device >= m.memory.peak_reserved
    assert m.timing.clock == "CUDA events" and m.timing.iterations == 5


def test_the_same_configuration_peaks_at_the_same_byte_twice() -> None:
    first, second = measure("alexnet", "train", 32), measure("alexnet", "train", 32)
    assert first.memory is not None and second.memory is not None
    assert first.memory.peak_allocated == second.memory.peak_allocated


def test_a_batch_too_large_for_the_gpu_is_reported_as_out_of_memory() -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    per_example = analyse_model("vgg11", AnalysisConfig(batch=1, device="cuda")).train.peak
    batch = 2 * total // per_example  # the estimate needs twice the card
    m = measure("vgg11", "train", batch)
    assert m.memory is None
    assert m.error is not None and m.error.startswith(f"out of memory at batch {batch} on ")


@pytest.mark.parametrize("name", ["nin", "alexnet", "vgg11"])
def test_the_estimate_is_near_the_measured_peak(name: str) -> None:
    # bench/memory_accuracy.py gives the exact errors; this only catches a broken estimate
    estimate = analyse_model(name, AnalysisConfig(batch=32, device="cuda")).train.peak
    m = measure(name, "train", 32)
    assert m.memory is not None
    assert abs(estimate - m.memory.peak_allocated) <= 0.10 * m.memory.peak_allocated


def test_per_layer_activation_memory_matches_the_estimate() -> None:
    estimate = {
        layer.name: layer.allocated_delta
        for layer in analyse_model("nin", AnalysisConfig(batch=32, device="cuda")).layers
    }
    m = measure("nin", "train", 32)
    assert m.layer_deltas, "no per-layer figures"
    for name, measured in m.layer_deltas.items():
        if measured > 2**20:
            assert abs(estimate[name] - measured) <= 0.01 * measured, name
