"""QAT recovery over a grid of learning rates, seeds and LoRA-QAT ways: `edgeqat study` once per cell.

    python benchmarks/study_sweep.py --work runs/sweep --lora-rank 16 --learning-rates 3e-4,1e-3,3e-3 \\
        --seeds 0,1,2 --lora-fake-quant merged,base --parallel 6 -- --device cuda

Each cell is its own study folder (reused when still valid, as `edgeqat study` reuses it), run as a separate
process, ``--parallel`` at a time: a small model leaves a GPU mostly idle. Arguments after ``--`` go to every
`edgeqat study` (``--arms qat,qat-range`` trains both arms beside one baseline in every cell). Prints one row
per (way, learning rate, arm): the bf16, PTQ and QAT perplexities and the recovery (PTQ − QAT) / (PTQ − bf16),
mean and range over the seeds, and writes every cell's numbers as JSON.

With several learning rates it also prints each arm against the best baseline: per seed, the bf16 fine-tune
(and its PTQ) of the learning rate whose bf16 perplexity is lowest over the seeds, against the arm at each
learning rate. That is the comparison a user tuning both would make; the per-cell rows hold the learning
rate fixed.
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
    qat_arms = {arm: {"ppl": arms[arm]["held_out"]["perplexity"], "recovery": report["recovery_by_arm"][arm]["perplexity"],
                      "step_time_ratio": arms[arm].get("step_time_ratio"), "peak_gib": arms[arm].get("peak_gpu_memory_gib")}
                for arm in report["recovery_by_arm"]}
    first = next(iter(qat_arms))  # study.arms' first: the cell's headline, as in earlier sweeps' JSON
    return {"way": way, "lr": float(lr), "seed": int(seed), "recovery": qat_arms[first]["recovery"],
            "bf16_ppl": arms["bf16"]["held_out"]["perplexity"], "ptq_ppl": arms["ptq"]["held_out"]["perplexity"],
            "qat_ppl": qat_arms[first]["ppl"], "qat_step_time_ratio": qat_arms[first]["step_time_ratio"],
            "qat_peak_gib": qat_arms[first]["peak_gib"], "bf16_peak_gib": arms["bf16"].get("peak_gpu_memory_gib"),
            "arms": qat_arms}


def _cell_arms(cell: dict) -> dict:
    """{arm: its numbers}; a cell of an older sweep's JSON has its one arm at the top level."""
    return cell.get("arms") or {"qat": {"ppl": cell["qat_ppl"], "recovery": cell["recovery"]}}


def _recovery_spread(recovery: list[float]) -> dict:
    return {"recovery_mean": statistics.fmean(recovery), "recovery_min": min(recovery), "recovery_max": max(recovery)}


def summarize(cells: list[dict]) -> list[dict]:
    """One row per (way, learning rate, arm): mean and range over the seeds."""
    rows = []
    done = [c for c in cells if "recovery" in c]
    for (way, lr), group in itertools.groupby(sorted(done, key=lambda c: (c["way"], c["lr"])), key=lambda c: (c["way"], c["lr"])):
        group = list(group)
        for arm in _cell_arms(group[0]):
            recovery = [_cell_arms(c)[arm]["recovery"] for c in group]
            rows.append({"way": way, "lr": lr, "arm": arm, "seeds": len(group), **_recovery_spread(recovery),
                         "bf16_ppl_mean": statistics.fmean(c["bf16_ppl"] for c in group),
                         "ptq_ppl_mean": statistics.fmean(c["ptq_ppl"] for c in group),
                         "qat_ppl_mean": statistics.fmean(_cell_arms(c)[arm]["ppl"] for c in group)})
    return rows


def against_best_baseline(cells: list[dict]) -> list[dict]:
    """Per way: the learning rate whose bf16 fine-tune has the lowest mean perplexity over the seeds, and each
    arm at each learning rate against that baseline and its PTQ, seed by seed (seeds every rate has)."""
    rows = []
    done = [c for c in cells if "recovery" in c]
    for way in sorted({c["way"] for c in done}):
        by_lr: dict[float, dict[int, dict]] = {}
        for c in done:
            if c["way"] == way:
                by_lr.setdefault(c["lr"], {})[c["seed"]] = c
        seeds = sorted(set.intersection(*(set(v) for v in by_lr.values())))
        if len(by_lr) < 2 or not seeds:
            continue
        best = min(by_lr, key=lambda lr: statistics.fmean(by_lr[lr][s]["bf16_ppl"] for s in seeds))
        for lr, cells_of_lr in sorted(by_lr.items()):
            for arm in _cell_arms(cells_of_lr[seeds[0]]):
                recovery = []
                for s in seeds:
                    base = by_lr[best][s]
                    gap = base["ptq_ppl"] - base["bf16_ppl"]
                    recovery.append((base["ptq_ppl"] - _cell_arms(cells_of_lr[s])[arm]["ppl"]) / gap)
                rows.append({"way": way, "baseline_lr": best, "lr": lr, "arm": arm, "seeds": len(seeds),
                             **_recovery_spread(recovery),
                             "bf16_ppl_mean": statistics.fmean(by_lr[best][s]["bf16_ppl"] for s in seeds),
                             "ptq_ppl_mean": statistics.fmean(by_lr[best][s]["ptq_ppl"] for s in seeds),
                             "qat_ppl_mean": statistics.fmean(_cell_arms(cells_of_lr[s])[arm]["ppl"] for s in seeds)})
    return rows


def _pct_range(r: dict) -> str:
    return f"{100 * r['recovery_mean']:.1f} % ({100 * r['recovery_min']:.1f} – {100 * r['recovery_max']:.1f})"


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
    best = against_best_baseline(cells)
    fine_tuning = f"LoRA r{args.lora_rank}" if args.lora_rank else "full fine-tuning"
    print(f"\n{fine_tuning}, `edgeqat study {' '.join(extra)}`, seeds {args.seeds}\n")
    print("| arm | LoRA fake-quantizes | lr | seeds | bf16 ppl | PTQ ppl | QAT ppl | recovery mean (min – max) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {args.label or r['arm']} | {r['way']} | {r['lr']:g} | {r['seeds']} | {r['bf16_ppl_mean']:.3f} | "
              f"{r['ptq_ppl_mean']:.3f} | {r['qat_ppl_mean']:.3f} | {_pct_range(r)} |")
    if best:
        print("\nAgainst the best baseline (the bf16 learning rate with the lowest mean perplexity), seed by seed:\n")
        print("| arm | LoRA fake-quantizes | baseline lr | arm lr | seeds | bf16 ppl | PTQ ppl | QAT ppl | recovery mean (min – max) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in best:
            print(f"| {args.label or r['arm']} | {r['way']} | {r['baseline_lr']:g} | {r['lr']:g} | {r['seeds']} | "
                  f"{r['bf16_ppl_mean']:.3f} | {r['ptq_ppl_mean']:.3f} | {r['qat_ppl_mean']:.3f} | {_pct_range(r)} |")
    write_json_atomic(args.json or args.work / "sweep.json", {"fine_tuning": fine_tuning, "label": args.label, "study_args": extra,
                                                              "cells": cells, "rows": rows, "against_best_baseline": best,
                                                              "versions": versions()})


if __name__ == "__main__":
    main()
