"""A profile from Python: by name, as DataFrames, as markdown in a notebook, saved and loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

import nin_profile
from nin_profile.errors import ProfileError
from nin_profile.results import MemoryCategory, Profile

TESTS = Path(__file__).parent

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


def test_save_over_a_file_names_the_folder_not_a_flag(profile: Profile, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(ProfileError, match=r"^folder .*taken is a file; give a folder$"):
        profile.save(tmp_path / "taken", charts=False)


# ---- nin_profile.profile -------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything of a module the API promises not to change."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "devices": {p.device.type for p in model.parameters()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    }


def assert_untouched(before: dict[str, object], model: nn.Module) -> None:
    after = snapshot(model)
    state_before, state_after = before.pop("state"), after.pop("state")
    assert isinstance(state_before, dict) and isinstance(state_after, dict)
    assert state_before.keys() == state_after.keys()
    assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
    assert before == after


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    net[1].eval()  # a mixed mode the call must leave as it was
    net[0].weight.requires_grad_(False)
    net.register_forward_hook(lambda module, args, output: None)
    return net


def test_a_module_instance_is_profiled_and_left_as_it_was() -> None:
    net = small_net()
    before = snapshot(net)
    profile = nin_profile.profile(net, "nin", input_size=(1, 96, 96), batch=4)
    assert profile.names == ("Sequential", "nin")
    # 1*8*3*3 + 8 (conv) + 8 + 8 (batch norm) + 8*5 + 5 (linear) = 141; the conv's weight,
    # 1*8*3*3 = 72, frozen
    assert profile["Sequential"].params == 141
    assert profile["Sequential"].trainable_params == 141 - 72
    assert profile["nin"].params == 1_992_166
    assert_untouched(before, net)


def test_on_error_the_module_is_left_as_it_was_and_the_error_is_one_line() -> None:
    net = small_net()
    before = snapshot(net)
    with pytest.raises(ProfileError, match="smallest --image-size Sequential accepts is 3") as exc:
        nin_profile.profile(net, input_size=(1, 2, 2), batch=4)
    assert "\n" not in str(exc.value)
    assert_untouched(before, net)


# a measured CPU run kept short: batch 2, one warm-up and two timed iterations, no time budget
MEASURED_AT_BATCH_2: dict[str, Any] = {
    "batch": 2,
    "measure": True,
    "device": "cpu",
    "cpu_time_budget": 0,
    "warmup": 1,
    "iterations": 2,
}


@pytest.mark.usefixtures("worker_finds_the_zoo")
def test_a_measured_module_is_measured_on_a_copy_in_its_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker loads the copy saved for it: the class must be importable there. The model
    takes token ids (tests/test_inputs.py): the worker makes its batch of ids for the model it
    built, and its peak between ops is the estimate's."""
    monkeypatch.syspath_prepend(str(TESTS))
    import zoo_models

    net = zoo_models.TokenClassifier()
    before = snapshot(net)
    profile = nin_profile.profile(
        net, input_size=(zoo_models.TOKENS,), token_ids=True, **MEASURED_AT_BATCH_2
    )
    assert profile.config.inputs == zoo_models.TOKEN_IDS
    (model,) = profile.models
    measured = model.measured["train"]
    assert measured.error is None and measured.memory is not None and measured.timing is not None
    assert measured.batch == 2 and measured.memory.peak_between_ops == model.train.peak
    assert_untouched(before, net)


def test_the_worker_imports_a_model_from_where_this_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a notebook's sys.path.insert: the worker, a process of its own, found no such module
    # ("No module named ...", a note, and no measured figures)
    (tmp_path / "notebook_nets.py").write_text(
        "from torch import nn\n"
        "class Head(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(12, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import notebook_nets  # type: ignore[import-not-found]

    profile = nin_profile.profile(notebook_nets.Head(), input_size=(3, 2, 2), **MEASURED_AT_BATCH_2)
    measured = profile.models[0].measured["train"]
    assert measured.error is None and measured.memory is not None, measured.error


@pytest.mark.usefixtures("worker_finds_the_zoo")
def test_a_float64_model_is_measured_in_float64() -> None:
    # in fp32 the worker once cast every model to float32 (`model.to(device, float32)`), where
    # the analysis keeps a layer's own dtype: the float64 input met float32 weights and the
    # measurement failed ("mat1 and mat2 must have the same dtype")
    profile = nin_profile.profile(
        "zoo_models:Float64", input_size=(3, 16, 16), **MEASURED_AT_BATCH_2
    )
    (model,) = profile.models
    # 768·32 + 32 + 32·10 + 10 = 24_938 parameters of 8 bytes
    assert model.train.by_category[MemoryCategory.PARAMS] == 24_938 * 8
    for phase, estimate in (("train", model.train), ("inference", model.inference)):
        measured = model.measured[phase]
        assert measured.error is None and measured.memory is not None, measured.error
        assert measured.memory.peak_between_ops == estimate.peak


def test_a_module_defined_in_main_cannot_be_measured_and_says_so() -> None:
    Local = type("Local", (nn.Sequential,), {"__module__": "__main__"})
    net = Local(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ProfileError, match="measure=True needs the worker process to import Local"):
        nin_profile.profile(net, measure=True, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"input_size": (1, 96, 64)},
            "nin is built for square images (channels × side × side), not 1×96×64 images",
        ),
        ({"input_size": (12,), "token_ids": True}, "nin is built for square images"),
        ({"input_size": 12}, "input_size 12: give one example's sizes as a tuple"),
        ({"input_size": (3, 0)}, "each size in input_size must be a positive whole number, got 0"),
        ({"input_size": (12,), "token_ids": "no"}, "token_ids must be True or False, got 'no'"),
        ({"batch": 0}, "batch must be a positive whole number, got 0"),
        ({"optimizer": "lbfgs"}, "optimizer 'lbfgs': choose one of sgd, momentum, adam"),
        ({"memory_budget": "6"}, "memory_budget: give a unit: 6GiB"),
        ({"device": "tpu"}, "device 'tpu': choose one of auto, cpu, cuda"),
        ({"batch": True}, "batch must be a positive whole number, got True"),
        ({"cpu_time_budget": float("nan")}, "cpu_time_budget must be a finite number of"),
        ({"cpu_time_budget": float("inf")}, "cpu_time_budget must be a finite number of"),
        ({"sweep_batches": (32, 2, 32)}, "32 given more than once; give each once"),
        ({"parallel": "ddp", "world_size": True}, "world sizes must be positive whole numbers"),
        (
            {"parallel": "ddp", "world_size": 8, "bucket_cap_mb": float("nan")},
            "--bucket-cap-mb must be a finite number above 0, got nan",
        ),
    ],
)
def test_bad_keywords_are_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(message)):
        nin_profile.profile("nin", **kwargs)  # type: ignore[arg-type]


README = Path(__file__).parents[1] / "README.md"


def test_the_readmes_notebook_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example, as a user pastes it into a notebook cell."""
    text = README.read_text()
    block = text.split("## Use it from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    profile = namespace["profile"]
    assert isinstance(profile, Profile)
    assert (tmp_path / "nin-vs-alexnet" / "report.md").exists()
