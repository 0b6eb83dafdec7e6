"""Artifacts on disk: atomic writes, sha256 of every file, and the record of what made each artifact.

Every stage writes a folder. It is built under a temporary name beside its destination and renamed into
place only when complete, so a crash leaves the old artifact or the new one, never half of one. Each
folder holds ``edgeqat.json``: the stage, the versions, the config, and the sha256 of every other file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from edgeqat.errors import EdgeqatError
from edgeqat.ownership import RECORD, ensure_replaceable, make_temporary, remove_leftover_temporaries


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(folder: Path, exclude: tuple[str, ...] = (RECORD,)) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in exclude
    }


def versions() -> dict[str, str]:
    found = {}
    for name in ("edgeqat", "torch", "torchao", "executorch", "transformers", "peft", "trl", "datasets"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; an artifact is meant to be read by others
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _is_disk_full(e):
            raise _no_space(path) from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _is_disk_full(e):
            raise _no_space(path) from None
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    rename_exchange, at_fdcwd = 2, -100
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a filesystem or kernel without the exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _no_space(dest: Path) -> EdgeqatError:
    return EdgeqatError(
        f"no space left on the device while writing {dest}; nothing was replaced (any earlier {dest.name} is "
        "intact): free some space and run again"
    )


@contextlib.contextmanager
def atomic_dir(dest: Path, stage: str) -> Iterator[Path]:
    """Yields a folder to build the artifact in; on success it takes the place of ``dest`` atomically.

    The folder lies in a marked temporary sibling of ``dest`` (edgeqat.ownership), so the marker never
    becomes part of the artifact. The swap is one renameat2(RENAME_EXCHANGE): a process killed at any
    instant leaves the old artifact or the new one at ``dest``. Where the filesystem cannot exchange, two
    renames leave a window of microseconds in which ``dest`` is missing (its old version is then in the
    temporary sibling, which the next run cleans up).
    """
    dest = Path(dest)
    ensure_replaceable(dest, stage)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftover_temporaries(dest)
    container = None
    try:
        container = make_temporary(dest)
        work = container / dest.name
        work.mkdir(mode=0o755)
        yield work
        if not dest.exists():
            os.replace(work, dest)
        elif not _exchange(work, dest):  # after an exchange, ``work`` holds the old artifact
            os.replace(dest, container / f"{dest.name}.old")
            os.replace(work, dest)
    except BaseException as e:
        if _is_disk_full(e):
            raise _no_space(dest) from None
        raise
    finally:
        if container is not None:
            shutil.rmtree(container, ignore_errors=True)


def write_record(folder: Path, stage: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Writes ``edgeqat.json`` last, after every other file of the artifact, hashing them all."""
    record = {
        "stage": stage,
        "versions": versions(),
        "config": config,
        **extra,
        "files": hash_files(folder),
    }
    write_json_atomic(folder / RECORD, record)
    return record


RECORD_FIELDS = {"stage": str, "config": dict, "files": dict}


def record_problem(record: Any, fields: dict[str, type | tuple[type, ...]] = RECORD_FIELDS) -> str | None:
    """What is wrong with a record's shape (a record edited by hand is checked, not trusted), or None."""
    if not isinstance(record, dict):
        return f"expected an object, got {type(record).__name__}"
    for key, kind in fields.items():
        value = record.get(key)
        if key not in record:
            return f"{key!r} is missing"
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            return f"{key!r} has the wrong type ({type(value).__name__})"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in record.get("files", {}).items()):
        return "'files' must map file names to sha256 strings"
    return None


def read_record(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RECORD
    if not path.is_file():
        raise EdgeqatError(f"{folder} is not an edgeqat artifact (no {RECORD}); run the stage that makes it first")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise EdgeqatError(f"{path} is corrupt ({e}); delete {folder} and run the stage again") from None
    problem = record_problem(record)
    if problem:
        raise EdgeqatError(f"{path} is damaged: {problem}; delete {folder} and run the stage again")
    return record


def verify_files(folder: Path, files: dict[str, str]) -> list[str]:
    """The problems found: missing files, changed files (sha256), and paths escaping the folder."""
    folder = Path(folder).resolve()
    problems = []
    for name, digest in files.items():
        if not name or "\0" in name:
            problems.append(f"{name!r}: not a file name")
            continue
        path = (folder / name).resolve()
        if folder not in path.parents:
            problems.append(f"{name}: path escapes the folder")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: sha256 differs from the record (file changed or truncated)")
    return problems


def is_valid_artifact(folder: Path, stage: str, config: dict[str, Any]) -> bool:
    """True when ``folder`` holds a complete ``stage`` artifact made with the same config."""
    try:
        record = read_record(folder)
    except EdgeqatError:
        return False
    return record.get("stage") == stage and record.get("config") == config and not verify_files(folder, record["files"])
