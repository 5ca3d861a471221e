"""The svmtool command line: the app, built from one module per command.

Each command's options and flow live in ``svmtool/commands/NAME.py``; what they
share (one-line errors, exit codes, JSON, the consoles ``out`` and ``err``) in
``svmtool/commands/common.py``. numpy and the job modules are imported inside
the commands, so that ``svmtool --help`` starts quickly.
"""

from __future__ import annotations

import sys

import typer

from svmtool import __version__
from svmtool.commands import cache, download, evaluate, gradcheck, predict, train, visualize
from svmtool.commands.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EXIT_USER_CODE,
    TYPER_SETTINGS,
    Command,
    Group,
    err,
    handle_errors,
    out,
)

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE", "EXIT_USER_CODE", "app", "err",
           "main", "out"]  # fmt: skip

HELP = "The multi-class linear SVM on CIFAR-10: download, train, gradcheck, visualize."

app = typer.Typer(cls=Group, help=HELP, **TYPER_SETTINGS)


def version_callback(value: bool) -> None:
    if value:
        print(f"svmtool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """The multi-class linear SVM on CIFAR-10: download, train, gradcheck, visualize."""


def _add(typer_app: typer.Typer, command, name: str | None = None) -> None:
    """Register ``command`` with one-line errors and the help that shows metavars."""
    typer_app.command(name, cls=Command)(handle_errors(command))


_add(app, download.download)
_add(app, train.train)
_add(app, evaluate.evaluate)
_add(app, predict.predict)
_add(app, gradcheck.gradcheck)
cache_app = typer.Typer(cls=Group, help=cache.HELP, **TYPER_SETTINGS)
_add(cache_app, cache.cache_list, "list")
_add(cache_app, cache.cache_clear, "clear")
app.add_typer(cache_app, name="cache")
_add(app, visualize.visualize)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="svmtool")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
