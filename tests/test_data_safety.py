"""edgeqat never touches what it did not write: for every command that writes, a folder of the user's in
each place the command could collide with (its output, the training's progress sibling, the temporary
siblings of every output) is byte for byte unchanged afterwards.

A collision at an output or progress folder is refused before any work: one line, exit 2, nothing on disk
changed (run_cli checks the working folder and every input). Look-alikes of the temporary siblings are
planted beside real runs of every command (the session fixtures ``made`` and ``default_run``, and the study
in test_study_e2e.py) and must survive them untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, tree_state

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated")]


def users_folder(path: Path, record: str | None = None) -> Path:
    """A folder of the user's: a web app or notes, with a file named like edgeqat's record when given."""
    (path / "assets").mkdir(parents=True, exist_ok=True)
    (path / "index.html").write_text("<html>my app</html>")
    (path / "assets" / "app.js").write_text("console.log('mine')")
    if record:
        (path / record).write_text(json.dumps({"name": "my app", "files": {"index.html": "x"}}))
    return path


# (command line, the folder of the user's it collides with, the file named like edgeqat's record in it)
OUTPUT_COLLISIONS = {
    "train": (lambda made: ["train", "--output", "mine"], "mine", "edgeqat.json"),
    "convert": (lambda made: ["convert", str(made["ckpt"]), "--output", "mine"], "mine", "edgeqat.json"),
    "export": (lambda made: ["export", str(made["conv"]), "--output", "webapp"], "webapp", "manifest.json"),
    "check": (lambda made: ["check", str(made["bundle"]), "--output", "myreport"], "myreport", "report.json"),
    "run (checkpoint)": (lambda made: ["run", "--output", "out"], "out/checkpoint", "edgeqat.json"),
    "run (converted)": (lambda made: ["run", "--output", "out"], "out/converted", "edgeqat.json"),
    "run (bundle)": (lambda made: ["run", "--output", "out"], "out/bundle", "manifest.json"),
    "run (report)": (lambda made: ["run", "--output", "out"], "out/report", "report.json"),
    "study (checkpoint)": (lambda made: ["study", "--output", "out"], "out/qat-checkpoint", "edgeqat.json"),
    "study (converted)": (lambda made: ["study", "--output", "out"], "out/ptq-converted", "edgeqat.json"),
    "study (report)": (lambda made: ["study", "--output", "out"], "out/study", "study.json"),
}


@pytest.mark.parametrize("case", list(OUTPUT_COLLISIONS))
def test_a_users_folder_at_the_output_is_refused_and_kept(capsys, isolated, made, case):
    argv, where, record = OUTPUT_COLLISIONS[case]
    users_folder(isolated / where, record)
    line = run_cli(capsys, *argv(made))
    assert where in line and "choose another output folder" in line and "nothing was changed" in line


def test_the_default_report_folder_beside_a_bundle_is_the_users(capsys, isolated, made):
    import shutil

    shutil.copytree(made["bundle"], isolated / "bundle")
    users_folder(isolated / "report", "report.json")  # `check BUNDLE` writes BUNDLE/../report by default
    line = run_cli(capsys, "check", "bundle")
    assert "report" in line and "not an edgeqat check output" in line


@pytest.mark.parametrize("stage", ["ckpt", "conv", "bundle", "report"])
def test_an_artifact_holding_a_file_of_the_users_is_refused_and_kept(capsys, isolated, made, stage):
    """The user added a file to an artifact of edgeqat's: replacing the folder would lose it."""
    import shutil

    artifact = shutil.copytree(made[stage], isolated / stage)
    (artifact / "my-notes.txt").write_text("mine")
    argv = {"ckpt": ["train", "--output", stage, "--max-steps", "1"],
            "conv": ["convert", str(made["ckpt"]), "--output", stage],
            "bundle": ["export", str(made["conv"]), "--output", stage],
            "report": ["check", str(made["bundle"]), "--output", stage]}[stage]
    line = run_cli(capsys, *argv)
    assert "holds files edgeqat did not write (my-notes.txt)" in line


PROGRESS_COLLISIONS = {
    "train": (["train", "--output", "X"], "X.progress"),
    "run": (["run", "--output", "out"], "out/checkpoint.progress"),
    "study (bf16)": (["study", "--output", "out"], "out/bf16-checkpoint.progress"),
    "study (qat)": (["study", "--output", "out"], "out/qat-checkpoint.progress"),
}


@pytest.mark.parametrize("case", list(PROGRESS_COLLISIONS))
def test_a_users_folder_at_the_progress_sibling_is_refused_and_kept(capsys, isolated, case):
    argv, where = PROGRESS_COLLISIONS[case]
    users_folder(isolated / where, "edgeqat-progress.json")  # even a file of that name, unless edgeqat's own
    line = run_cli(capsys, *argv, "--max-steps", "1")
    assert f"{where} exists and was not written by edgeqat" in line and "nothing was changed" in line


def test_a_users_file_where_the_study_keeps_its_evaluations_is_refused_and_kept(capsys, isolated):
    (isolated / "out" / "evaluations").mkdir(parents=True)
    (isolated / "out" / "evaluations" / "qat.json").write_text('{"my": "results"}')
    line = run_cli(capsys, "study", "--output", "out", "--max-steps", "1")
    assert "evaluations/qat.json was not written by edgeqat" in line


def test_lookalike_temporary_siblings_survive_train_convert_export_and_check(made):
    assert len(made["lookalikes"]) == 16  # 4 beside each of the 4 outputs
    for path, state in made["lookalikes"].items():
        assert tree_state(path) == state, f"{path} was changed"


def test_lookalike_temporary_siblings_survive_run(default_run, default_run_lookalikes):
    _, planted = default_run_lookalikes
    assert len(planted) == 16
    for path, state in planted.items():
        assert tree_state(path) == state, f"{path} was changed"
