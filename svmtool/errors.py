"""The exception types the CLI turns into a one-line message and exit code 1."""


class SvmtoolError(Exception):
    """A problem the user can fix: bad input, a missing file, a failed download."""


class DataNotFound(SvmtoolError):
    """The data is not where it was looked for. The message names the folder and
    the download command; the CLI adds the options of the command that failed."""


class BadValue(SvmtoolError):
    """A value the command line cannot accept, whatever the data. The CLI shows it
    as a usage error (exit code 2) in click's own form, naming ``option`` as typed:
    ``Error: Invalid value for '--lr': must be > 0, got -1.0 (see ...)``."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"invalid value for {option}: {problem}")
        self.option = option
        self.problem = problem


def did_you_mean(value: str, choices) -> str:
    """' (did you mean X?)' for the closest of ``choices`` (case-insensitive), else ''."""
    import difflib

    choices = [c for c in choices if c != value]  # the value itself is no suggestion
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return f" (did you mean {lowered[value.lower()]}?)"
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def check_choice(option: str, value: str, choices, shown: str | None = None) -> str:
    """``value`` if it is one of ``choices``, else a ``BadValue`` with a did-you-mean."""
    choices = list(choices)
    if value in choices:
        return value
    listed = shown or ", ".join(choices)
    raise BadValue(option, f"{value!r} is not one of {listed}{did_you_mean(value, choices)}")
