"""A realistic report.json v2 (the contract in docs/check_report.md), for tests that render or validate one.

Values follow a real run of the default pipeline (tiny Llama, 8da4w, 8 windows of 63 tokens). The sample
carries the awkward parts on purpose: a golden prompt with ``<script>`` and ``|``, generated text with a
newline, a device with measured numbers beside its estimate (rows shaped as device_estimate.py writes
them), and a layer_debug section.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

TOKENS_PER_WINDOW = 63
CPU_CONVERTED, CUDA_CONVERTED, CUDA_UNQUANTIZED = "eager converted (cpu)", "converted (cuda)", "unquantized (cuda)"
CPU_UNQUANTIZED = "unquantized (cpu)"
SCRIPT_PROMPT = 'Say <script>alert("x")</script> | then & stop'


def _per_position(seed: int, cosine_floor: float, diff_scale: float, kl_scale: float, top1: float) -> dict[str, list[float]]:
    """Per-position curves shaped like real ones: error grows a little with the position in the window."""
    rng = random.Random(seed)
    cosine, diff, kl, agree = [], [], [], []
    for pos in range(TOKENS_PER_WINDOW):
        growth = 1 + pos / TOKENS_PER_WINDOW
        cosine.append(1 - (1 - cosine_floor) * growth * rng.uniform(0.2, 1.0))
        diff.append(diff_scale * growth * rng.uniform(0.3, 1.0))
        kl.append(kl_scale * growth * rng.uniform(0.1, 1.0))
        agree.append(min(1.0, top1 + rng.uniform(-0.05, 0.05) * (1 - top1) * 10) if pos else 1.0)
    return {"cosine": cosine, "max_abs_diff": diff, "kl": kl, "top1_agreement": agree}


def _comparison(seed: int, ppl: float, pte_ppl: float, cos_min: float, diff: float, kl: float, top1: float,
                greedy_prefix: list[int], diverged_text: str) -> dict[str, Any]:
    curves = _per_position(seed, cos_min, diff, kl, top1)
    return {
        "cosine_mean": sum(curves["cosine"]) / TOKENS_PER_WINDOW,
        "cosine_min": min(curves["cosine"]),
        "max_abs_diff": max(curves["max_abs_diff"]) * 1.3,
        "kl_mean": sum(curves["kl"]) / TOKENS_PER_WINDOW,
        "kl_max": max(curves["kl"]) * 2.0,
        "top1_agreement": sum(curves["top1_agreement"]) / TOKENS_PER_WINDOW,
        "top5_agreement": min(1.0, top1 + 0.004),
        "perplexity": ppl,
        "perplexity_delta": pte_ppl - ppl,
        "perplexity_ratio": pte_ppl / ppl - 1,
        "per_position": curves,
        "greedy": [
            {"prompt": prompt, "tokens": 24, "tokens_until_divergence": until,
             "reference_text": text, "pte_text": text if until == 24 else diverged_text}
            for (prompt, text), until in zip(GOLDEN_TEXTS, greedy_prefix)
        ],
    }


GOLDEN_TEXTS = [
    ("A wise son maketh", " the wicked that doeth good. The wicked that doeth good things of iniquity: and the wicked shall not"),
    ("The fear of the LORD is", " the punishment of the LORD. The LORD is his name: he is the LORD's: and the LORD"),
    (SCRIPT_PROMPT, " a | b\nthe <b>words</b> of the LORD & his [statutes](x)"),
]
DIVERGED = " the wicked that doeth good. The wicked that doeth good, and the wicked shall not be ashamed."


def sample_report(gpu: bool = True) -> dict[str, Any]:
    """A complete v2 report that passes its gates; ``gpu=False`` is the same check on a machine without one."""
    pte_ppl = 38.713151199042436
    references = [{"name": CPU_CONVERTED, "kind": "converted", "device": "cpu", "dtype": "float32",
                   "path": "/tmp/ref-run/converted"}]
    comparisons = {CPU_CONVERTED: _comparison(1, 38.72318633148198, pte_ppl, 0.99968, 0.18, 2e-5, 0.99, [13, 24, 24], DIVERGED)}
    unquantized = CUDA_UNQUANTIZED if gpu else CPU_UNQUANTIZED
    if gpu:
        references.append({"name": CUDA_CONVERTED, "kind": "converted", "device": "cuda", "dtype": "float32",
                           "path": "/tmp/ref-run/converted"})
        comparisons[CUDA_CONVERTED] = _comparison(2, 38.7229, pte_ppl, 0.99966, 0.19, 2.2e-5, 0.989, [13, 24, 24], DIVERGED)
    references.append({"name": unquantized, "kind": "unquantized", "device": "cuda" if gpu else "cpu",
                       "dtype": "bfloat16", "path": "/tmp/ref-run/checkpoint"})
    comparisons[unquantized] = _comparison(3, 38.15869656653661, pte_ppl, 0.95, 1.7, 4e-3, 0.895, [9, 20, 24], DIVERGED)

    latency_rows = [
        {"name": ".pte (LLM runner)", "device": "cpu", "prefill_tokens_per_s": 1750.0, "decode_tokens_per_s": 621.6,
         "time_to_first_token_ms": 4.0, "peak_rss_mib": 118.2},
        {"name": ".pte (method)", "device": "cpu", "prefill_tokens_per_s": 3495.8, "decode_tokens_per_s": 564.4,
         "time_to_first_token_ms": 8.9, "peak_rss_mib": 402.7},
        {"name": CPU_CONVERTED, "device": "cpu", "prefill_tokens_per_s": 789.9, "decode_tokens_per_s": 29.2,
         "time_to_first_token_ms": 39.2, "peak_rss_mib": 655.0},
    ]
    if gpu:
        latency_rows.append({"name": CUDA_CONVERTED, "device": "cuda", "prefill_tokens_per_s": 41000.0,
                             "decode_tokens_per_s": 310.0, "time_to_first_token_ms": 1.2, "peak_rss_mib": None,
                             "peak_gpu_mib": 300.0})

    golden = [
        {"prompt": prompt, "tokens": 24, "pte_prefix_match": prefix, "pte_teacher_forced_match": forced,
         "eager_text": text, "pte_text": text if prefix == 24 else DIVERGED,
         "runner_text": text if prefix == 24 else DIVERGED, "runner_matches_golden": prefix == 24}
        for (prompt, text), prefix, forced in zip(GOLDEN_TEXTS, [13, 24, 24], [23, 24, 24])
    ]
    gates = [
        _gate("logits cosine (.pte vs eager converted (cpu))", comparisons[CPU_CONVERTED]["cosine_mean"], 0.99, ">="),
        _gate("top-1 agreement (.pte vs eager converted (cpu))", comparisons[CPU_CONVERTED]["top1_agreement"], 0.95, ">="),
        _gate("perplexity increase (.pte vs eager converted (cpu))", comparisons[CPU_CONVERTED]["perplexity_ratio"], 0.02, "<="),
        _gate("golden next-token agreement (teacher-forced)", 71 / 72, 0.9, ">="),
    ]
    return {
        "report_version": 2,
        "passed": all(g["passed"] for g in gates),
        "bundle": "/tmp/ref-run/bundle",
        "manifest_sha256": "8c5f780f76f78b4c31aa8461e29432c993577b9668df1537168955eb3ce43ae8",
        "program_sha256": "3f1d2a0c9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060504",
        "pte_bytes": 4298368,
        "quantization": {"mode": "qat", "scheme": "8da4w", "group_size": 32, "embedding_bits": None},
        "model": {"architecture": "LlamaForCausalLM", "vocab_size": 2048, "max_seq_len": 64, "hidden_size": 256,
                  "num_hidden_layers": 4, "num_key_value_heads": 2, "head_dim": 32},
        "host": {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "logical_cores": 2, "threads": 2,
                 "gpu": "NVIDIA H100 80GB HBM3" if gpu else None},
        "eval": {"windows": 8, "tokens_per_window": TOKENS_PER_WINDOW, "dataset": "default"},
        "references": references,
        "comparisons": comparisons,
        "perplexity": {"pte": pte_ppl},
        "golden": golden,
        "golden_token_agreement": 71 / 72,
        "latency": {"threads": 2, "prompt_tokens": 31, "decode_tokens": 32, "rows": latency_rows},
        "device_estimates": _device_estimates(),
        "device_results": [_device_results_file()],
        "layer_debug": _layer_debug(),
        "gates": gates,
        "versions": {"edgeqat": "0.1.0", "torch": "2.13.0+cpu", "torchao": "0.18.0", "executorch": "1.4.1",
                     "transformers": "5.24.0"},
        "config": {"eval_dataset": "default", "eval_windows": 8, "decode_tokens": 32,
                   "thresholds": {"min_logits_cosine": 0.99, "min_top1_agreement": 0.95,
                                  "max_perplexity_increase": 0.02, "min_golden_token_agreement": 0.9}},
    }


def _gate(name: str, value: float, threshold: float, op: str) -> dict[str, Any]:
    passed = value >= threshold if op == ">=" else value <= threshold
    return {"name": name, "value": value, "threshold": threshold, "op": op, "passed": passed}


HOST_DOUBT = ("one decode step reads 2.3 MiB, which fits in the host's 105 MiB last-level cache, so the host's "
              "speed is not set by DRAM bandwidth")
BYTES_PER_TOKEN = 2_412_544
EFFICIENCY = BYTES_PER_TOKEN * 564.4 / 1e9 / 12.4


def _device_row(name: str, soc: str, peak_gb_s: float, big_cores: int, measured: dict | None = None) -> dict[str, Any]:
    """A row the way runtime_check/device_estimate.py writes one (docs/device_results.md)."""
    usable = round(peak_gb_s * 0.6, 2)
    return {
        "name": name, "soc": soc, "label": "estimate",
        "tokens_per_s": round(usable * 1e9 * EFFICIENCY / BYTES_PER_TOKEN, 1),
        "bandwidth_bound_tokens_per_s": round(usable * 1e9 / BYTES_PER_TOKEN, 1),
        "confidence": "low", "why": "the host calibration is low confidence (see the top-level why)",
        "memory_bandwidth_gb_s": peak_gb_s, "usable_bandwidth_gb_s": usable,
        "bandwidth_basis": "assumed 60% of the theoretical peak", "big_cores": big_cores, "cores": 8, "ram_gib": 8,
        "source": "vendor spec", "aliases": [], "measured": measured,
    }


def _device_estimates() -> dict[str, Any]:
    pixel_estimate = round(40.98 * 1e9 * EFFICIENCY / BYTES_PER_TOKEN, 1)
    measured = {
        "label": "measured", "device": "Google Pixel 8 Pro", "soc": "Google Tensor G3",
        "os_version": "Android 15 (API 35)", "platform": "android", "app_version": "0.1.0",
        "executorch_version": "1.4.1", "threads": 2, "backend": "xnnpack", "timestamp": "2025-11-26T05:30:12Z",
        "runs": 3, "decode_tokens_per_s": 239.4, "prefill_tokens_per_s": 580.3, "time_to_first_token_ms": 12.0,
        "peak_memory_mib": 58.9, "load_time_ms": 42.0, "golden_tokens_matched": 61, "golden_tokens": 72,
        "golden_agreement": 61 / 72, "measured_over_estimate": 239.4 / pixel_estimate,
    }
    return {
        "label": "estimate",
        "note": "Estimated from memory bandwidth, not measured; measured numbers come from the demo apps.",
        "method": "decode tokens/s = device usable bandwidth x host efficiency / bytes per token",
        "threads": 2,
        "bytes_per_token": BYTES_PER_TOKEN,
        "bytes_per_token_breakdown": None,
        "host": {"decode_tokens_per_s": 564.4, "bandwidth_gb_s": 12.4, "achieved_gb_s": 1.362,
                 "efficiency": round(EFFICIENCY, 4), "last_level_cache_bytes": 110100480},
        "assumed_usable_bandwidth_fraction": 0.6,
        "confidence": "low",
        "why": HOST_DOUBT,
        "devices": [
            _device_row("Google Pixel 8 Pro", "Google Tensor G3", 68.3, 5, measured),
            _device_row("Apple iPhone 15 Pro", "Apple A17 Pro", 51.2, 2),
            _device_row("Raspberry Pi 5", "Broadcom BCM2712", 17.1, 4),
        ],
    }


def _device_results_file() -> dict[str, Any]:
    """The validated results file behind the measured row, as report.json lists it."""
    return json.loads((Path(__file__).parent / "data" / "device_results_example.json").read_text())


def _layer_debug() -> dict[str, Any]:
    layers = [("model.embed_tokens", 1.0, 0.0)]
    for i in range(4):
        # The third block is where the error jumps (and later layers inherit it): what a reader should spot.
        jumped = i >= 2
        cosine = 0.9712 - 0.0002 * (i - 2) if jumped else 0.99995 - 0.00001 * i
        layers.append((f"model.layers.{i}", cosine, 1.83 + 0.04 * (i - 2) if jumped else 0.004 * (i + 1)))
    layers += [("model.norm", 0.9709, 1.91), ("lm_head", 0.9701, 2.24)]
    rows = [{"name": n, "cosine": c, "max_abs_diff": d, "relative_error": round(math.sqrt(max(0.0, 2 - 2 * c)), 6)}
            for n, c, d in layers]
    return {
        "method": "eager converted (cpu) hooks vs the .pte's intermediate outputs (ETDump debug buffer)",
        "layers": rows,
        "first_jump": dict(rows[3]),
        "note": "compared on the first held-out window; a jump is a drop in cosine of more than 0.01",
    }
