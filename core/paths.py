"""Where the embedded defaults live, and how a model or dataset name resolves to something loadable."""

from __future__ import annotations

import os
from pathlib import Path

from edgeqat.errors import EdgeqatError

DEFAULT = "default"  # names the embedded model / dataset shipped in edgeqat/assets
ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default_model"
DEFAULT_TRAIN_DATA = ASSETS / "data" / "finetune.jsonl"
DEFAULT_EVAL_DATA = ASSETS / "data" / "heldout.jsonl"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or Path(name).suffix != ""


def require_folder(path: str | Path, what: str, fix: str = "") -> Path:
    """``path`` as an existing folder; a missing path and a file are told apart."""
    path = Path(path).expanduser()
    hint = f"; {fix}" if fix else ""
    if not path.exists():
        raise EdgeqatError(f"{what} not found: {path}{hint}")
    if not path.is_dir():
        raise EdgeqatError(f"{what} {path} is a file, not a folder{hint}")
    return path


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing regular file; a missing path and a folder are told apart."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeqatError(f"{what} not found: {path}")
    if not path.is_file():
        raise EdgeqatError(f"{what} {path} is a folder, not a file; give the file's path")
    return path


def resolve_source(name: str, default: Path, what: str, folder_only: bool = False) -> str:
    """A local path (checked to exist, and to be a folder when ``folder_only``) or a hub id, passed on as is;
    "default" is the embedded one."""
    if name == DEFAULT:
        return str(default)
    path = Path(name).expanduser()
    if path.exists():
        if folder_only and not path.is_dir():
            raise EdgeqatError(f"{what} {name} is a file; give the model's folder (the one with config.json) or a hub id")
        return str(path)
    if _looks_like_path(name):
        raise EdgeqatError(f"{what} not found: {name} (give an existing local path, or a hub id like org/name)")
    return name


def local_path(name: str) -> Path | None:
    """The local file or folder a model or dataset name refers to, or None for the embedded one or a hub id."""
    if name == DEFAULT:
        return None
    path = Path(name).expanduser()
    return path if path.exists() else None


def relative_path(path: str | Path, start: str | Path) -> str:
    """``path`` relative to the folder ``start`` (both resolved), as artifacts record the folders they point at."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def portable_name(name: str | None, artifact_dir: str | Path) -> str | None:
    """How an artifact records a model or dataset it was made from: a local path relative to the artifact's
    folder (an artifact holds no path of the machine that made it), a hub id or "default" as given."""
    path = local_path(name) if name else None
    return relative_path(path, artifact_dir) if path is not None else name


def portable_train_config(train: dict, artifact_dir: str | Path) -> dict:
    """A train config as a dict, with its local model, dataset and teacher paths relative to ``artifact_dir``."""
    return {**train, **{key: portable_name(train[key], artifact_dir) for key in ("model", "dataset", "teacher")}}


def portable_config(config: dict, artifact_dir: str | Path) -> dict:
    """A run config as a dict (config.to_dict), with its local paths made relative to ``artifact_dir``."""
    return {**config, "output_dir": relative_path(config["output_dir"], artifact_dir),
            "train": portable_train_config(config["train"], artifact_dir),
            "check": {**config["check"], "eval_dataset": portable_name(config["check"]["eval_dataset"], artifact_dir)}}
