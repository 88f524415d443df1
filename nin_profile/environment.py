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
    )
