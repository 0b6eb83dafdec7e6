"""The `.pte` against each reference: logits on held-out windows, perplexity, and free-running greedy text."""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from edgeqat.generation import Forward, greedy, prefill_positions
from edgeqat.runtime_check import metrics
from edgeqat.runtime_check.references import Reference

log = logging.getLogger("edgeqat")


def compare_on_windows(pte_forward: Forward, references: list[Reference], windows: list[torch.Tensor]) -> tuple[dict, float]:
    """({reference name: logits agreement and its perplexity}, the `.pte`'s perplexity) on held-out windows."""
    per_window: dict[str, list] = {r.name: [] for r in references}
    nll = {r.name: 0.0 for r in references}
    pte_nll, count = 0.0, 0
    for window in tqdm(windows, desc="comparing logits", unit="window", disable=None, leave=False):
        pte_logits = pte_forward(window[None], prefill_positions(0, len(window)))[0].float()
        pte_nll += metrics.negative_log_likelihood(pte_logits, window)[0]
        count += len(window) - 1
        for reference in references:
            logits = reference.logits(window)
            per_window[reference.name].append(metrics.position_metrics(pte_logits, logits))
            nll[reference.name] += metrics.negative_log_likelihood(logits, window)[0]
    pte_ppl = metrics.perplexity(pte_nll, count)
    comparisons = {}
    for reference in references:
        ppl = metrics.perplexity(nll[reference.name], count)
        comparisons[reference.name] = {
            **metrics.summarize(per_window[reference.name]),
            "perplexity": ppl,
            "perplexity_delta": pte_ppl - ppl,
            "perplexity_ratio": pte_ppl / ppl - 1,
        }
    return comparisons, pte_ppl


def greedy_side_by_side(pte_forward: Forward, references: list[Reference], prompts: list[tuple[str, list[int], int]],
                        tokenizer, max_seq_len: int) -> dict[str, list[dict]]:
    """{reference name: per prompt, the tokens both sides generate before they first differ, and both texts}.

    ``prompts`` are (text, token ids, new tokens). Each side decodes greedily over its own KV cache, as
    an app would; one near-tie can make the rest of two texts differ, which is what a user would see.
    """
    pte_ids = [greedy(pte_forward, ids, new, max_seq_len) for _, ids, new in prompts]
    sides = {}
    for reference in references:
        forward = reference.cached_forward(max_seq_len)
        rows = []
        for (text, ids, new), pte in zip(prompts, pte_ids):
            ref = greedy(forward, ids, new, max_seq_len)
            rows.append({"prompt": text, "tokens": len(ref), "tokens_until_divergence": metrics.prefix_agreement(pte, ref),
                         "reference_text": tokenizer.decode(ref), "pte_text": tokenizer.decode(pte)})
        sides[reference.name] = rows
    return sides
