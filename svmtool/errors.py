"""The exception types the CLI turns into a one-line message and exit code 1."""


class SvmtoolError(Exception):
    """A problem the user can fix: bad input, a missing file, a failed download."""


class DataNotFound(SvmtoolError):
    """The data is not where it was looked for. The message names the folder and
    the download command; the CLI adds the options of the command that failed."""
