"""What the committed H100 reports measured, as points to hold today's estimates against.

Every `reports/nvidia-h100-80gb-hbm3*/profile.json` was measured with `python -m nin_profile
--device cuda ...` on an NVIDIA H100 80GB HBM3 (the command is in the README beside each): each
point is one model, phase and batch measured in a process of its own. Estimates are made again
here, by today's nin_profile, for the configuration each point was measured with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.results import MeasuredMemory, MemoryBreakdown, ModelProfile, Profile, RunConfig
from nin_profile.run import analysis_config

REPORTS = Path(__file__).parents[1] / "reports"


@dataclass(frozen=True)
class H100Point:
    report: str  # the folder under reports/
    config: RunConfig
    model: str
    phase: str
    batch: int
    memory: MeasuredMemory

    @property
    def id(self) -> str:
        return f"{self.model}-{self.phase}-{self.batch}-{self.config.optimizer}"

    def estimate(self) -> MemoryBreakdown:
        profile = estimate(self.model, analysis_config(self.config, self.batch))
        return profile.train if self.phase == "train" else profile.inference


@cache
def estimate(name: str, config: AnalysisConfig) -> ModelProfile:
    """Today's estimate, once per model and configuration however many tests ask for it."""
    return analyse_model(name, config)


def h100_points(report_glob: str = "nvidia-h100-80gb-hbm3*") -> list[H100Point]:
    """Every measured point of the committed H100 reports: the sweep where a run has one,
    else its measurements at --batch. A point measured twice (a sweep and a main job) comes
    once, from the first report in name order."""
    points: dict[tuple[str, str, int, str], H100Point] = {}
    for path in sorted(REPORTS.glob(f"{report_glob}/profile.json")):
        profile = Profile.from_dict(json.loads(path.read_text()))
        for model in profile.models:
            for pm in model.sweep or tuple(model.measured.values()):
                if pm.memory is None:
                    continue
                key = (model.name, pm.phase, pm.batch, profile.config.optimizer)
                point = H100Point(
                    path.parent.name, profile.config, model.name, pm.phase, pm.batch, pm.memory
                )
                points.setdefault(key, point)
    return list(points.values())
