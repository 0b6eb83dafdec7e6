"""Where the embedded defaults live, and how a model or dataset name resolves to something loadable."""

from __future__ import annotations

from pathlib import Path

from edgeqat.config import DEFAULT
from edgeqat.errors import EdgeqatError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default_model"
DEFAULT_TRAIN_DATA = ASSETS / "data" / "finetune.jsonl"
DEFAULT_EVAL_DATA = ASSETS / "data" / "heldout.jsonl"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or Path(name).suffix != ""


def resolve_source(name: str, default: Path, what: str) -> str:
    """A local path (checked to exist) or a hub id, passed on as is; "default" is the embedded one."""
    if name == DEFAULT:
        return str(default)
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _looks_like_path(name):
        raise EdgeqatError(f"{what} not found: {name} (give an existing local path, or a hub id like org/name)")
    return name
