"""The one exception type users see.

Every expected failure (a bad path, an unknown name, an incompatible file) raises
:class:`FtdynError` with a one-line message that names the file or flag and says
what to do. The CLI prints that line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class FtdynError(Exception):
    """A user-facing error whose message is a single actionable line."""
