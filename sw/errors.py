"""The error every user-facing failure raises: the CLI prints its message, never a traceback."""

__all__ = ["SystolicError"]


class SystolicError(Exception):
    """A problem with the user's input or set-up. The message names the problem and the fix."""
