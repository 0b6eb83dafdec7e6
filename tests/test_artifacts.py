"""Artifacts on disk (core/artifacts.py): atomic folders, the record, sha256 verification."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from edgeqat.artifacts import (
    RECORD,
    atomic_dir,
    ensure_replaceable,
    hash_files,
    is_valid_artifact,
    read_record,
    sha256_file,
    verify_files,
    write_json_atomic,
    write_record,
)
from edgeqat.errors import EdgeqatError
from edgeqat.ownership import TEMPORARY_MARKER


class Boom(Exception):
    pass


def _entries(folder):
    return sorted(os.listdir(folder))


def _make_artifact(folder, stage="train", config=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(b"\x00\x01" * 100)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "tokenizer.json").write_text('{"v": 1}')
    return write_record(folder, stage, config if config is not None else {"lr": 0.1}, mode="qat")


# -- atomic_dir -----------------------------------------------------------------------------------------


def test_atomic_dir_creates_the_folder(tmp_path):
    dest = tmp_path / "out" / "artifact"
    with atomic_dir(dest, "check") as tmp:
        # built inside a marked temporary sibling, so the marker never becomes part of the artifact
        assert tmp.name == dest.name and tmp.parent.parent == dest.parent
        assert tmp.parent.name.startswith(".artifact.edgeqat-") and (tmp.parent / TEMPORARY_MARKER).is_file()
        assert not dest.exists()  # nothing at the destination until the body is done
        (tmp / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "new"
    assert _entries(dest.parent) == ["artifact"]
    assert oct(dest.stat().st_mode & 0o777) == oct(0o755)


def _old_report(dest):
    dest.mkdir()
    (dest / "report.json").write_text("old")
    write_record(dest, "check", {})


def test_atomic_dir_replaces_an_existing_folder(tmp_path):
    dest = tmp_path / "artifact"
    _old_report(dest)
    with atomic_dir(dest, "check") as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(dest) == ["new.txt"]
    assert _entries(tmp_path) == ["artifact"]  # no temporary sibling left


def test_atomic_dir_keeps_the_old_folder_when_the_body_raises(tmp_path):
    dest = tmp_path / "artifact"
    _old_report(dest)
    with pytest.raises(Boom):
        with atomic_dir(dest, "check") as tmp:
            (tmp / "half.txt").write_text("half")
            raise Boom()
    assert _entries(dest) == [RECORD, "report.json"]
    assert (dest / "report.json").read_text() == "old"
    assert _entries(tmp_path) == ["artifact"]  # the temporary folder was removed


def test_atomic_dir_writes_nothing_when_the_body_raises(tmp_path):
    dest = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(dest, "check") as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyboardInterrupt()
    assert not dest.exists()
    assert _entries(tmp_path) == []


def test_atomic_dir_never_replaces_a_folder_that_is_not_its_own_artifact(tmp_path):
    dest = tmp_path / "photos"
    dest.mkdir()
    (dest / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(EdgeqatError, match="not an edgeqat check output"):
        with atomic_dir(dest, "check"):
            pass
    assert _entries(dest) == ["holiday.jpg"]
    assert _entries(tmp_path) == ["photos"]


def test_ensure_replaceable_accepts_only_the_same_stage(tmp_path):
    ensure_replaceable(tmp_path / "missing", "train")
    (tmp_path / "empty").mkdir()
    ensure_replaceable(tmp_path / "empty", "train")
    _make_artifact(tmp_path / "ckpt", stage="train")
    ensure_replaceable(tmp_path / "ckpt", "train")
    with pytest.raises(EdgeqatError, match="not an edgeqat convert output"):
        ensure_replaceable(tmp_path / "ckpt", "convert")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeqatError, match="is a file"):
        ensure_replaceable(tmp_path / "file", "export")


def test_write_json_atomic_leaves_no_temp_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": [1, 2]})
    write_json_atomic(path, {"a": [3]})
    assert json.loads(path.read_text()) == {"a": [3]}
    assert _entries(tmp_path) == ["x.json"]


def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert _entries(tmp_path) == ["x.json"]


# -- the record and verification --------------------------------------------------------------------------


def test_sha256_and_hash_files(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"")
    (tmp_path / RECORD).write_text("{}")
    assert sha256_file(tmp_path / "a") == hashlib.sha256(b"abc").hexdigest()
    assert hash_files(tmp_path) == {
        "a": hashlib.sha256(b"abc").hexdigest(),
        "d/b": hashlib.sha256(b"").hexdigest(),
    }


def test_write_record_hashes_every_other_file(tmp_path):
    folder = tmp_path / "a"
    record = _make_artifact(folder, config={"k": [1, 2]})
    assert set(record["files"]) == {"weights.bin", "sub/tokenizer.json"}
    assert record["stage"] == "train" and record["config"] == {"k": [1, 2]} and record["mode"] == "qat"
    assert "torch" in record["versions"]
    assert read_record(folder) == record
    assert verify_files(folder, record["files"]) == []


def test_verify_files_detects_a_missing_file(tmp_path):
    folder = tmp_path / "a"
    record = _make_artifact(folder)
    (folder / "weights.bin").unlink()
    assert verify_files(folder, record["files"]) == ["weights.bin: missing"]


def test_verify_files_detects_a_changed_file(tmp_path):
    folder = tmp_path / "a"
    record = _make_artifact(folder)
    (folder / "sub" / "tokenizer.json").write_text('{"v": 2}')
    problems = verify_files(folder, record["files"])
    assert len(problems) == 1
    assert problems[0].startswith("sub/tokenizer.json: sha256 differs")


def test_verify_files_detects_a_truncated_file(tmp_path):
    folder = tmp_path / "a"
    record = _make_artifact(folder)
    with open(folder / "weights.bin", "r+b") as f:
        f.truncate(10)
    assert verify_files(folder, record["files"]) == [
        "weights.bin: sha256 differs from the record (file changed or truncated)"
    ]


@pytest.mark.parametrize("name", ["../x", "sub/../../x", "/etc/hostname"])
def test_verify_files_detects_a_path_escaping_the_folder(tmp_path, name):
    folder = tmp_path / "a"
    _make_artifact(folder)
    (tmp_path / "x").write_bytes(b"outside")
    digest = hashlib.sha256(b"outside").hexdigest()
    assert verify_files(folder, {name: digest}) == [f"{name}: path escapes the folder"]


def test_verify_files_detects_a_symlink_out_of_the_folder(tmp_path):
    folder = tmp_path / "a"
    _make_artifact(folder)
    (tmp_path / "x").write_bytes(b"outside")
    (folder / "link").symlink_to(tmp_path / "x")
    problems = verify_files(folder, {"link": hashlib.sha256(b"outside").hexdigest()})
    assert problems == ["link: path escapes the folder"]


def test_read_record_errors(tmp_path):
    with pytest.raises(EdgeqatError, match="not an edgeqat artifact"):
        read_record(tmp_path)
    (tmp_path / RECORD).write_text("{not json")
    with pytest.raises(EdgeqatError, match="corrupt"):
        read_record(tmp_path)


# -- is_valid_artifact -----------------------------------------------------------------------------------


def test_is_valid_artifact(tmp_path):
    folder = tmp_path / "a"
    _make_artifact(folder, stage="train", config={"lr": 0.1})
    assert is_valid_artifact(folder, "train", {"lr": 0.1})


def test_is_valid_artifact_false_when_config_differs(tmp_path):
    folder = tmp_path / "a"
    _make_artifact(folder, stage="train", config={"lr": 0.1})
    assert not is_valid_artifact(folder, "train", {"lr": 0.2})
    assert not is_valid_artifact(folder, "train", {"lr": 0.1, "extra": 1})


def test_is_valid_artifact_false_when_stage_differs(tmp_path):
    folder = tmp_path / "a"
    _make_artifact(folder, stage="train", config={"lr": 0.1})
    assert not is_valid_artifact(folder, "convert", {"lr": 0.1})


def test_is_valid_artifact_false_when_a_file_changed_or_the_record_is_gone(tmp_path):
    folder = tmp_path / "a"
    _make_artifact(folder, config={"lr": 0.1})
    (folder / "weights.bin").write_bytes(b"changed")
    assert not is_valid_artifact(folder, "train", {"lr": 0.1})
    assert not is_valid_artifact(tmp_path / "nothing-here", "train", {"lr": 0.1})
    _make_artifact(folder, config={"lr": 0.1})
    (folder / RECORD).unlink()
    assert not is_valid_artifact(folder, "train", {"lr": 0.1})
