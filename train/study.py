"""`edgeqat study`: the bf16 fine-tune, its post-training quantization (PTQ) and QAT, trained and judged alike.

    OUT/bf16-checkpoint ──convert as PTQ──▶ OUT/ptq-converted ─┐
    OUT/qat-checkpoint  ──convert────────▶ OUT/qat-converted ─┼─▶ OUT/evaluations/*.json ──▶ OUT/study/
    (same data, steps, seed, learning rate)  (same scheme)      ┘   (held-out ppl, lm-eval)    (md, json, png)

``study.arms`` adds QAT arms beside "qat" (OUT/<arm>-checkpoint, OUT/<arm>-converted): range learning,
distillation from the baseline, or both (arm_config); study_seeds.py repeats the whole study per seed.

Every artifact is reused when it is still valid for the config, so a killed study picks up where it
stopped; with ``resume`` an interrupted training continues from its last complete checkpoint. Under
torchrun/accelerate every rank trains; rank 0 alone converts, evaluates and reports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from edgeqat.artifacts import is_valid_artifact, read_record, write_json_atomic
from edgeqat.config import RunConfig, to_dict
from edgeqat.errors import EdgeqatError
from edgeqat.paths import DEFAULT_EVAL_DATA
from edgeqat.pipeline import check_outputs
from edgeqat.train.convert import convert, converted_config, load_converted, read_checked_record
from edgeqat.train.data import token_windows
from edgeqat.train.evaluate import lm_eval_scores, perplexity, require_lm_eval
from edgeqat.train.finetune import stage_config, train
from edgeqat.train.model_loading import is_main_process, resolve_device
from edgeqat.train.study_report import build_report, write_report

log = logging.getLogger("edgeqat")
EVALUATION = "study-evaluation"  # the marker of edgeqat's evaluation cache files
DEFAULT_DISTILL_WEIGHT = 1.0  # a distillation arm's weight when the config sets none


def arms_of(config: RunConfig) -> tuple[str, ...]:
    """Every evaluated arm: the baseline, its PTQ, then the QAT arms of ``study.arms`` (names from STUDY_ARMS)."""
    return ("bf16", "ptq", *config.study.arms)


def study_dirs(output_dir: Path, qat_arms: tuple[str, ...] = ("qat",)) -> dict[str, Path]:
    dirs = {"bf16-checkpoint": output_dir / "bf16-checkpoint", "ptq-converted": output_dir / "ptq-converted"}
    for arm in qat_arms:
        dirs[f"{arm}-checkpoint"], dirs[f"{arm}-converted"] = output_dir / f"{arm}-checkpoint", output_dir / f"{arm}-converted"
    return {**dirs, "evaluations": output_dir / "evaluations", "study": output_dir / "study"}


def study_stages(qat_arms: tuple[str, ...]) -> dict[str, str]:
    return {"bf16-checkpoint": "train", "ptq-converted": "convert",
            **{f"{arm}-{kind}": stage for arm in qat_arms for kind, stage in (("checkpoint", "train"), ("converted", "convert"))},
            "study": "study"}


def arm_config(config: RunConfig, arm: str, bf16_checkpoint: Path) -> RunConfig:
    """The config one arm trains with. The baseline never distils, learns scales nor delays fake quantization
    (it has none); "qat" is the config as
    given, and qat-range / qat-distill / qat-range-distill add range learning, distillation (the config's
    weight, else 1) or both. A distilling arm with no teacher named learns from the baseline fine-tune."""
    tc, quant = config.train, config.quant
    if arm == "bf16":
        return dataclasses.replace(config, train=dataclasses.replace(tc, mode="bf16", distill_weight=0.0, teacher="",
                                                                     distill_ce_weight=1.0, fake_quant_after_steps=0),
                                   quant=dataclasses.replace(quant, range_learning=False))
    if "range" in arm:
        quant = dataclasses.replace(quant, range_learning=True)
    weight = tc.distill_weight or (DEFAULT_DISTILL_WEIGHT if "distill" in arm else 0.0)
    teacher = (tc.teacher or str(bf16_checkpoint)) if weight else ""
    return dataclasses.replace(config, quant=quant,
                               train=dataclasses.replace(tc, mode="qat", distill_weight=weight, teacher=teacher,
                                                         distill_ce_weight=tc.distill_ce_weight if weight else 1.0))


def check_distinct_arms(config: RunConfig, dirs: dict[str, Path]) -> None:
    """Two QAT arms that would train the same thing are refused before any training: with LoRA, range learning is
    on by default (config.with_auto_settings), so "qat" already is "qat-range"."""
    seen: dict[str, str] = {}
    for arm in config.study.arms:
        key = json.dumps(stage_config(arm_config(config, arm, dirs["bf16-checkpoint"]), dirs[f"{arm}-checkpoint"]),
                         sort_keys=True, default=str)
        if key in seen:
            raise EdgeqatError(f"study arms {seen[key]} and {arm} would train the same model (with LoRA, range learning "
                               "is on by default): drop one, or pass --no-range-learning to make the plain arms absmax ones")
        seen[key] = arm


def _evaluation_key(record: dict, config: RunConfig) -> dict:
    return {
        "model_files": record["files"],
        "eval_dataset": config.check.eval_dataset,
        "window_tokens": config.train.max_length,
        "study": to_dict(config.study),
    }


def _load_for_eval(arm: str, folder: Path, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if arm == "bf16":  # the reference, evaluated in fp32 like the converted models
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        model, tokenizer, _ = load_converted(folder)
    try:
        return model.to(device).eval(), tokenizer, device
    except (NotImplementedError, RuntimeError) as e:  # a torchao tensor type without this device's kernels
        log.warning("evaluating %s on the CPU: its quantized tensors cannot move to %s (%s)", folder, device, e)
        return model.to("cpu").eval(), tokenizer, torch.device("cpu")


def evaluate_arm(arm: str, folder: Path, config: RunConfig, device: torch.device, cache_dir: Path) -> dict:
    """Held-out perplexity (and lm-eval scores) of one arm; cached beside the study, keyed by the model's files."""
    record = read_checked_record(folder, "train" if arm == "bf16" else "convert")
    key = _evaluation_key(record, config)
    cache = cache_dir / f"{arm}.json"
    if cache.is_file():
        cached = _read_cached(cache)
        if cached.get("key") == key:
            log.info("[eval %s] up to date: %s", arm, cache)
            return cached["results"]
    log.info("[eval %s] %s on %s", arm, folder, device)
    model, tokenizer, device = _load_for_eval(arm, folder, device)
    windows = token_windows(tokenizer, config.check.eval_dataset, DEFAULT_EVAL_DATA, config.study.eval_windows, config.train.max_length)
    results = {"device": device.type, "held_out": {"windows": len(windows), **perplexity(model, windows, device)}}
    if config.study.lm_eval_tasks:
        s = config.study
        results["lm_eval"] = lm_eval_scores(
            model, tokenizer, s.lm_eval_tasks, s.lm_eval_limit, s.lm_eval_batch_size, s.lm_eval_include_path
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache, {"edgeqat": EVALUATION, "key": key, "results": results})
    return results


def _read_cached(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}  # not a readable JSON object: not a cache entry of edgeqat's (check_evaluation_cache)
    return cached if isinstance(cached, dict) else {}


def check_evaluation_cache(folder: Path, arms: tuple[str, ...]) -> None:
    """The evaluations folder holds only edgeqat's cache files (or nothing yet): a file of the user's under
    one of its names is never overwritten."""
    if folder.exists() and not folder.is_dir():
        raise EdgeqatError(f"{folder} is a file; the study keeps its evaluations there: move it away or choose "
                           "another --output (nothing was changed)")
    for arm in arms:
        cache = folder / f"{arm}.json"
        if (cache.exists() or cache.is_symlink()) and _read_cached(cache).get("edgeqat") != EVALUATION:
            raise EdgeqatError(f"{cache} was not written by edgeqat; the study keeps its evaluation of {arm} there: "
                               "move it away or choose another --output (nothing was changed)")


def study(config: RunConfig, resume: bool = False) -> dict:
    """Runs (or resumes) the study into ``config.output_dir``; returns the study report (rank 0; {} elsewhere)."""
    require_lm_eval(config.study.lm_eval_tasks, config.study.lm_eval_include_path)
    qat_arms = tuple(config.study.arms)
    dirs = study_dirs(Path(config.output_dir), qat_arms)
    check_outputs(dirs, study_stages(qat_arms), config)
    check_evaluation_cache(dirs["evaluations"], arms_of(config))
    check_distinct_arms(config, dirs)
    for arm in ("bf16", *qat_arms):  # the baseline first: it is the distilling arms' teacher
        mode_config, folder = arm_config(config, arm, dirs["bf16-checkpoint"]), dirs[f"{arm}-checkpoint"]
        if is_valid_artifact(folder, "train", stage_config(mode_config, folder)):
            log.info("[train %s] up to date: %s", arm, folder)
        else:
            log.info("[train %s] -> %s", arm, folder)
            train(mode_config, folder, resume)
    if not is_main_process():
        return {}
    conversions = [("bf16-checkpoint", "ptq-converted", "ptq")] + [(f"{a}-checkpoint", f"{a}-converted", "qat") for a in qat_arms]
    for source, dest, mode in conversions:
        if is_valid_artifact(dirs[dest], "convert", converted_config(read_record(dirs[source]), mode)):
            log.info("[convert %s] up to date: %s", dest, dirs[dest])
        else:
            convert(dirs[source], dirs[dest], mode)

    device = resolve_device(config.train.device)
    arm_dirs = {"bf16": dirs["bf16-checkpoint"], "ptq": dirs["ptq-converted"],
                **{arm: dirs[f"{arm}-converted"] for arm in qat_arms}}
    evaluations = {arm: evaluate_arm(arm, arm_dirs[arm], config, device, dirs["evaluations"]) for arm in arms_of(config)}
    training = {arm: read_record(dirs[f"{arm}-checkpoint"]) for arm in ("bf16", *qat_arms)}
    report = build_report(config, evaluations, training, {arm: str(p) for arm, p in arm_dirs.items()})
    write_report(dirs["study"], report, training)
    return report
