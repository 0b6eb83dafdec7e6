"""Resumable training: the trainer's intermediate checkpoints, which of them are complete, and resuming.

While `edgeqat train --output OUT` runs, the trainer writes ``OUT.progress/checkpoint-N`` folders (model,
optimizer, scheduler, RNG states, trainer state). transformers writes them in place, file by file, so a
process killed mid-save leaves a partial folder. After every file of a checkpoint is written (on every
rank), edgeqat adds ``edgeqat-complete.json`` to it, atomically; only a checkpoint with that marker is
resumed from, and partial ones are deleted before resuming. ``edgeqat-progress.json`` in the folder records
the config the run was started with, so a checkpoint is never resumed under another config.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from edgeqat.artifacts import write_json_atomic
from edgeqat.errors import EdgeqatError

log = logging.getLogger("edgeqat")
COMPLETE = "edgeqat-complete.json"
PROGRESS = "edgeqat-progress.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def progress_dir(output_dir: Path) -> Path:
    return output_dir.with_name(output_dir.name + ".progress")


def checkpoint_step(folder: Path) -> int:
    return int(_CHECKPOINT.match(folder.name).group(1))


def _checkpoints(progress: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in progress.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return sorted(found)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} then, {b!r} now")
    return out


def ensure_progress_is_ours(output_dir: Path) -> None:
    """Refuses to start when ``OUT.progress`` exists and is not edgeqat's (no readable progress marker)."""
    progress = progress_dir(output_dir)
    if not (progress.exists() or progress.is_symlink()):
        return
    if progress.is_dir() and not progress.is_symlink() and (not any(progress.iterdir()) or _started_with(progress) is not None):
        return
    raise EdgeqatError(
        f"{progress} exists and was not written by edgeqat (it has no readable {PROGRESS}); edgeqat keeps a "
        f"training's progress there and would replace it: move it away or choose another --output (nothing was changed)"
    )


def _started_with(progress: Path) -> dict | None:
    """The config a progress folder's run was started with, from its marker; None without a valid one."""
    try:
        marker = json.loads((progress / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    ours = isinstance(marker, dict) and marker.get("edgeqat") == "train-progress" and isinstance(marker.get("config"), dict)
    return marker["config"] if ours else None


def _remove_progress(progress: Path) -> None:
    if progress.is_dir() and (_started_with(progress) is not None or not any(progress.iterdir())):
        shutil.rmtree(progress, ignore_errors=True)


def start_progress(output_dir: Path, config: dict, resume: bool, is_main: bool) -> Path | None:
    """Prepares ``OUT.progress`` and returns the checkpoint to resume from (None: start from the beginning).

    Without ``resume`` an earlier run's progress is discarded. With it, the newest complete checkpoint of
    a run with the same config is returned; partial checkpoints are removed. A folder without edgeqat's
    marker is never touched (``ensure_progress_is_ours`` refuses it first).
    """
    ensure_progress_is_ours(output_dir)
    progress = progress_dir(output_dir)
    started_with = _started_with(progress) if progress.is_dir() else None
    if progress.exists() and not resume:
        if _checkpoints(progress) and is_main:
            log.warning("discarding the unfinished run in %s (pass --resume to continue it)", progress)
        if is_main:
            _remove_progress(progress)
    if resume and started_with is not None:
        if started_with != config:
            changed = "; ".join(_differences(started_with, config)[:3])
            raise EdgeqatError(
                f"cannot resume {progress}: it was started with another config ({changed}); "
                "run without --resume to start over"
            )
        complete = [(step, p) for step, p in _checkpoints(progress) if (p / COMPLETE).is_file()]
        if is_main:
            for step, p in _checkpoints(progress):
                if (step, p) not in complete:
                    log.warning("removing %s: it was being written when the run stopped", p)
                    shutil.rmtree(p)
        if complete:
            log.info("resuming from %s (step %d)", complete[-1][1], complete[-1][0])
            return complete[-1][1]
        log.info("--resume: %s holds no complete checkpoint; starting from the beginning", progress)
    elif resume:
        log.info("--resume: nothing to resume in %s; starting from the beginning", progress)
    if is_main:
        progress.mkdir(parents=True, exist_ok=True)
        write_json_atomic(progress / PROGRESS, {"edgeqat": "train-progress", "output": output_dir.name, "config": config})
    return None


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class MarkCompleteCheckpoints(TrainerCallback):
    """Marks a checkpoint complete once every rank has written its part of it, and saves none at the last
    step: the final artifact follows at once, and transformers resumed from a checkpoint at max_steps trains
    one step more (a run killed before its artifact would then not end where an uninterrupted one ends)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        barrier()  # other ranks write their RNG states into the same folder
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_json_atomic(folder / COMPLETE, {"step": state.global_step})
        return control


def drop_progress_without_checkpoints(output_dir: Path) -> None:
    """After a failure: a progress folder with no checkpoint holds nothing to resume, so it goes."""
    progress = progress_dir(output_dir)
    if progress.is_dir() and not _checkpoints(progress):
        _remove_progress(progress)


def finish_progress(output_dir: Path) -> None:
    """The final artifact is in place: the intermediate checkpoints are no longer needed."""
    _remove_progress(progress_dir(output_dir))
