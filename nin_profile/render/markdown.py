"""Profile → report.md: the sections in the order a reader meets them. Pure: no model, no
device, no file I/O. Each section (render/sections.py) says which models it needs: the chapter's
exercises (render/chapter.py) appear when NiN and its baselines are in the run, the general
comparison (render/general.py) when other models are."""

from __future__ import annotations

from nin_profile.render import chapter, general, parallel, precision
from nin_profile.render.sections import Section
from nin_profile.results import Profile

SECTIONS: tuple[Section, ...] = (
    general.TITLE,
    general.SUMMARY,
    general.MEASURED,
    chapter.EXERCISE3,
    chapter.EXERCISE2,
    chapter.EXERCISE4,
    chapter.CLAIMS,
    general.COMPARISON,
    precision.PRECISION,
    precision.LAYOUT,
    general.PEERS,
    general.SWEEP,
    general.FITS,
    parallel.PARALLEL,
    general.LAYERS,
    general.METHOD_SECTION,
)


def render_report(profile: Profile, charts: bool = True) -> str:
    """The whole report.md; `charts` says whether the PNGs it links are written beside it."""
    return "\n\n".join(t for s in SECTIONS if (t := s.text(profile, charts))) + "\n"
