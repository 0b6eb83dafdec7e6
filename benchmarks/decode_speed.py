"""Our `.pte` against llama.cpp on the same model, host and threads: prefill and decode tokens/s, the
memory-bandwidth bound, file sizes and export time, in one interleaved run.

    pip install -e ".[benchmark]"        # llama-cpp-python (builds llama.cpp from source, minutes)
    python benchmarks/decode_speed.py --model default --work /tmp/speed-default --prompt-tokens 128 --decode-tokens 120
    python benchmarks/decode_speed.py --model qwen3-0.6b --work /tmp/speed-qwen3 --threads 1,2,4

``--model``: "default" (the embedded model), a preset of shaped_model.py (config-built, random weights:
speed only) or a local Hugging Face folder. Ours: ``edgeqat train`` (one LoRA-QAT step: the program's speed
does not depend on what the weights learned), ``convert`` and ``export`` at ``--scheme`` with 4-bit
embeddings, timed by ExecuTorch's C++ LLM runner in a fresh process (runtime_check/latency_probe.py, as
``edgeqat check`` does). llama.cpp: its own converter (f16) and quantizer (``--gguf-type``, default Q4_0) from
the installed llama-cpp-python's sources, timed in a fresh process (llama_cpp_worker.py). Both get the same
prompt ids (the first held-out window that our program decodes to the end without its end token, so that
both decode every token asked for) and decode greedily; each timing is the best of two generations after a
warm-up, and the runs alternate ours / llama.cpp for every thread count, ``--rounds`` times; the table shows
medians.

Work products are kept in ``--work`` and reused when present, so a second run only times. Prints a table
and writes it as JSON (``--json``, default WORK/decode_speed.json). Never run in CI: it builds llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from shaped_model import SHAPES, save_shaped_model

from edgeqat.artifacts import versions, write_json_atomic
from edgeqat.paths import DEFAULT_EVAL_DATA, DEFAULT_MODEL

MB = 1e6


def _step(what: str) -> None:
    print(f"[decode_speed] {what}", file=sys.stderr, flush=True)


def _edgeqat(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeqat", *args], check=True)
    return time.perf_counter() - start


def hf_model(model: str, work: Path) -> Path:
    if model == "default":
        return DEFAULT_MODEL
    if model in SHAPES:
        folder = work / f"hf-{model}"
        if not (folder / "config.json").is_file():
            _step(f"building the {model}-shaped model")
            save_shaped_model(model, folder)
        return folder
    if not (Path(model) / "config.json").is_file():
        raise SystemExit(f"--model {model!r} is neither 'default', a preset ({', '.join(SHAPES)}) nor a model folder")
    return Path(model)


def our_bundle(hf: Path, work: Path, scheme: str, max_seq_len: int) -> tuple[Path, dict]:
    """The edgeqat bundle of ``hf`` (made when absent) and the seconds each stage took."""
    bundle = work / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle, json.loads((work / "stage_seconds.json").read_text())
    seconds = {}
    _step("edgeqat train (1 LoRA-QAT step), convert, export")
    seconds["train"] = _edgeqat("train", "--model", str(hf), "--output", str(work / "checkpoint"), "--scheme", scheme,
                                "--lora-rank", "8", "--max-steps", "1", "--batch-size", "1", "--max-length", "32",
                                "--embedding-bits", "4")
    seconds["convert"] = _edgeqat("convert", str(work / "checkpoint"), "--output", str(work / "converted"))
    seconds["export"] = _edgeqat("export", str(work / "converted"), "--output", str(bundle),
                                 "--max-seq-len", str(max_seq_len))
    write_json_atomic(work / "stage_seconds.json", seconds)
    return bundle, seconds


def llama_cpp_sources(work: Path, llama_python: str) -> Path:
    """llama.cpp's sources of the installed llama-cpp-python (its sdist, from the package index)."""
    version = subprocess.run([llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"], check=True,
                             capture_output=True, text=True).stdout.strip()
    root = work / f"llama-cpp-python-{version}"
    source = root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (source / "convert_hf_to_gguf.py").is_file():
        _step(f"fetching llama-cpp-python {version}'s sources for llama.cpp's converter")
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        "-d", str(root), f"llama-cpp-python=={version}"], check=True)
        with tarfile.open(next(root.glob("llama_cpp_python-*.tar.gz"))) as archive:
            wanted = [m for m in archive.getmembers()
                      if "/vendor/llama.cpp/" in m.name and ("/convert_hf_to_gguf.py" in m.name
                                                              or "/gguf-py/" in m.name or "/conversion/" in m.name)]
            archive.extractall(root, members=wanted, filter="data")
    return source


def llama_gguf(hf: Path, work: Path, gguf_type: str, llama_python: str) -> Path:
    quantized = work / f"model-{gguf_type.lower()}.gguf"
    if quantized.is_file():
        return quantized
    source = llama_cpp_sources(work, llama_python)
    f16 = work / "model-f16.gguf"
    worker = str(HERE / "llama_cpp_worker.py")
    _step("llama.cpp: convert_hf_to_gguf (f16)")
    subprocess.run([sys.executable, worker, "convert", str(source), str(hf), str(f16)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _step(f"llama.cpp: quantize to {gguf_type}")
    partial = quantized.with_suffix(".partial")
    subprocess.run([llama_python, worker, "quantize", str(f16), str(partial), gguf_type], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.replace(partial, quantized)
    f16.unlink()
    return quantized


def prompts(tokenizer_dir: Path, tokens: int, windows: int = 8) -> list[tuple[str, list[int]]]:
    """Consecutive windows of held-out text, each cut to about ``tokens`` tokens, with their ids as the
    runner's tokenizer makes them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = " ".join(json.loads(line)["text"] for line in DEFAULT_EVAL_DATA.read_text().splitlines())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    found = []
    for start in range(0, min(len(ids) - tokens, windows * tokens) + 1, tokens):
        window = tokenizer.decode(ids[start:start + tokens])
        window_ids = tokenizer(window, add_special_tokens=False)["input_ids"]
        if len(window_ids) <= tokens:  # decoding and re-encoding can merge or split a token at the edges
            found.append((window, window_ids))
    return found


def prompt_decoded_to_the_end(bundle: Path, manifest: dict, tokens: int, decode: int) -> tuple[str, list[int], int]:
    """The first held-out window whose greedy continuation by our `.pte` runs ``decode`` tokens without the
    model's end token, and how many windows were passed over. llama.cpp's side decodes every token it is
    asked for, so both sides then decode the same number of tokens at the same positions; a window the
    runner stops early on (seen: the default model ended after 10 tokens) would time ours over a shorter,
    cheaper context. Checked with the LLM runner itself, at one thread."""
    candidates = prompts(bundle, tokens)
    for skipped, (text, ids) in enumerate(candidates):
        if time_ours(bundle, manifest, text, ids, decode, 1)["generated_tokens"] >= decode:
            return text, ids, skipped
    raise SystemExit(f"the model ends within {decode} decoded tokens after each of {len(candidates)} held-out "
                     f"prompts of {tokens} tokens; try a smaller --decode-tokens")


def time_ours(bundle: Path, manifest: dict, text: str, ids: list[int], decode: int, threads: int) -> dict:
    from edgeqat.runtime_check.latency import probe_pte

    return probe_pte(bundle, manifest, "runner", ids, text, decode, threads)


def time_llama(gguf: Path, ids: list[int], decode: int, threads: int, llama_python: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="decode-speed-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"gguf": str(gguf), "threads": threads, "prompt_ids": ids,
                                       "decode_tokens": decode, "repeats": 2}))
        subprocess.run([llama_python, str(HERE / "llama_cpp_worker.py"), "time", str(request), str(result)],
                       check=True, stderr=subprocess.DEVNULL)
        return json.loads(result.read_text())


def bytes_per_token(bundle: Path, manifest: dict, gguf: Path, context: int) -> dict:
    """What one decode step reads: ours from device_estimate's model of the program; llama.cpp's as its
    file (a tied Q4_0 model reads its whole token_embd as the output layer) plus its f16 KV cache."""
    from edgeqat.runtime_check.device_estimate import decode_bytes_per_token, kv_cache_bytes, pte_data_bytes
    from edgeqat.schemes import embedding_group_size

    config = json.loads((bundle.parent / "converted" / "config.json").read_text())
    q = manifest["quantization"]
    ours = decode_bytes_per_token(pte_data_bytes(bundle / manifest["program"]), config, q["embedding_bits"], context,
                                  embedding_group_size(q["embedding_bits"], q["group_size"]),
                                  manifest["export"].get("bytes_stored_once", 0))
    return {"ours": ours.total, "llama_cpp": gguf.stat().st_size + kv_cache_bytes(config, context, value_bytes=2)}


def ideal_bytes(hf: Path) -> float:
    """Parameters x 4.5 bits (int4 and one 16-bit scale per 32), each stored tensor counted once (a tied
    output layer is not stored)."""
    from math import prod

    from safetensors import safe_open

    count = 0
    for path in hf.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            count += sum(prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118  (not iterable)
    return count * 4.5 / 8


def host_cpu() -> dict:
    """The CPU's model and the vector extensions that decide which int8/int4 kernels XNNPACK and llama.cpp
    pick (on an AVX2-only host, perf showed XNNPACK's int4 GEMM widening each byte to 16 bits before its
    multiply-add), so that runs on different shared hosts can be told apart."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp", "i8mm")
    return {"model": model, "vector_extensions": [f for f in wanted if f in flags]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default, a preset (" + ", ".join(SHAPES) + ") or a folder")
    parser.add_argument("--work", type=Path, required=True, help="folder for the bundle, GGUF files and results")
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--scheme", default="8da4w")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--gguf-type", default="q4_0", help="llama.cpp quantization type (q4_0, q4_k_m, q8_0, ...)")
    parser.add_argument("--llama-python", default=sys.executable,
                        help="a Python with llama-cpp-python (default: this one)")
    parser.add_argument("--json", type=Path, help="default: WORK/decode_speed.json")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)

    hf = hf_model(args.model, args.work)
    bundle, stage_seconds = our_bundle(hf, args.work, args.scheme, args.max_seq_len)
    manifest = json.loads((bundle / "manifest.json").read_text())
    gguf = llama_gguf(hf, args.work, args.gguf_type, args.llama_python)
    context = manifest["export"]["config"]["max_seq_len"]
    if args.prompt_tokens + args.decode_tokens >= context:
        raise SystemExit(f"--prompt-tokens {args.prompt_tokens} + --decode-tokens {args.decode_tokens} must stay below "
                         f"the program's max_seq_len {context} (the runner would stop at the end of its cache)")
    text, ids, skipped = prompt_decoded_to_the_end(bundle, manifest, args.prompt_tokens, args.decode_tokens)
    from edgeqat.runtime_check.device_estimate import measure_host_bandwidth

    rows = {t: {"ours": [], "llama_cpp": []} for t in threads}
    for round_ in range(args.rounds):
        for t in threads:
            _step(f"round {round_ + 1}/{args.rounds}, {t} thread(s)")
            rows[t]["ours"].append(time_ours(bundle, manifest, text, ids, args.decode_tokens, t))
            rows[t]["llama_cpp"].append(time_llama(gguf, ids, args.decode_tokens, t, args.llama_python))
    bandwidth = {t: measure_host_bandwidth(t) for t in threads}
    read = bytes_per_token(bundle, manifest, gguf, len(ids) + args.decode_tokens // 2)

    table = []
    for t in threads:
        row = {"threads": t, "host_read_gb_per_s": round(bandwidth[t], 2)}
        for side in ("ours", "llama_cpp"):
            for rate in ("prefill_tokens_per_s", "decode_tokens_per_s"):
                row[f"{side}_{rate}"] = round(statistics.median(r[rate] for r in rows[t][side]), 1)
            bound = bandwidth[t] * 1e9 / read[side]
            row[f"{side}_decode_bound_tokens_per_s"] = round(bound, 1)
            row[f"{side}_percent_of_bound"] = round(100 * row[f"{side}_decode_tokens_per_s"] / bound, 1)
        row["decode_ratio"] = round(row["ours_decode_tokens_per_s"] / row["llama_cpp_decode_tokens_per_s"], 2)
        row["prefill_ratio"] = round(row["ours_prefill_tokens_per_s"] / row["llama_cpp_prefill_tokens_per_s"], 2)
        table.append(row)

    sizes = {"pte_bytes": (bundle / manifest["program"]).stat().st_size, "gguf_bytes": gguf.stat().st_size,
             "ideal_int4_bytes": ideal_bytes(hf)}
    sizes["pte_over_ideal"] = round(sizes["pte_bytes"] / sizes["ideal_int4_bytes"], 3)
    report = {
        "model": args.model, "scheme": args.scheme, "gguf_type": args.gguf_type, "max_seq_len": args.max_seq_len,
        "prompt_tokens": len(ids), "prompt_windows_skipped": skipped, "decode_tokens": args.decode_tokens, "rounds": args.rounds,
        "host": {"logical_cores": os.cpu_count(), "load_average": os.getloadavg(), "cpu": host_cpu()},
        "table": table, "sizes": sizes, "bytes_read_per_decoded_token": read,
        "export_seconds": manifest["export"].get("seconds"), "stage_seconds": stage_seconds,
        "delegate_calls": manifest["export"]["delegate_calls"], "undelegated_ops": manifest["export"]["undelegated_ops"],
        "raw": {str(t): rows[t] for t in threads}, "versions": versions(),
    }
    write_json_atomic(args.json or args.work / "decode_speed.json", report)

    print(f"\n{args.model}: .pte {sizes['pte_bytes'] / MB:.1f} MB ({sizes['pte_over_ideal']:.2f}x the int4 ideal "
          f"{sizes['ideal_int4_bytes'] / MB:.1f} MB), llama.cpp {args.gguf_type} {sizes['gguf_bytes'] / MB:.1f} MB; "
          f"prompt {len(ids)} tokens, {args.decode_tokens} decoded, median of {args.rounds} rounds")
    if manifest["export"].get("seconds"):
        print("export: " + ", ".join(f"{k} {v:.0f} s" for k, v in manifest["export"]["seconds"].items()))
    header = ("threads", "prefill ours", "prefill llama", "ratio", "decode ours", "decode llama", "ratio",
              "ours % bound", "llama % bound")
    stopped = sorted({r["generated_tokens"] for t in threads for r in rows[t]["ours"]
                      if r["generated_tokens"] < args.decode_tokens})
    if stopped:  # the prompt was checked at one thread; another thread count may round differently
        print(f"note: the LLM runner stopped at the model's end token after {stopped} of {args.decode_tokens} "
              f"tokens in some runs; its rates are over the tokens it decoded")
    print(" | ".join(header))
    for r in table:
        print(" | ".join(str(v) for v in (
            r["threads"], r["ours_prefill_tokens_per_s"], r["llama_cpp_prefill_tokens_per_s"], r["prefill_ratio"],
            r["ours_decode_tokens_per_s"], r["llama_cpp_decode_tokens_per_s"], r["decode_ratio"],
            r["ours_percent_of_bound"], r["llama_cpp_percent_of_bound"])))


if __name__ == "__main__":
    main()
