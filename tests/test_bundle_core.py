"""The contract between the Python side and the Android app's plain-Kotlin core (android_demo/bundle-core),
tested from both sides with the same files: the vectors below are written from the real bundle of the
``made`` session (its `.pte` run through ExecuTorch's runtime and LLM runner), the Kotlin core's tests read
them (android_demo/bundle-core/src/test/.../ContractTest.kt), and what the Kotlin core writes is read back
by `edgeqat check`. The core is compiled and its JUnit tests run by android_demo/test-jvm.sh.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeqat.artifacts import sha256_file
from edgeqat.cli import main
from edgeqat.errors import EdgeqatError
from edgeqat.generation import greedy
from edgeqat.manifest import MANIFEST, load_bundle
from edgeqat.runtime_check.device_results import load_device_results, validate_device_results
from edgeqat.runtime_check.llm_runner import generate_with_runner
from edgeqat.runtime_check.metrics import prefix_agreement
from edgeqat.runtime_check.pte_program import PteProgram

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).resolve().parent / "data" / "device_results_example.json"


def _edit_manifest(edit):
    def change(bundle: Path) -> None:
        manifest = json.loads((bundle / MANIFEST).read_text())
        edit(manifest)
        (bundle / MANIFEST).write_text(json.dumps(manifest))
    return change


def _flip_a_byte(name: str):
    def change(bundle: Path) -> None:
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (bundle / name).write_bytes(bytes(data))
    return change


def _escape(name: str):
    def change(bundle: Path) -> None:
        outside = bundle.parent / "outside.txt"
        outside.write_text("not the bundle's")
        _edit_manifest(lambda m: m["files"].update({name: sha256_file(outside)}))(bundle)
    return change


def _ids_past_vocab(m: dict) -> None:
    m["golden"][0]["generated_ids"][-1] = m["model"]["vocab_size"]


# name, how the good bundle is damaged, what both sides' one-line error must name
BUNDLE_CASES = [
    ("missing_file", lambda b: (b / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    ("changed_byte", _flip_a_byte("model.pte"), "model.pte: sha256 differs"),
    ("onnx_changed_byte", _flip_a_byte("model.onnx"), "model.onnx: sha256 differs"),
    ("onnx_not_listed", _edit_manifest(lambda m: m["files"].pop("model.onnx")), "onnx.file names 'model.onnx'"),
    ("truncated", lambda b: (b / "model.pte").write_bytes((b / "model.pte").read_bytes()[:-100]), "model.pte: sha256 differs"),
    ("path_escape", _escape("../outside.txt"), "../outside.txt: path escapes the folder"),
    ("future_format_version", _edit_manifest(lambda m: m.update(format_version=2)), "bundle format version 2 is newer"),
    ("golden_id_past_vocab", _edit_manifest(_ids_past_vocab), "golden[0].generated_ids"),
    ("golden_without_ids", _edit_manifest(lambda m: m["golden"][1].update(generated_ids=[])), "golden[1].generated_ids"),
    ("golden_without_prompt", _edit_manifest(lambda m: m["golden"][0].pop("prompt_ids")), "golden[0].prompt_ids is missing"),
    ("sha256_not_hex", _edit_manifest(lambda m: m["files"].update({"model.pte": "X" * 64})), "files.model.pte"),
    ("program_not_listed", _edit_manifest(lambda m: m.update(program="other.pte")), "program names 'other.pte'"),
    ("not_a_manifest", _edit_manifest(lambda m: m.update(format="something-else")), "not an edgeqat bundle manifest"),
    ("not_json", lambda b: (b / MANIFEST).write_text((b / MANIFEST).read_text()[:-10]), "is not valid JSON"),
]

# results files the check refuses: how the example is broken, and the JSON path both sides must name
RESULTS_CASES = [
    (lambda d: d["runs"][0].pop("decode_tokens_per_s"), "runs[0].decode_tokens_per_s is missing"),
    (lambda d: d["runs"][1].update(decode_tokens_per_s="fast"), "runs[1].decode_tokens_per_s"),
    (lambda d: d["app"].update(platform="windows"), "app.platform"),
    (lambda d: d.update(timestamp="2025-11-26 05:30"), "timestamp"),
    (lambda d: d["bundle"].update(program_sha256="ABC"), "bundle.program_sha256"),
    (lambda d: d.update(runs=[]), "runs"),
    (lambda d: d["self_check"][0].update(matched_ids=25), "self_check[0].matched_ids"),
    (lambda d: d["self_check"][0]["generated_ids"].append(1), "self_check[0].generated_ids"),
    (lambda d: d["self_check"][2].pop("generated_ids"), "self_check[2].generated_ids is missing"),
    (lambda d: d.update(schema_version=0), "schema_version: 2 was expected"),
]


@pytest.fixture(scope="session")
def junit() -> list[str]:
    """The command that runs bundle-core's JUnit tests (compiled, with what it needs installed, by test-jvm.sh)."""
    done = subprocess.run(["bash", str(ROOT / "android_demo" / "test-jvm.sh"), "--build-only"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    launcher, classpath = done.stdout.split()
    return ["-jar", launcher, "--class-path", classpath, "--disable-banner", "--details=tree", "--fail-if-no-tests"]


def _recorded_forward(forward, calls: list[dict], logits: list[np.ndarray]):
    def recording(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = forward(tokens, positions)
        flat = out.detach().to(torch.float32).reshape(-1).numpy()
        calls.append({"input_ids": tokens[0].tolist(), "cache_position": positions.tolist(),
                      "offset": sum(len(x) for x in logits), "count": len(flat)})
        logits.append(flat)
        return out
    return recording


def _write_trace(folder: Path, golden: list[dict], max_seq_len: int, forward) -> list[list[int]]:
    """Each golden entry decoded as the exporter decodes (greedy), every forward call and its logits recorded."""
    folder.mkdir(parents=True)
    entries, logits = [], []
    for g in golden:
        calls: list[dict] = []
        ids = greedy(_recorded_forward(forward, calls, logits), g["prompt_ids"], len(g["generated_ids"]), max_seq_len)
        entries.append({"prompt": g["prompt"], "calls": calls, "expected_generated_ids": ids,
                        "expected_matched_ids": prefix_agreement(ids, g["generated_ids"])})
    np.concatenate(logits).astype("<f4").tofile(folder / "logits.f32")
    (folder / "trace.json").write_text(json.dumps({"entries": entries}))
    return [e["expected_generated_ids"] for e in entries]


def _replay_forward(folder: Path):
    """forward() answered by a recorded trace, call by call (what the Kotlin test's Replay does)."""
    trace = json.loads((folder / "trace.json").read_text())
    logits = np.fromfile(folder / "logits.f32", dtype="<f4")
    calls = iter(c for e in trace["entries"] for c in e["calls"])

    def forward(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        call = next(calls)
        rows = torch.from_numpy(logits[call["offset"]: call["offset"] + call["count"]].copy())
        return rows.reshape(1, len(call["input_ids"]), -1)
    return forward


def _tamper(trace: Path, tampered: Path, golden: list[dict], max_seq_len: int) -> None:
    """A copy of the trace in which one recorded row of the first entry picks another token."""
    shutil.copytree(trace, tampered)
    data = json.loads((trace / "trace.json").read_text())
    logits = np.fromfile(trace / "logits.f32", dtype="<f4")
    calls = data["entries"][0]["calls"]
    call = calls[min(2, len(calls) - 1)]
    vocab = call["count"] // len(call["input_ids"])
    row = logits[call["offset"] + call["count"] - vocab: call["offset"] + call["count"]]
    row[(int(row.argmax()) + 1) % vocab] = row.max() + 1.0
    logits.tofile(tampered / "logits.f32")
    forward = _replay_forward(tampered)
    for entry, g in zip(data["entries"], golden):  # the ids the exporter's own greedy decodes from these logits
        entry["expected_generated_ids"] = greedy(forward, g["prompt_ids"], len(g["generated_ids"]), max_seq_len)
        entry["expected_matched_ids"] = prefix_agreement(entry["expected_generated_ids"], g["generated_ids"])
    (tampered / "trace.json").write_text(json.dumps(data))


# 40 prompt tokens + 16 new fit the 64-token cache. The runner's clock counts whole milliseconds, and the golden
# prompt alone (5 tokens) prefilled in under one on a fast host: the Kotlin core rightly refuses a 0 ms phase.
RUNNER_PROMPT = ("A wise son maketh a glad father: but a foolish son is the heaviness of his mother. "
                 "Treasures of wickedness profit nothing: but righteousness delivereth from death.")


def _runner_stats_with_durations(bundle: Path, manifest: dict, attempts: int = 5) -> str:
    """The LLM runner's stats JSON of a real run whose prefill and decode each took at least a clock tick."""
    for _ in range(attempts):
        stats = json.loads(generate_with_runner(bundle, manifest, RUNNER_PROMPT, 16).stats_json)
        if stats["prompt_eval_end_ms"] > stats["inference_start_ms"] and stats["inference_end_ms"] > stats["prompt_eval_end_ms"]:
            return json.dumps(stats)
    raise AssertionError(f"the runner timed a phase at 0 ms in {attempts} runs: {stats}")


@pytest.fixture(scope="session")
def vectors(made, tmp_path_factory) -> Path:
    """The contract's files, from the real bundle of the ``made`` session."""
    root = tmp_path_factory.mktemp("bundle-core-vectors")
    good = root / "bundles" / "good"
    shutil.copytree(made["bundle"], good)
    cases = [{"name": "good", "accepted": True, "names": ""}]
    for name, damage, names in BUNDLE_CASES:
        shutil.copytree(good, root / "bundles" / name)
        damage(root / "bundles" / name)
        cases.append({"name": name, "accepted": False, "names": names})
    (root / "bundle_cases.json").write_text(json.dumps({"cases": cases}))

    manifest = load_bundle(good)
    max_seq_len = manifest["model"]["max_seq_len"]
    _write_trace(root / "trace", manifest["golden"], max_seq_len, PteProgram(good, manifest).forward)
    _tamper(root / "trace", root / "trace_tampered", manifest["golden"], max_seq_len)
    (root / "runner_stats.json").write_text(_runner_stats_with_durations(good, manifest))

    example = json.loads(EXAMPLE.read_text())
    results = root / "results_cases"
    results.mkdir()
    (results / "good.json").write_text(json.dumps(example))
    listed = []
    for i, (breakage, names) in enumerate(RESULTS_CASES):
        broken = copy.deepcopy(example)
        breakage(broken)
        (results / f"case{i}.json").write_text(json.dumps(broken))
        listed.append({"file": f"case{i}.json", "names": names})
    (results / "cases.json").write_text(json.dumps({"cases": listed}))
    return root


@pytest.mark.parametrize("name, damage, names", BUNDLE_CASES, ids=[c[0] for c in BUNDLE_CASES])
def test_the_python_side_refuses_each_damaged_bundle(vectors, name, damage, names):
    with pytest.raises(EdgeqatError) as info:
        load_bundle(vectors / "bundles" / name)
    assert names in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("breakage, names", RESULTS_CASES)
def test_the_python_side_refuses_each_wrong_results_file(breakage, names):
    broken = copy.deepcopy(json.loads(EXAMPLE.read_text()))
    breakage(broken)
    with pytest.raises(EdgeqatError) as info:
        validate_device_results(broken)
    assert names in str(info.value)


def test_the_trace_is_the_programs_own_decoding(vectors, made):
    """The recorded logits replay to the ids the .pte decoded, and those are the golden ids `check` measured."""
    manifest = load_bundle(vectors / "bundles" / "good")
    trace = json.loads((vectors / "trace" / "trace.json").read_text())
    forward = _replay_forward(vectors / "trace")
    for entry, g in zip(trace["entries"], manifest["golden"]):
        assert greedy(forward, g["prompt_ids"], len(g["generated_ids"]), manifest["model"]["max_seq_len"]) == entry["expected_generated_ids"]
    tampered = json.loads((vectors / "trace_tampered" / "trace.json").read_text())["entries"][0]
    assert tampered["expected_generated_ids"] != trace["entries"][0]["expected_generated_ids"]


def test_the_kotlin_core_keeps_the_contract_and_its_results_file_is_read_by_check(junit, vectors, made, tmp_path):
    done = subprocess.run(["java", f"-Dedgeqat.vectors={vectors}", *junit, "--select-class", "org.edgeqat.bundlecore.ContractTest"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 tests successful" in done.stdout and "0 tests aborted" in done.stdout, done.stdout[-2000:]

    # The file the Kotlin core wrote for the real bundle: valid, of this bundle, and its numbers are the stats'.
    written = vectors / "out" / "device_results.json"
    bundle = made["bundle"]
    manifest = load_bundle(bundle)
    hashes = sha256_file(bundle / MANIFEST), sha256_file(bundle / manifest["program"])
    results = load_device_results(written, *hashes, manifest["golden"])
    stats = json.loads((vectors / "runner_stats.json").read_text())
    run = results["runs"][0]
    assert run["prefill_tokens_per_s"] == pytest.approx(
        stats["prompt_tokens"] / ((stats["prompt_eval_end_ms"] - stats["inference_start_ms"]) / 1000))
    assert run["decode_tokens_per_s"] == pytest.approx(
        stats["generated_tokens"] / ((stats["inference_end_ms"] - stats["prompt_eval_end_ms"]) / 1000))
    assert run["load_time_ms"] == stats["model_load_end_ms"] - stats["model_load_start_ms"]
    assert results["runs"][1]["load_time_ms"] is None and run["peak_memory_mib"] > 0
    trace = json.loads((vectors / "trace" / "trace.json").read_text())
    assert [e["generated_ids"] for e in results["self_check"]] == [e["expected_generated_ids"] for e in trace["entries"]]

    # ... and `edgeqat check --device-results` puts it beside the estimates (the round trip).
    report_dir = tmp_path / "report"
    assert main(["check", str(bundle), "--output", str(report_dir), "--device-results", str(written),
                 "--min-golden-agreement", "0"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    measured = [row["measured"] for row in report["device_estimates"]["devices"] if row.get("measured")]
    assert len(measured) == 1 and measured[0]["device"] == "Google Pixel 8 Pro"
    matched = sum(e["expected_matched_ids"] for e in trace["entries"])
    assert measured[0]["golden_tokens_matched"] == matched
    assert measured[0]["decode_tokens_per_s"] == pytest.approx(results["runs"][0]["decode_tokens_per_s"])

    # A results file the Kotlin core would not write is refused by the check too.
    wrong = json.loads(written.read_text())
    wrong["self_check"][0]["matched_ids"] = len(wrong["self_check"][0]["generated_ids"]) + 1
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(EdgeqatError, match=r"self_check\[0\]\.matched_ids"):
        load_device_results(tmp_path / "wrong.json", *hashes, manifest["golden"])


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_the_manifest_is_portable(made):
    """No absolute path of the exporting machine: the app (and a bundle moved alone) must not need one."""
    text = (made["bundle"] / MANIFEST).read_text()
    assert str(made["bundle"].parent) not in text
    assert not [s for s in _strings(json.loads(text)) if Path(s).is_absolute() or s.startswith("~")]
