"""The one exception type that the CLI turns into a clear message and a non-zero exit code."""


class MaskgenError(Exception):
    """A problem the user can fix: the message names the file or case and says how to fix it."""
