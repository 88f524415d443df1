"""Columns of the per-layer tables: a member, its title, its value and its format.

Adding a column is a member and one line in each table below.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from nin_profile.results import LayerStats
from nin_profile.units import MiB, fmt_int, fmt_number, fmt_shape


class Column(str, Enum):
    NAME = "name"
    TYPE = "type"
    OUTPUT_SHAPE = "output_shape"
    PARAMS = "params"
    TRAINABLE_PARAMS = "trainable_params"
    MACS_FORWARD = "macs_forward"
    FLOPS_FORWARD = "flops_forward"
    FLOPS_BACKWARD = "flops_backward"
    OUTPUT_BYTES = "output_bytes"
    SAVED_BYTES = "saved_bytes"
    ALLOCATED_DELTA = "allocated_delta"
    INTENSITY = "intensity"
    CALLS = "calls"


TITLES: dict[Column, str] = {
    Column.NAME: "Layer",
    Column.TYPE: "Type",
    Column.OUTPUT_SHAPE: "Output shape",
    Column.PARAMS: "Params",
    Column.TRAINABLE_PARAMS: "Trainable params",
    Column.MACS_FORWARD: "Fwd MMACs",
    Column.FLOPS_FORWARD: "Fwd MFLOPs",
    Column.FLOPS_BACKWARD: "Bwd MFLOPs",
    Column.OUTPUT_BYTES: "Output MiB",
    Column.SAVED_BYTES: "Saved MiB",
    Column.ALLOCATED_DELTA: "Adds MiB (est.)",
    Column.INTENSITY: "FLOP/B",
    Column.CALLS: "Calls",
}

VALUES: dict[Column, Callable[[LayerStats], object]] = {
    Column.NAME: lambda r: r.name,
    Column.TYPE: lambda r: r.type,
    Column.OUTPUT_SHAPE: lambda r: r.output_shape,
    Column.PARAMS: lambda r: r.params,
    Column.TRAINABLE_PARAMS: lambda r: r.trainable_params,
    Column.MACS_FORWARD: lambda r: r.flops_forward // 2,
    Column.FLOPS_FORWARD: lambda r: r.flops_forward,
    Column.FLOPS_BACKWARD: lambda r: r.flops_backward,
    Column.OUTPUT_BYTES: lambda r: r.output_bytes,
    Column.SAVED_BYTES: lambda r: r.saved_bytes,
    Column.ALLOCATED_DELTA: lambda r: r.allocated_delta,
    Column.INTENSITY: lambda r: r.intensity,
    Column.CALLS: lambda r: r.calls,
}


def _mega(value: object) -> str:
    return fmt_number(int(value) / 1e6, 1)  # type: ignore[call-overload]


def _mib(value: object) -> str:
    return fmt_number(int(value) / MiB, 2)  # type: ignore[call-overload]


FORMATS: dict[Column, Callable[[object], str]] = {
    Column.NAME: str,
    Column.TYPE: str,
    Column.OUTPUT_SHAPE: lambda v: fmt_shape(v),  # type: ignore[arg-type]
    Column.PARAMS: lambda v: fmt_int(v),  # type: ignore[arg-type]
    Column.TRAINABLE_PARAMS: lambda v: fmt_int(v),  # type: ignore[arg-type]
    Column.MACS_FORWARD: _mega,
    Column.FLOPS_FORWARD: _mega,
    Column.FLOPS_BACKWARD: _mega,
    Column.OUTPUT_BYTES: _mib,
    Column.SAVED_BYTES: _mib,
    Column.ALLOCATED_DELTA: _mib,
    Column.INTENSITY: lambda v: f"{v:,.1f}" if v else "–",
    Column.CALLS: str,
}

TEXT = frozenset({Column.NAME, Column.TYPE, Column.OUTPUT_SHAPE})
CSV_COLUMNS = tuple(c for c in Column if c is not Column.INTENSITY)


def cell_text(column: Column, row: LayerStats) -> str:
    return FORMATS[column](VALUES[column](row))


def csv_value(column: Column, row: LayerStats) -> object:
    value = VALUES[column](row)
    return fmt_shape(value) if column is Column.OUTPUT_SHAPE else value  # type: ignore[arg-type]
