"""llama.cpp's side of benchmarks/decode_speed.py, each step in its own process.

    python benchmarks/llama_cpp_worker.py convert LLAMA_CPP_DIR HF_DIR OUT.gguf   # llama.cpp's converter
    python benchmarks/llama_cpp_worker.py quantize IN.gguf OUT.gguf TYPE          # llama.cpp's quantizer
    python benchmarks/llama_cpp_worker.py time REQUEST.json RESULT.json            # one timing

``convert`` runs llama.cpp's own convert_hf_to_gguf.py from LLAMA_CPP_DIR (the sources of the installed
llama-cpp-python) with one change: its BPE pre-tokenizer detection, which refuses tokenizers it has no
hash for (the embedded model's), is told "qwen2". That only shapes how llama.cpp would split text, and
this benchmark feeds token ids. ``convert`` needs torch and transformers; the others need llama_cpp.

``time``: REQUEST is {"gguf", "threads", "prompt_ids", "decode_tokens", "repeats"}. The prompt is fed as token ids
(the same ids our `.pte` gets) in one ``llama_decode``, then greedy decoding one token at a time, each a
``llama_decode`` and an argmax over the logits, timed around those C calls (llama_perf_context reads zeros
through this binding). The ExecuTorch runner's times likewise hold its forward calls and its sampling.
The best of ``repeats`` runs after a warm-up, as the `.pte` probe does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _decode(llama_cpp, ctx, tokens: list[int], vocab: int) -> int:
    """One llama_decode of ``tokens`` (positions follow the cache), and the greedy next token."""
    import numpy as np

    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
        raise SystemExit("llama_decode failed")
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(vocab,))
    return int(logits.argmax())


def _run(llama_cpp, ctx, vocab: int, prompt_ids: list[int], decode_tokens: int) -> dict:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    start = time.perf_counter()
    token = _decode(llama_cpp, ctx, prompt_ids, vocab)
    prefilled = time.perf_counter()
    for _ in range(decode_tokens):
        token = _decode(llama_cpp, ctx, [token], vocab)
    done = time.perf_counter()
    return {
        "prompt_tokens": len(prompt_ids),
        "prefill_tokens_per_s": len(prompt_ids) / (prefilled - start),
        "decode_tokens": decode_tokens,
        "decode_tokens_per_s": decode_tokens / (done - prefilled),
    }


def convert(llama_cpp_dir: str, hf_dir: str, out: str) -> None:
    sys.path[:0] = [llama_cpp_dir, str(Path(llama_cpp_dir) / "gguf-py")]  # the converter's own gguf package
    sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outfile", out, "--outtype", "f16"]
    import runpy

    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    runpy.run_path(str(Path(llama_cpp_dir) / "convert_hf_to_gguf.py"), run_name="__main__")


def quantize(source: str, out: str, type_name: str) -> None:
    import os

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{type_name.upper()}")
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(source.encode(), out.encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantize {source} to {type_name}")


def time_gguf(request_file: str, result_file: str) -> None:
    import llama_cpp

    request = json.loads(Path(request_file).read_text())
    prompt_ids, decode_tokens = request["prompt_ids"], request["decode_tokens"]
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=request["gguf"], n_ctx=len(prompt_ids) + decode_tokens + 8, n_batch=max(512, len(prompt_ids)),
        n_threads=request["threads"], n_threads_batch=request["threads"], verbose=False,
    )
    load_ms = (time.perf_counter() - start) * 1e3
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
    _run(llama_cpp, llm.ctx, vocab, prompt_ids, min(decode_tokens, 4))  # warm-up
    runs = [_run(llama_cpp, llm.ctx, vocab, prompt_ids, decode_tokens) for _ in range(request["repeats"])]
    best = max(runs, key=lambda row: row["decode_tokens_per_s"])
    best["prefill_tokens_per_s"] = max(row["prefill_tokens_per_s"] for row in runs)
    Path(result_file).write_text(json.dumps({**best, "threads": request["threads"], "load_ms": load_ms,
                                             "llama_cpp_python": llama_cpp.__version__}))


if __name__ == "__main__":
    commands = {"convert": convert, "quantize": quantize, "time": time_gguf}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: llama_cpp_worker.py {{{'|'.join(commands)}}} ARGS...")
    commands[sys.argv[1]](*sys.argv[2:])
