"""ExecuTorch's C++ code writes to file descriptors 1 and 2 directly; keep the CLI's streams clean of it.

stdout carries results (`check --json`), and a user error is one line on stderr: native output is moved
or held, and a held native log is folded into the error it explains.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

from edgeqat.errors import EdgeqatError


@contextlib.contextmanager
def stdout_to_stderr():
    """The C++ LLM runner prints tokens and stats to file descriptor 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@dataclass
class NativeLog:
    text: str = ""

    def reason(self) -> str:
        """The native log's messages on one line, without their [file.cpp:line] prefixes."""
        lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in self.text.splitlines()]
        return "; ".join(line for line in lines if line)


@contextlib.contextmanager
def held_stderr():
    """Holds what native code writes to stderr while the block runs (in ``NativeLog.text`` after).

    Both paths: file descriptor 2, and Python's sys.stderr, which ExecuTorch's bindings log through.
    """
    sys.stderr.flush()
    log = NativeLog()
    saved = os.dup(2)
    python_side = io.StringIO()
    with tempfile.TemporaryFile() as held:
        try:
            os.dup2(held.fileno(), 2)
            with contextlib.redirect_stderr(python_side):
                yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            log.text = held.read().decode(errors="replace") + python_side.getvalue()


@contextlib.contextmanager
def native_errors(describe: Callable[[str], str], errors: tuple[type[BaseException], ...] = (RuntimeError,)):
    """Runs the block with native stderr held; one of ``errors`` becomes an EdgeqatError whose message is
    ``describe(reason)``, the reason being the held native log on one line (or the exception's text)."""
    failure = None
    with held_stderr() as native:
        try:
            yield native
        except errors as e:
            failure = e
    if failure is not None:
        raise EdgeqatError(describe(native.reason() or str(failure))) from None
