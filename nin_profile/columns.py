"""Columns of the per-layer tables: a member, its title and its value; adding one is three lines."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from nin_profile.results import LayerStats
from nin_profile.units import fmt_int, fmt_shape


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
    CALLS = "calls"


TITLES: dict[Column, str] = {
    Column.NAME: "Layer",
    Column.TYPE: "Type",
    Column.OUTPUT_SHAPE: "Output shape",
    Column.PARAMS: "Params",
    Column.TRAINABLE_PARAMS: "Trainable params",
    Column.MACS_FORWARD: "Forward MACs",
    Column.FLOPS_FORWARD: "Forward FLOPs",
    Column.FLOPS_BACKWARD: "Backward FLOPs",
    Column.OUTPUT_BYTES: "Output bytes",
    Column.SAVED_BYTES: "Saved for backward (bytes)",
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
    Column.CALLS: lambda r: r.calls,
}

NUMERIC = frozenset(c for c in Column if c not in {Column.NAME, Column.TYPE, Column.OUTPUT_SHAPE})

CSV_COLUMNS = tuple(Column)


def cell_text(column: Column, row: LayerStats) -> str:
    """The value as exact text: integers with thousands separators, shapes as 128×96×54×54."""
    value = VALUES[column](row)
    if column is Column.OUTPUT_SHAPE:
        return fmt_shape(value)  # type: ignore[arg-type]
    return fmt_int(value) if isinstance(value, int) else str(value)


def csv_value(column: Column, row: LayerStats) -> object:
    value = VALUES[column](row)
    if column is Column.OUTPUT_SHAPE:
        return fmt_shape(value)  # type: ignore[arg-type]
    return value
