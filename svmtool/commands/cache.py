"""svmtool cache list | clear: the feature cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import out, print_json, say
from svmtool.commands.options import CacheDir, Json
from svmtool.errors import BadValue

HELP = "The feature cache: what is in it, and clearing it."

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '90s' (or plain seconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise BadValue("--older-than", f"{text!r} is not an age such as 30d, 12h, 45m or 90s")
    unit = dict(_UNITS).get(match.group(2) or "s", 1)
    return float(match.group(1)) * unit


def _cache_root(cache_dir: Path | None) -> Path:
    from svmtool.io.featurecache import default_cache_dir

    return cache_dir if cache_dir is not None else default_cache_dir()


def cache_list(cache_dir: CacheDir = None, as_json: Json = False) -> None:
    """List the feature cache's entries: size, age (since stored), what each is.

    Example: svmtool cache list
    """
    from svmtool.io.featurecache import entries
    from svmtool.render.cache import listing_json, render_listing

    root = _cache_root(cache_dir)
    found = entries(root)
    if as_json:
        print_json(listing_json(root, found))
        return
    render_listing(out, root, found)


def cache_clear(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Only entries stored longer ago than this: 30d, 12h, 45m, 90s.",
            metavar="AGE",
        ),
    ] = None,
    cache_dir: CacheDir = None,
    as_json: Json = False,
) -> None:
    """Remove the feature cache's entries (all, or the old ones).

    Only svmtool's own entries are removed: anything else in the folder (a link,
    a file, another folder) is left alone, and no link is followed. An entry
    removed is computed again the next time it is needed.

    Example: svmtool cache clear --older-than 30d
    """
    from svmtool.io.featurecache import entries, remove
    from svmtool.render.cache import removed_json, removed_text

    limit = parse_age(older_than) if older_than is not None else None
    root = _cache_root(cache_dir)
    chosen = [e for e in entries(root) if limit is None or e.age_seconds > limit]
    for entry in chosen:
        remove(entry)
    if as_json:
        print_json(removed_json(root, chosen))
        return
    say(removed_text(root, chosen))
