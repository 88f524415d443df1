"""Errors a user can cause and fix: the CLI prints each as one line and exits with code 2."""

from __future__ import annotations


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


class DeviceUnavailable(ProfileError):
    pass


class LayerFailed(ProfileError):
    """A layer cannot run on the shape it receives (for example an image too small)."""

    def __init__(self, layer: str, layer_type: str, input_shape: tuple[int, ...], reason: str):
        self.layer = layer
        self.layer_type = layer_type
        self.input_shape = input_shape
        self.reason = reason
        shape = "×".join(map(str, input_shape)) if input_shape else "?"
        super().__init__(f"layer {layer} ({layer_type}) cannot run on input {shape}: {reason}")
