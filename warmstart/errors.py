"""The error every user-facing failure derives from: the CLI prints its message, no traceback."""


class WarmstartError(Exception):
    """A failure the user can fix; the message says what, where and how."""
