"""The feature cache's listing and clearing (svmtool cache list|clear), and their JSON."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from svmtool.terminal import literal, number_column, print_table, text_column


def size_text(count: int) -> str:
    """Bytes as people read them: '812 B', '4.2 MB', '1.3 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def entries_text(count: int) -> str:
    """'1 entry', '3 entries'."""
    return f"{count} {'entry' if count == 1 else 'entries'}"


def age_text(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.0f} s"


def entry_json(entry) -> dict:
    return {
        "name": entry.path.name,
        "path": str(entry.path),
        "bytes": entry.bytes,
        "age_seconds": entry.age_seconds,
        "about": entry.about,
    }


def listing_json(root, found) -> dict:
    total = sum(e.bytes for e in found)
    return {"cache_dir": str(root), "bytes": total, "entries": [entry_json(e) for e in found]}


def render_listing(console: Console, root, found) -> None:
    """One line for the cache, then a row per entry: name, size, age, what it is."""
    total = sum(e.bytes for e in found)
    console.print(
        literal(f"feature cache in {root}: {entries_text(len(found))}, {size_text(total)}"),
        soft_wrap=True,
    )
    if not found:
        return
    table = Table()
    text_column(table, "entry")
    number_column(table, "size")
    number_column(table, "age")
    text_column(table, "what")
    for e in found:
        table.add_row(
            literal(e.path.name[:12]), size_text(e.bytes), age_text(e.age_seconds), literal(e.about)
        )
    print_table(console, table)


def removed_json(root, chosen) -> dict:
    freed = sum(e.bytes for e in chosen)
    return {"cache_dir": str(root), "bytes": freed, "removed": [entry_json(e) for e in chosen]}


def removed_text(root, chosen) -> str:
    """What cache clear says on stderr."""
    freed = sum(e.bytes for e in chosen)
    return f"removed {entries_text(len(chosen))} ({size_text(freed)}) from {root}"
