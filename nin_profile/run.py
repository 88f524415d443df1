"""One run: every requested model analysed (and, later, measured) under one config."""

from __future__ import annotations

from nin_profile.analysis import AnalysisConfig, analyse_model, smallest_image_size
from nin_profile.environment import collect_environment
from nin_profile.errors import LayerFailed, ProfileError
from nin_profile.models import ModelConfig
from nin_profile.results import ModelProfile, Profile, RunConfig


def model_config(config: RunConfig) -> ModelConfig:
    return ModelConfig(
        channels=config.channels, classes=config.classes, image_size=config.image_size
    )


def analysis_config(config: RunConfig) -> AnalysisConfig:
    return AnalysisConfig(
        batch=config.batch,
        channels=config.channels,
        image_size=config.image_size,
        classes=config.classes,
        optimizer=config.optimizer,
        device=config.device,
    )


def analyse_or_explain(name: str, config: RunConfig) -> ModelProfile:
    """Analyse one model; a layer that cannot run becomes one line naming model, layer and fix."""
    try:
        return analyse_model(name, analysis_config(config))
    except LayerFailed as exc:
        smallest = smallest_image_size(name, model_config(config))
        hint = f"; the smallest --image-size {name} accepts is {smallest}" if smallest else ""
        raise ProfileError(f"{name} at --image-size {config.image_size}: {exc}{hint}") from exc


def run_profile(config: RunConfig) -> Profile:
    models = tuple(analyse_or_explain(name, config) for name in config.models)
    return Profile(config, collect_environment(config.device, measured=False), models)
