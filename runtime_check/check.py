"""`edgeqat check BUNDLE`: is the `.pte` still the model that was trained, and how fast is it?

Compares the `.pte` (ExecuTorch runtime) with the eager converted model and with the unquantized
fine-tuned model on held-out text, replays the bundle's golden prompts, times prefill and decode, and
writes report.json + report.md. Exits non-zero (CheckFailed) when a threshold fails.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from edgeqat.artifacts import atomic_dir, ensure_replaceable, sha256_file, versions, write_json_atomic, write_text_atomic
from edgeqat.config import CheckConfig, to_dict
from edgeqat.errors import CheckFailed, EdgeqatError
from edgeqat.generation import greedy, prefill_positions
from edgeqat.manifest import MANIFEST, load_bundle
from edgeqat.paths import DEFAULT_EVAL_DATA
from edgeqat.runtime_check import metrics
from edgeqat.runtime_check.llm_runner import generate_with_runner
from edgeqat.runtime_check.pte_program import PteProgram
from edgeqat.runtime_check.report import render_markdown
from edgeqat.train.data import token_windows

log = logging.getLogger("edgeqat")
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
REPORT_JSON, REPORT_MD = "report.json", "report.md"


def time_forward(forward: Forward, prompt: torch.Tensor, decode_tokens: int, repeats: int = 3) -> dict[str, float]:
    """Prefill and decode tokens/s (best of ``repeats``) of a KV-cached forward."""
    prefill, decode = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        logits = forward(prompt[None], prefill_positions(0, len(prompt)))
        prefill.append(time.perf_counter() - start)
        token = logits[0, -1].argmax().view(1, 1)
        start = time.perf_counter()
        for i in range(decode_tokens):
            logits = forward(token, prefill_positions(len(prompt) + i, 1))
            token = logits[0, -1].argmax().view(1, 1)
        decode.append(time.perf_counter() - start)
    return {
        "prefill_tokens": len(prompt),
        "prefill_tokens_per_s": len(prompt) / min(prefill),
        "decode_tokens": decode_tokens,
        "decode_tokens_per_s": decode_tokens / min(decode),
    }


def _references(manifest: dict, converted: str | None, unquantized: str | None):
    """(converted model, tokenizer, unquantized model or None, their folders), from arguments or the manifest.

    The converted model must be the very one the bundle was exported from (its files' sha256s match the
    manifest), or the comparison would measure the wrong thing.
    """
    from transformers import AutoModelForCausalLM

    from edgeqat.train.convert import load_converted, read_checked_record

    converted_dir = Path(converted or manifest.get("source", {}).get("converted", ""))
    if not (converted_dir / "edgeqat.json").is_file():
        raise EdgeqatError(
            f"the converted model behind this bundle was not found ({converted_dir}); pass it with --reference"
        )
    record = read_checked_record(converted_dir, "convert")
    if record["files"] != manifest.get("source", {}).get("converted_files"):
        raise EdgeqatError(f"{converted_dir} is not the converted model this bundle was exported from (its files differ)")
    model, tokenizer, _ = load_converted(converted_dir, record)
    float_dir = Path(unquantized or record.get("source", ""))
    float_model = None
    if (float_dir / "config.json").is_file():
        float_model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=torch.float32).eval()
    else:
        log.warning("unquantized model not found (%s): its columns stay empty", float_dir)
    return model, tokenizer, float_model, converted_dir, float_dir if float_model is not None else None


def _full_logits(model, window: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=window[None]).logits[0]


def check(
    bundle_dir: str | Path,
    report_dir: str | Path,
    config: CheckConfig,
    converted: str | None = None,
    unquantized: str | None = None,
) -> dict:
    from edgeqat.export.kv_cache import cached_decoder, eager_forward

    bundle_dir, report_dir = Path(bundle_dir), Path(report_dir)
    ensure_replaceable(report_dir, "check")
    manifest = load_bundle(bundle_dir)
    pte = PteProgram(bundle_dir, manifest)
    model, tokenizer, float_model, converted_dir, float_dir = _references(manifest, converted, unquantized)
    max_seq_len = manifest["model"]["max_seq_len"]
    windows = token_windows(tokenizer, config.eval_dataset, DEFAULT_EVAL_DATA, config.eval_windows, max_seq_len - 1)
    log.info("comparing on %d held-out windows of %d tokens", len(windows), len(windows[0]))

    pte_vs_eager, pte_vs_float, nll = [], [], {"pte": 0.0, "eager": 0.0, "unquantized": 0.0}
    count = 0
    for window in windows:
        pte_logits = pte.forward(window[None], prefill_positions(0, len(window)))[0]
        eager_logits = _full_logits(model, window)
        pte_vs_eager.append(metrics.logits_agreement(pte_logits, eager_logits))
        for name, logits in (("pte", pte_logits), ("eager", eager_logits)):
            nll[name] += metrics.negative_log_likelihood(logits, window)[0]
        if float_model is not None:
            float_logits = _full_logits(float_model, window)
            pte_vs_float.append(metrics.logits_agreement(pte_logits, float_logits))
            nll["unquantized"] += metrics.negative_log_likelihood(float_logits, window)[0]
        count += len(window) - 1
    ppl = {name: metrics.perplexity(v, count) for name, v in nll.items() if name != "unquantized" or float_model is not None}

    golden = []
    for g in manifest["golden"]:
        ids = greedy(pte.forward, g["prompt_ids"], len(g["generated_ids"]), max_seq_len)
        # Teacher-forced: the .pte's next-token choice along the golden sequence, so one near-tie
        # does not turn every later token into a mismatch the way free-running greedy does.
        sequence = torch.tensor(g["prompt_ids"] + g["generated_ids"][:-1])
        logits = pte.forward(sequence[None], prefill_positions(0, len(sequence)))[0]
        choices = logits[len(g["prompt_ids"]) - 1 :].argmax(-1).tolist()
        forced = sum(a == b for a, b in zip(choices, g["generated_ids"]))
        runner = generate_with_runner(bundle_dir, manifest, g["prompt"], len(g["generated_ids"]))
        golden.append(
            {
                "prompt": g["prompt"],
                "tokens": len(g["generated_ids"]),
                "pte_prefix_match": metrics.prefix_agreement(ids, g["generated_ids"]),
                "pte_teacher_forced_match": forced,
                "eager_text": g["text"],
                "pte_text": tokenizer.decode(ids),
                "runner_text": runner.text,
                "runner_matches_golden": runner.text.strip() == g["text"].strip(),
                "runner": runner.__dict__,
            }
        )
    golden_agreement = sum(g["pte_teacher_forced_match"] for g in golden) / max(1, sum(g["tokens"] for g in golden))

    prompt = windows[0][: min(128, max_seq_len - config.decode_tokens - 1)]
    speed = {"pte": time_forward(pte.forward, prompt, config.decode_tokens)}
    speed["eager"] = time_forward(eager_forward(cached_decoder(model, max_seq_len)), prompt, config.decode_tokens)

    t = config.thresholds
    agreement = metrics.merge_agreement(pte_vs_eager)
    ppl_increase = ppl["pte"] / ppl["eager"] - 1
    gates = [
        {"name": "logits cosine (.pte vs eager)", "value": agreement["cosine_mean"], "threshold": t.min_logits_cosine, "op": ">="},
        {"name": "top-1 agreement (.pte vs eager)", "value": agreement["top1_agreement"], "threshold": t.min_top1_agreement, "op": ">="},
        {"name": "perplexity increase (.pte vs eager)", "value": ppl_increase, "threshold": t.max_perplexity_increase, "op": "<="},
        {"name": "golden next-token agreement (teacher-forced)", "value": golden_agreement, "threshold": t.min_golden_token_agreement, "op": ">="},
    ]
    for gate in gates:
        gate["passed"] = gate["value"] >= gate["threshold"] if gate["op"] == ">=" else gate["value"] <= gate["threshold"]

    report = {
        "report_version": 1,
        "bundle": str(bundle_dir.resolve()),
        "manifest_sha256": sha256_file(bundle_dir / MANIFEST),
        "quantization": manifest["quantization"],
        "references": {"converted": str(converted_dir), "unquantized": str(float_dir) if float_dir else None},
        "eval": {"windows": len(windows), "tokens_per_window": len(windows[0]), "dataset": config.eval_dataset},
        "pte_vs_eager": agreement,
        "pte_vs_unquantized": metrics.merge_agreement(pte_vs_float) if pte_vs_float else None,
        "perplexity": ppl,
        "golden": golden,
        "golden_token_agreement": golden_agreement,
        "speed": speed,
        "pte_bytes": (bundle_dir / manifest["program"]).stat().st_size,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "versions": versions(),
        "config": to_dict(config),
    }
    with atomic_dir(report_dir, "check") as tmp:
        write_json_atomic(tmp / REPORT_JSON, report)
        write_text_atomic(tmp / REPORT_MD, render_markdown(report))
    return report


def raise_on_failure(report: dict) -> None:
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        raise CheckFailed(
            "check failed: "
            + "; ".join(f"{g['name']} = {g['value']:.4f}, needs {g['op']} {g['threshold']}" for g in failed)
        )


def is_report_for(report_dir: Path, bundle_dir: Path) -> bool:
    """Whether ``report_dir`` holds a complete report of this bundle as it is now."""
    try:
        report = json.loads((Path(report_dir) / REPORT_JSON).read_text())
        return (Path(report_dir) / REPORT_MD).is_file() and report.get("manifest_sha256") == sha256_file(
            Path(bundle_dir) / MANIFEST
        )
    except (OSError, ValueError):
        return False
