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

from edgeqat.artifacts import sha256_file
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


SKIPPED_IN_SNAPSHOTS = (".hf-datasets-cache",)  # datasets' own cache, which the isolated fixture points here


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything under ``root`` (or ``root`` itself, a file), byte for byte: {relative path: what it is}."""
    root = Path(root)
    if root.is_symlink():
        return {".": ("link", os.readlink(root))}
    if not root.exists():
        return {".": ("absent",)}
    if root.is_file():
        return {".": ("file", sha256_file(root))}
    state: dict[str, tuple] = {".": ("dir",)}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not (here == root and d in SKIPPED_IN_SNAPSHOTS)]
        for name in dirs + files:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                state[rel] = ("dir",)
            else:
                state[rel] = ("file", sha256_file(path))
    return state


def _watched(argv: tuple[str, ...]) -> list[Path]:
    """The working folder, and every existing path the command names outside it (its inputs)."""
    cwd = Path.cwd().resolve()
    found = [cwd]
    for arg in argv:
        try:
            path = Path(arg)
            if arg and os.path.lexists(path) and cwd not in path.resolve().parents and path.resolve() != cwd:
                found.append(path)
        except (OSError, ValueError):  # not a path: a prompt, a number
            continue
    return found


def run_cli(capsys, *argv: str, after_progress: bool = False, expect_code: int = EdgeqatError.exit_code) -> str:
    """Runs `edgeqat ARGV`, asserts it failed as a user error, and returns its one error line.

    The error is the only line on stderr, unless ``after_progress``: a failure in the middle of the work
    (a disk that fills up) comes after the progress lines logged so far, and is the last line. Nothing on
    disk may change: the working folder and every input named outside it are the same byte for byte.
    """
    watched = _watched(argv)
    before = [tree_state(path) for path in watched]
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == expect_code, (code, captured.err)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 or (after_progress and len(lines) > 1), captured.err
    assert lines[-1].startswith("edgeqat: error: "), captured.err
    assert not any(line.startswith("edgeqat: error: ") for line in lines[:-1]), captured.err
    assert "internal error" not in lines[-1]
    for path, state in zip(watched, before):
        assert tree_state(path) == state, f"{path} changed on disk"
    return lines[-1]


# Folders and files of a user's named the way edgeqat names its temporary siblings: edgeqat must leave them be.
LOOKALIKES = (".{}.edgeqat-mine.tmp", ".{}.old", ".{}.backup.tmp", ".{}.notes.tmp")


def plant_lookalikes(dest: Path) -> dict[Path, dict]:
    """Puts a user's folders (and a file) where ``dest``'s temporary siblings go; returns their snapshot."""
    planted = {}
    for pattern in LOOKALIKES:
        path = Path(dest).parent / pattern.format(Path(dest).name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if pattern.endswith("notes.tmp"):
            path.write_text("the user's notes")
        else:
            (path / "sub").mkdir(parents=True)
            (path / "keep.txt").write_text("the user's file")
            (path / "sub" / "data.bin").write_bytes(bytes(range(256)))
        planted[path] = tree_state(path)
    return planted


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> dict:
    """A real checkpoint, converted model, bundle (with its ONNX model) and report of the embedded model (2 steps,
    a 64-token cache), each written by its own command with a user's look-alike folders beside it (``lookalikes``)."""
    root = tmp_path_factory.mktemp("artifacts")
    paths = {name: root / name for name in ("ckpt", "conv", "bundle", "report")}
    lookalikes = {}
    for path in paths.values():
        lookalikes.update(plant_lookalikes(path))
    assert main(["train", "--output", str(paths["ckpt"]), "--max-steps", "2", "--max-length", "64", "--device", "cpu"]) == 0
    assert main(["convert", str(paths["ckpt"]), "--output", str(paths["conv"])]) == 0
    assert main(["export", str(paths["conv"]), "--output", str(paths["bundle"]), "--max-seq-len", "64", "--format", "pte,onnx"]) == 0
    assert main(["check", str(paths["bundle"]), "--output", str(paths["report"]), "--min-golden-agreement", "0"]) == 0
    return {**paths, "lookalikes": lookalikes}


E2E_FAST = ["--max-steps", "4", "--max-seq-len", "64"]


@pytest.fixture(scope="session")
def default_run_lookalikes(tmp_path_factory) -> tuple[Path, dict[Path, dict]]:
    """The output folder of ``default_run``, with a user's look-alike folders planted beside every stage's
    output before the run, and their snapshot."""
    out = tmp_path_factory.mktemp("default") / "out"
    planted: dict[Path, dict] = {}
    for stage in ("checkpoint", "converted", "bundle", "report"):
        planted.update(plant_lookalikes(out / stage))
    return out, planted


@pytest.fixture(scope="session")
def default_run(default_run_lookalikes) -> Path:
    """`edgeqat run` of the embedded default (4 steps, a 64-token cache)."""
    out, _ = default_run_lookalikes
    assert main(["run", "--output", str(out), *E2E_FAST]) == 0
    return out


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
