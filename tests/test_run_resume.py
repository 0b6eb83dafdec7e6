"""`edgeqat run` killed twice (SIGKILL: during training, then during export) ends where an uninterrupted run ends.

The reruns must pick up from the last valid artifact: the training from its last complete checkpoint, the
pipeline from the first stage whose artifact is missing, never redoing a stage that had finished.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kill_when_ready

from edgeqat.artifacts import read_record, verify_files
from edgeqat.manifest import load_bundle
from edgeqat.train.checkpointing import COMPLETE, progress_dir

pytestmark = pytest.mark.e2e
RUN = ["run", "--max-steps", "6", "--save-steps", "2", "--max-length", "64", "--batch-size", "4", "--device", "cpu",
       "--max-seq-len", "64"]


def _command(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgeqat", *RUN, "--output", str(output), *extra]


def _run(output: Path, *extra: str) -> str:
    result = subprocess.run(_command(output, *extra), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _kill_once(output: Path, ready: Path, delay: float) -> None:
    assert kill_when_ready(_command(output, "--resume"), ready, delay) == -signal.SIGKILL


def _golden_ids(output: Path) -> list[list[int]]:
    return [g["generated_ids"] for g in load_bundle(output / "bundle")["golden"]]


def test_killed_run_resumes_from_the_last_valid_artifact(tmp_path: Path):
    reference = tmp_path / "uninterrupted"
    _run(reference)

    out = tmp_path / "killed"
    rng = random.Random(4)
    # 1. Killed during training, after its second-step checkpoint: no stage artifact exists yet.
    _kill_once(out, progress_dir(out / "checkpoint") / "checkpoint-2" / COMPLETE, rng.uniform(0.0, 0.5))
    assert not (out / "checkpoint").exists()

    # 2. Resumed, then killed during export: training and conversion are done and valid, the bundle is not.
    _kill_once(out, out / "converted" / "edgeqat.json", rng.uniform(1.0, 4.0))
    for stage in ("checkpoint", "converted"):
        assert not verify_files(out / stage, read_record(out / stage)["files"])
    assert read_record(out / "checkpoint")["resumed_from_step"] >= 2
    assert not (out / "report").exists()
    converted_before = {p.name: p.stat().st_mtime_ns for p in (out / "converted").iterdir()}

    # 3. The last rerun redoes only what is missing.
    log = _run(out)
    assert "[checkpoint] up to date" in log and "[converted] up to date" in log
    assert {p.name: p.stat().st_mtime_ns for p in (out / "converted").iterdir()} == converted_before
    assert sorted(p.name for p in out.iterdir()) == ["bundle", "checkpoint", "converted", "report"], "nothing else left"

    expected, got = read_record(reference / "checkpoint"), read_record(out / "checkpoint")
    assert got["final_loss"] == pytest.approx(expected["final_loss"], abs=1e-4)
    assert _golden_ids(out) == _golden_ids(reference)
    assert json.loads((out / "report" / "report.json").read_text())["passed"]
