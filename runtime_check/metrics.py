"""Comparing the `.pte`'s logits with a reference's on the same tokens, position by position, and perplexity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Per-position curves, averaged over windows into report["comparisons"][name]["per_position"].
CURVES = ("cosine", "max_abs_diff", "kl", "top1_agreement")


def position_metrics(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position of [T, V] logits: cosine, max abs difference, KL(reference || candidate) in nats,
    top-1 agreement (0/1) and top-5 overlap (|top-5 of one ∩ top-5 of the other| / 5)."""
    candidate, reference = candidate.float(), reference.float()
    log_p_ref, log_p_cand = F.log_softmax(reference, -1), F.log_softmax(candidate, -1)
    k = min(5, reference.shape[-1])
    top_ref, top_cand = reference.topk(k, -1).indices, candidate.topk(k, -1).indices
    overlap = (top_ref[:, :, None] == top_cand[:, None, :]).any(-1).float().sum(-1) / k
    return {
        "cosine": F.cosine_similarity(candidate, reference, dim=-1),
        "max_abs_diff": (candidate - reference).abs().amax(-1),
        "kl": (log_p_ref.exp() * (log_p_ref - log_p_cand)).sum(-1).clamp(min=0),
        "top1_agreement": (candidate.argmax(-1) == reference.argmax(-1)).float(),
        "top5_agreement": overlap,
    }


def summarize(windows: list[dict[str, torch.Tensor]]) -> dict:
    """Aggregates per-window ``position_metrics``: means over every position, worst cases, and per-position
    means over windows (a position only windows that long have)."""
    flat = {key: torch.cat([w[key] for w in windows]) for key in windows[0]}
    longest = max(len(w["cosine"]) for w in windows)
    per_position = {}
    for key in CURVES:
        total, count = torch.zeros(longest), torch.zeros(longest)
        for w in windows:
            total[: len(w[key])] += w[key]
            count[: len(w[key])] += 1
        per_position[key] = (total / count).tolist()
    return {
        "cosine_mean": float(flat["cosine"].mean()),
        "cosine_min": float(flat["cosine"].min()),
        "max_abs_diff": float(flat["max_abs_diff"].max()),
        "kl_mean": float(flat["kl"].mean()),
        "kl_max": float(flat["kl"].max()),
        "top1_agreement": float(flat["top1_agreement"].mean()),
        "top5_agreement": float(flat["top5_agreement"].mean()),
        "per_position": per_position,
    }


def negative_log_likelihood(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, int]:
    """(summed NLL, number of predicted tokens) of tokens[1:] under logits[:-1], both [T, ...]."""
    nll = F.cross_entropy(logits[:-1].float(), tokens[1:], reduction="sum")
    return float(nll), len(tokens) - 1


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / count)


def prefix_agreement(candidate: list[int], reference: list[int]) -> int:
    """How many leading tokens two greedy generations share (tokens until the first divergence)."""
    n = 0
    for a, b in zip(candidate, reference):
        if a != b:
            break
        n += 1
    return n
