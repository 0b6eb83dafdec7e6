"""`edgeqat study --seeds 0,1,2`: the whole study once per seed, then every arm's mean and spread in one report.

    OUT/seed-0/  (a complete study: checkpoints, converted models, evaluations, study/)
    OUT/seed-1/ ...
    OUT/study/   study.md and study.json: per arm, perplexity and recovery over the seeds

Each seed's study is an ordinary one (reused when valid, resumable), so a killed run picks up at the seed
and the stage where it stopped. The recovery on a small model moves by tens of points between seeds; the
spread is what tells a real difference from noise.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path

from edgeqat.artifacts import atomic_dir, versions, write_json_atomic, write_record, write_text_atomic
from edgeqat.config import RunConfig, to_dict
from edgeqat.ownership import check_output
from edgeqat.paths import portable_config
from edgeqat.train.model_loading import is_main_process
from edgeqat.train.study import study
from edgeqat.train.study_report import ARM_LABELS, STUDY_JSON, STUDY_MD

log = logging.getLogger("edgeqat")
FORMAT, FORMAT_VERSION = "edgeqat-study-seeds", 1


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    return dataclasses.replace(config, output_dir=str(Path(config.output_dir) / f"seed-{seed}"),
                               train=dataclasses.replace(config.train, seed=seed),
                               study=dataclasses.replace(config.study, seeds=[]))


def _spread(values: list[float | None]) -> dict:
    known = [v for v in values if v is not None]
    if not known:
        return {"values": values, "mean": None, "std": None, "min": None, "max": None}
    return {"values": values, "mean": statistics.fmean(known), "std": statistics.stdev(known) if len(known) > 1 else 0.0,
            "min": min(known), "max": max(known)}


def summarize_seeds(config: RunConfig, reports: dict[int, dict]) -> dict:
    """Per arm, held-out perplexity over the seeds; per QAT arm, the recovery too."""
    first = next(iter(reports.values()))
    arms = {}
    for arm in first["arms"]:
        arms[arm] = {"perplexity": _spread([r["arms"][arm]["held_out"]["perplexity"] for r in reports.values()])}
        if arm in first["recovery_by_arm"]:
            arms[arm]["recovery"] = _spread([r["recovery_by_arm"][arm]["perplexity"] for r in reports.values()])
            arms[arm]["step_time_ratio"] = _spread([r["arms"][arm].get("step_time_ratio") for r in reports.values()])
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "seeds": list(reports),
            **{k: first[k] for k in ("model", "dataset", "eval_dataset", "scheme", "group_size", "fine_tuning")},
            "arms": arms, "studies": {str(seed): f"seed-{seed}" for seed in reports},  # relative to the output folder
            "config": portable_config(to_dict(config), Path(config.output_dir) / "study"), "versions": versions()}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100 + 0.0:.1f} %"


def render_seeds_markdown(summary: dict) -> str:
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [
        "# edgeqat study over seeds: baseline vs PTQ vs QAT",
        "",
        f"Model `{summary['model']}`, dataset `{summary['dataset']}`, {summary['fine_tuning']} fine-tuning, scheme "
        f"**{summary['scheme']}** (group size {summary['group_size']}); seeds {seeds}, one study each (`seed-S/`).",
        "",
        "| run | held-out ppl, mean ± std | recovery, mean ± std | recovery, min – max | recovery per seed |",
        "|---|---|---|---|---|",
    ]
    for arm, a in summary["arms"].items():
        ppl, rec = a["perplexity"], a.get("recovery")
        cells = ["", "", ""] if rec is None else [
            "-" if rec["mean"] is None else f"{rec['mean'] * 100:.1f} ± {rec['std'] * 100:.1f} %",
            f"{_pct(rec['min'])} – {_pct(rec['max'])}", " / ".join(_pct(v) for v in rec["values"])]
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {ppl['mean']:.3f} ± {ppl['std']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Recovery is (PTQ − QAT) / (PTQ − baseline) of held-out perplexity, within each seed.", ""]
    return "\n".join(lines)


def study_seeds(config: RunConfig, resume: bool = False) -> dict:
    """One study per seed of ``config.study.seeds`` under OUT/seed-S, then OUT/study with the spread (rank 0)."""
    out = Path(config.output_dir) / "study"
    check_output(out, "study")  # before hours of training, not after
    reports = {seed: study(seed_config(config, seed), resume) for seed in config.study.seeds}
    if not is_main_process():
        return {}
    summary = summarize_seeds(config, reports)
    with atomic_dir(out, "study") as tmp:
        write_text_atomic(tmp / STUDY_MD, render_seeds_markdown(summary))
        write_json_atomic(tmp / STUDY_JSON, summary)
        write_record(tmp, "study", summary["config"])
    log.info("study over seeds %s: %s", ", ".join(map(str, config.study.seeds)), out / STUDY_MD)
    return summary
