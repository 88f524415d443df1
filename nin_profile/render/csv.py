"""Profile → CSV of per-layer rows, one row per (model, layer)."""

from __future__ import annotations

import csv
import io

from nin_profile.columns import CSV_COLUMNS, csv_value
from nin_profile.results import Profile


def layers_csv(profile: Profile) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *(c.value for c in CSV_COLUMNS)])
    for model in profile.models:
        for row in model.layers:
            writer.writerow([model.name, *(csv_value(c, row) for c in CSV_COLUMNS)])
    return buffer.getvalue()
