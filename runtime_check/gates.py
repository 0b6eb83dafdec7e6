"""The check's pass/fail rules, one list per program (the `.pte`, the ONNX model) against the eager converted
model: the same thresholds for each, so that both programs are held to what was trained."""

from __future__ import annotations

import torch

from edgeqat.config import CheckConfig
from edgeqat.generation import greedy, prefill_positions
from edgeqat.runtime_check.references import CONVERTED_CPU


def gate_rows(comparison: dict, golden_agreement: float, config: CheckConfig, program: str, golden_name: str) -> list[dict]:
    t, versus = config.thresholds, f"({program} vs {CONVERTED_CPU})"
    gates = [
        {"name": f"logits cosine {versus}", "value": comparison["cosine_mean"], "threshold": t.min_logits_cosine, "op": ">="},
        {"name": f"top-1 agreement {versus}", "value": comparison["top1_agreement"], "threshold": t.min_top1_agreement, "op": ">="},
        {"name": f"perplexity increase {versus}", "value": comparison["perplexity_ratio"], "threshold": t.max_perplexity_increase, "op": "<="},
        {"name": golden_name, "value": golden_agreement, "threshold": t.min_golden_token_agreement, "op": ">="},
    ]
    for gate in gates:
        gate["passed"] = gate["value"] >= gate["threshold"] if gate["op"] == ">=" else gate["value"] <= gate["threshold"]
    return gates


def replay_golden(forward, golden: dict, max_seq_len: int) -> tuple[list[int], int]:
    """A golden entry through ``forward``: the free-running greedy ids, and how many of the golden ids it picks
    teacher-forced (along the golden sequence, so that one near-tie does not turn every later id into a miss)."""
    ids = greedy(forward, golden["prompt_ids"], len(golden["generated_ids"]), max_seq_len)
    sequence = torch.tensor(golden["prompt_ids"] + golden["generated_ids"][:-1])
    logits = forward(sequence[None], prefill_positions(0, len(sequence)))[0]
    choices = logits[len(golden["prompt_ids"]) - 1:].argmax(-1).tolist()
    return ids, sum(a == b for a, b in zip(choices, golden["generated_ids"]))
