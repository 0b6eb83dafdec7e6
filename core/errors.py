"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback unless --debug)."""

from __future__ import annotations


class EdgeqatError(Exception):
    """A problem with the user's input or artifacts, with the fix in the message."""

    exit_code = 2


class CheckFailed(EdgeqatError):
    """The runtime check ran but a threshold failed."""

    exit_code = 3
