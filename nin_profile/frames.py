"""A profile as pandas DataFrames, for notebooks and scripts: numbers as numbers, the unit in
each column's name (`_bytes`, `_ms`, `_per_s`; counts and FLOPs have none)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from nin_profile.columns import CSV_COLUMNS, VALUES
from nin_profile.results import MemoryCategory, ModelProfile, Profile

PHASES = ("train", "inference")


def _phase_columns(m: ModelProfile, phase: str) -> dict[str, Any]:
    """The estimate of `phase` at the run's batch, by category, and its measurement if any."""
    b = m.train if phase == "train" else m.inference
    row: dict[str, Any] = {f"{phase}_peak_bytes": b.peak, f"{phase}_reserved_bytes": b.reserved}
    row |= {f"{phase}_{c.value}_bytes": b[c] for c in MemoryCategory}
    pm = m.measured.get(phase)
    mem, t = (pm.memory, pm.timing) if pm else (None, None)
    row |= {
        f"{phase}_measured_batch": pm.batch if pm else None,
        f"{phase}_estimated_peak_at_measured_batch_bytes": (
            pm.predicted.peak if pm and pm.predicted else None
        ),
        f"{phase}_peak_allocated_bytes": mem.peak_allocated if mem else None,
        f"{phase}_peak_between_ops_bytes": mem.peak_between_ops if mem else None,
        f"{phase}_peak_reserved_bytes": mem.peak_reserved if mem else None,
        f"{phase}_nvml_process_bytes": mem.nvml_process if mem else None,
        f"{phase}_ms_per_iter": t.ms_per_iter if t else None,
        f"{phase}_ms_q1": t.ms_q1 if t else None,
        f"{phase}_ms_q3": t.ms_q3 if t else None,
        f"{phase}_examples_per_s": t.examples_per_s if t else None,
        f"{phase}_error": pm.error if pm else None,
    }
    return row


def models_frame(profile: Profile) -> pd.DataFrame:
    """One row per model, indexed by name: counts, FLOPs (= 2 × MACs), and for each phase the
    estimated memory at the run's batch by category, then what was measured (at
    `<phase>_measured_batch`, beside the estimate at that batch)."""
    rows = []
    for m in profile.models:
        row: dict[str, Any] = {
            "model": m.name,
            "params": m.params,
            "trainable_params": m.trainable_params,
            "macs_forward": m.macs_forward,
            "flops_forward": m.flops_forward,
            "flops_backward": m.flops_backward,
            "flops_train_step": m.flops_train_step,
            "saved_for_backward_bytes": m.activation_bytes_saved,
        }
        for phase in PHASES:
            row |= _phase_columns(m, phase)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def layers_frame(profile: Profile) -> pd.DataFrame:
    """One row per (model, layer), the columns of layers.csv; output_shape as a tuple."""
    rows = []
    for m in profile.models:
        for layer in m.layers:
            row: dict[str, Any] = {"model": m.name}
            for column in CSV_COLUMNS:
                name = column.value
                if name == "allocated_delta":
                    name = "allocated_delta_bytes"
                row[name] = VALUES[column](layer)
            rows.append(row)
    return pd.DataFrame(rows)
