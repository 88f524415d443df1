"""Parameter counts per model and per layer, guarded by a golden file.

Regenerate with `pytest tests/test_golden_params.py --update-golden` after a deliberate change,
and review the diff of tests/golden/params.json like any other change.
"""

from __future__ import annotations

import json
from pathlib import Path

from nin_profile.golden import params_document, params_drift
from nin_profile.models import ModelConfig, list_models

GOLDEN = Path(__file__).parent / "golden" / "params.json"


def test_parameter_counts_match_the_golden_file(update_golden: bool) -> None:
    if update_golden:
        doc = params_document([s.name for s in list_models()], ModelConfig())
        GOLDEN.write_text(json.dumps(doc, indent=2) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert {s.name for s in list_models()} == set(expected["models"])
    assert params_drift(expected) == []


def test_the_golden_file_holds_the_hand_derived_nin_total() -> None:
    # 30_336 + 746_240 + 1_180_800 + 34_790, derived layer by layer in test_models.py
    assert json.loads(GOLDEN.read_text())["models"]["nin"]["params"] == 1_992_166
