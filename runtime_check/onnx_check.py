"""The bundle's ONNX model in `edgeqat check`: the same references, metrics and gates as the `.pte`, its
golden outputs replayed, and its speed and memory measured the way the `.pte`'s are (a fresh process)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from edgeqat.config import CheckConfig
from edgeqat.runtime_check import latency, metrics
from edgeqat.runtime_check.comparison import compare_on_windows, greedy_side_by_side
from edgeqat.runtime_check.gates import gate_rows, replay_golden
from edgeqat.runtime_check.onnx_program import OnnxProgram
from edgeqat.runtime_check.references import CONVERTED_CPU, Reference

log = logging.getLogger("edgeqat")
LABEL = "ONNX"


def golden_rows(forward, manifest: dict, tokenizer) -> list[dict]:
    """The manifest's golden prompts through ``forward``: free-running greedy and teacher-forced."""
    rows = []
    for g in manifest["golden"]:
        ids, teacher_forced = replay_golden(forward, g, manifest["model"]["max_seq_len"])
        rows.append({"prompt": g["prompt"], "tokens": len(g["generated_ids"]),
                     "prefix_match": metrics.prefix_agreement(ids, g["generated_ids"]),
                     "teacher_forced_match": teacher_forced, "text": tokenizer.decode(ids)})
    return rows


def check_onnx(program: OnnxProgram, bundle_dir: Path, manifest: dict, references: list[Reference], windows,
               prompts: list, tokenizer, prompt: torch.Tensor, config: CheckConfig) -> dict:
    """report.json's "onnx": the ONNX model against the same references, windows and prompts as the `.pte`."""
    log.info("comparing the ONNX model with %s", ", ".join(r.name for r in references))
    comparisons, perplexity = compare_on_windows(program.forward, references, windows)
    max_seq_len = manifest["model"]["max_seq_len"]
    for name, rows in greedy_side_by_side(program.forward, references, prompts, tokenizer, max_seq_len).items():
        comparisons[name]["greedy"] = rows
    golden = golden_rows(program.forward, manifest, tokenizer)
    agreement = sum(g["teacher_forced_match"] for g in golden) / max(1, sum(g["tokens"] for g in golden))
    log.info("timing the ONNX model with %d threads", config.threads)
    timing = latency.probe_pte(bundle_dir, manifest, "onnx", prompt.tolist(), "", config.decode_tokens, config.threads)
    section = manifest["onnx"]
    return {
        "file": section["file"],
        "bytes": sum((bundle_dir / f).stat().st_size for f in (section["file"], section.get("external_data")) if f),
        "accuracy_level": section["accuracy_level"],
        "comparisons": comparisons,
        "perplexity": perplexity,
        "golden": golden,
        "golden_token_agreement": agreement,
        "latency": {"name": f"{LABEL} (ONNX Runtime)", "device": "cpu", **timing},
        "gates": gate_rows(comparisons[CONVERTED_CPU], agreement, config, LABEL,
                           f"golden next-token agreement ({LABEL}, teacher-forced)"),
    }
