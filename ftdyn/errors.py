"""The one exception type users see, and the one warning category.

Every expected failure (a bad path, an unknown name, an incompatible file) raises
:class:`FtdynError` with a one-line message that names the file or flag and says
what to do. The CLI prints that line and exits with code 2; anything else is a bug
and keeps its traceback. A caveat about the data or the numbers is a
:class:`FtdynWarning` (see :mod:`ftdyn.progress`).
"""


class FtdynError(Exception):
    """A user-facing error whose message is a single actionable line."""


class FtdynWarning(UserWarning):
    """A caveat about the data or the numbers (a degenerate estimator, a layer that has not
    converged, ...), one line; ``warnings.filterwarnings("ignore", category=FtdynWarning)``
    silences them."""


class ConvergenceWarning(FtdynWarning):
    """Layers whose distance has not converged on the probe set: their numbers are valid, only
    imprecise, so the command line words this apart from the ``warning:`` lines."""
