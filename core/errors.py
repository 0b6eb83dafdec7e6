"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback unless --debug)."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """A library exception's first line, for an error line of edgeqat's (its type when it says nothing)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class EdgeqatError(Exception):
    """A problem with the user's input or artifacts, with the fix in the message."""

    exit_code = 2


class CheckFailed(EdgeqatError):
    """The runtime check ran but a threshold failed."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (how containers, CI and schedulers stop a job), raised like Ctrl-C so that the same cleanup
    runs: finished artifacts stay, the interrupted one is not written."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a job the signal ended
