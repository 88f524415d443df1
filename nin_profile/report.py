"""Profile → the files of an output folder (names → contents); writing them is files.py's job."""

from __future__ import annotations

import io

from nin_profile.files import PROFILE_JSON, to_json
from nin_profile.render.csv import layers_csv
from nin_profile.render.markdown import render_report
from nin_profile.results import Profile

DPI = 100


def chart_pngs(profile: Profile) -> dict[str, bytes]:
    """Every chart of the report as PNG bytes (matplotlib is imported only here)."""
    from nin_profile.render.charts import all_charts

    pngs = {}
    for name, figure in all_charts(profile).items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        pngs[name] = buffer.getvalue()
    return pngs


def report_files(profile: Profile, charts: bool = True) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        PROFILE_JSON: to_json(profile.to_dict()),
        "layers.csv": layers_csv(profile),
        "report.md": render_report(profile, charts=charts),
    }
    if charts:
        files.update(chart_pngs(profile))
    return files
