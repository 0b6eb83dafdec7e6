"""The study's report: study.json (for machines), study.md and loss_curves.png (for people)."""

from __future__ import annotations

import logging
from pathlib import Path

from edgeqat.artifacts import atomic_dir, versions, write_json_atomic, write_record, write_text_atomic
from edgeqat.config import RunConfig, group_size_of, to_dict
from edgeqat.paths import portable_config, portable_name, relative_path

log = logging.getLogger("edgeqat")
FORMAT, FORMAT_VERSION = "edgeqat-study", 2  # 2: any QAT arms (study.arms), recovery_by_arm
STUDY_JSON, STUDY_MD, LOSS_PLOT = "study.json", "study.md", "loss_curves.png"
TRAINING_FIELDS = ("train_seconds", "step_seconds", "tokens_per_s", "peak_gpu_memory_gib", "final_loss", "gpus", "gpu_name", "device")


def recovery(baseline: float, ptq: float, qat: float) -> float | None:
    """(PTQ - QAT) / (PTQ - baseline): the share of PTQ's loss that QAT wins back.

    The same formula serves perplexity (lower is better) and accuracy (higher is better); None when PTQ
    lost nothing to recover.
    """
    gap = ptq - baseline
    return None if abs(gap) < 1e-12 else (ptq - qat) / gap


ARM_LABELS = {"bf16": "bf16 fine-tune (baseline)", "ptq": "PTQ of the baseline", "qat": "QAT",
              "qat-range": "QAT + range learning", "qat-distill": "QAT + distillation",
              "qat-range-distill": "QAT + range learning + distillation"}


def qat_arms(evaluations: dict) -> list[str]:
    return [arm for arm in evaluations if arm not in ("bf16", "ptq")]


def _lm_eval_recovery(evaluations: dict, arm: str) -> dict[str, float | None]:
    out = {}
    for task, metrics in evaluations["bf16"].get("lm_eval", {}).items():
        for metric, base in metrics.items():
            try:
                ptq, qat = evaluations["ptq"]["lm_eval"][task][metric], evaluations[arm]["lm_eval"][task][metric]
            except KeyError:
                continue
            out[f"{task}/{metric}"] = recovery(base, ptq, qat)
    return out


def build_report(config: RunConfig, evaluations: dict, training: dict, folders: dict) -> dict:
    """``evaluations``: bf16, ptq and each QAT arm; ``training``: the train records of bf16 and each QAT arm.
    ``recovery`` and ``qat_step_time_ratio`` are the first QAT arm's; ``recovery_by_arm`` has every arm's."""
    ppl = {arm: evaluations[arm]["held_out"]["perplexity"] for arm in evaluations}
    study_dir = Path(config.output_dir) / "study"  # where the report is written
    bf16_s = training["bf16"].get("step_seconds")
    arms, recoveries = {}, {}
    for arm in evaluations:
        trained = training["bf16" if arm == "ptq" else arm]  # PTQ is the bf16 fine-tune, quantized after training
        arms[arm] = {
            "folder": relative_path(folders[arm], study_dir),  # e.g. ../qat-converted
            "trained_as": trained["mode"],
            **{k: trained.get(k) for k in TRAINING_FIELDS},
            **evaluations[arm],
        }
        if arm in qat_arms(evaluations):
            arms[arm]["trained_with"] = _trained_with(trained.get("config", {}))
            step_s = trained.get("step_seconds")
            arms[arm]["step_time_ratio"] = round(step_s / bf16_s, 3) if bf16_s and step_s else None
            recoveries[arm] = {"perplexity": recovery(ppl["bf16"], ppl["ptq"], ppl[arm]),
                               "lm_eval": _lm_eval_recovery(evaluations, arm)}
    first = qat_arms(evaluations)[0]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # Local paths relative to the study folder (OUT/study), as every artifact records them.
        "model": portable_name(config.train.model, study_dir),
        "dataset": portable_name(config.train.dataset, study_dir),
        "eval_dataset": portable_name(config.check.eval_dataset, study_dir),
        "scheme": config.quant.scheme,
        "group_size": group_size_of(config.quant),
        "fine_tuning": f"LoRA r{config.train.lora_rank}" if config.train.lora_rank else "full",
        "arms": arms,
        "recovery": recoveries[first],
        "recovery_by_arm": recoveries,
        "qat_step_time_ratio": arms[first]["step_time_ratio"],
        "config": portable_config(to_dict(config), study_dir),
        "versions": versions(),
    }


def _trained_with(stage_config: dict) -> dict:
    """What a QAT arm's training record says it learned with: range learning (and its scale rate) and distillation."""
    quant, train = stage_config.get("quant", {}), stage_config.get("train", {})
    return {"range_learning": bool(quant.get("range_learning")),
            "range_learning_rate": train.get("range_learning_rate") if quant.get("range_learning") else None,
            "distill_weight": train.get("distill_weight") or 0.0,
            "lora_fake_quant": train.get("lora_fake_quant") if train.get("lora_rank") else None}


def _trained_with_text(trained_with: dict | None) -> str:
    if not trained_with:
        return ""
    parts = [f"LoRA fake-quantizes the {trained_with['lora_fake_quant']} weight"] if trained_with.get("lora_fake_quant") else []
    parts.append(f"learned weight scales (scale learning rate {trained_with['range_learning_rate']:g})"
                 if trained_with["range_learning"] else "absmax weight scales")
    if trained_with["distill_weight"]:
        parts.append(f"distilled from the baseline (weight {trained_with['distill_weight']:g})")
    return "; ".join(parts)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value + 0.0 if isinstance(value, float) else value, spec)  # no "-0.0"


def render_markdown(report: dict) -> str:
    arms = report["arms"]
    tasks = sorted({f"{t}/{m}" for a in arms.values() for t, ms in a.get("lm_eval", {}).items() for m in ms})
    base_ppl = arms["bf16"]["held_out"]["perplexity"]
    header = ["run", "held-out ppl", "vs bf16", *tasks, "train time", "s/step", "tokens/s", "peak GPU GiB", "final loss"]
    rows = []
    for arm in arms:
        a, label = arms[arm], ARM_LABELS.get(arm, arm)
        ppl = a["held_out"]["perplexity"]
        scores = [_fmt(a.get("lm_eval", {}).get(t.split("/")[0], {}).get(t.split("/")[1]), ".4f") for t in tasks]
        same_run = arm == "ptq"  # its training is the baseline's: don't count it twice
        rows.append([
            label, f"{ppl:.3f}", f"{(ppl / base_ppl - 1) * 100:+.2f} %", *scores,
            "(baseline's)" if same_run else _fmt(a["train_seconds"], ".0f") + " s",
            "" if same_run else _fmt(a["step_seconds"], ".3f"),
            "" if same_run else _fmt(a["tokens_per_s"], ",.0f"),
            "" if same_run else _fmt(a["peak_gpu_memory_gib"], ".1f"),
            "" if same_run else _fmt(a["final_loss"], ".4f"),
        ])
    lines = [
        "# edgeqat study: baseline vs PTQ vs QAT",
        "",
        f"Model `{report['model']}`, dataset `{report['dataset']}`, {report['fine_tuning']} fine-tuning, scheme "
        f"**{report['scheme']}** (group size {report['group_size']}); held-out text `{report['eval_dataset']}`, "
        f"{arms['bf16']['held_out']['windows']} windows, {arms['bf16']['held_out']['tokens']} predicted tokens.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    for arm, rec in report["recovery_by_arm"].items():
        label, ppl_rec = ARM_LABELS.get(arm, arm), rec["perplexity"]
        lines += ["", f"**{label} recovers {_fmt(None if ppl_rec is None else ppl_rec * 100, '.1f')} % of PTQ's "
                  "perplexity loss** ((PTQ − QAT) / (PTQ − baseline))."]
        for name, value in rec["lm_eval"].items():
            lines.append(f"- {name}: " + ("no recovery to measure: PTQ did not change it" if value is None
                                           else f"recovery {value * 100 + 0.0:.1f} %"))
        if arms[arm].get("trained_with"):
            lines.append(f"- trained with {_trained_with_text(arms[arm]['trained_with'])}")
        if arms[arm].get("step_time_ratio"):
            lines.append(f"- a step took {arms[arm]['step_time_ratio']:.2f}× a baseline step")
    lines += ["", "Step times are the median after the first logging interval; s/step and tokens/s are "
              "steady-state, train time is wall time."]
    lines += ["", f"![loss curves]({LOSS_PLOT})", ""]
    return "\n".join(lines)


def plot_loss_curves(training: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for mode in training:
        label = "bf16 fine-tune (baseline; PTQ starts from it)" if mode == "bf16" else ARM_LABELS.get(mode, mode)
        curve = training[mode].get("loss_curve") or []
        if curve:
            ax.plot([s for s, _ in curve], [l for _, l in curve], label=label, marker="." if len(curve) < 40 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, report: dict, training: dict) -> None:
    with atomic_dir(folder, "study") as tmp:
        plot_loss_curves(training, tmp / LOSS_PLOT)
        write_text_atomic(tmp / STUDY_MD, render_markdown(report))
        write_json_atomic(tmp / STUDY_JSON, report)
        write_record(tmp, "study", report["config"])  # last: the record marks a complete study folder
    log.info("study report: %s", folder / STUDY_MD)
