"""Text on the terminal: outside text shown literally, tables that never cut digits.

Paths, class names and data names come from files and arguments. Rich would
read ``[bold]`` in them as markup (and stop on ``[/x]``), and the terminal
would obey an escape sequence in them (clear the screen, retitle the window,
hide what follows). Every renderer passes such text through ``literal`` (or
``clean`` for plain strings); the consoles are also made with markup and emoji
off, so a plain string cell cannot be interpreted either.
"""

from __future__ import annotations

import math
import re
import textwrap
from typing import TYPE_CHECKING

from rich.console import Console
from rich.segment import Segment, Segments
from rich.text import Text

if TYPE_CHECKING:  # rich.table is imported by the renderers, not on svmtool's startup path
    from rich.table import Table

# C0 controls (ESC, CR, BEL, newline, tab...), DEL, C1 controls (0x9b is a
# one-byte CSI on some terminals), and the Unicode marks that reorder or break
# the text after them: bidi marks, embeddings, overrides and isolates, and the
# line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: object) -> str:
    """``str(text)`` with every control or reordering character shown as an
    escape: ESC becomes the four characters ``\\x1b``, U+202E ``\\u202e``."""
    return _UNSAFE.sub(_visible, str(text))


def literal(text: object, style: str = "") -> Text:
    """Outside text as a Rich ``Text``: no markup, no emoji codes, no control characters."""
    return Text(clean(text), style=style)


def literal_lines(text: object, style: str = "") -> Text:
    """Like ``literal``, but keeps line breaks (a traceback, text we wrapped ourselves)."""
    return Text("\n".join(clean(line) for line in str(text).split("\n")), style=style)


def make_console(stderr: bool = False) -> Console:
    """A console that interprets nothing in the strings it is given."""
    return Console(stderr=stderr, highlight=False, markup=False, emoji=False)


def fmt(value, spec: str = ".4f") -> str:
    """A number for a table cell: '—' for none or NaN, 4 significant digits when huge."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 1e6:
        return format(value, ".4e")  # a loss of 1e36 in 4 significant digits, not 37
    return format(value, spec)


def print_lines(console: Console, lines: list[str], indent: int = 0) -> None:
    """Outside text, one item per line; a wrapped item hangs under its first word."""
    for line in lines:
        hanging = 2 if line.startswith(("- ", "✗ ")) else 0
        filled = textwrap.fill(
            line,
            width=max(console.width, 40),
            initial_indent=" " * indent,
            subsequent_indent=" " * (indent + hanging),
            break_on_hyphens=False,
            break_long_words=False,  # a long path runs past the edge, never cut in two
        )
        console.print(literal_lines(filled), soft_wrap=True)


# --- tables --------------------------------------------------------------------------

# Width a name or path column keeps when space is short (longer ones fold).
_TEXT_MIN = 16


def number_column(table: Table, header: str) -> None:
    """A column whose digits matter (errors, accuracies, losses, counts): right
    aligned, and ``print_table`` never makes it narrower than its widest cell."""
    table.add_column(header, justify="right", overflow="fold")
    table.columns[-1].meta = "number"  # type: ignore[attr-defined]


def text_column(table: Table, header: str, **options) -> None:
    """A column of names or paths: folds onto more lines rather than losing characters."""
    table.add_column(header, overflow="fold", **options)


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _rendered_width(console: Console, table: Table, width: int = 10_000) -> int:
    segments = console.render(table, console.options.update(width=width))
    return max((Segment.get_line_length(line) for line in Segment.split_lines(segments)), default=0)


def print_table(console: Console, table: Table) -> None:
    """Print a table without ever cutting or folding a number.

    Every column gets a minimum width: a number column its widest cell (and its
    header's longest word), a name or path column up to 16 characters. A table
    too wide for the terminal is drawn compact (no frame, one space between
    columns); Rich then narrows the widest columns first, names and paths fold
    and headers wrap. If even the minimum widths do not fit, the lines run past
    the edge (the terminal wraps them) rather than being cropped.
    """
    for column in table.columns:
        column.min_width = _minimum_width(column)
    fits(console, table)
    # The width at which every column can have its minimum: below it Rich
    # would squeeze columns evenly, numbers included.
    fixed = [column.width for column in table.columns]
    for column in table.columns:
        column.width = column.min_width
    need = _rendered_width(console, table)
    for column, width in zip(table.columns, fixed, strict=True):
        column.width = width
    rendered = list(console.render(table, console.options.update(width=max(console.width, need))))
    console.print(Segments(rendered), crop=False)


def fits(console: Console, table: Table) -> bool:
    """Whether the table fits the terminal, drawn compact if it must be (it is
    then left compact)."""
    from rich import box

    if _rendered_width(console, table) <= console.width:
        return True
    table.box = box.SIMPLE_HEAD
    table.show_edge = False
    table.padding = (0, 1, 0, 0)
    table.pad_edge = False
    return _rendered_width(console, table) <= console.width


def _minimum_width(column) -> int:
    cells = [_plain(c) for c in column.cells]
    longest_word = max((len(w) for w in str(column.header).split()), default=0)
    widest = max([len(c) for c in cells] + [longest_word])
    if getattr(column, "meta", None) == "number":
        return widest
    return min(widest, _TEXT_MIN)
