"""The bundle manifest: what an app (or `edgeqat check`) needs to trust and run a `.pte`.

A bundle is a folder: ``model.pte``, the tokenizer files, and ``manifest.json``. The manifest is
validated against ``MANIFEST_SCHEMA`` (required keys and types) before anything else is read, and every
file it lists is checked against its sha256 and must stay inside the bundle folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeqat.artifacts import verify_files
from edgeqat.errors import EdgeqatError

MANIFEST = "manifest.json"
FORMAT = "edgeqat-bundle"
FORMAT_VERSION = 1

# key -> type (or nested schema). Extra keys are allowed, so newer minor additions stay readable.
MANIFEST_SCHEMA: dict[str, Any] = {
    "format": str,
    "format_version": int,
    "program": str,
    "tokenizer": str,
    "model": {
        "architecture": str,
        "model_type": str,
        "vocab_size": int,
        "bos_id": (int, type(None)),
        "eos_ids": list,
        "max_seq_len": int,
    },
    "quantization": {"mode": str, "scheme": str, "group_size": (int, type(None)), "embedding_bits": (int, type(None))},
    "export": {"method": str, "dynamic_seq_len": bool, "linear_layers": int, "linear_layers_delegated": int},
    "golden": list,
    "versions": dict,
    "files": dict,
}
GOLDEN_SCHEMA: dict[str, Any] = {"prompt": str, "prompt_ids": list, "generated_ids": list, "text": str}


def _check(data: Any, schema: dict[str, Any], where: str) -> None:
    if not isinstance(data, dict):
        raise EdgeqatError(f"manifest {where or 'top level'}: expected an object")
    for key, expected in schema.items():
        path = f"{where}.{key}" if where else key
        if key not in data:
            raise EdgeqatError(f"manifest is missing {path!r}; re-export the bundle")
        if isinstance(expected, dict):
            _check(data[key], expected, path)
        elif not isinstance(data[key], expected) or (expected is int and isinstance(data[key], bool)):
            raise EdgeqatError(f"manifest {path!r} has the wrong type ({type(data[key]).__name__}); re-export the bundle")


def validate_manifest(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EdgeqatError(f"not an edgeqat bundle manifest (format is not {FORMAT!r})")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise EdgeqatError(
            f"bundle format version {version} is newer than this edgeqat reads ({FORMAT_VERSION}); upgrade edgeqat"
        )
    _check(data, MANIFEST_SCHEMA, "")
    for i, golden in enumerate(data["golden"]):
        _check(golden, GOLDEN_SCHEMA, f"golden[{i}]")
    for name in (data["program"], data["tokenizer"]):
        if name not in data["files"]:
            raise EdgeqatError(f"manifest names {name!r} but does not list its sha256 under 'files'")
    return data


def load_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """The validated manifest of a bundle whose files are all present and unchanged."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise EdgeqatError(f"bundle not found: {bundle_dir}")
    if not path.is_file():
        raise EdgeqatError(f"{bundle_dir} has no {MANIFEST}; is it a bundle made by `edgeqat export`?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeqatError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
    manifest = validate_manifest(data)
    problems = verify_files(bundle_dir, manifest["files"])
    if problems:
        raise EdgeqatError(f"bundle {bundle_dir} failed verification: {'; '.join(problems)}")
    return manifest
