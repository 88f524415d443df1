"""Model registry: d2l's NiN, AlexNet and VGG, their variants, and user models by import path."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nin_profile.errors import (
    ImportPathError,
    InvalidConfig,
    UnknownModel,
    UserCodeFailed,
    user_error,
)
from nin_profile.inputs import InputSpec

# Fashion-MNIST's, as d2l trains the built-in models; a user model's classes come from its output.
DEFAULT_CLASSES = 10


@dataclass(frozen=True)
class ModelConfig:
    """What a builder needs to know about the data: input channels, classes, square image side."""

    channels: int = 1
    classes: int = DEFAULT_CLASSES
    image_size: int = 224

    def __post_init__(self) -> None:
        for field in ("channels", "classes", "image_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise InvalidConfig(f"{field} must be a positive integer, got {value!r}")

    @classmethod
    def of(cls, inputs: InputSpec, classes: int | None) -> ModelConfig:
        """What a built-in model is built with for `inputs` (square images only; a user's
        model is built bare and ignores it), with `classes` or the default's."""
        channels, side = inputs.square_image or (cls.channels, cls.image_size)
        return cls(channels=channels, classes=classes or DEFAULT_CLASSES, image_size=side)


Builder = Callable[[ModelConfig], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Builder


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    """Register a builder under `name`; a name registered twice is an error, not an overwrite."""

    def decorator(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, description, build)
        return build

    return decorator


# Module instances handed to the Python API (`nin_profile.profile(my_model)`), by the name the
# profile gives them, for this process; a worker process loads the copy saved for it
# (SAVED_PREFIX + path, written with torch.save).
_INSTANCES: dict[str, nn.Module] = {}
SAVED_PREFIX = "saved:"


def register_instance(module: nn.Module, taken: set[str]) -> str:
    """A name for `module` in this process (its class name, numbered where taken), by which
    the analysis finds it; the module itself is never changed."""
    base = type(module).__name__
    name, n = base, 1
    while name in taken or name in _REGISTRY or name in _INSTANCES:
        n += 1
        name = f"{base}-{n}"
    _INSTANCES[name] = module
    return name


def is_built_in(name: str) -> bool:
    """Whether `name` is one of the registered models (not an import path nor an instance)."""
    return name in _REGISTRY


def instance(name: str) -> nn.Module | None:
    """The module instance registered under `name` in this process, if any."""
    return _INSTANCES.get(name)


def forget_instance(name: str) -> None:
    _INSTANCES.pop(name, None)


def list_models() -> list[ModelSpec]:
    """The registered models, in registration order."""
    return list(_REGISTRY.values())


def describe_model(name: str) -> str:
    spec = _REGISTRY.get(name)
    if spec:
        return spec.description
    if name in _INSTANCES:
        return f"a {type(_INSTANCES[name]).__module__}.{type(_INSTANCES[name]).__qualname__}"
    return f"user model from {name}"


def get_model(name: str, **cfg: int) -> nn.Module:
    """Build a registered model, or a user model from `package.module:callable`.

    Builds on the current default device: wrap the call in `torch.device("meta")` to get a
    model with no storage behind its parameters.
    """
    config = ModelConfig(**cfg)
    if name.startswith(SAVED_PREFIX):  # a worker's copy of an instance handed to the API
        import torch

        return torch.load(name.removeprefix(SAVED_PREFIX), weights_only=False)
    if name in _INSTANCES:
        return _INSTANCES[name]
    if ":" in name:
        return load_import_path(name)
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownModel(name, [s.name for s in list_models()])
    return spec.build(config)


def load_import_path(path: str) -> nn.Module:
    """Import `package.module:attr`: the module it names, or that it builds when called bare."""
    return build_target(path, resolve_import_path(path))


def resolve_import_path(path: str) -> object:
    """What `package.module:attr` names, the module imported (on the current default device)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportPathError(f"import path {path!r} must look like package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise UserCodeFailed(f"importing {module_name!r} raised {user_error(exc)}") from exc
        raise ImportPathError(f"cannot import {module_name!r} from {path!r}: {exc}") from exc
    except Exception as exc:  # the user's module raised while it was imported
        raise UserCodeFailed(f"importing {module_name!r} raised {user_error(exc)}") from exc
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ImportPathError(f"{module_name!r} has no attribute {attr!r} (from {path!r})")
        target = getattr(target, part)
    return target


def _required_arguments(fn: object) -> list[str]:
    """The parameters of `fn` that have no default (none where Python cannot tell)."""
    try:
        signature = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and (p.kind in kinds or p.kind is inspect.Parameter.KEYWORD_ONLY)
    ]


def eager(path: str, module: nn.Module) -> nn.Module:
    """The eager module to profile: `torch.compile`'s wrapper gives the module it compiles
    (`_orig_mod`; the estimate is of the eager step, compiled kernels may fuse ops and keep
    less); TorchScript is refused in one line, as is a compiled submodule (which only a copy
    of the user's module could unwrap)."""
    original = getattr(module, "_orig_mod", None)
    if type(module).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        module = original
    for name, sub in module.named_modules():
        where = f"its layer {name!r}" if name else "it"
        if isinstance(sub, torch.jit.ScriptModule):
            raise ImportPathError(
                f"{path}: {where} is a TorchScript module (torch.jit.script or trace), which "
                "runs no Python for a trace to follow and takes no hooks: give the eager "
                "nn.Module it was made from"
            )
        if name and type(sub).__name__ == "OptimizedModule":
            raise ImportPathError(
                f"{path}: {where} is torch.compile'd: give the model with that layer before "
                f"torch.compile (its ._orig_mod)"
            )
    return module


def build_target(path: str, target: object) -> nn.Module:
    """The module `target` is, or builds when called with no arguments (its eager module:
    `eager`); what the user's builder raises becomes one line naming it and where it was
    raised."""
    if isinstance(target, nn.Module):
        return eager(path, target)
    if not callable(target):
        raise ImportPathError(
            f"{path!r} gave {_a(type(target).__name__)}, not a torch.nn.Module; "
            "point it at a module or at a callable that returns one"
        )
    if required := _required_arguments(target):
        raise ImportPathError(
            f"{path} needs arguments ({', '.join(required)}); nin_profile calls it with none: "
            "point it at a module or at a callable that builds one with no arguments"
        )
    try:
        built = target()
    except Exception as exc:  # the user's builder: any error is theirs, said in one line
        raise UserCodeFailed(f"{path} raised {user_error(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise ImportPathError(
            f"{path!r} gave {_a(type(built).__name__)}, not a torch.nn.Module; "
            "point it at a module or at a callable that returns one"
        )
    return eager(path, built)


def _a(noun: str) -> str:
    """'an int', 'a float': the article for `noun`."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


from nin_profile.models import zoo as _zoo  # noqa: E402,F401  (registers the built-in models)
