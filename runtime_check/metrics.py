"""Comparing two models' logits on the same tokens, and perplexity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def logits_agreement(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Per-position cosine (mean and min), max abs difference and top-1 agreement of [T, V] logits."""
    candidate, reference = candidate.float(), reference.float()
    cosine = F.cosine_similarity(candidate, reference, dim=-1)
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_diff": float((candidate - reference).abs().max()),
        "top1_agreement": float((candidate.argmax(-1) == reference.argmax(-1)).float().mean()),
    }


def negative_log_likelihood(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, int]:
    """(summed NLL, number of predicted tokens) of tokens[1:] under logits[:-1], both [T, ...]."""
    nll = F.cross_entropy(logits[:-1].float(), tokens[1:], reduction="sum")
    return float(nll), len(tokens) - 1


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count)


def prefix_agreement(candidate: list[int], reference: list[int]) -> int:
    """How many leading tokens two greedy generations share."""
    n = 0
    for a, b in zip(candidate, reference):
        if a != b:
            break
        n += 1
    return n


def merge_agreement(rows: list[dict[str, float]]) -> dict[str, float]:
    """Aggregates per-window agreements: means of means, worst of worsts."""
    return {
        "cosine_mean": sum(r["cosine_mean"] for r in rows) / len(rows),
        "cosine_min": min(r["cosine_min"] for r in rows),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "top1_agreement": sum(r["top1_agreement"] for r in rows) / len(rows),
    }
