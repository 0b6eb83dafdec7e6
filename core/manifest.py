"""The bundle manifest: what an app (or `edgeqat check`) needs to trust and run a `.pte`.

A bundle is a folder: ``model.pte``, the tokenizer files, and ``manifest.json``. The manifest is
validated completely against its JSON Schema (schemas/manifest.schema.json: keys, types, ranges, lengths)
and the cross-field rules a schema cannot say (ids below vocab_size, golden sequences within max_seq_len)
before anything else is read, and every file it lists is checked against its sha256 and must stay inside
the bundle folder.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from edgeqat.artifacts import verify_files
from edgeqat.errors import EdgeqatError
from edgeqat.json_file import load_json, schema_problem
from edgeqat.paths import require_folder

MANIFEST = "manifest.json"
FORMAT = "edgeqat-bundle"
FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "manifest.schema.json"
REEXPORT = "re-export the bundle"


@functools.cache
def manifest_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _consistency_problem(data: dict[str, Any]) -> str | None:
    """What the schema cannot say: names that must be listed, ids below the vocabulary, sequences that fit."""
    for key in ("program", "tokenizer"):
        if data[key] not in data["files"]:
            return f"{key} names {data[key]!r} but 'files' does not list it"
    onnx = data.get("onnx") or {}
    for key in ("file", "external_data"):
        if onnx.get(key) and onnx[key] not in data["files"]:
            return f"onnx.{key} names {onnx[key]!r} but 'files' does not list it"
    model = data["model"]
    vocab, max_seq_len = model["vocab_size"], model["max_seq_len"]
    for where, ids in (("model.bos_id", [model["bos_id"]] if model["bos_id"] is not None else []),
                       ("model.eos_ids", model["eos_ids"])):
        if any(i >= vocab for i in ids):
            return f"{where}: {max(ids)} is not below vocab_size {vocab}"
    for i, golden in enumerate(data["golden"]):
        for key in ("prompt_ids", "generated_ids"):
            if max(golden[key]) >= vocab:
                return f"golden[{i}].{key}: {max(golden[key])} is not below vocab_size {vocab}"
        if len(golden["prompt_ids"]) + len(golden["generated_ids"]) > max_seq_len:
            return f"golden[{i}]: {len(golden['prompt_ids'])} prompt and {len(golden['generated_ids'])} generated ids do not fit max_seq_len {max_seq_len}"
    export = data["export"]
    if export["linear_layers_delegated"] > export["linear_layers"]:
        return f"export.linear_layers_delegated ({export['linear_layers_delegated']}) is more than linear_layers ({export['linear_layers']})"
    return None


def validate_manifest(data: Any) -> dict[str, Any]:
    """``data`` if it is a complete, consistent format-1 manifest; else one line naming the first problem."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EdgeqatError(f"not an edgeqat bundle manifest (format is not {FORMAT!r})")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool):
        if version > FORMAT_VERSION:
            raise EdgeqatError(
                f"bundle format version {version} is newer than this edgeqat reads ({FORMAT_VERSION}); upgrade edgeqat"
            )
        if version < 1:
            raise EdgeqatError(f"bundle format version {version} never existed (the first is 1); {REEXPORT}")
    problem = schema_problem(manifest_schema(), data) or _consistency_problem(data)
    if problem:
        raise EdgeqatError(f"manifest {problem}; {REEXPORT}")
    return data


def load_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """The validated manifest of a bundle whose files are all present and unchanged."""
    bundle_dir = require_folder(bundle_dir, "bundle", "give the folder `edgeqat export` wrote")
    path = bundle_dir / MANIFEST
    if not (path.exists() or path.is_symlink()):
        raise EdgeqatError(f"{bundle_dir} has no {MANIFEST}; is it a bundle made by `edgeqat export`?")
    manifest = validate_manifest(load_json(path, "manifest", REEXPORT))
    problems = verify_files(bundle_dir, manifest["files"])
    if problems:
        raise EdgeqatError(f"bundle {bundle_dir} failed verification: {'; '.join(problems)}")
    return manifest
