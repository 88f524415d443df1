"""Errors a user can cause and fix: the CLI prints each as one line and exits with code 2."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback


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


class NeedsValues(ProfileError):
    """A forward needs the values of its tensors (an `if` on a tensor, `.item()`, `x[x > 0]`),
    which the meta tensors the analysis runs on do not have."""

    def __init__(self, layer: str, layer_type: str, reason: str):
        self.layer = layer
        text = (
            f"layer {layer} ({layer_type}) needs the values of its tensors ({reason}); the "
            "analysis runs the model on meta tensors, which have shapes but no values, so it "
            "cannot estimate a forward that branches on a tensor (`if x.mean() > 0`), calls "
            "`.item()` or `.tolist()`, or selects by value (`x[x > 0]`, `nonzero`, `unique`)"
        )
        if _NESTED in reason:
            text += (
                "; nn.TransformerEncoder given a src_key_padding_mask packs the batch into a "
                "nested tensor in eval mode, whose size depends on where the padding is: build "
                "it with enable_nested_tensor=False to profile the padded batch as it is"
            )
        super().__init__(text)


class StepFailed(ProfileError):
    """The training step failed once the forward had run: in backward or the optimizer."""

    def __init__(self, reason: str):
        super().__init__(
            f"the training step failed after the forward (in backward or the optimizer's step): "
            f"{reason}"
        )


# what torch says where a meta tensor is asked for values it does not have
_VALUES_NEEDED = (
    "cannot be called on meta tensors",  # .item(), bool(), int() of a tensor
    "Cannot copy out of meta tensor",  # .tolist()
    "meta device type tensor to numpy",  # .numpy()
    "data-independent implementation does not exist",  # nonzero, masked_select
    "a meta tensor without output_size",  # repeat_interleave
)


# ops whose output's size depends on the input's values: meta has no kernel for them
# (nn.TransformerEncoder's nested tensor is as long as each sequence's padding leaves it)
_NESTED = "_nested_tensor_from_mask"
_VALUE_SIZED_OPS = re.compile(
    r"aten::(_unique2|_unique|unique_dim|unique_consecutive|masked_select|bincount|equal|"
    rf"nonzero|nonzero_static|{_NESTED}_left_aligned|{_NESTED}): attempted to run this "
    r"operator with Meta tensors"
)


# torch's meta kernels of value-sized ops that decline to guess ("The register_meta function
# for torch.nonzero() raises unimplemented by default...", then a setting to make it guess)
_DECLINED_META = re.compile(r"register_meta function for torch\.(\w+)\(\)")


def values_reason(exc: BaseException) -> str:
    """What needed the values, and where: the op by name where torch's message is about its
    missing meta kernel (a paragraph on custom ops) or its meta kernel declining (with a
    setting of torch's internals that would make it guess: no fix), else the error's first
    line."""
    text = str(exc)
    op = _VALUE_SIZED_OPS.search(text) or _DECLINED_META.search(text)
    if isinstance(exc, PackedByValues):
        return f"{exc} ({raised_where(exc)})"
    if op is None:
        return user_error(exc)
    return f"{type(exc).__name__}: aten::{op.group(1)} ({raised_where(exc)})"


class PackedByValues(Exception):
    """Raised in a trace where `nn.TransformerEncoder` would pack its batch into a nested
    tensor, whose size the padding mask's values decide (engine/fastpath.py)."""

    def __init__(self) -> None:
        super().__init__(f"it would pack the batch into a nested tensor, torch.{_NESTED}")


def needs_values(exc: BaseException) -> bool:
    """Whether `exc` is torch refusing to read the values of a meta tensor, or to run an op
    whose output's size depends on them (not any op without a meta kernel: that one says so),
    or the trace finding a layer that would pack its batch by its values."""
    text = str(exc)
    return (
        isinstance(exc, PackedByValues)
        or type(exc).__name__ in _FAKE_VALUES_NEEDED
        or any(phrase in text for phrase in _VALUES_NEEDED)
        or bool(_VALUE_SIZED_OPS.search(text))
    )


# what fake tensors (the AMP traces') raise where an op needs values, or sizes that values decide
_FAKE_VALUES_NEEDED = frozenset({"DataDependentOutputException", "DynamicOutputShapeException"})


def _folder_of(package: str) -> str:
    """The folder a package is imported from, found without importing it (`--help` and a bad
    argument answer without loading torch)."""
    spec = importlib.util.find_spec(package)
    origin = spec.origin if spec and spec.origin else package
    return os.path.dirname(os.path.abspath(origin)) + os.sep


# Frames in these folders are torch's or nin_profile's, not the user's.
_OURS = (_folder_of("torch"), os.path.dirname(__file__) + os.sep)


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
