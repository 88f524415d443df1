"""The one place numbers become text: bytes in binary units (MiB = 2^20 B), counts in SI units."""

from __future__ import annotations

import math

KiB = 2**10
MiB = 2**20
GiB = 2**30

_BINARY = ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB"))
_SI = ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k"))


def fmt_bytes(n: float | None) -> str:
    """1536 → '1.5 KiB'; the largest binary unit the value reaches."""
    if n is None:
        return "–"
    for size, unit in _BINARY:
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def fmt_number(value: float, digits: int = 0) -> str:
    """`value` with `digits` decimals, or with more where those would leave fewer than two
    significant digits (a small model's figures in a column of MiB or GFLOPs): 2,048 · 1.4 ·
    0.0063; zero stays 0."""
    if value == 0:
        return f"{0.0:,.{digits}f}"  # not -0
    if math.isfinite(value):
        rounded = abs(float(f"{value:.1e}"))  # two significant digits: 0.0996 is 0.10
        if rounded < 1e-9:
            return f"{value:.2g}"
        digits = max(digits, 1 - math.floor(math.log10(rounded)))
    return f"{value:,.{digits}f}"


def fmt_mib(n: float | None, digits: int = 1) -> str:
    """Bytes as a plain number of MiB, for columns whose title carries the unit."""
    return "–" if n is None else fmt_number(n / MiB, digits)


def fmt_si(n: float | None, unit: str = "") -> str:
    """1_992_166 → '1.99 M'; with unit 'FLOPs', '195.15 GFLOPs'."""
    if n is None:
        return "–"
    for size, prefix in _SI:
        if abs(n) >= size:
            return f"{n / size:,.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}".rstrip()


def fmt_scaled(n: float | None, scale: float, digits: int = 2) -> str:
    """A number divided by a fixed scale, for columns whose title carries the scale."""
    return "–" if n is None else fmt_number(n / scale, digits)


def fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "–" if shape is None else "×".join(map(str, shape)) or "scalar"


def fmt_ratio(a: float, b: float) -> str:
    """How many times larger a is than b, as '23.5×'."""
    return "–" if not b else f"{a / b:,.1f}×"


def fmt_percent(part: float, whole: float, digits: int = 1) -> str:
    return "–" if not whole else f"{100 * part / whole:.{digits}f}%"
