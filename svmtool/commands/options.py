"""Options that several commands take, declared once.

``Annotated`` aliases for the options that read the same everywhere, and small
factories for the ones whose help says what that command does with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DATA_METAVAR = "DATA"
DATA_HELP = (
    "cifar10, synthetic (offline, seeded), a path to an .npz with"
    " X_train, y_train, X_test, y_test, or an image folder (CLASS/*.png|jpg, or"
    " train/CLASS and test/CLASS)."
)
DATA_DIR_HELP = (
    "Where CIFAR-10 lives: its cache, or an extracted cifar-10-batches-bin/-py folder"
    " (default: $SVMTOOL_DATA_DIR, else the platform's user cache folder)."
)
MODEL_DATA_DIR_HELP = (
    "Where CIFAR-10 lives (default: the folder the model was trained from, else"
    " $SVMTOOL_DATA_DIR, else the platform's user cache folder)."
)
CACHE_DIR_HELP = (
    "The feature cache (default: $SVMTOOL_CACHE_DIR, else the platform's user cache folder;"
    " svmtool cache list shows it)."
)
JSON_HELP = "Print the result as JSON on stdout."


def data_option(help: str = DATA_HELP):
    """--data: what the command reads (the help says what it defaults to)."""
    return typer.Option("--data", help=help, metavar=DATA_METAVAR)


def data_dir_option(help: str = DATA_DIR_HELP):
    # No envvar= here: $SVMTOOL_DATA_DIR is read by default_data_dir(), so the
    # commands can tell a folder the user typed (which must hold the data) from
    # the standing default (where gradcheck may find nothing and say so).
    return typer.Option("--data-dir", help=help, metavar="DIR")


def cache_switch(help: str):
    """--cache/--no-cache: whether features are read from and stored in the cache."""
    return typer.Option("--cache/--no-cache", help=help)


def json_option(help: str = JSON_HELP):
    return typer.Option("--json", help=help)


def model_option(help: str = "The model file."):
    return typer.Option("--model", help=help, metavar="FILE")


Data = Annotated[str, data_option()]
DataDir = Annotated[Path | None, data_dir_option()]
ModelDataDir = Annotated[Path | None, data_dir_option(MODEL_DATA_DIR_HELP)]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help=CACHE_DIR_HELP, metavar="DIR")]
ModelFile = Annotated[Path, model_option()]
Json = Annotated[bool, json_option()]
Delta = Annotated[float, typer.Option("--delta", help="The hinge margin.", metavar="FLOAT")]
