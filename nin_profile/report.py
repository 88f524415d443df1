"""Profile → the files of an output folder (names → contents); writing them is files.py's job."""

from __future__ import annotations

from nin_profile.files import PROFILE_JSON, to_json
from nin_profile.render.csv import layers_csv
from nin_profile.render.markdown import render_report
from nin_profile.results import Profile


def report_files(profile: Profile) -> dict[str, str | bytes]:
    return {
        PROFILE_JSON: to_json(profile.to_dict()),
        "layers.csv": layers_csv(profile),
        "report.md": render_report(profile),
    }
