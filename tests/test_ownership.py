"""Which folders edgeqat may replace or delete (core/ownership.py): only those its own record accounts for,
and temporary or progress siblings only when they carry its marker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import tree_state
from edgeqat.artifacts import atomic_dir, write_json_atomic, write_record
from edgeqat.errors import EdgeqatError
from edgeqat.ownership import (
    TEMPORARY_MARKER,
    ensure_apart,
    ensure_replaceable,
    make_temporary,
    remove_leftover_temporaries,
)
from edgeqat.train.checkpointing import PROGRESS, ensure_progress_is_ours, progress_dir, start_progress


def _artifact(folder, stage="check", files=("report.json", "report.md")):
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    return write_record(folder, stage, {})


def _bundle(folder):
    folder.mkdir(parents=True)
    (folder / "model.pte").write_bytes(b"PTE")
    write_json_atomic(folder / "manifest.json", {"format": "edgeqat-bundle", "format_version": 1,
                                                  "files": {"model.pte": "0" * 64}})


# -- the output folder ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage,marker", [("export", "manifest.json"), ("check", "report.json"),
                                          ("train", "edgeqat.json"), ("convert", "edgeqat.json"),
                                          ("study", "edgeqat.json")])
def test_a_users_folder_holding_a_file_named_like_the_record_is_refused(tmp_path, stage, marker):
    folder = tmp_path / "webapp"
    (folder / "assets").mkdir(parents=True)
    (folder / marker).write_text('{"name": "my app"}')
    (folder / "assets" / "app.js").write_text("js")
    with pytest.raises(EdgeqatError, match=f"is not an edgeqat {stage} output.*choose another output folder"):
        ensure_replaceable(folder, stage)


def test_an_artifact_with_a_file_it_did_not_list_is_refused_naming_it(tmp_path):
    _artifact(tmp_path / "report")
    (tmp_path / "report" / "my-notes.txt").write_text("mine")
    (tmp_path / "report" / "plots").mkdir()
    with pytest.raises(EdgeqatError, match=r"holds files edgeqat did not write \(my-notes.txt, plots/\)"):
        ensure_replaceable(tmp_path / "report", "check")


def test_an_artifact_with_an_unlisted_file_in_a_listed_subfolder_is_refused(tmp_path):
    _artifact(tmp_path / "ckpt", "train", files=("model.safetensors", "tensorboard/events.1"))
    ensure_replaceable(tmp_path / "ckpt", "train")
    (tmp_path / "ckpt" / "tensorboard" / "mine.txt").write_text("mine")
    with pytest.raises(EdgeqatError, match="tensorboard/mine.txt"):
        ensure_replaceable(tmp_path / "ckpt", "train")


def test_a_damaged_artifact_is_still_edgeqats_to_replace(tmp_path):
    _artifact(tmp_path / "report")
    (tmp_path / "report" / "report.md").unlink()  # listed, missing
    (tmp_path / "report" / "report.json").write_text("changed")  # listed, changed
    ensure_replaceable(tmp_path / "report", "check")


def test_a_bundle_is_recognised_by_its_manifest(tmp_path):
    _bundle(tmp_path / "bundle")
    ensure_replaceable(tmp_path / "bundle", "export")
    with pytest.raises(EdgeqatError, match="not an edgeqat check output"):
        ensure_replaceable(tmp_path / "bundle", "check")


def test_another_stages_artifact_is_refused(tmp_path):
    _artifact(tmp_path / "ckpt", "train")
    with pytest.raises(EdgeqatError, match="not an edgeqat convert output"):
        ensure_replaceable(tmp_path / "ckpt", "convert")


def test_a_record_that_is_not_edgeqats_shape_is_refused(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "edgeqat.json").write_text(json.dumps({"stage": "train", "files": ["a"]}))
    with pytest.raises(EdgeqatError, match="not an edgeqat train output"):
        ensure_replaceable(folder, "train")


def test_empty_missing_file_symlink_and_under_a_file(tmp_path):
    ensure_replaceable(tmp_path / "missing", "train")
    (tmp_path / "empty").mkdir()
    ensure_replaceable(tmp_path / "empty", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeqatError, match="exists and is a file"):
        ensure_replaceable(tmp_path / "file", "train")
    with pytest.raises(EdgeqatError, match="is under .*file, which is a file, not a folder"):
        ensure_replaceable(tmp_path / "file" / "deeper" / "out", "train")
    _artifact(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(EdgeqatError, match="is a symbolic link"):
        ensure_replaceable(tmp_path / "link", "check")


def test_output_apart_from_its_inputs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}")
    with pytest.raises(EdgeqatError, match="is the input checkpoint itself"):
        ensure_apart(tmp_path / "data", {"checkpoint": tmp_path / "data"})
    with pytest.raises(EdgeqatError, match="holds the input --dataset"):
        ensure_apart(tmp_path / "data", {"--dataset": tmp_path / "data" / "train.jsonl"})
    with pytest.raises(EdgeqatError, match="is inside the input bundle"):
        ensure_apart(tmp_path / "data" / "report", {"bundle": tmp_path / "data"})
    ensure_apart(tmp_path / "elsewhere", {"bundle": tmp_path / "data", "--reference": None})


# -- temporary siblings -----------------------------------------------------------------------------------


def test_only_marked_or_empty_temporaries_are_removed(tmp_path):
    dest = tmp_path / "bundle"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = make_temporary(dest)  # a killed process's, with a pid that is gone
    (leftover / "bundle").mkdir()
    (leftover / "bundle" / "model.pte").write_bytes(b"half")
    marker = json.loads((leftover / TEMPORARY_MARKER).read_text())
    (leftover / TEMPORARY_MARKER).write_text(json.dumps({**marker, "pid": int(dead.stdout)}))
    empty = tmp_path / ".bundle.edgeqat-empty.tmp"  # unmarked, even if empty: not edgeqat's to remove
    empty.mkdir()
    users = tmp_path / ".bundle.edgeqat-mine.tmp"  # named like one, but without the marker
    (users / "x").mkdir(parents=True)
    (users / "x" / "data").write_text("mine")
    (tmp_path / ".bundle.old").mkdir()
    (tmp_path / ".bundle.notes.tmp").write_text("mine")
    before = {p: tree_state(p) for p in (users, empty, tmp_path / ".bundle.old", tmp_path / ".bundle.notes.tmp")}
    remove_leftover_temporaries(dest)
    assert not leftover.exists()
    assert {p: tree_state(p) for p in before} == before


def test_a_temporary_another_live_edgeqat_is_writing_is_left_alone(tmp_path):
    dest = tmp_path / "report"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = make_temporary(dest)
        marker = json.loads((busy / TEMPORARY_MARKER).read_text())
        (busy / TEMPORARY_MARKER).write_text(json.dumps({**marker, "pid": other.pid}))
        remove_leftover_temporaries(dest)
        assert busy.is_dir()
    finally:
        other.kill()
        other.wait()


def test_atomic_dir_cleans_a_killed_runs_temporary_and_keeps_the_users(tmp_path):
    dest = tmp_path / "report"
    stale = make_temporary(dest)  # marked with this very process's pid: never "another live process"
    (tmp_path / ".report.edgeqat-mine.tmp").mkdir()
    with atomic_dir(dest, "check") as work:
        (work / "report.json").write_text("{}")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.edgeqat-mine.tmp", "report"]


# -- the training's progress sibling ----------------------------------------------------------------------


def test_a_users_progress_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "X"
    progress = progress_dir(out)
    progress.mkdir()
    (progress / "data.txt").write_text("precious")
    before = tree_state(progress)
    with pytest.raises(EdgeqatError, match=r"X.progress exists and was not written by edgeqat.*choose another --output"):
        ensure_progress_is_ours(out)
    with pytest.raises(EdgeqatError, match="not written by edgeqat"):
        start_progress(out, {"a": 1}, resume=False, is_main=True)
    assert tree_state(progress) == before


def test_edgeqats_own_progress_folder_is_replaced(tmp_path):
    out = tmp_path / "X"
    assert start_progress(out, {"a": 1}, resume=False, is_main=True) is None
    marker = json.loads((progress_dir(out) / PROGRESS).read_text())
    assert marker == {"edgeqat": "train-progress", "output": "X", "config": {"a": 1}}
    (progress_dir(out) / "checkpoint-3").mkdir()
    assert start_progress(out, {"a": 2}, resume=False, is_main=True) is None  # an earlier run of edgeqat's: discarded
    assert not (progress_dir(out) / "checkpoint-3").exists()
    progress_dir(out).joinpath(PROGRESS).unlink()
    ensure_progress_is_ours(out)  # empty: killed between creating and marking it
