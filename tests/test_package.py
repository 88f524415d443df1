"""The package as a user installs it: a wheel built with `python -m build`, installed apart from
this checkout, runs the command line and carries its version and type information."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nin_profile

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, installed (without its dependencies, which this environment has) into a
    folder of its own: what runs from there is the wheel's content, not this checkout."""
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("package")
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("nin_profile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nin_profile/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wheel_runs_the_command_line_from_its_own_files(
    installed: Path, tmp_path: Path
) -> None:
    where = run_installed(
        installed, tmp_path, "-c", "import nin_profile; print(nin_profile.__file__)"
    )
    assert where.stdout.strip() == str(installed / "nin_profile" / "__init__.py")
    out = tmp_path / "out"
    result = run_installed(
        installed,
        tmp_path,
        "-m",
        "nin_profile",
        "--static",
        "--models",
        "nin",
        "--batch",
        "2",
        "--no-charts",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"profile.json", "layers.csv", "report.md"}


def test_the_version_is_the_packages_own(installed: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.metadata as m, nin_profile; "
        "print(m.version('nin-profile'), nin_profile.__version__)"
    )
    result = run_installed(installed, tmp_path, "-c", code)
    metadata, attribute = result.stdout.split()
    assert metadata == attribute == nin_profile.__version__
