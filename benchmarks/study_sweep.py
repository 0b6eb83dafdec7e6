"""QAT recovery over a grid of learning rates, seeds and LoRA-QAT ways: `edgeqat study` once per cell.

    python benchmarks/study_sweep.py --work runs/sweep --lora-rank 16 --learning-rates 3e-4,1e-3,3e-3 \\
        --seeds 0,1,2 --lora-fake-quant merged,base --parallel 6 -- --device cuda

Each cell is its own study folder (reused when still valid, as `edgeqat study` reuses it), run as a separate
process, ``--parallel`` at a time: a small model leaves a GPU mostly idle. Arguments after ``--`` go to every
`edgeqat study`. Prints one row per (way, learning rate): the bf16, PTQ and QAT perplexities and the recovery
(PTQ − QAT) / (PTQ − bf16), mean and range over the seeds, and writes every cell's numbers as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeqat.artifacts import versions, write_json_atomic


def _cell_dir(work: Path, way: str, lr: str, seed: str) -> Path:
    return work / f"{way}-lr{lr}-seed{seed}"


def run_cell(work: Path, way: str, lr: str, seed: str, lora_rank: int, extra: list[str]) -> dict:
    out = _cell_dir(work, way, lr, seed)
    argv = [sys.executable, "-m", "edgeqat", "study", "--output", str(out), "--learning-rate", lr, "--seed", seed,
            "--lora-rank", str(lora_rank), *(["--lora-fake-quant", way] if lora_rank else []), *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.log", "w") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        return {"way": way, "lr": float(lr), "seed": int(seed), "error": f"exit {done.returncode}, see {out}.log"}
    report = json.loads((out / "study" / "study.json").read_text())
    arms = report["arms"]
    qat = next(arm for arm in arms if arm not in ("bf16", "ptq"))  # the first QAT arm (study.arms)
    return {"way": way, "lr": float(lr), "seed": int(seed), "recovery": report["recovery"]["perplexity"],
            **{f"{name}_ppl": arms[arm]["held_out"]["perplexity"] for name, arm in (("bf16", "bf16"), ("ptq", "ptq"), ("qat", qat))},
            "qat_step_time_ratio": report.get("qat_step_time_ratio"),
            "qat_peak_gib": arms[qat].get("peak_gpu_memory_gib"), "bf16_peak_gib": arms["bf16"].get("peak_gpu_memory_gib")}


def summarize(cells: list[dict]) -> list[dict]:
    rows = []
    for (way, lr), group in itertools.groupby(sorted(cells, key=lambda c: (c["way"], c["lr"])), key=lambda c: (c["way"], c["lr"])):
        group = [c for c in group if "recovery" in c]
        if not group:
            continue
        recovery = [c["recovery"] for c in group]
        rows.append({"way": way, "lr": lr, "seeds": len(group), "recovery_mean": statistics.fmean(recovery),
                     "recovery_min": min(recovery), "recovery_max": max(recovery),
                     **{f"{arm}_ppl_mean": statistics.fmean(c[f"{arm}_ppl"] for c in group) for arm in ("bf16", "ptq", "qat")}})
    return rows


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="one study folder per cell goes here")
    parser.add_argument("--lora-rank", type=int, default=16, help="0: full fine-tuning (then --lora-fake-quant is moot)")
    parser.add_argument("--learning-rates", default="3e-4,1e-3,3e-3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lora-fake-quant", default="merged,base")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--label", default="", help="names this sweep's arm in the table (e.g. the extra arguments)")
    parser.add_argument("--json", type=Path, help="default: WORK/sweep.json")
    args = parser.parse_args(argv)
    ways = args.lora_fake_quant.split(",") if args.lora_rank else ["full"]
    grid = list(itertools.product(ways, args.learning_rates.split(","), args.seeds.split(",")))
    with ThreadPoolExecutor(args.parallel) as pool:
        cells = list(pool.map(lambda cell: run_cell(args.work, *cell, args.lora_rank, extra), grid))
    for c in cells:
        if "error" in c:
            print(f"  {c['way']} lr {c['lr']} seed {c['seed']}: {c['error']}", file=sys.stderr)
    rows = summarize(cells)
    fine_tuning = f"LoRA r{args.lora_rank}" if args.lora_rank else "full fine-tuning"
    print(f"\n{fine_tuning}, `edgeqat study {' '.join(extra)}`, seeds {args.seeds}\n")
    print("| arm | LoRA fake-quantizes | lr | seeds | bf16 ppl | PTQ ppl | QAT ppl | recovery mean (min – max) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {args.label or 'QAT'} | {r['way']} | {r['lr']:g} | {r['seeds']} | {r['bf16_ppl_mean']:.3f} | {r['ptq_ppl_mean']:.3f} | "
              f"{r['qat_ppl_mean']:.3f} | {100 * r['recovery_mean']:.1f} % ({100 * r['recovery_min']:.1f} – "
              f"{100 * r['recovery_max']:.1f}) |")
    write_json_atomic(args.json or args.work / "sweep.json", {"fine_tuning": fine_tuning, "label": args.label, "study_args": extra,
                                                              "cells": cells, "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
