"""Which folders edgeqat may replace or delete: only those it can prove it wrote.

A stage's artifact carries a record of its own: ``edgeqat.json`` (train, convert, check, study) or a
bundle's ``manifest.json`` (export), naming the stage or format and listing every file with its sha256.
A folder is edgeqat's to replace when that record is there and everything in the folder is a file the
record lists (or the record itself); a listed file that changed or went missing still leaves the folder
edgeqat's (a damaged artifact is rebuilt), anything unlisted makes it the user's. A progress or
temporary sibling is edgeqat's only when it carries edgeqat's marker file. Everything else is refused
before any work, with the path and the fix, and nothing is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from edgeqat.errors import EdgeqatError

RECORD = "edgeqat.json"
STAGE_RECORDS = {"train": RECORD, "convert": RECORD, "export": "manifest.json", "check": RECORD, "study": RECORD}
TEMPORARY_MARKER = "edgeqat-temporary.json"  # inside a temporary sibling ``.NAME.edgeqat-*.tmp``
SHOWN_ENTRIES = 3


def _listed_files(folder: Path, stage: str) -> set[str] | None:
    """The files the folder's own record lists, or None when it has no record of ``stage`` of edgeqat's."""
    from edgeqat.manifest import FORMAT

    try:
        record = json.loads((folder / STAGE_RECORDS[stage]).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return None
    ours = record.get("format") == FORMAT if stage == "export" else record.get("stage") == stage
    return set(record["files"]) if ours else None


def unlisted_entries(folder: Path, listed: Iterable[str]) -> list[str]:
    """What ``folder`` holds beyond the ``listed`` files (relative POSIX names; folders end with '/')."""
    listed = set(listed)
    parents = {p.as_posix() for name in listed for p in Path(name).parents if p != Path(".")}
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = (here / name).as_posix()
            if rel not in parents or (Path(root) / name).is_symlink():
                found.append(rel + "/")
        dirs[:] = [d for d in dirs if (here / d).as_posix() in parents and not (Path(root) / d).is_symlink()]
        found += [(here / name).as_posix() for name in sorted(files) if (here / name).as_posix() not in listed]
    return sorted(found)


def _shown(entries: list[str]) -> str:
    more = f" and {len(entries) - SHOWN_ENTRIES} more" if len(entries) > SHOWN_ENTRIES else ""
    return ", ".join(entries[:SHOWN_ENTRIES]) + more


def _check_parent_is_a_folder(dest: Path) -> None:
    """The nearest existing ancestor of ``dest`` must be a folder: an output under a file cannot be made."""
    for ancestor in Path(dest).parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise EdgeqatError(f"output {dest} is under {ancestor}, which is a file, not a folder; "
                                   "choose another output folder")
            return


def ensure_replaceable(dest: Path, stage: str) -> None:
    """Refuses an output folder that is not empty and not wholly an earlier output of the same stage."""
    dest = Path(dest)
    _check_parent_is_a_folder(dest)
    if dest.is_symlink():
        raise EdgeqatError(f"output {dest} is a symbolic link; edgeqat replaces only folders it wrote, so give "
                           "the real folder's path or another output folder")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise EdgeqatError(f"output {dest} exists and is a file; choose another output folder")
    if not any(dest.iterdir()):
        return
    listed = _listed_files(dest, stage)
    record = STAGE_RECORDS[stage]
    if listed is None:
        raise EdgeqatError(
            f"output {dest} is not empty and is not an edgeqat {stage} output (it has no {record} of edgeqat's "
            f"{stage} stage); edgeqat replaces only folders it wrote: choose another output folder (nothing was changed)"
        )
    extra = unlisted_entries(dest, listed | {record})
    if extra:
        raise EdgeqatError(
            f"output {dest} holds files edgeqat did not write ({_shown(extra)}); edgeqat replaces only folders it "
            "wrote: move them away or choose another output folder (nothing was changed)"
        )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def ensure_apart(output: Path, inputs: dict[str, str | Path | None]) -> None:
    """Refuses an output folder that is one of the inputs, holds one, or lies inside one."""
    out = Path(output).resolve()
    for what, given in inputs.items():
        if not given:
            continue
        source = Path(given).resolve()
        if out == source:
            raise EdgeqatError(f"the output {output} is the input {what} itself; write to another folder")
        if _inside(source, out):
            raise EdgeqatError(f"the output {output} holds the input {what} ({given}): replacing it would delete "
                               "the input; choose another output folder")
        if source.is_dir() and _inside(out, source):
            raise EdgeqatError(f"the output {output} is inside the input {what} ({given}); choose a folder outside it")


def check_output(dest: Path, stage: str, inputs: dict[str, str | Path | None] | None = None) -> None:
    """Everything about a stage's output folder that can be refused before the stage's work starts."""
    ensure_apart(dest, inputs or {})
    ensure_replaceable(dest, stage)


@contextlib.contextmanager
def removed_if_left_empty(folder: Path) -> Iterator[None]:
    """A folder the block creates (a run's output root) goes again when the block fails and leaves it empty."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


# -- temporary siblings --------------------------------------------------------------------------------


def make_temporary(dest: Path) -> Path:
    """A new, marked temporary sibling of ``dest``: ``.NAME.edgeqat-XXXX.tmp`` holding ``TEMPORARY_MARKER``."""
    container = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.edgeqat-", suffix=".tmp"))
    os.chmod(container, 0o755)  # mkdtemp makes 0700; the artifact inside is meant to be read by others
    # O_EXCL and no rename: a process killed mid-write leaves the marker's name, which is what counts.
    fd = os.open(container / TEMPORARY_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    return container


def _in_use_by_another_process(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # an unreadable marker: its writer was killed while writing it
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftover_temporaries(dest: Path) -> None:
    """Deletes the temporary siblings of ``dest`` that a killed edgeqat left: only those with edgeqat's
    marker, and none that a live edgeqat process on this host is still writing."""
    import glob

    for stale in Path(dest).parent.glob(f".{glob.escape(Path(dest).name)}.edgeqat-*.tmp"):
        marker = stale / TEMPORARY_MARKER
        if not stale.is_symlink() and stale.is_dir() and marker.is_file() and not _in_use_by_another_process(marker):
            shutil.rmtree(stale, ignore_errors=True)
