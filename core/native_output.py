"""ExecuTorch's C++ code writes to file descriptors 1 and 2 directly; keep the CLI's streams clean of it.

stdout carries results (`check --json`), and a user error is one line on stderr: native output is held,
logged at debug level (shown with --debug) when all went well, and folded into the error it explains
when something failed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

from edgeqat.errors import EdgeqatError

log = logging.getLogger("edgeqat")


@dataclass
class NativeLog:
    text: str = ""

    def reason(self) -> str:
        """The native log's messages on one line, without their [file.cpp:line] prefixes."""
        lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in self.text.splitlines()]
        return "; ".join(line for line in lines if line)


@contextlib.contextmanager
def held_output(fds: tuple[int, ...] = (2,)):
    """Holds what native code writes to the file descriptors ``fds`` (2: stderr, 1: stdout) while the block
    runs, in ``NativeLog.text`` after it. For stderr both paths: the descriptor, and Python's sys.stderr,
    which ExecuTorch's bindings log through."""
    sys.stdout.flush()
    sys.stderr.flush()
    native = NativeLog()
    saved = {fd: os.dup(fd) for fd in fds}
    python_side = io.StringIO()
    with tempfile.TemporaryFile() as held:
        try:
            for fd in fds:
                os.dup2(held.fileno(), fd)
            with contextlib.redirect_stderr(python_side) if 2 in fds else contextlib.nullcontext():
                yield native
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            held.seek(0)
            native.text = held.read().decode(errors="replace") + python_side.getvalue()


@contextlib.contextmanager
def native_errors(describe: Callable[[str], str], errors: tuple[type[BaseException], ...] = (RuntimeError,),
                  fds: tuple[int, ...] = (2,)):
    """Runs the block with native output on ``fds`` held; one of ``errors`` becomes an EdgeqatError whose
    message is ``describe(reason)``, the reason being the held native log on one line (or the exception's
    text). Without an error the held log goes to the debug log (--debug)."""
    failure = None
    with held_output(fds) as native:
        try:
            yield native
        except errors as e:
            failure = e
    if failure is not None:
        raise EdgeqatError(describe(native.reason() or str(failure))) from None
    if native.text.strip():
        log.debug("ExecuTorch:\n%s", native.text.rstrip())
