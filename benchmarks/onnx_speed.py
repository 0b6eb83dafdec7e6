"""The bundle's ONNX model in ONNX Runtime against its `.pte` in ExecuTorch: speed, size and agreement, side by side.

    edgeqat export CONVERTED --output BUNDLE --format pte,onnx
    python benchmarks/onnx_speed.py BUNDLE --threads 1,2 --rounds 3 --levels 1,4

For each MatMulNBits accuracy_level in ``--levels`` (4: int8 activations, the bundle's default; 1: float32) the
ONNX model is built from the bundle's converted model (the bundle's own file for its level) and compared with
the eager converted model on held-out windows (logits cosine, top-1 agreement, perplexity). Then, for every
thread count and round, the `.pte`'s forward method and each ONNX model are timed one after another, each in
a fresh process (runtime_check/latency_probe.py: prefill of the prompt, then greedy decode). Prints one table
of medians and writes every round as JSON (``--json``, default onnx_speed.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from edgeqat.artifacts import versions, write_json_atomic
from edgeqat.export.onnx.export import build_onnx
from edgeqat.manifest import load_bundle
from edgeqat.paths import DEFAULT_EVAL_DATA
from edgeqat.runtime_check.comparison import compare_on_windows
from edgeqat.runtime_check.latency import probe_pte
from edgeqat.runtime_check.onnx_program import OnnxProgram
from edgeqat.runtime_check.references import CONVERTED_CPU, load_references
from edgeqat.train.data import token_windows


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--reference", help="the converted model (default: the manifest's source)")
    parser.add_argument("--threads", type=_ints, default=[1, 2])
    parser.add_argument("--levels", type=_ints, default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--json", type=Path, default=Path("onnx_speed.json"))
    args = parser.parse_args(argv)

    manifest = load_bundle(args.bundle)
    if "onnx" not in manifest:
        sys.exit(f"{args.bundle} has no ONNX model: export it with --format pte,onnx")
    model, tokenizer, references, _ = load_references(args.bundle, manifest, args.reference, None, "cpu")
    references = [r for r in references if r.name == CONVERTED_CPU]
    max_seq_len = manifest["model"]["max_seq_len"]
    windows = token_windows(tokenizer, "default", DEFAULT_EVAL_DATA, args.windows, max_seq_len - 1)
    prompt = windows[0][: min(args.prompt_tokens, max_seq_len - args.decode_tokens - 1)].tolist()

    with tempfile.TemporaryDirectory(prefix="edgeqat-onnx-levels-") as work:
        programs = {}  # level -> (folder holding its model.onnx, manifest section)
        for level in args.levels:
            if level == manifest["onnx"]["accuracy_level"]:
                programs[level] = (args.bundle, manifest["onnx"])
                continue
            folder = Path(work) / f"level{level}"
            folder.mkdir()
            built = build_onnx(model, max_seq_len, level)
            built.save(folder)
            programs[level] = (folder, built.section)
        agreement = {}
        for level, (folder, section) in programs.items():
            comparisons, ppl = compare_on_windows(OnnxProgram(folder, {"onnx": section}, 2).forward, references, windows)
            c = comparisons[CONVERTED_CPU]
            agreement[level] = {"cosine_mean": c["cosine_mean"], "top1_agreement": c["top1_agreement"],
                                "perplexity": ppl, "reference_perplexity": c["perplexity"],
                                "bytes": (folder / section["file"]).stat().st_size}
        rounds = []
        for round_ in range(args.rounds):
            for threads in args.threads:
                row = {"round": round_, "threads": threads,
                       "pte": probe_pte(args.bundle, manifest, "method", prompt, "", args.decode_tokens, threads)}
                for level, (folder, section) in programs.items():
                    row[f"onnx_level{level}"] = probe_pte(folder, {**manifest, "onnx": section}, "onnx", prompt, "",
                                                          args.decode_tokens, threads)
                rounds.append(row)
                print(f"round {round_} threads {threads}: .pte decode {row['pte']['decode_tokens_per_s']:.1f} tok/s, "
                      + ", ".join(f"ONNX level {lv} {row[f'onnx_level{lv}']['decode_tokens_per_s']:.1f}" for lv in programs),
                      file=sys.stderr)

    def median(threads: int, key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in rounds if r["threads"] == threads)

    pte_bytes = (args.bundle / manifest["program"]).stat().st_size
    print(f"\n.pte {pte_bytes / 1e6:.2f} MB; prompt {len(prompt)} tokens, {args.decode_tokens} decoded, medians of {args.rounds}")
    for level, a in agreement.items():
        print(f"ONNX accuracy_level {level}: {a['bytes'] / 1e6:.2f} MB ({a['bytes'] / pte_bytes:.2f}x), logits cosine "
              f"{a['cosine_mean']:.6f}, top-1 {a['top1_agreement']:.2%}, perplexity {a['perplexity']:.3f} "
              f"(eager {a['reference_perplexity']:.3f})")
    header = "| threads | .pte prefill | .pte decode | " + " | ".join(
        f"ONNX L{lv} prefill | ONNX L{lv} decode | decode ratio" for lv in programs) + " |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    table = []
    for threads in args.threads:
        cells = {"threads": threads, "pte_prefill": median(threads, "pte", "prefill_tokens_per_s"),
                 "pte_decode": median(threads, "pte", "decode_tokens_per_s")}
        text = f"| {threads} | {cells['pte_prefill']:,.0f} | {cells['pte_decode']:,.1f} |"
        for level in programs:
            prefill = median(threads, f"onnx_level{level}", "prefill_tokens_per_s")
            decode = median(threads, f"onnx_level{level}", "decode_tokens_per_s")
            cells.update({f"onnx_level{level}_prefill": prefill, f"onnx_level{level}_decode": decode})
            text += f" {prefill:,.0f} | {decode:,.1f} | {decode / cells['pte_decode']:.2f} |"
        table.append(cells)
        print(text)
    write_json_atomic(args.json, {"bundle": args.bundle.name, "pte_bytes": pte_bytes, "prompt_tokens": len(prompt),
                                  "decode_tokens": args.decode_tokens, "agreement": agreement, "table": table,
                                  "rounds": rounds, "versions": versions(), "torch_threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
