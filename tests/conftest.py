"""Shared by the suites: an isolated working folder, running the CLI expecting a user error, and killing
a command once it has reached a given point."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import datasets
import pytest

# The libraries print their own import-time notices (torchao's optional kernels); import them before
# stderr is captured so the captured text is the command's alone.
import torch  # noqa: F401
import torchao  # noqa: F401
import transformers  # noqa: F401

from edgeqat.cli import main
from edgeqat.errors import EdgeqatError


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Runs each command in an empty folder, with its own datasets cache, and undoes main()'s logging setup."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    cache = tmp_path / ".hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    logger = logging.getLogger("edgeqat")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield tmp_path
    logger.handlers[:], logger.level, logger.propagate = saved


def run_cli(capsys, *argv: str, after_progress: bool = False) -> str:
    """Runs `edgeqat ARGV`, asserts it failed as a user error, and returns its one error line.

    The error is the only line on stderr, unless ``after_progress``: a failure in the middle of the work
    (a disk that fills up) comes after the progress lines logged so far, and is the last line.
    """
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == EdgeqatError.exit_code, (code, captured.err)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 or (after_progress and len(lines) > 1), captured.err
    assert lines[-1].startswith("edgeqat: error: "), captured.err
    assert not any(line.startswith("edgeqat: error: ") for line in lines[:-1]), captured.err
    assert "internal error" not in lines[-1]
    return lines[-1]


def kill_when_ready(command: list[str], ready: Path, delay: float) -> int:
    """Starts ``command``, waits until ``ready`` exists, lets it run ``delay`` seconds more, then SIGKILLs it.

    Returns its exit code (-SIGKILL). The command must still be running when ``ready`` appears.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, f"the command ended before {ready} appeared"
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait()
