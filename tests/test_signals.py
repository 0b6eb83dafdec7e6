"""SIGTERM, how containers, CI and schedulers stop a job, is handled like Ctrl-C: one line, exit 143, the
interrupted artifact not written, and no empty progress or output folder left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
TERMINATED = "edgeqat: terminated (SIGTERM); finished artifacts are kept, the interrupted one was not written"


def terminate_at(argv: list[str], cwd: Path, log_text: str) -> tuple[int, list[str]]:
    """Runs `edgeqat ARGV`, sends SIGTERM once its log has printed ``log_text``; (exit code, stderr lines)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "edgeqat", *argv], cwd=cwd, env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = []
    deadline = time.monotonic() + 600
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        if log_text in line or time.monotonic() > deadline:
            break
    assert process.poll() is None, f"the command ended before it logged {log_text!r}: {lines[-5:]}"
    time.sleep(0.5)  # into the work that follows the line
    process.send_signal(signal.SIGTERM)
    lines += process.stderr.read().splitlines()
    return process.wait(timeout=120), lines


def test_sigterm_during_training(tmp_path):
    code, lines = terminate_at(["train", "--output", "ckpt", "--max-steps", "500", "--max-length", "64",
                                "--device", "cpu"], tmp_path, "training default (qat)")
    assert code == 143 and lines[-1] == TERMINATED, lines[-5:]
    assert not any("Traceback" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".hf")) == []  # no ckpt, no ckpt.progress


def test_sigterm_during_a_run_leaves_no_empty_output_folder(tmp_path):
    code, lines = terminate_at(["run", "--output", "out", "--max-steps", "500"], tmp_path, "training default (qat)")
    assert code == 143 and lines[-1] == TERMINATED, lines[-5:]
    assert not (tmp_path / "out").exists()


def test_sigterm_during_export(made, tmp_path):
    code, lines = terminate_at(["export", str(made["conv"]), "--output", "bundle", "--max-seq-len", "64"],
                               tmp_path, "torch.export")
    assert code == 143 and lines[-1] == TERMINATED, lines[-5:]
    assert not any("Traceback" in line for line in lines)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary sibling
