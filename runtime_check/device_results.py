"""Benchmark results from the Android and iOS demo apps: validated, tied to one bundle, and set beside
the estimates (`edgeqat check --device-results FILE`). The format is schemas/device_results.schema.json
(version 2: the golden self-check by token ids; version 1, schemas/device_results_v1.schema.json, compared
text and is still read), explained for app developers in docs/device_results.md.
"""

from __future__ import annotations

import copy
import functools
import json
import statistics
from pathlib import Path
from typing import Any, Iterable

from edgeqat.errors import EdgeqatError
from edgeqat.json_file import load_json, schema_problem
from edgeqat.runtime_check.device_profiles import normalize_name
from edgeqat.runtime_check.metrics import prefix_agreement

SCHEMAS = Path(__file__).resolve().parent / "schemas"
SCHEMA_PATHS = {1: SCHEMAS / "device_results_v1.schema.json", 2: SCHEMAS / "device_results.schema.json"}
SCHEMA_VERSION = 2
FORMAT_DOC = "docs/device_results.md"


@functools.cache
def device_results_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    return json.loads(SCHEMA_PATHS[version].read_text())


def _consistency_problem(data: dict[str, Any]) -> str | None:
    """What the schema cannot say: counts that contradict each other."""
    for i, entry in enumerate(data["self_check"]):
        if data["schema_version"] == 1:
            if entry["matched_tokens"] > entry["total_tokens"]:
                return f"self_check[{i}].matched_tokens ({entry['matched_tokens']}) is more than total_tokens ({entry['total_tokens']})"
            continue
        generated, total, matched = len(entry["generated_ids"]), entry["total_tokens"], entry["matched_ids"]
        if generated > total:
            return f"self_check[{i}].generated_ids holds {generated} ids, more than total_tokens ({total})"
        if matched > generated:
            return f"self_check[{i}].matched_ids ({matched}) is more than the {generated} generated_ids"
    return None


def _golden_problem(data: dict[str, Any], golden: list[dict[str, Any]]) -> str | None:
    """A version-2 self-check must be the bundle's golden prompts, in order, with matched_ids that its ids give."""
    entries = data["self_check"]
    if len(entries) != len(golden):
        return f"self_check has {len(entries)} entries but the bundle has {len(golden)} golden prompts"
    for i, (entry, g) in enumerate(zip(entries, golden)):
        if entry["prompt"] != g["prompt"]:
            return f"self_check[{i}].prompt is not the bundle's golden[{i}].prompt"
        if entry["total_tokens"] != len(g["generated_ids"]):
            return f"self_check[{i}].total_tokens is {entry['total_tokens']}, the bundle's golden[{i}] has {len(g['generated_ids'])}"
        agreed = prefix_agreement(entry["generated_ids"], g["generated_ids"])
        if entry["matched_ids"] != agreed:
            return f"self_check[{i}].matched_ids is {entry['matched_ids']} but its generated_ids agree with the golden ids for {agreed}"
    return None


def validate_device_results(data: Any, where: str = "device results") -> dict[str, Any]:
    """``data`` if it is a valid results document; else one-line EdgeqatError naming the JSON path."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise EdgeqatError(
            f"{where}: schema_version {version} is newer than this edgeqat reads ({SCHEMA_VERSION}); upgrade edgeqat"
        )
    if isinstance(version, int) and not isinstance(version, bool) and version in SCHEMA_PATHS:
        schema = device_results_schema(version)
    else:
        schema = device_results_schema()  # says what schema_version must be
    problem = schema_problem(schema, data) or _consistency_problem(data)
    if problem:
        raise EdgeqatError(f"{where}: {problem}; fix what the app writes (format: {FORMAT_DOC})")
    return data


def load_device_results(path: str | Path, manifest_sha256: str, program_sha256: str,
                        golden: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The validated results file at ``path``, which must be of the bundle with these sha256s (and, given the
    bundle's ``golden`` entries, a version-2 self-check of exactly those)."""
    path = Path(path)
    where = f"device results {path}"
    data = load_json(path, "device results file", "the apps write UTF-8 JSON")
    validate_device_results(data, where)
    for key, expected in (("manifest_sha256", manifest_sha256), ("program_sha256", program_sha256)):
        found = data["bundle"][key]
        if found != expected.lower():
            raise EdgeqatError(
                f"{where} are for another bundle (bundle.{key} is {found[:12]}..., this bundle's is "
                f"{expected[:12]}...); run the app with this bundle, or check the bundle they came from"
            )
    problem = _golden_problem(data, golden) if golden is not None and data["schema_version"] >= 2 else None
    if problem:
        raise EdgeqatError(f"{where}: {problem}; fix what the app writes (format: {FORMAT_DOC})")
    return data


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _maximum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def measured_summary(result: dict[str, Any], estimate_tokens_per_s: float | None) -> dict[str, Any]:
    """One results file as a device row's "measured": medians over its runs, the golden self-check."""
    runs, golden = result["runs"], result["self_check"]
    decode = _median(r["decode_tokens_per_s"] for r in runs)
    matched_key = "matched_tokens" if result["schema_version"] == 1 else "matched_ids"
    matched = sum(g[matched_key] for g in golden)
    total = sum(g["total_tokens"] for g in golden)
    device = result["device"]
    return {
        "label": "measured",
        "device": f"{device['manufacturer']} {device['model']}",
        "soc": device["soc"],
        "os_version": device["os_version"],
        "platform": result["app"]["platform"],
        "app_version": result["app"]["app_version"],
        "executorch_version": result["app"]["executorch_version"],
        "threads": result["settings"]["threads"],
        "backend": result["settings"]["backend"],
        "timestamp": result["timestamp"],
        "runs": len(runs),
        "decode_tokens_per_s": decode,
        "prefill_tokens_per_s": _median(r["prefill_tokens_per_s"] for r in runs),
        "time_to_first_token_ms": _median(r["time_to_first_token_ms"] for r in runs),
        "peak_memory_mib": _maximum(r["peak_memory_mib"] for r in runs),
        "load_time_ms": _maximum(r["load_time_ms"] for r in runs),  # the cold load, when one run had it
        "golden_tokens_matched": matched,
        "golden_tokens": total,
        "golden_agreement": matched / total if total else None,
        "measured_over_estimate": decode / estimate_tokens_per_s if estimate_tokens_per_s else None,
    }


def _row_for(rows: list[dict[str, Any]], device: dict[str, Any]) -> int | None:
    """The row of the profile whose name or an alias is the device's model (or manufacturer + model)."""
    reported = {normalize_name(device["model"]), normalize_name(f"{device['manufacturer']} {device['model']}")}
    for i, row in enumerate(rows):
        if row.get("label") == "estimate" and reported & {normalize_name(n) for n in [row["name"], *row.get("aliases", [])]}:
            return i
    return None


def _unmatched_row(result: dict[str, Any]) -> dict[str, Any]:
    """A device no profile describes: measured only (without its bandwidth there is nothing to scale)."""
    device = result["device"]
    name = f"{device['manufacturer']} {device['model']}"
    return {
        "name": name,
        "soc": device["soc"],
        "label": "measured",
        "tokens_per_s": None,
        "bandwidth_bound_tokens_per_s": None,
        "confidence": None,
        "why": f"no device profile matches {device['model']!r}; add one (with its bandwidth) to estimate it",
        "memory_bandwidth_gb_s": None,
        "usable_bandwidth_gb_s": None,
        "bandwidth_basis": None,
        "big_cores": None,
        "cores": device["cpu_cores"],
        "ram_gib": round(device["ram_bytes"] / (1 << 30), 1),
        "source": None,
        "aliases": [],
        "measured": measured_summary(result, None),
    }


def attach_measured(estimates: dict[str, Any], results_list: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of ``estimates`` (estimate_devices' dict) with each validated results file beside its row.

    A result whose device.model (or "manufacturer model") is a profile's name or alias, ignoring case
    and spacing, fills that row's "measured"; a second result for the same profile gets a copy of the
    row of its own. A device no profile matches becomes a row of its own with the estimate fields null.
    """
    out = copy.deepcopy(estimates)
    rows: list[dict[str, Any]] = out["devices"]
    matched: dict[int, list[dict[str, Any]]] = {}
    unmatched = []
    for result in results_list:
        i = _row_for(rows, result["device"])
        if i is None:
            unmatched.append(result)
        else:
            matched.setdefault(i, []).append(result)
    devices = []
    for i, row in enumerate(rows):
        for result in matched.get(i, [None]):
            if result is None:
                devices.append(row)
            else:
                devices.append({**copy.deepcopy(row), "measured": measured_summary(result, row["tokens_per_s"])})
    out["devices"] = devices + [_unmatched_row(r) for r in unmatched]
    return out
