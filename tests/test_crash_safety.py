"""SIGKILL at random points of every stage: what is on disk is the old artifact or the new one, never half.

For each stage an older artifact already sits at the destination (made from other inputs); the stage is
started to replace it and killed after a random delay. The destination must then be byte for byte the
old artifact, or the new one, complete and valid. A later uninterrupted run must clean up what the killed
process left beside it and finish normally.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeqat.artifacts import hash_files, read_record, verify_files
from edgeqat.manifest import load_bundle
from edgeqat.runtime_check.check import is_report_for

pytestmark = pytest.mark.e2e
# Kill points per stage: fewer for the slow stages, to keep the suite's wall time in check on 2 cores.
KILLS = {"train": 4, "convert": 4, "export": 3, "check": 2}
TRAIN = ["--max-steps", "3", "--max-length", "64", "--batch-size", "2", "--device", "cpu"]


def edgeqat(*argv: str) -> list[str]:
    return [sys.executable, "-m", "edgeqat", *argv]


def run(command: list[str]) -> float:
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return time.monotonic() - start


def run_and_kill(command: list[str], delay: float) -> int:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return process.returncode


def snapshot(folder: Path) -> dict[str, str]:
    return hash_files(folder, exclude=())


@pytest.fixture(scope="module")
def inputs(made, default_run) -> dict[str, Path]:
    """Two of everything, so that each stage can replace A's artifact with B's: A is the session's ``made``
    (2 steps), B its ``default_run`` (4 steps). The stages only read them; each copies A before replacing it."""
    return {"ckpt_a": made["ckpt"], "conv_a": made["conv"], "bundle_a": made["bundle"], "report_a": made["report"],
            "ckpt_b": default_run / "checkpoint", "conv_b": default_run / "converted", "bundle_b": default_run / "bundle"}


def _valid(stage: str, folder: Path, inputs: dict[str, Path]) -> bool:
    if stage in ("train", "convert"):
        return not verify_files(folder, read_record(folder)["files"])
    if stage == "export":
        load_bundle(folder)  # raises on a missing or changed file
        return True
    return is_report_for(folder, inputs["bundle_b"])


STAGES = {
    # stage: (the old artifact, the command that replaces it with B's)
    "train": ("ckpt_a", lambda out, i: edgeqat("train", "--output", str(out), *TRAIN, "--seed", "1")),
    "convert": ("conv_a", lambda out, i: edgeqat("convert", str(i["ckpt_b"]), "--output", str(out))),
    "export": ("bundle_a", lambda out, i: edgeqat("export", str(i["conv_b"]), "--output", str(out), "--max-seq-len", "64")),
    "check": ("report_a", lambda out, i: edgeqat("check", str(i["bundle_b"]), "--output", str(out), "--min-golden-agreement", "0")),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_leaves_the_old_artifact_or_the_new_one(stage: str, inputs: dict[str, Path], tmp_path: Path):
    old_name, command_for = STAGES[stage]
    old = inputs[old_name]
    old_files = snapshot(old)

    reference = tmp_path / "uninterrupted"
    shutil.copytree(old, reference)
    full = run(command_for(reference, inputs))
    assert _valid(stage, reference, inputs) and snapshot(reference) != old_files

    rng = random.Random(f"{stage}-kill-points")
    outcomes = []
    for attempt in range(KILLS[stage]):
        out = tmp_path / f"killed-{attempt}"
        shutil.copytree(old, out)
        delay = rng.uniform(0.3 * full, full)  # past most of the imports, up to the final rename
        code = run_and_kill(command_for(out, inputs), delay)
        files = snapshot(out)
        if files == old_files:
            outcomes.append("old")
        else:
            assert _valid(stage, out, inputs), f"{stage} killed after {delay:.2f} s left a damaged {out}"
            outcomes.append("new")
        assert code in (0, -signal.SIGKILL)

    # what a killed run left beside its destination goes with the next run, which completes
    last = tmp_path / f"killed-{KILLS[stage] - 1}"
    run(command_for(last, inputs))
    assert _valid(stage, last, inputs)
    assert not [p.name for p in tmp_path.glob(f".{last.name}.*")], "temporary siblings are cleaned up"
    print(f"{stage}: {KILLS[stage]} kill points, outcomes {outcomes}")
