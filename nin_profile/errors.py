"""Errors a user can cause and fix: the CLI prints each as one line and exits with code 2."""

from __future__ import annotations

import os
import sys
import traceback

import torch


class ProfileError(Exception):
    """Bad input: the message says what is wrong and what would be right."""


class UnknownModel(ProfileError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown model {name!r}; known models: {', '.join(known)} "
            "(or an import path package.module:callable)"
        )


class InvalidConfig(ProfileError):
    pass


class ImportPathError(ProfileError):
    pass


class UserCodeFailed(ProfileError):
    """The user's own code (an import, a builder) raised; the message says what and where."""


class DeviceUnavailable(ProfileError):
    pass


class LayerFailed(ProfileError):
    """A layer cannot run on the shape it receives (for example an image too small).

    expected_channels: where the layer has `in_channels` and its input has others, how many it
    wants (a channel mismatch names the `--channels` the model expects)."""

    def __init__(
        self,
        layer: str,
        layer_type: str,
        input_shape: tuple[int, ...],
        reason: str,
        expected_channels: int | None = None,
    ):
        self.layer = layer
        self.layer_type = layer_type
        self.input_shape = input_shape
        self.reason = reason
        self.expected_channels = expected_channels
        shape = "×".join(map(str, input_shape)) if input_shape else "?"
        super().__init__(f"layer {layer} ({layer_type}) cannot run on input {shape}: {reason}")


# Frames in these folders are torch's or nin_profile's, not the user's.
_OURS = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def short_path(filename: str) -> str:
    """A source file as its import path would name it: relative to the sys.path entry that
    holds it (`mypkg/nets.py`), else as it is."""
    roots = sorted((os.path.abspath(p) for p in sys.path if p), key=len, reverse=True)
    path = os.path.abspath(filename)
    for root in roots:
        if path.startswith(root + os.sep):
            return os.path.relpath(path, root)
    return filename


def raised_where(exc: BaseException) -> str:
    """`file:line` where `exc` was raised: the innermost frame outside torch and nin_profile
    (the user's line), else the innermost of all."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    outside = [f for f in frames if not os.path.abspath(f.filename).startswith(_OURS)]
    frame = (outside or frames)[-1]
    return f"{short_path(frame.filename)}:{frame.lineno}"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def user_error(exc: BaseException) -> str:
    """'ValueError: boom (mypkg/nets.py:12)': what the user's code raised, and where."""
    message = first_line(exc)
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"{what} ({raised_where(exc)})"


def raised_in_torch(exc: BaseException) -> bool:
    """Whether every frame of `exc` is torch's or ours (a kernel refusing a shape)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return all(os.path.abspath(f.filename).startswith(_OURS) for f in frames)
