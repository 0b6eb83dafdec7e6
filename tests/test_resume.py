"""A training killed with SIGKILL resumes from its last complete checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import kill_when_ready

from edgeqat.artifacts import read_record
from edgeqat.train.checkpointing import COMPLETE, progress_dir

pytestmark = pytest.mark.e2e
TRAIN = ["train", "--max-steps", "8", "--save-steps", "2", "--max-length", "64", "--batch-size", "4", "--device", "cpu"]


def _train(output: Path, *extra: str, kill_after_checkpoint: int | None = None, delay: float = 0.0) -> int:
    command = [sys.executable, "-m", "edgeqat", *TRAIN, "--output", str(output), *extra]
    if kill_after_checkpoint is None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return 0
    marker = progress_dir(output) / f"checkpoint-{kill_after_checkpoint}" / COMPLETE
    # Killed somewhere in the steps after that checkpoint, possibly in the middle of the next save.
    return kill_when_ready(command, marker, delay)


def _final_loss(output: Path) -> float:
    return read_record(output)["final_loss"]


def test_killed_training_resumes_to_the_same_final_loss(tmp_path: Path):
    reference = tmp_path / "uninterrupted"
    _train(reference)
    expected = read_record(reference)

    resumed = tmp_path / "killed"
    rng = random.Random(0)
    # At most 0.25 s in: the six steps and three saves still to come take longer even on a fast host (with
    # up to 0.6 s, one run here was killed after its final folder was in place, as it exited).
    code = _train(resumed, kill_after_checkpoint=2, delay=rng.uniform(0.0, 0.25))
    assert code == -signal.SIGKILL
    assert not resumed.exists(), "a killed training must not leave a final checkpoint folder"
    progress = progress_dir(resumed)
    complete = sorted(p.name for p in progress.iterdir() if (p / COMPLETE).is_file())
    assert complete, "at least the checkpoint it waited for is complete"

    _train(resumed, "--resume")
    record = read_record(resumed)
    assert record["resumed_from_step"] >= 2
    assert [s for s, _ in record["loss_curve"]] == [s for s, _ in expected["loss_curve"]]
    assert _final_loss(resumed) == pytest.approx(_final_loss(reference), abs=1e-4)
    assert not progress.exists(), "intermediate checkpoints are removed once the final one is in place"
    rows = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in rows if "loss" in r]
    assert loss_steps == [s for s, _ in expected["loss_curve"]], "steps trained twice are logged once"
    assert all("tokens_per_s" in r for r in rows if "loss" in r)


def test_resume_refuses_a_run_started_with_another_config(tmp_path: Path):
    output = tmp_path / "ckpt"
    assert _train(output, kill_after_checkpoint=2) == -signal.SIGKILL
    command = [sys.executable, "-m", "edgeqat", *TRAIN, "--output", str(output), "--resume", "--learning-rate", "0.001"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "started with another config" in result.stderr and "learning_rate" in result.stderr
    assert "Traceback" not in result.stderr
