"""The one exception type the CLI turns into a one-line message and exit code 1."""


class SvmtoolError(Exception):
    """A problem the user can fix: bad input, a missing file, a failed download."""
