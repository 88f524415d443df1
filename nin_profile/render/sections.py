"""The report as a list of sections, each saying which models it needs and rendering itself.

A section is shown when the models it speaks of are in the run: the chapter's exercises need
NiN and the models they compare it with; a run of other models gets the general comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from nin_profile.results import Profile

Render = Callable[[Profile, bool], str]
"""(profile, charts) → the section's markdown; charts: whether the PNGs it links exist."""


@dataclass(frozen=True)
class Section:
    name: str
    render: Render
    needs: Callable[[Profile], bool] = lambda profile: True

    def text(self, profile: Profile, charts: bool) -> str:
        return self.render(profile, charts) if self.needs(profile) else ""


def names(profile: Profile) -> set[str]:
    return {m.name for m in profile.models}


def has_all(*models: str) -> Callable[[Profile], bool]:
    """The section needs every one of `models`."""
    return lambda profile: set(models) <= names(profile)


def has_any(first: str, others: Collection[str]) -> Callable[[Profile], bool]:
    """The section needs `first` and at least one of `others`."""
    return lambda profile: first in names(profile) and bool(names(profile) & set(others))
