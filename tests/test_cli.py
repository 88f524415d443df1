"""The command line as a user meets it: outputs, the profile.json contract, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nin_profile.cli import batch_list, main
from nin_profile.files import write_output_folder

TESTS = Path(__file__).parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own; tests/fake_models.py is importable there."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "nin_profile", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )


def refusal(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str]:
    """The CLI's exit code and stderr for `args`, run here: a refusal is the same in-process as
    in a process of its own (run_cli, 2-5 s each), argparse's included."""
    try:
        code: int | str | None = main(list(args))
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def static_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    assert (
        main(
            [
                "--static",
                "--models",
                "nin,alexnet",
                "--batch",
                "4",
                "--device",
                "cuda",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_static_run_writes_profile_csv_and_report(static_run: Path) -> None:
    assert {p.name for p in static_run.iterdir()} >= {"profile.json", "layers.csv", "report.md"}
    csv_lines = (static_run / "layers.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,name,type,output_shape,params")
    assert csv_lines[1].startswith("nin,0.0,Conv2d,4×96×54×54,11712,")


def test_profile_json_keeps_its_contract(static_run: Path) -> None:
    doc = json.loads((static_run / "profile.json").read_text())
    expected = {
        "batch": 4,
        "device": "cuda",
        "image_size": 224,
        "channels": 1,
        "classes": None,  # not given: each model's own
        "optimizer": "sgd",
    }
    assert doc["config"].items() >= expected.items()
    assert {"torch", "device_name"} <= doc["environment"].keys()
    nin = doc["models"][0]
    assert nin["name"] == "nin"
    assert nin["classes"] == 10 and nin["loss"] == "cross-entropy over 10 classes"
    for key in (
        "params",
        "trainable_params",
        "macs_forward",
        "flops_forward",
        "flops_backward",
        "activation_bytes_saved",
    ):
        assert isinstance(nin[key], int), key
    assert nin["flops_forward"] == 2 * nin["macs_forward"]
    for phase in ("train", "inference"):
        predicted = nin["memory"][phase]["predicted"]
        assert {"params", "grads", "optimizer", "activations", "peak"} <= predicted.keys()
    layer = nin["layers"][0]
    assert layer.keys() >= {
        "name",
        "type",
        "output_shape",
        "params",
        "flops_forward",
        "flops_backward",
        "output_bytes",
        "saved_bytes",
    }
    assert layer["output_shape"] == [4, 96, 54, 54]


def test_list_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-models"]) == 0
    out = capsys.readouterr().out
    for name in ("nin ", "nin_single_1x1", "nin_gradual_head", "alexnet", "vgg11 ", "vgg11_narrow"):
        assert name in out


# NiN at 66×66: conv k11 s4 → 14, pool → 6, pool → 2, and the third 3×3 pool cannot run.
# At 67×67: 15 → 7 → 3 → 1, so 67 is the smallest side NiN accepts.
BAD_INPUTS = [
    (["--models", "resnet"], "unknown model 'resnet'; known models: nin, nin_single_1x1"),
    (["--batch", "0"], "argument --batch: must be a positive whole number, got 0"),
    (["--image-size", "-3"], "argument --image-size: must be a positive whole number, got -3"),
    (
        ["--models", "nin", "--image-size", "66", "--static"],
        "layer 5 (MaxPool2d) cannot run on input 128×384×2×2",
    ),
    (
        ["--models", "nin", "--image-size", "66", "--static"],
        "smallest --image-size nin accepts is 67 (--input-shape 1,67,67)",
    ),
    (["--device", "cuda"], "CUDA is not available here"),
    (["--models", "math:pi", "--static"], "'math:pi' gave a float, not a torch.nn.Module"),
    (["--models", "no_such_pkg:net", "--static"], "cannot import 'no_such_pkg'"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (["--models", "torch.nn:Identity", "--static"], "has no trainable parameters"),
    (
        ["--models", "fake_models:DetachedOut", "--static"],
        "the training loss cannot take the model's output (no floating-point output of the "
        "model requires grad)",
    ),
    (["--max-batch", "--device", "cpu"], "--max-batch runs real training steps"),
    (["--render", "no/such/profile.json"], "profile no/such/profile.json does not exist"),
    (["--memory-budget", "6 parsecs"], "is not a size such as 6GiB"),
    (["--memory-budget", "6"], "give a unit: 6GiB, 6MiB, 6GB or 6B"),
    (["--static", "--out", "/proc/nin-profile-out"], "cannot write in /proc"),
    (["--cpu-time-budget", "nan"], "argument --cpu-time-budget: must be a finite number"),
    (["--cpu-time-budget", "inf"], "argument --cpu-time-budget: must be a finite number"),
    (["--models", ""], "--models is empty; give at least one model name"),
    (["--sweep-batch", "1,,2"], "argument --sweep-batch: '1,,2' has an empty entry"),
    (["--sweep-batch", "2,2,1"], "argument --sweep-batch: 2 given more than once"),
]


def test_batch_and_world_sizes_come_in_ascending_order() -> None:
    assert batch_list("256, 1,32") == (1, 32, 256)


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_gets_one_line_and_exit_code_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--device" in args:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    code, stderr = refusal(capsys, *args)
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr  # and no blank line before it
    assert "Traceback" not in stderr
    assert message in lines[0]


def test_a_refusal_in_a_process_of_its_own_is_one_line_too() -> None:
    result = run_cli("--models", "resnet")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "unknown model 'resnet'" in result.stderr


def test_a_malformed_argument_is_refused_without_loading_torch() -> None:
    # torch takes about 2 s to import on a two-core machine; argparse needs none of it
    code = (
        "import sys; from nin_profile.cli import main\n"
        "try:\n    main(['--batch', 'x'])\nexcept SystemExit as exit:\n"
        "    assert exit.code == 2, exit.code\n"
        "assert 'torch' not in sys.modules, 'refusing an argument imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "'x' is not a whole number" in result.stderr


def test_out_refuses_a_folder_that_is_not_ours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "thesis.tex").write_text("do not delete")
    assert main(["--static", "--models", "nin", "--batch", "1", "--out", str(tmp_path)]) == 2
    assert "not a nin_profile output" in capsys.readouterr().err
    assert (tmp_path / "thesis.tex").read_text() == "do not delete"


def test_a_failed_write_leaves_the_previous_output_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write_output_folder(out, {"profile.json": "{}", "report.md": "old"})

    def disk_full(self: Path, data: bytes) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_output_folder(out, {"profile.json": "{}", "report.md": "new", "x.png": b"png"})
    assert (out / "report.md").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


def test_check_params_passes_then_reports_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = tmp_path / "params.json"
    assert main(["--models", "nin,alexnet", "--write-params", str(golden)]) == 0
    assert main(["--check-params", str(golden)]) == 0
    doc = json.loads(golden.read_text())
    doc["models"]["nin"]["layers"]["0.0"] -= 1
    doc["models"]["nin"]["params"] -= 1
    golden.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["--check-params", str(golden)]) == 1
    out = capsys.readouterr().out
    assert "nin: layer 0.0 11,711 → 11,712 (+1)" in out
    assert "nin: total 1,992,165 → 1,992,166 (+1)" in out


def test_check_params_on_a_missing_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check-params", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_out_naming_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    """The default job would measure for minutes before writing: the folder is checked first
    (the refusal comes before any model is built, so no progress reaches stderr)."""
    target = tmp_path / "report.md"
    target.write_text("mine")
    result = run_cli("--models", "vgg11", "--device", "cpu", "--out", str(target))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"nin-profile: error: --out {target} is a file; give a folder"
    ]
    assert target.read_text() == "mine"


def test_a_static_run_never_replaces_a_measured_report_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    measured = json.loads((TESTS / "golden/profile_cpu.json").read_text())
    assert measured["config"]["static"] is False
    write_output_folder(out, {"profile.json": json.dumps(measured), "report.md": "measured"})
    static = ["--static", "--models", "nin", "--batch", "1", "--no-charts", "--out", str(out)]
    refused = run_cli(*static)
    assert refused.returncode == 2 and "holds a measured report" in refused.stderr
    assert (out / "report.md").read_text() == "measured"
    assert main([*static, "--force"]) == 0
    assert json.loads((out / "profile.json").read_text())["config"]["static"] is True


def test_output_folders_get_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_output_folder(tmp_path / "a" / "out", {"report.md": "x"})
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755


def test_check_params_honours_models_and_refuses_another_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = tmp_path / "params.json"
    assert main(["--models", "nin,alexnet", "--write-params", str(golden)]) == 0
    doc = json.loads(golden.read_text())
    doc["models"]["alexnet"]["params"] += 1  # drift in alexnet only
    golden.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["--check-params", str(golden), "--models", "nin"]) == 0
    assert "(1 models)" in capsys.readouterr().out
    assert main(["--check-params", str(golden), "--models", "vgg11"]) == 2
    assert "has no counts for vgg11" in capsys.readouterr().err
    assert main(["--check-params", str(golden), "--classes", "100"]) == 2
    assert "was written with --classes 10, not 100" in capsys.readouterr().err
    assert main(["--check-params", str(golden), "--classes", "10", "--models", "nin"]) == 0
    capsys.readouterr()
    assert main(["--check-params", str(golden), "--models", ""]) == 2
    assert "--models is empty" in capsys.readouterr().err
