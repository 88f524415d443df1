"""All file I/O of nin_profile: output folders, profile.json, parameter-count files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nin_profile.errors import ProfileError

if TYPE_CHECKING:
    from torch import nn

    from nin_profile.results import Profile

PROFILE_JSON = "profile.json"


def write_output_folder(
    out_dir: Path,
    files: Mapping[str, bytes | str],
    replaces_measured: bool = True,
    named: str = "--out",
) -> None:
    """Write every file into a staging folder, then swap it in for `out_dir` in one rename.

    An interrupted run leaves the previous folder untouched. A folder that holds something
    other than a previous nin_profile output is never replaced, nor a measured profile by a
    static one unless `replaces_measured`. Folders get the user's umask. Messages call the
    folder `named` (the command line's option, or the API's "folder").
    """
    out_dir = out_dir.resolve()
    check_output_folder(out_dir, replaces_measured, named)
    staging = _staging_folder(out_dir, named)
    try:
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                path.write_bytes(content)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output_folder(
    out_dir: Path, replaces_measured: bool = True, named: str = "--out"
) -> None:
    """Refuse, before any work, an output folder this run could not or must not replace: a
    file, a folder of someone else's files, one where nothing can be written, or (unless
    `replaces_measured`) a measured report that a static run would overwrite."""
    out_dir = out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ProfileError(f"{named} {out_dir} is a file; give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / PROFILE_JSON).exists():
        raise ProfileError(
            f"{named} {out_dir} holds files that are not a nin_profile output (no {PROFILE_JSON}); "
            "give a new or empty folder"
        )
    if not replaces_measured and _is_measured(out_dir / PROFILE_JSON):
        raise ProfileError(
            f"{named} {out_dir} holds a measured report that this static run would replace; "
            "give another folder, or --force to replace it"
        )
    _check_writable(out_dir, named)


def _check_writable(out_dir: Path, named: str) -> None:
    """Make and remove a folder in the nearest existing parent: nothing is left behind."""
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    probe = parent / f".{out_dir.name}.probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise ProfileError(f"{named} {out_dir}: cannot write in {parent} ({exc.strerror})") from exc


def _is_measured(profile_json: Path) -> bool:
    try:
        return not json.loads(profile_json.read_text(encoding="utf-8"))["config"]["static"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _staging_folder(out_dir: Path, named: str) -> Path:
    """A new empty folder beside `out_dir`, made with the user's umask (mkdtemp's are 0700)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(100):
            staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}-{attempt}"
            try:
                staging.mkdir()
                return staging
            except FileExistsError:
                continue
    except OSError as exc:
        raise ProfileError(
            f"{named} {out_dir}: cannot write there ({exc.strerror or exc})"
        ) from exc
    raise ProfileError(f"{named} {out_dir}: no free name for a staging folder beside it")


def _swap_in(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, or say in one line why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProfileError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{what} {path} is not readable JSON: {exc}") from exc


def save_for_worker(module: nn.Module) -> Path:
    """A copy of `module` on disk (torch.save) for a worker process to load: how an instance
    handed to the Python API reaches the process that measures it. Removed when this process
    ends."""
    import atexit

    import torch

    folder = Path(tempfile.mkdtemp(prefix="nin_profile-model-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "model.pt"
    torch.save(module, path)
    return path


def read_profile(path: Path) -> Profile:
    """A profile.json as a Profile, or one line saying why it is not one."""
    from nin_profile.results import Profile

    data = read_json(path, "profile")
    try:
        return Profile.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProfileError(
            f"{path} is not a nin_profile profile.json ({type(exc).__name__}: "
            f"{exc}); make one with python -m nin_profile --out DIR"
        ) from exc


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(to_json(data), encoding="utf-8")
    os.replace(tmp, path)
