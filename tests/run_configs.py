"""A small run's configuration for tests: one warm-up step, two timed iterations."""

from __future__ import annotations

from typing import Any

from nin_profile.results import RunConfig


def small_run(models: tuple[str, ...], batch: int = 4, device: str = "cpu", **kw: Any) -> RunConfig:
    return RunConfig(
        models=models,
        batch=batch,
        device=device,
        image_size=224,
        channels=1,
        classes=10,
        optimizer="sgd",
        warmup=1,
        iterations=2,
        **kw,
    )
