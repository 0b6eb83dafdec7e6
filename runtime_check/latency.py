"""Prefill and decode speed, time to first token and memory: the `.pte` on the host CPU with a phone's
thread count (in a fresh process each, so its memory is its own), and the reference models beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.generation import Forward, prefill_positions

MIB = 1024**2


def time_forward(forward: Forward, prompt: torch.Tensor, decode_tokens: int, repeats: int = 3,
                 sync: Callable[[], None] = lambda: None, budget_s: float = 30.0) -> dict[str, float]:
    """Prefill and decode tokens/s and time to first token of a KV-cached forward: the best of ``repeats``,
    or of fewer once ``budget_s`` is spent (a slow eager reference need not be timed three times)."""
    prefill, decode = [], []
    started = time.perf_counter()
    for _ in range(repeats):
        if prefill and time.perf_counter() - started > budget_s:
            break
        start = time.perf_counter()
        logits = forward(prompt[None], prefill_positions(0, len(prompt)))
        token = logits[0, -1].argmax().view(1, 1)
        sync()
        prefill.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(decode_tokens):
            logits = forward(token, prefill_positions(len(prompt) + i, 1))
            token = logits[0, -1].argmax().view(1, 1)
        sync()
        decode.append(time.perf_counter() - start)
    return {
        "repeats": len(prefill),
        "prompt_tokens": len(prompt),
        "prefill_tokens_per_s": len(prompt) / min(prefill),
        "decode_tokens_per_s": decode_tokens / min(decode),
        "time_to_first_token_ms": min(prefill) * 1e3,
    }


def with_threads(threads: int, measure: Callable[[], dict]) -> dict:
    """``measure()`` with torch's intra-op thread count set to ``threads`` (the eager reference on a CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure()
    finally:
        torch.set_num_threads(before)


def on_gpu(device: torch.device, measure: Callable[[Callable[[], None]], dict]) -> dict:
    """``measure(sync)`` on a CUDA device, with the peak GPU memory it allocated."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    row = measure(lambda: torch.cuda.synchronize(device))
    row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return row


def probe_pte(bundle_dir: Path, manifest: dict, mode: str, prompt_ids: list[int], prompt_text: str,
              decode_tokens: int, threads: int) -> dict:
    """Times the `.pte` in a fresh Python process (latency_probe.py): ``mode`` "runner" is ExecuTorch's
    C++ LLM runner, the apps' code path, from text; "method" is the program's forward method, from ids;
    "onnx" is the bundle's ONNX model in ONNX Runtime, from ids."""
    with tempfile.TemporaryDirectory(prefix="edgeqat-probe-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({
            "program": str(Path(bundle_dir) / manifest["program"]), "tokenizer": str(Path(bundle_dir) / manifest["tokenizer"]),
            "method": manifest["export"]["method"], "mode": mode, "prompt_ids": prompt_ids, "prompt_text": prompt_text,
            "decode_tokens": decode_tokens, "threads": threads,
            "bundle": str(bundle_dir), "onnx": manifest.get("onnx"),
        }))
        # stdout is the runner's own (it prints the generated text); errors come back on stderr.
        # OpenMP at one thread: ExecuTorch's thread pool sets the program's threads, and with OpenMP's own
        # threads left at the core count as well (most likely competing for the same cores), the default
        # model's 128-token prefill at 2 threads took 11.0-19.9 ms against 5.9-6.6 ms (1 thread: 10-12 ms).
        done = subprocess.run([sys.executable, "-m", "edgeqat.runtime_check.latency_probe", str(request), str(result)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not result.is_file():
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [f"exit code {done.returncode}"]
            what = "the ONNX model" if mode == "onnx" else f"the .pte ({mode})"
            raise EdgeqatError(f"timing {what} in a separate process failed: {last[0]}")
        return json.loads(result.read_text())
