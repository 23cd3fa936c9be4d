"""The one exception type the CLIs turn into a one-line message instead of a traceback."""


class SortedNetError(ValueError):
    """Bad input from the user: the message names the problem and the fix, on one line."""
