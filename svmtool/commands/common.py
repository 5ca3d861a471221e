"""What every command shares: the consoles, one-line errors, exit codes, JSON output.

Nothing here imports numpy or a job module: it is on the path of ``svmtool --help``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from svmtool.errors import BadValue, DataNotFound, SvmtoolError
from svmtool.terminal import clean, make_console

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import BadParameter, NoArgsIsHelpError, UsageError
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover
    from click import get_current_context
    from click.exceptions import BadParameter, NoArgsIsHelpError, UsageError

# Exit codes (the README lists them in one place).
EXIT_ERROR = 1  # bad input, a failed download, a FAIL in gradcheck, an image predict could not read
EXIT_USAGE = 2  # the command line itself: an unknown option, a value of the wrong type
EXIT_USER_CODE = 3  # gradcheck --loss: the user's code could not be imported, or raised
EXIT_INTERRUPTED = 130  # Ctrl-C

# Markup and emoji codes off: text from files and arguments is printed as written.
out = make_console()
err = make_console(stderr=True)

# What each command adds to "CIFAR-10 is not in ...": only options that command has.
MISSING_DATA_ADVICE = {
    "train": " (or pass --download, or --data synthetic to try the tool offline)",
    "evaluate": " (or pass --data-dir FOLDER if it is elsewhere)",
    "gradcheck": " (or pass --data-dir FOLDER if it is elsewhere, or --data synthetic)",
}
OUT_OF_MEMORY_ADVICE = {"train": "; try a smaller --num-train or --batch-size"}

# The settings every Typer (the app and its groups) is made with.
TYPER_SETTINGS = {
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,
    # Plain usage errors: "Error: ..." on one line, like the tool's own errors.
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}


class OneLineUsageError(UsageError):
    """Click's usage error, shown as one ``Error:`` line like every other error."""

    def __init__(self, error: UsageError) -> None:
        super().__init__(error.format_message(), error.ctx)

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        say(f"Error: {self.format_message()}{hint}")


class Group(TyperGroup):
    """Usage errors (raised while parsing, for the group or a command) become one line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise OneLineUsageError(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (NoArgsIsHelpError, OneLineUsageError):
            raise
        except UsageError as exc:
            raise OneLineUsageError(exc) from None


class Command(TyperCommand):
    """Help shows metavars (FILE, N), never Python types: typer writes an
    argument's type as ``<list[Path]>`` whatever its metavar. The type is left
    out before the help is laid out, so wrapped lines line up under the first."""

    def get_help(self, ctx) -> str:
        for param in self.params:
            if getattr(param, "param_type_name", "") == "argument":
                param.display_type_rich = lambda ctx: None
        return re.sub(r" <[A-Za-z_]+(?:\[[A-Za-z_, ]*\])?>", "", super().get_help(ctx))


def say(message: str) -> None:
    """A message for the user on stderr, on one line whatever the width; control
    characters from paths or names in it are shown as escapes."""
    err.print(clean(message), soft_wrap=True)


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    say(f"Error: {message}")
    return typer.Exit(code)


_at_end: list = []


def at_end(cleanup) -> None:
    """Call ``cleanup()`` when the running command ends, however it ends."""
    _at_end.append(cleanup)


def handle_errors(command):
    """Library errors become one line and exit code 1, never a traceback; no
    Python warning reaches the user (the math that may overflow says so with
    np.errstate; this is the net for the rest)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            if not os.environ.get("SVMTOOL_DEBUG"):
                warnings.simplefilter("ignore")
            return _run(command, *args, **kwargs)

    return wrapper


def _run(command, *args, **kwargs):
    try:
        return command(*args, **kwargs)
    except (typer.Exit, typer.Abort):
        raise
    except BadValue as exc:
        # click's own usage error, with the running command's context: the same
        # one line as a value of the wrong type, and exit code 2.
        raise BadParameter(
            exc.problem, ctx=get_current_context(silent=True), param_hint=f"'{exc.option}'"
        ) from None
    except DataNotFound as exc:
        raise fail(str(exc) + MISSING_DATA_ADVICE.get(command.__name__, "")) from None
    except SvmtoolError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # The reader went away (svmtool ... | head): stop quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until exit)
        raise typer.Exit(EXIT_ERROR) from None
    except MemoryError:
        raise fail("out of memory" + OUT_OF_MEMORY_ADVICE.get(command.__name__, "")) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise fail(f"{exc.strerror or exc}{where}") from None
    except Exception as exc:
        if os.environ.get("SVMTOOL_DEBUG"):
            raise
        raise fail(
            f"internal error: {type(exc).__name__}: {exc}"
            " (set SVMTOOL_DEBUG=1 for the traceback, and please report it)"
        ) from None
    finally:
        while _at_end:
            _at_end.pop()()


def resolve_data_dir(data_dir: Path | None) -> Path:
    from svmtool.io.dataset import default_data_dir

    return data_dir if data_dir is not None else default_data_dir()


def json_ready(value):
    """NaN and infinities become null: the output must be strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def print_json(value) -> None:
    print(json.dumps(json_ready(value), indent=2))
