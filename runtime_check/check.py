"""`edgeqat check BUNDLE`: is the `.pte` still the model that was trained, and how fast will it be?

Runs the bundle's `.pte` through ExecuTorch (its forward method for logits, and the C++ LLM runner the
Android and iOS libraries wrap for text and timing) and compares it with its references: the eager
converted model on the CPU, and on a GPU when there is one the converted and the unquantized model.
Times the `.pte` with a phone's thread count, estimates decode speed on device profiles, takes in results
the demo apps measured, and when a gate fails compares every layer with eager to name where it broke.
Writes report.json (docs/check_report.md), report.md and report.html. Exits non-zero (CheckFailed) when a
threshold fails.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from pathlib import Path

import torch

from edgeqat.artifacts import atomic_dir, sha256_file, versions, write_json_atomic, write_record, write_text_atomic
from edgeqat.config import CheckConfig, to_dict
from edgeqat.errors import CheckFailed
from edgeqat.export.rope import head_dim_of
from edgeqat.generation import prompt_ids
from edgeqat.manifest import MANIFEST, load_bundle
from edgeqat.ownership import check_output
from edgeqat.paths import DEFAULT_EVAL_DATA, relative_path
from edgeqat.runtime_check import latency, metrics
from edgeqat.runtime_check.comparison import compare_on_windows, greedy_side_by_side
from edgeqat.runtime_check.gates import gate_rows, replay_golden
from edgeqat.runtime_check.llm_runner import generate_with_runner
from edgeqat.runtime_check.onnx_check import check_onnx
from edgeqat.runtime_check.onnx_program import OnnxProgram
from edgeqat.runtime_check.pte_program import PteProgram
from edgeqat.runtime_check.references import CONVERTED_CPU, Reference, load_references
from edgeqat.train.data import token_windows

log = logging.getLogger("edgeqat")
REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"
REPORT_VERSION = 2
PROMPT_TOKENS = 128  # the timing prompt, from held-out text (less when max_seq_len is short)


def _user_prompts(tokenizer, prompts: list[str], new_tokens: int, max_seq_len: int) -> list[tuple[str, list[int], int]]:
    """(text, ids, new tokens) of ``check.prompts``; a prompt that leaves no room in the KV cache is refused."""
    out = []
    for text in prompts:
        ids = prompt_ids(tokenizer, text, max_seq_len)
        out.append((text, ids, min(new_tokens, max_seq_len - len(ids))))
    return out


def _golden(pte: PteProgram, bundle_dir: Path, manifest: dict, tokenizer) -> list[dict]:
    """The bundle's golden outputs (made by the eager model at export) replayed through the `.pte`'s method
    and through ExecuTorch's LLM runner, the apps' code path."""
    max_seq_len = manifest["model"]["max_seq_len"]
    rows = []
    for g in manifest["golden"]:
        ids, teacher_forced = replay_golden(pte.forward, g, max_seq_len)
        runner = generate_with_runner(bundle_dir, manifest, g["prompt"], len(g["generated_ids"]))
        rows.append({
            "prompt": g["prompt"],
            "tokens": len(g["generated_ids"]),
            "pte_prefix_match": metrics.prefix_agreement(ids, g["generated_ids"]),
            "pte_teacher_forced_match": teacher_forced,
            "eager_text": g["text"],
            "pte_text": tokenizer.decode(ids),
            "runner_text": runner.text,
            "runner_matches_golden": None if runner.text is None else runner.text.strip() == g["text"].strip(),
        })
    return rows


def _latency(bundle_dir: Path, manifest: dict, references: list[Reference], prompt: torch.Tensor, tokenizer,
             config: CheckConfig) -> dict:
    """One row per thing timed: the `.pte` twice (LLM runner, method) in fresh processes, then the references."""
    max_seq_len, threads, new = manifest["model"]["max_seq_len"], config.threads, config.decode_tokens
    ids = prompt.tolist()
    rows = []
    for name, mode in ((".pte (LLM runner)", "runner"), (".pte (method)", "method")):
        log.info("timing the .pte through its %s with %d threads", "LLM runner" if mode == "runner" else "method", threads)
        row = latency.probe_pte(bundle_dir, manifest, mode, ids, tokenizer.decode(ids), new, threads)
        rows.append({"name": name, "device": "cpu", **row})
    for reference in references:
        forward = reference.cached_forward(max_seq_len)
        if reference.device.type == "cuda":
            row = latency.on_gpu(reference.device, lambda sync: latency.time_forward(forward, prompt, new, sync=sync))
            rows.append({"name": reference.name, "device": "cuda", "peak_rss_mib": None, **row})
        else:
            row = latency.with_threads(threads, lambda: latency.time_forward(forward, prompt, new))
            rows.append({"name": reference.name, "device": "cpu", "threads": threads, "peak_rss_mib": None, **row})
    return {"threads": threads, "prompt_tokens": len(ids), "decode_tokens": new, "rows": rows}


def _device_estimates(bundle_dir: Path, manifest: dict, model, runner_row: dict, config: CheckConfig, results: list) -> dict:
    from edgeqat.runtime_check.device_estimate import (decode_bytes_per_token, estimate_devices, measure_host_bandwidth,
                                                       pte_data_bytes)
    from edgeqat.runtime_check.device_profiles import load_profiles
    from edgeqat.runtime_check.device_results import attach_measured
    from edgeqat.schemes import embedding_group_size

    q = manifest["quantization"]
    per_token = decode_bytes_per_token(pte_data_bytes(bundle_dir / manifest["program"]), model.config.to_dict(),
                                       q["embedding_bits"], runner_row["prompt_tokens"] + config.decode_tokens // 2,
                                       embedding_group_size(q["embedding_bits"], q["group_size"]),
                                       manifest["export"].get("bytes_stored_once", 0))
    bandwidth = measure_host_bandwidth(config.threads)
    estimates = estimate_devices(per_token, runner_row["decode_tokens_per_s"], bandwidth,
                                 load_profiles(config.device_profiles or None), config.threads)
    return attach_measured(estimates, results)


def _gates(comparison: dict, golden_agreement: float, config: CheckConfig) -> list[dict]:
    return gate_rows(comparison, golden_agreement, config, ".pte", "golden next-token agreement (teacher-forced)")


def _host(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads, "gpu": gpu}


def _model_facts(manifest: dict, config) -> dict:
    config = config.get_text_config()  # the decoder's own fields, as the export read them
    return {**{k: manifest["model"][k] for k in ("architecture", "vocab_size", "max_seq_len")},
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "num_key_value_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
            "head_dim": head_dim_of(config)}


def check(
    bundle_dir: str | Path,
    report_dir: str | Path,
    config: CheckConfig,
    converted: str | None = None,
    unquantized: str | None = None,
    device_results: list[str] | tuple = (),
) -> dict:
    from edgeqat.runtime_check.device_results import load_device_results

    bundle_dir, report_dir = Path(bundle_dir), Path(report_dir)
    check_output(report_dir, "check", {"bundle": bundle_dir, "--reference": converted, "--unquantized": unquantized,
                                       **{f"--device-results {f}": f for f in device_results}})
    manifest = load_bundle(bundle_dir)
    manifest_sha, program_sha = sha256_file(bundle_dir / MANIFEST), sha256_file(bundle_dir / manifest["program"])
    results = [load_device_results(f, manifest_sha, program_sha, manifest["golden"]) for f in device_results]  # bad input before any work
    pte = PteProgram(bundle_dir, manifest)
    onnx = OnnxProgram(bundle_dir, manifest, config.threads) if "onnx" in manifest else None  # bad input: before work
    max_seq_len = manifest["model"]["max_seq_len"]
    model, tokenizer, references, skipped = load_references(bundle_dir, manifest, converted, unquantized, config.reference_device)
    prompts = [(g["prompt"], g["prompt_ids"], len(g["generated_ids"])) for g in manifest["golden"]]
    prompts += _user_prompts(tokenizer, config.prompts, config.decode_tokens, max_seq_len)
    windows = token_windows(tokenizer, config.eval_dataset, DEFAULT_EVAL_DATA, config.eval_windows, max_seq_len - 1)
    log.info("comparing with %s on %d held-out windows of %d tokens", ", ".join(r.name for r in references),
             len(windows), len(windows[0]))

    comparisons, pte_ppl = compare_on_windows(pte.forward, references, windows)
    for name, rows in greedy_side_by_side(pte.forward, references, prompts, tokenizer, max_seq_len).items():
        comparisons[name]["greedy"] = rows
    golden = _golden(pte, bundle_dir, manifest, tokenizer)
    golden_agreement = sum(g["pte_teacher_forced_match"] for g in golden) / max(1, sum(g["tokens"] for g in golden))

    prompt = windows[0][: max(1, min(PROMPT_TOKENS, max_seq_len - config.decode_tokens - 1))]
    timing = _latency(bundle_dir, manifest, references, prompt, tokenizer, config)
    estimates = _device_estimates(bundle_dir, manifest, model, timing["rows"][0], config, results)

    gates = _gates(comparisons[CONVERTED_CPU], golden_agreement, config)
    pte_passed = all(g["passed"] for g in gates)
    onnx_report = check_onnx(onnx, bundle_dir, manifest, references, windows, prompts, tokenizer, prompt, config) if onnx else None
    gates += onnx_report["gates"] if onnx_report else []
    passed = all(g["passed"] for g in gates)
    layer_debug = None
    if config.layer_debug == "always" or (config.layer_debug == "on_failure" and not pte_passed):
        from edgeqat.runtime_check.layer_debug import debug_layers

        log.info("comparing every layer of the .pte with eager (a debug re-export; about as long as an export)")
        with tempfile.TemporaryDirectory(prefix="edgeqat-layers-") as work:
            layer_debug = debug_layers(model, windows, max_seq_len, work, bundle_forward=pte.forward)

    report = {
        "report_version": REPORT_VERSION,
        "passed": passed,
        # Relative to the report folder, as the bundle's own paths are: no path of this machine in the artifact.
        "bundle": relative_path(bundle_dir, report_dir),
        "manifest_sha256": manifest_sha,
        "program_sha256": program_sha,
        "pte_bytes": (bundle_dir / manifest["program"]).stat().st_size,
        "quantization": manifest["quantization"],
        "model": _model_facts(manifest, model.config),
        "host": _host(config.threads),
        "eval": {"windows": len(windows), "tokens_per_window": len(windows[0]), "dataset": config.eval_dataset},
        "references": [r.describe(report_dir) for r in references],
        "references_skipped": skipped,
        "comparisons": comparisons,
        "perplexity": {"pte": pte_ppl},
        "golden": golden,
        "golden_token_agreement": golden_agreement,
        "latency": timing,
        "device_estimates": estimates,
        "device_results": results,
        "onnx": onnx_report,
        "layer_debug": layer_debug,
        "gates": gates,
        "versions": versions(),
        "config": to_dict(config),
    }
    _write(report_dir, report)
    return report


def _write(report_dir: Path, report: dict) -> None:
    from edgeqat.runtime_check.report import render_markdown
    from edgeqat.runtime_check.report_html import render_html
    from edgeqat.runtime_check.report_schema import validate_report

    validate_report(report)  # the documented schema; a failure here is a bug, not bad input
    with atomic_dir(report_dir, "check") as tmp:
        write_json_atomic(tmp / REPORT_JSON, report)
        write_text_atomic(tmp / REPORT_MD, render_markdown(report))
        write_text_atomic(tmp / REPORT_HTML, render_html(report))
        write_record(tmp, "check", report["config"], manifest_sha256=report["manifest_sha256"])  # last: the folder is edgeqat's


def raise_on_failure(report: dict) -> None:
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        where = ""
        jump = (report.get("layer_debug") or {}).get("first_jump")
        if jump:
            where = f"; the first layer whose error jumps is {jump['name']} (see the report)"
        raise CheckFailed(
            "check failed: "
            + "; ".join(f"{g['name']} = {g['value']:.4f}, needs {g['op']} {g['threshold']}" for g in failed)
            + where
        )


def is_report_for(report_dir: Path, bundle_dir: Path) -> bool:
    """Whether ``report_dir`` holds a complete, current-version report of this bundle as it is now."""
    try:
        report = json.loads((Path(report_dir) / REPORT_JSON).read_text())
        return (
            report.get("report_version") == REPORT_VERSION
            and all((Path(report_dir) / name).is_file() for name in (REPORT_MD, REPORT_HTML))
            and report.get("manifest_sha256") == sha256_file(Path(bundle_dir) / MANIFEST)
        )
    except (OSError, ValueError):
        return False
