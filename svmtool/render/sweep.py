"""The delta sweep (gradcheck --sweep-delta): how often kinks occur for each delta.

Its table, what its numbers show, and its JSON.
"""

from __future__ import annotations

import itertools
import math

from rich.console import Console
from rich.table import Table

from svmtool.terminal import number_column, print_lines, print_table


def render_sweep(console: Console, points) -> None:
    """The sweep's table and what its numbers show (nothing without --sweep-delta)."""
    if not points:
        return
    print_table(console, sweep_table(points))
    print_lines(console, sweep_interpretation(points))


def sweep_table(points) -> Table:
    """``points``: [(label, [SweepRow])]; one row per delta, the points side by side."""
    total = points[0][1][0].coordinates if points[0][1] else 0
    table = Table(title=f"how delta changes the frequency of kinks (all {total} coordinates)")
    number_column(table, "delta")
    for label, rows in points:
        number_column(table, f"straddling at {label}")
        if _has_expected(rows):
            number_column(table, "expected at a random check point")
        number_column(table, "margins near a kink")
    for i, row in enumerate(points[0][1]):
        cells = [f"{row.delta:g}"]
        for _, rows in points:
            cells.append(f"{rows[i].straddled_fraction:.1%}")
            if _has_expected(rows):
                cells.append(f"{rows[i].expected_straddled_fraction:.1%}")
            cells.append(f"{rows[i].near_kink_fraction:.2%}")
        table.add_row(*cells)
    return table


def _has_expected(rows) -> bool:
    return bool(rows) and all(r.expected_straddled_fraction is not None for r in rows)


def _trend(values: list[float], deltas: list[float], what: str) -> str:
    pairs = sorted(zip(deltas, values, strict=True))
    deltas = [d for d, _ in pairs]
    values = [v for _, v in pairs]
    ends = f"from {values[0]:.1%} at delta = {deltas[0]:g} to {values[-1]:.1%} at {deltas[-1]:g}"
    if max(values) == 0:
        return f"no {what} at any of these deltas"
    if len(values) == 1:
        return f"{values[0]:.1%} {what}"
    steps = [b - a for a, b in itertools.pairwise(values)]
    if all(s <= 0 for s in steps):
        return f"{what}: falls {ends}, never rising as delta grows"
    if all(s >= 0 for s in steps):
        return f"{what}: rises {ends}, never falling as delta grows"
    top = max(range(len(values)), key=values.__getitem__)
    low = min(range(len(values)), key=values.__getitem__)
    return (
        f"{what}: not monotone in delta; most at delta = {deltas[top]:g} ({values[top]:.1%}),"
        f" least at {deltas[low]:g} ({values[low]:.1%})"
    )


def sweep_interpretation(points) -> list[str]:
    """What the sweep's numbers show, one line per point (text made from the numbers)."""
    lines = []
    for label, rows in points:
        deltas = [r.delta for r in rows]
        straddling = _trend(
            [r.straddled_fraction for r in rows], deltas, "coordinates straddling a kink"
        )
        near = _trend([r.near_kink_fraction for r in rows], deltas, "margins near a kink")
        if not _has_expected(rows):
            lines.append(
                f"At {label}, over all {rows[0].coordinates} coordinates: {straddling}; {near}."
            )
            continue
        # One draw of W has few margins near a kink: its counts are noise around
        # the expectation, so the trend is read from the expected column.
        expected = _trend(
            [r.expected_straddled_fraction for r in rows], deltas, "coordinates straddling a kink"
        )
        lines.append(
            f"At {label}, over all {rows[0].coordinates} coordinates, expected over random"
            f" draws W = 1e-4*N(0, 1): {expected}."
        )
        first = min(rows, key=lambda r: r.delta)
        k = first.near_kink
        spread = f"about {1 / math.sqrt(k):.0%} of their value" if k else "without bound"
        lines.append(
            f"The one measured draw has {k} of {first.margins} margins near a kink at delta ="
            f" {first.delta:g}, so its fractions vary by {spread} (1/sqrt({k})) from draw to"
            f" draw; measured there: {straddling}."
        )
    if len(points) == 2:
        (a, ra), (b, rb) = points
        worse = [r.delta for r, s in zip(ra, rb, strict=True) if s.straddled > r.straddled]
        if worse:
            lines.append(
                f"{b} straddles more kinks than {a} at delta = "
                + ", ".join(f"{d:g}" for d in worse)
                + ": training moves margins towards the kink of the delta it used."
            )
        else:
            lines.append(f"{b} straddles no more kinks than {a} at any of these deltas.")
    return lines


def sweep_json(points) -> list[dict]:
    """Per delta, each point's counts: coordinates examined (D*C) and straddled."""
    out = []
    for i, row in enumerate(points[0][1]):
        entry: dict = {"delta": row.delta}
        for key, (label, rows) in zip(("at_check_point", "at_given_W"), points, strict=False):
            # The expected fractions exist only at the random check point.
            fields = {k: v for k, v in vars(rows[i]).items() if v is not None}
            entry[key] = {"point": label, **fields}
        # Kept for readers of the earlier format: the first point's fractions.
        entry["near_kink_fraction"] = row.near_kink_fraction
        entry["straddled_fraction"] = row.straddled_fraction
        out.append(entry)
    return out
