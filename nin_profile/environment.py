"""Versions and device names for the record."""

from __future__ import annotations

import platform

import torch

from nin_profile.results import Environment


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' where a CUDA GPU is present, else 'cpu'."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def cudnn_version() -> str | None:
    """cuDNN's version as "major.minor.patch"; torch encodes 9.19.0 as 91900 (cuDNN 9)."""
    if not torch.backends.cudnn.is_available():
        return None
    code = torch.backends.cudnn.version()
    if code is None:
        return None
    major, rest = divmod(code, 10_000) if code >= 90_000 else divmod(code, 1_000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def driver_version() -> str | None:
    """The NVIDIA driver's version through NVML, or None where there is no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError subclasses, ImportError: no driver here
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def collect_environment(device: str, measured: bool) -> Environment:
    if measured and device == "cuda":
        name = torch.cuda.get_device_name()
    elif measured:
        name = (
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    else:
        name = f"none: static analysis on meta tensors, memory predicted for {device}"
    return Environment(
        python=platform.python_version(),
        torch=str(torch.__version__),  # a TorchVersion would make unpickling import torch
        platform=f"{platform.system()} {platform.machine()}",
        device_name=name,
        cuda=torch.version.cuda,
        cudnn=cudnn_version() if device == "cuda" else None,
        driver=driver_version() if device == "cuda" else None,
    )
