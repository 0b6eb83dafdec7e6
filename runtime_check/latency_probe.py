"""One `.pte` timing in its own process: ``python -m edgeqat.runtime_check.latency_probe REQUEST RESULT``.

A fresh process so that the `.pte`'s memory is measured without the eager models the check also holds,
and so that the thread pool is set before ExecuTorch starts it. REQUEST is JSON (see latency.probe_pte);
RESULT gets one latency row. The LLM runner and the program share ExecuTorch's thread pool.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

MIB = 1024**2


def _rss_mib() -> float:
    import psutil  # accelerate's dependency, so always installed with edgeqat

    return psutil.Process().memory_info().rss / MIB


def _peak_rss_mib() -> float:
    # Linux keeps ru_maxrss across fork and exec, so a child started by a big parent (the check holds the
    # eager models) would report the parent's peak; VmHWM belongs to this process's own memory map.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _runner(request: dict) -> dict:
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    start = time.perf_counter()
    runner = TextLLMRunner(request["program"], request["tokenizer"])
    config = GenerationConfig(max_new_tokens=request["decode_tokens"] + 1, temperature=0.0, echo=False, num_bos=0, num_eos=0)
    stats: list = []
    # No token callback: the binding turns each piece into a str, which fails on a piece that is not UTF-8 by
    # itself (a character split across byte-level tokens; any token of a random-weights model), and the
    # timing needs no text.
    runner.generate(request["prompt_text"], config, token_callback=None, stats_callback=stats.append)
    load_ms = (time.perf_counter() - start) * 1e3
    best = None
    for _ in range(2):  # the first generation above was the warm-up (and loads the program)
        runner.reset()
        stats.clear()
        runner.generate(request["prompt_text"], config, token_callback=None, stats_callback=stats.append)
        row = _runner_rates(json.loads(stats[-1].to_json_string()))
        if best is None or row["decode_tokens_per_s"] > best["decode_tokens_per_s"]:
            best = row
    return {**best, "load_ms": load_ms, "timer_resolution_ms": 1}  # the runner's stats are in whole milliseconds


def _runner_rates(stats: dict) -> dict:
    """The runner's own rates (prompt tokens over prefill time, generated tokens over decode time) from its
    timestamps. A small model can prefill or decode within the runner's 1 ms resolution, and its stats then
    lack the rate (seen: no decode_token_per_sec): a duration is counted as at least 1 ms."""
    prefill_ms = max(1, stats["prompt_eval_end_ms"] - stats["inference_start_ms"])
    decode_ms = max(1, stats["inference_end_ms"] - stats["prompt_eval_end_ms"])
    return {
        "prompt_tokens": stats["prompt_tokens"],
        "generated_tokens": stats["generated_tokens"],  # fewer than asked when the model chose its end token
        "prefill_tokens_per_s": stats["prompt_tokens"] * 1e3 / prefill_ms,
        "decode_tokens_per_s": stats["generated_tokens"] * 1e3 / decode_ms,
        "time_to_first_token_ms": float(stats["first_token_ms"] - stats["inference_start_ms"]),
    }


def _method(request: dict) -> dict:
    import torch
    from executorch.runtime import Runtime

    from edgeqat.runtime_check.latency import time_forward

    start = time.perf_counter()
    method = Runtime.get().load_program(Path(request["program"])).load_method(request["method"])
    load_ms = (time.perf_counter() - start) * 1e3
    row = time_forward(lambda tokens, positions: method.execute([tokens, positions])[0],
                       torch.tensor(request["prompt_ids"], dtype=torch.long), request["decode_tokens"])
    return {**row, "load_ms": load_ms}


def _onnx(request: dict) -> dict:
    import torch

    from edgeqat.runtime_check.latency import time_forward
    from edgeqat.runtime_check.onnx_program import OnnxProgram

    start = time.perf_counter()
    program = OnnxProgram(Path(request["bundle"]), {"onnx": request["onnx"]}, request["threads"])
    load_ms = (time.perf_counter() - start) * 1e3
    row = time_forward(program.forward, torch.tensor(request["prompt_ids"], dtype=torch.long), request["decode_tokens"])
    return {**row, "load_ms": load_ms, "threads": request["threads"]}


def main(request_file: str, result_file: str) -> None:
    request = json.loads(Path(request_file).read_text())
    if request["mode"] == "onnx":  # ONNX Runtime's own thread pool, set by the session (intra_op_num_threads)
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401

        before = _rss_mib()
        row = _onnx(request)
        row.update({"peak_rss_mib": _peak_rss_mib(), "pte_rss_mib": max(0.0, _rss_mib() - before)})
        Path(result_file).write_text(json.dumps(row))
        return
    # Every library first, so that the memory measured from here on is the program's own.
    import torch  # noqa: F401
    from executorch.extension.llm.runner import TextLLMRunner  # noqa: F401
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime  # noqa: F401

    from edgeqat.export.llm_ops import load_kernels

    load_kernels()  # the program's LLM ops and quantized embedding kernels
    portable_lib._unsafe_reset_threadpool(request["threads"])
    before = _rss_mib()
    row = _runner(request) if request["mode"] == "runner" else _method(request)
    # The program is still loaded here: its weights (XNNPACK keeps its own packed copy), KV cache and
    # planned activations. The process's high-water mark also holds Python, torch and import-time peaks.
    row.update({"threads": portable_lib._threadpool_get_thread_count(), "peak_rss_mib": _peak_rss_mib(),
                "pte_rss_mib": max(0.0, _rss_mib() - before)})
    Path(result_file).write_text(json.dumps(row))


if __name__ == "__main__":
    main(*sys.argv[1:3])
