"""On-device results files: the schema, loading with one-line errors, and attaching them to estimates."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from edgeqat.errors import EdgeqatError
from edgeqat.runtime_check.device_estimate import estimate_devices
from edgeqat.runtime_check.device_profiles import BUILTIN_PROFILES
from edgeqat.runtime_check.device_results import (
    attach_measured,
    device_results_schema,
    load_device_results,
    validate_device_results,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).resolve().parent / "data" / "device_results_example.json"
EXAMPLE_V1 = Path(__file__).resolve().parent / "data" / "device_results_example_v1.json"
MIB = 1 << 20


@pytest.fixture
def example() -> dict:
    return json.loads(EXAMPLE.read_text())


def hashes(data: dict) -> tuple[str, str]:
    return data["bundle"]["manifest_sha256"], data["bundle"]["program_sha256"]


def write(tmp_path: Path, data: dict, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_the_schema_is_valid_draft_2020_12():
    schema = device_results_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_the_example_loads(example):
    assert load_device_results(EXAMPLE, *hashes(example)) == example


def test_the_docs_show_the_example_file(example):
    docs = (ROOT / "docs" / "device_results.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", docs, re.S)
    assert json.loads(blocks[-1]) == example


def test_extra_keys_are_ignored(example, tmp_path):
    example["device"]["build_fingerprint"] = "google/husky/..."
    assert load_device_results(write(tmp_path, example), *hashes(example))["device"]["build_fingerprint"]


BROKEN = [
    (lambda d: d["runs"][0].pop("decode_tokens_per_s"), r"runs\[0\]\.decode_tokens_per_s is missing"),
    (lambda d: d.pop("timestamp"), "timestamp is missing"),
    (lambda d: d["runs"][1].update(decode_tokens_per_s="fast"), r"runs\[1\]\.decode_tokens_per_s: 'fast' is not of type 'number'"),
    (lambda d: d["runs"][0].update(prompt_tokens=4.5), r"runs\[0\]\.prompt_tokens: 4\.5 is not of type 'integer'"),
    (lambda d: d["runs"][0].update(decode_tokens_per_s=0), r"runs\[0\]\.decode_tokens_per_s: 0 is less than or equal"),
    (lambda d: d["app"].update(platform="windows"), "app.platform: 'windows' is not one of"),
    (lambda d: d.update(timestamp="2025-11-26 05:30"), "timestamp: '2025-11-26 05:30' is not an RFC 3339 time"),
    (lambda d: d["bundle"].update(program_sha256="ABC"), "bundle.program_sha256: 'ABC' is not a sha256"),
    (lambda d: d["device"].update(soc=7), r"device\.soc: 7 is not of type 'string', 'null'"),
    (lambda d: d.update(runs=[]), "runs: .* should be non-empty"),
    (lambda d: d["self_check"][0].update(matched_ids=25), r"self_check\[0\]\.matched_ids \(25\) is more than the 24 generated_ids"),
    (lambda d: d["self_check"][0]["generated_ids"].append(7), r"self_check\[0\]\.generated_ids holds 25 ids, more than total_tokens \(24\)"),
    (lambda d: d["self_check"][0]["generated_ids"].append(-1), r"self_check\[0\]\.generated_ids\[24\]: -1 is less than the minimum of 0"),
    (lambda d: d["self_check"][1].pop("matched_ids"), r"self_check\[1\]\.matched_ids is missing"),
    (lambda d: d.update(schema_version=0), "schema_version: 2 was expected"),
    (lambda d: d.update(schema_version=3), "schema_version 3 is newer than this edgeqat reads"),
    (lambda d: d.clear() or d.update(data=[]), "schema_version is missing"),
]


@pytest.mark.parametrize("breakage, message", BROKEN)
def test_broken_files_are_one_line_errors_naming_the_json_path(example, tmp_path, breakage, message):
    broken = copy.deepcopy(example)
    breakage(broken)
    path = write(tmp_path, broken)
    with pytest.raises(EdgeqatError, match=message) as info:
        load_device_results(path, *hashes(example))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_version_1_files_stay_readable():
    v1 = json.loads(EXAMPLE_V1.read_text())
    assert load_device_results(EXAMPLE_V1, *hashes(v1)) == v1
    v1["self_check"][0]["matched_tokens"] = 25
    with pytest.raises(EdgeqatError, match=r"self_check\[0\]\.matched_tokens \(25\) is more than total_tokens \(24\)"):
        validate_device_results(v1)
    v1["self_check"][0].pop("matched_tokens")  # a version-1 file is held to version 1's schema
    with pytest.raises(EdgeqatError, match=r"self_check\[0\]\.matched_tokens is missing"):
        validate_device_results(v1)


def golden_of(data: dict) -> list[dict]:
    """A bundle's golden entries for which the example's self-check is right."""
    golden = []
    for entry in data["self_check"]:
        ids = list(entry["generated_ids"])
        ids[entry["matched_ids"]:] = [(i + 1) % 2048 for i in ids[entry["matched_ids"]:]]
        golden.append({"prompt": entry["prompt"], "prompt_ids": [5], "generated_ids": ids, "text": "..."})
    return golden


@pytest.mark.parametrize("breakage, message", [
    (lambda g: g.pop(), "self_check has 3 entries but the bundle has 2 golden prompts"),
    (lambda g: g[1].update(prompt="other"), r"self_check\[1\]\.prompt is not the bundle's golden\[1\]\.prompt"),
    (lambda g: g[2]["generated_ids"].pop(), r"self_check\[2\]\.total_tokens is 24, the bundle's golden\[2\] has 23"),
    (lambda g: g[0]["generated_ids"].__setitem__(13, g[0]["generated_ids"][13] - 1),
     r"self_check\[0\]\.matched_ids is 13 but its generated_ids agree with the golden ids for 14"),
])
def test_the_self_check_must_be_of_the_bundles_golden_ids(example, breakage, message):
    golden = golden_of(example)
    assert load_device_results(EXAMPLE, *hashes(example), golden) == example
    breakage(golden)
    with pytest.raises(EdgeqatError, match=message):
        load_device_results(EXAMPLE, *hashes(example), golden)


def test_results_of_another_bundle_are_refused(example):
    manifest, program = hashes(example)
    with pytest.raises(EdgeqatError, match="are for another bundle .*bundle.manifest_sha256"):
        load_device_results(EXAMPLE, "0" * 64, program)
    with pytest.raises(EdgeqatError, match="are for another bundle .*bundle.program_sha256"):
        load_device_results(EXAMPLE, manifest, "f" * 64)
    assert load_device_results(EXAMPLE, manifest.upper(), program.upper())  # hex case does not matter


def test_unreadable_files(tmp_path, example):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,')
    with pytest.raises(EdgeqatError, match=r"is not valid JSON \(line 1"):
        load_device_results(bad, *hashes(example))
    with pytest.raises(EdgeqatError, match="device results file not found"):
        load_device_results(tmp_path / "missing.json", *hashes(example))
    with pytest.raises(EdgeqatError, match="the top level: .* is not of type 'object'"):
        validate_device_results([1, 2])


# --- attaching results to the estimates ------------------------------------------------------------


@pytest.fixture
def estimates() -> dict:
    return estimate_devices(100 * MIB, 20.0, 10.0, list(BUILTIN_PROFILES), threads=4, host_cache_bytes=32 * MIB)


def as_device(example: dict, manufacturer: str, model: str, decode: float) -> dict:
    result = copy.deepcopy(example)
    result["device"].update(manufacturer=manufacturer, model=model)
    for run in result["runs"]:
        run["decode_tokens_per_s"] = decode
    return result


def test_a_matching_device_fills_its_row(estimates, example):
    before = copy.deepcopy(estimates)
    out = attach_measured(estimates, [example])
    assert estimates == before  # the input is left alone
    assert len(out["devices"]) == len(BUILTIN_PROFILES)
    pixel = next(r for r in out["devices"] if r["name"] == "Google Pixel 8 Pro")
    m = pixel["measured"]
    assert m["label"] == "measured" and m["device"] == "Google Pixel 8 Pro" and m["platform"] == "android"
    assert m["runs"] == 3 and m["threads"] == 4
    assert m["decode_tokens_per_s"] == 239.4  # median of 236.2, 241.9, 239.4
    assert m["prefill_tokens_per_s"] == 580.3
    assert m["peak_memory_mib"] == 58.9 and m["load_time_ms"] == 42.0
    assert (m["golden_tokens_matched"], m["golden_tokens"]) == (61, 72)
    assert m["golden_agreement"] == pytest.approx(61 / 72)
    assert m["measured_over_estimate"] == pytest.approx(239.4 / pixel["tokens_per_s"])
    assert pixel["tokens_per_s"] == before["devices"][0]["tokens_per_s"]  # the estimate stays beside it
    others = [r for r in out["devices"] if r["name"] != "Google Pixel 8 Pro"]
    assert all(r["measured"] is None for r in others)


@pytest.mark.parametrize(
    "manufacturer, model, profile",
    [
        ("Google", "PIXEL 8  pro", "Google Pixel 8 Pro"),  # case and spacing
        ("Google", "husky", "Google Pixel 8 Pro"),  # codename alias
        ("Apple", "iPhone16,1", "Apple iPhone 15 Pro"),  # iOS hardware identifier
        ("samsung", "SM-S921U", "Samsung Galaxy S24 (Snapdragon 8 Gen 3)"),
        ("Raspberry", "Pi 5", "Raspberry Pi 5"),  # manufacturer + model is the profile's name
    ],
)
def test_device_names_match_profiles_by_name_or_alias(estimates, example, manufacturer, model, profile):
    out = attach_measured(estimates, [as_device(example, manufacturer, model, 100.0)])
    filled = [r["name"] for r in out["devices"] if r["measured"]]
    assert filled == [profile]


def test_an_unknown_device_becomes_a_measured_only_row(estimates, example):
    exynos = as_device(example, "samsung", "SM-S921B", 80.0)  # the Exynos S24: not the Snapdragon profile
    out = attach_measured(estimates, [exynos])
    assert len(out["devices"]) == len(BUILTIN_PROFILES) + 1
    row = out["devices"][-1]
    assert row["name"] == "samsung SM-S921B" and row["label"] == "measured"
    assert row["tokens_per_s"] is None and row["confidence"] is None and "no device profile" in row["why"]
    assert row["measured"]["decode_tokens_per_s"] == 80.0 and row["measured"]["measured_over_estimate"] is None
    assert row["cores"] == 9 and row["ram_gib"] == 12.0
    assert set(row) == set(estimates["devices"][0])  # the same columns as the estimated rows


def test_two_results_for_one_device_get_a_row_each(estimates, example):
    second = as_device(example, "Google", "Pixel 8 Pro", 150.0)
    second["settings"]["threads"] = 2
    out = attach_measured(estimates, [example, second])
    pixels = [r for r in out["devices"] if r["name"] == "Google Pixel 8 Pro"]
    assert [(r["measured"]["threads"], r["measured"]["decode_tokens_per_s"]) for r in pixels] == [(4, 239.4), (2, 150.0)]
    assert len(out["devices"]) == len(BUILTIN_PROFILES) + 1


def test_no_results_leave_the_estimates_as_they_are(estimates):
    assert attach_measured(estimates, []) == estimates
