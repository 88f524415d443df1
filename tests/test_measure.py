"""The measuring half, on the CPU: worker processes, failures as results, plans and searches."""

from __future__ import annotations

import inspect
import itertools
import os
import time
from dataclasses import replace
from pathlib import Path

import fake_models
import pytest
import torch
import zoo_models
from run_configs import small_run
from torch import nn

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.layer_stack import leaf_spans
from nin_profile.measure.cpu_memory import cpu_peak_between_dispatched_ops, cpu_peak_during
from nin_profile.measure.nvml import Nvml
from nin_profile.measure.plan import (
    CpuPlan,
    Plan,
    largest_fitting,
    parse_bytes,
    plan_cpu,
    plan_cpu_run,
)
from nin_profile.measure.runner import run_worker, to_measurement
from nin_profile.measure.worker import (
    Device,
    Request,
    TimingRequest,
    balanced_repeats,
    is_out_of_memory,
    layer_times,
)
from nin_profile.run import PHASES, Run, _measured_fit, _predicted_fit, run_profile

TESTS = Path(__file__).parent


def one_step(model: str, phase: str, batch: int) -> Request:
    """A worker request on the CPU: one warm-up step, one measured."""
    return Request(model=model, phase=phase, batch=batch, device="cpu", warmup=1, iterations=1)


@pytest.fixture
def fake_models_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes inherit the environment: let them import tests/fake_models.py."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.syspath_prepend(str(TESTS))


def test_each_measurement_runs_in_a_process_of_its_own() -> None:
    request = one_step("nin", "inference", 1)
    first, second = run_worker(request), run_worker(request)
    assert "error" not in first, first
    assert len({first["pid"], second["pid"], os.getpid()}) == 3


def test_a_worker_started_ahead_serves_the_next_request_in_a_process_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = one_step("nin", "inference", 1)
    first = run_worker(request, start_next=True)
    second = run_worker(request, start_next=True)  # served by the worker the first one started
    assert "error" not in first and "error" not in second, (first, second)
    assert len({first["pid"], second["pid"], os.getpid()}) == 3
    # a worker started under another environment is not used: this one can import fake_models
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    fake = one_step("fake_models:OutOfMemoryAboveSix", "inference", 2)
    third = run_worker(fake, start_next=False)
    assert "error" not in third, third


def test_a_cpu_training_step_is_measured_beside_its_estimate() -> None:
    config = small_run(("nin",), batch=2, cpu_time_budget=0)
    nin = run_profile(config).models[0]
    train = nin.measured["train"]
    assert train.error is None and train.memory and train.timing and train.predicted
    assert train.batch == 2 and train.timing.iterations == 2
    # CPU conv kernels allocate scratch the trace cannot see: the estimate is a little low
    assert train.predicted.peak <= train.memory.peak_allocated <= 1.10 * train.predicted.peak
    # achieved TFLOP/s = counted FLOPs of a step / median time
    flops = nin.flops_train_step
    assert train.timing.tflops == pytest.approx(flops / (train.timing.ms_per_iter / 1e3) / 1e12)
    assert train.timing.examples_per_s == pytest.approx(2 / (train.timing.ms_per_iter / 1e3))
    assert train.memory.nvml_process is None and train.memory.peak_reserved is None


def test_a_real_out_of_memory_error_becomes_a_result_and_the_run_goes_on(
    fake_models_importable: None,
) -> None:
    config = small_run(("fake_models:OutOfMemoryAboveSix", "nin"), batch=8, cpu_time_budget=0)
    oom, nin = run_profile(replace(config, image_size=96)).models  # 96 px: NiN's step is quick
    for phase in ("train", "inference"):
        error = oom.measured[phase].error or ""
        assert error.startswith("out of memory at batch 8 on CPU ("), error
        assert oom.measured[phase].memory is None
        assert nin.measured[phase].error is None and nin.measured[phase].memory is not None


def test_a_failed_measurement_names_the_users_line(fake_models_importable: None) -> None:
    request = one_step("fake_models:PositionsRunOut", "inference", 2)
    error = to_measurement(run_worker(request), request).error
    line = inspect.getsourcelines(fake_models.PositionsRunOut.forward)[1] + 2
    assert error is not None
    assert f"IndexError: index out of range in self (fake_models.py:{line})" in error, error


def test_memory_held_from_before_is_not_taken_off_when_freed() -> None:
    # a model that keeps its last input: the step first lets go of the one kept from the
    # step before (4 KiB, held before the step: not in the figure, so not taken off it), then
    # allocates 16 KiB and its own 4 KiB: the figures are 16 + 4 KiB, what the step itself
    # held at once, as the trace of that step sees it (taking the free off read 16 KiB)
    state: dict[str, torch.Tensor | None] = {"last": torch.ones(1024)}

    def step() -> None:
        state["last"] = None
        big = torch.ones(4096)
        state["last"] = torch.ones(1024)
        del big

    assert cpu_peak_during(step) == (4096 + 1024) * 4
    assert cpu_peak_between_dispatched_ops(step).peak == (4096 + 1024) * 4


def test_memory_the_figure_holds_from_before_is_taken_off_when_freed() -> None:
    # a buffer replaced out of place (an average kept as `self.avg = 0.9 * self.avg + ...`):
    # the caller's figure holds it from before (`counted`), so its free is taken off: the
    # new 4 KiB replace the old, and 16 KiB come and go above them. (The profiler reports
    # the free of a block only where it saw the block made: the first step makes it under a
    # profile, as the worker's first pass does for the second.)
    state = {"avg": torch.ones(1024)}

    def step() -> None:
        state["avg"] = state["avg"] * 0.9
        big = torch.ones(4096)
        del big

    cpu_peak_during(step)
    counted = {state["avg"].untyped_storage().data_ptr()}
    assert cpu_peak_between_dispatched_ops(step, counted).peak == 4096 * 4
    counted = {state["avg"].untyped_storage().data_ptr()}
    assert cpu_peak_during(step, counted) == 4096 * 4


def test_a_crashed_worker_is_reported_with_its_signal(fake_models_importable: None) -> None:
    request = one_step("fake_models:KillsItself", "train", 2)
    raw = run_worker(request)
    measurement = to_measurement(raw, request)
    assert measurement.error is not None
    assert measurement.error.startswith("crashed at batch 2 on cpu: the process ended on signal 9")


def test_a_hung_worker_is_killed_at_its_time_limit() -> None:
    request = Request(model="vgg11", phase="train", batch=64, device="cpu", warmup=5, iterations=5)
    raw = run_worker(request, timeout_s=3)
    assert raw["error"] == {"kind": "crashed", "message": "killed after the 3 s time limit"}


def test_the_largest_batch_is_found_by_bisection_over_real_runs(
    fake_models_importable: None,
) -> None:
    name = "fake_models:OutOfMemoryAboveSix"
    config = small_run((name,), batch=2)
    run = Run(config, lambda event: None)
    static = analyse_model(name, AnalysisConfig(batch=2, device="cpu"))
    fit = _measured_fit(run, static, "train")
    assert fit.batch == 6  # fake_models.OOM_ABOVE
    assert "batch 6 runs and 7 does not" in fit.how


def test_a_failure_other_than_out_of_memory_stops_the_search(
    fake_models_importable: None,
) -> None:
    name = "fake_models:KillsItself"
    run = Run(small_run((name,), batch=2), lambda event: None)
    static = analyse_model(name, AnalysisConfig(batch=2, device="cpu"))
    fit = _measured_fit(run, static, "train")
    assert fit.batch is None
    assert fit.how.startswith("search stopped after 1 runs: batch 2: the process ended on signal 9")


@pytest.mark.parametrize(
    ("exc", "out_of_memory"),
    [
        # What the H100 raised at AlexNet's training batch 17,625, with the card full: the
        # backward thread's first cuBLAS handle could not be allocated.
        (
            RuntimeError(
                "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
            ),
            True,
        ),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (
            RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasGemmEx`"),
            False,
        ),
        (ValueError("CUBLAS_STATUS_ALLOC_FAILED"), False),  # not raised by a library call
    ],
)
def test_a_library_that_cannot_allocate_counts_as_out_of_memory(
    exc: BaseException, out_of_memory: bool
) -> None:
    assert is_out_of_memory(exc) is out_of_memory


def test_memory_budget_prediction_is_the_largest_batch_under_the_budget() -> None:
    """On the CPU: the largest batch whose estimated peak fits; no CUDA context is added
    (a --cuda-context given by mistake changes nothing), and the answer says which device."""
    budget = 2 * 2**30
    config = small_run(("nin",), 16, "cpu", memory_budget=budget, cuda_context=300 * 2**20)
    run = Run(config, lambda event: None)
    static = analyse_model("nin", AnalysisConfig(batch=16, device="cpu"))
    fit = _predicted_fit(run, static, "train", budget)
    assert fit.batch is not None
    peak = {
        b: analyse_model("nin", AnalysisConfig(batch=b, device="cpu")).train.peak
        for b in (fit.batch, fit.batch + 1)
    }
    assert peak[fit.batch] <= budget < peak[fit.batch + 1]
    assert fit.how == "predicted for the CPU: the estimated peak within the budget"


def test_cuda_memory_budget_is_the_largest_batch_the_simulated_allocator_serves() -> None:
    """On CUDA: the largest batch whose step the caching allocator (simulated with the budget
    less the context as its device memory) serves without running out."""
    budget, context = 2 * 2**30, 300 * 2**20
    limit = budget - context
    config = small_run(
        ("nin",), 16, "cuda", memory_budget=budget, cuda_context=context, static=True
    )
    run = Run(config, lambda event: None)
    static = analyse_model("nin", AnalysisConfig(batch=16, device="cuda"))
    fit = _predicted_fit(run, static, "train", budget)
    assert fit.batch is not None
    reserved = {
        b: analyse_model(
            "nin", AnalysisConfig(batch=b, device="cuda", memory_limit=limit)
        ).train.reserved
        or 0
        for b in (fit.batch, fit.batch + 1)
    }
    assert reserved[fit.batch] <= limit < reserved[fit.batch + 1]
    assert fit.how.startswith("predicted for a CUDA device: its caching allocator simulated")
    assert "300.0 MiB (given with --cuda-context)" in fit.how


def test_a_static_sweep_estimates_every_batch() -> None:
    profile = run_profile(small_run(("alexnet",), static=True, sweep_batches=(1, 8)))
    points = {(p.phase, p.batch): p for p in profile.models[0].sweep}
    assert set(points) == {(ph, b) for ph in ("train", "inference") for b in (1, 8)}
    assert all(p.memory is None and p.predicted is not None for p in points.values())
    assert points["train", 8].predicted.peak > points["train", 1].predicted.peak  # type: ignore[union-attr]


def test_cpu_plan_halves_the_batch_until_three_steps_fit_the_budget() -> None:
    plan = plan_cpu(
        128, flops_at=lambda b: b * 10**9, flops_per_s=10**10, budget_s=4.0, iterations=20
    )
    # a step takes b / 10 s: 3 steps fit 4 s for b ≤ 13, so 128 → 64 → 32 → 16 → 8
    assert plan.batch == 8
    assert plan.iterations == 3  # int(4 / 0.8) - 2
    assert plan.note and "measured at batch 8, not 128" in plan.note
    assert plan_cpu(4, lambda b: b, 10**10, 4.0, 20) == Plan(4, 1, 20, time_limit_s=4.0)


def test_a_cpu_run_measures_every_model_at_one_batch_per_phase_from_the_flops() -> None:
    # Every model's iteration: b × 1 GFLOP to train, b × 0.5 GFLOP to infer, at 10 GFLOP/s:
    # b / 10 s and b / 20 s. Training needs 4 + 5 iterations within half of 40 s (warm-up,
    # memory step, the step between ops, warm-up for timing; 5 rounds): 9 b / 10 ≤ 20,
    # b ≤ 22.2, so 128 → 64 → 32 → 16. Inference needs 10 + 5 (six passes time the layers):
    # 15 b / 20 ≤ 20, b ≤ 26.7: 16. Rounds: (40 − (4 × 1.6 + 10 × 0.8)) / (1.6 + 0.8) = 10.67.
    flops = {"train": lambda b: b * 10**9, "inference": lambda b: b * 10**9 // 2}
    plan = plan_cpu_run(128, flops, flops_per_s=10**10, budget_s=40.0, iterations=20)
    assert plan.batches == {"train": 16, "inference": 16}
    assert plan.rounds == 10
    assert plan.note and "train at batch 16, inference at batch 16, not 128" in plan.note
    # the same inputs give the same plan: nothing in it is measured
    assert plan == plan_cpu_run(128, flops, flops_per_s=10**10, budget_s=40.0, iterations=20)
    # a budget of 0 measures at the requested batch with every iteration asked for
    assert plan_cpu_run(128, flops, 10**10, 0, 20) == CpuPlan({"train": 128, "inference": 128}, 20)


def test_interleaved_timing_gives_each_model_a_median_and_an_interval() -> None:
    entries = (
        *(one_step(model, phase, 2) for model in ("nin", "alexnet") for phase in PHASES),
        replace(one_step("nin", "inference", 2), precision="amp-bf16"),
    )
    raw = run_worker(TimingRequest(entries, rounds=3))
    assert len(raw["timings"]) == 5
    for t in raw["timings"]:
        assert t["iterations"] >= 3 and t["interleaved"] is True  # a fast one repeats a round
        assert t["ms_q1"] <= t["ms_per_iter"] <= t["ms_q3"]
    # one per entry, from the inference entries: NiN's first layer is "0.0"
    assert [layers is not None for layers in raw["layer_ms"]] == [False, True, False, True, True]
    assert "0.0" in raw["layer_ms"][4]
    # a roof for each dtype the entries' convolutions run in: AMP bf16 runs them in bf16
    assert {k: v["matmul_precision"] for k, v in raw["ceilings"].items()} == {
        "float32": "fp32",
        "bfloat16": "bf16",
    }
    assert all(roof["flops_per_s"] > 0 for roof in raw["ceilings"].values())


def test_a_round_gives_a_fast_model_as_many_iterations_as_a_quarter_of_the_slowest() -> None:
    # the slowest takes 1,000 ms: a quarter is 250 ms; 100 ms → round(2.5) = 2 (to even);
    # 20 ms → 12.5 → 12; 1 ms → 250, capped at 16; 400 ms → 0.6 → at least 1
    assert balanced_repeats([1000.0, 100.0, 20.0, 1.0, 400.0]) == [1, 2, 12, 16, 1]


def test_a_layer_is_timed_alone_on_its_input() -> None:
    """Each leaf's figure is its own runs, back to back: a model whose third layer sleeps 20 ms
    a call reads 20 ms there and next to nothing elsewhere."""

    class Sleeps(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.02)
            return x

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Sleeps(), nn.Linear(4, 2))
    x = torch.randn(2, 4)
    times = layer_times(model, lambda: model(x), Device("cpu"), repeats=3)
    assert set(times) == {"0", "1", "2", "3", "(root)"}  # the root: the model's own ops
    assert 20 <= times["2"] < 40
    assert max(times["0"], times["1"], times["3"]) < 5


def test_a_layer_is_timed_alone_on_the_input_its_pre_hooks_give_it() -> None:
    # a forward pre-hook flattens the Linear's 2×3×4 input to 2×12: timed alone on the
    # input as the caller gave it, the Linear would fail on 2×3×4 (4 features, not 12)
    model = nn.Sequential(nn.Identity(), nn.Linear(12, 2))
    model[1].register_forward_pre_hook(lambda m, args: (args[0].flatten(1),))
    x = torch.randn(2, 3, 4)
    times = layer_times(model, lambda: model(x), Device("cpu"), repeats=1)
    assert set(times) == {"0", "1", "(root)"}


def test_a_layer_called_with_keywords_is_timed_with_them() -> None:
    # nn.MultiheadAttention called as transformers call it: its tensors and need_weights by
    # keyword; timed alone without them it would fail (no query) or run another path
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(query=x, key=x, value=x, need_weights=False)[0]

    model = Block().eval()
    x = torch.randn(2, 5, 8)
    with torch.inference_mode():
        times = layer_times(model, lambda: model(x), Device("cpu"), repeats=1)
    assert set(times) == {"attn", "(root)"}


def test_what_a_pre_hook_takes_is_its_layers_time() -> None:
    # a pre-hook that sleeps 20 ms: its layer's row holds them (the layer alone takes next to
    # nothing), and no row lost them (the rows add up to the forward)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].register_forward_pre_hook(lambda m, args: time.sleep(0.02))
    x = torch.randn(2, 4)
    times = layer_times(model, lambda: model(x), Device("cpu"), repeats=3)
    assert 20 <= times["1"] < 40
    assert times["0"] < 5 and times["(root)"] < 5


def test_largest_fitting_gallops_then_bisects() -> None:
    tried: list[int] = []

    def fits(b: int) -> bool:
        tried.append(b)
        return b <= 1234

    assert largest_fitting(fits, guess=1000) == (1234, 1235)
    assert tried[:3] == [1000, 2000, 1500]
    assert largest_fitting(lambda b: b <= 1234, guess=5000, precision=0.01) == (1230, 1240)
    assert largest_fitting(lambda b: False, guess=8) == (0, 1)
    assert largest_fitting(lambda b: True, guess=8, ceiling=100) == (100, None)


def test_a_close_guess_brackets_the_largest_batch_in_few_runs() -> None:
    tried: list[int] = []

    def fits(b: int) -> bool:
        tried.append(b)
        return b <= 10_100

    # a guess 1% low: 10_000 fits, +2% = 10_200 does not, 10_100 fits; bracket within 1%
    assert largest_fitting(fits, guess=10_000, precision=0.01, first_step=0.02) == (10_100, 10_200)
    assert tried == [10_000, 10_200, 10_100]
    tried.clear()
    # a guess 3% high: 10_400 fails, 10_400 / 1.02 = 10_196 fails, 10_196 / 1.04 = 9_803 fits;
    # bisection: 9_999 fits, 10_097 fits, and 10_196 − 10_097 = 99 is within 1% of 10_097
    assert largest_fitting(fits, guess=10_400, precision=0.01, first_step=0.02) == (10_097, 10_196)
    assert tried == [10_400, 10_196, 9_803, 9_999, 10_097]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("6GiB", 6 * 2**30),
        ("512 MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("6e9B", 6_000_000_000),
    ],
)
def test_sizes_parse_in_binary_and_decimal_units(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["6 parsecs", "-1GiB", "GiB", "6", "6e9"])
def test_bad_sizes_say_what_is_wrong(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_without_nvml_a_reading_is_a_note_not_a_crash() -> None:
    reading = Nvml(0).read()
    if reading.device_bytes is not None:
        pytest.skip("NVML is available here")
    assert reading.process_bytes is None
    assert reading.note is not None and reading.note.startswith("NVML unavailable")


def test_leaf_spans_bracket_each_leaf_forward_in_order() -> None:
    # per-layer allocator deltas and per-layer times on the GPU are both built on these spans
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1)))
    ticks = itertools.count()
    spans = leaf_spans(model, lambda: next(ticks), lambda: model(torch.randn(1, 2)))
    assert [name for name, _, _ in spans] == ["0", "1.0", "1.1"]  # containers are not leaves
    assert all(before < after for _, before, after in spans)
    assert spans[0][2] < spans[1][1]  # in the order the layers ran


def test_an_ops_time_belongs_to_the_module_that_called_it() -> None:
    # timm's Attention runs SDPA itself between its two Linear layers: its row gets the time of
    # its own ops (its forward less theirs); leaves get their whole forward; the model's own
    # ops (the residual adds, the mean) go to its root. Every module is timed, none twice.
    torch.manual_seed(0)
    model = zoo_models.sdpa_block().eval()
    x = torch.randn(2, zoo_models.CHANNELS, zoo_models.SIDE, zoo_models.SIDE)
    names = {name or "(root)" for name, _ in model.named_modules()}
    with torch.inference_mode():
        times = layer_times(model, lambda: model(x), Device("cpu"), repeats=1)
    assert set(times) == names
    assert all(ms >= 0 for ms in times.values())


def test_the_cpu_measurement_names_the_op_with_the_most_scratch() -> None:
    # one 3×3 convolution: the CPU's full peak is its output plus the im2col columns and
    # reorders it frees before it returns; between ops, the output alone. Its scratch peaks
    # at least as high as it stood at the full peak, and no higher than the full peak
    conv, x = torch.nn.Conv2d(8, 16, 3), torch.randn(2, 8, 32, 32)

    def work() -> None:
        with torch.no_grad():
            conv(x)

    work()
    between = cpu_peak_between_dispatched_ops(work)
    assert between.peak == 2 * 16 * 30 * 30 * 4  # the output: 115_200 B
    during = cpu_peak_during(work)
    assert 0 < during - between.peak <= between.largest_scratch <= during
    assert between.largest_scratch_op == "convolution"
