"""`edgeqat study`: the bf16 fine-tune, its post-training quantization (PTQ) and QAT, trained and judged alike.

    OUT/bf16-checkpoint ──convert as PTQ──▶ OUT/ptq-converted ─┐
    OUT/qat-checkpoint  ──convert────────▶ OUT/qat-converted ─┼─▶ OUT/evaluations/*.json ──▶ OUT/study/
    (same data, steps, seed, learning rate)  (same scheme)      ┘   (held-out ppl, lm-eval)    (md, json, png)

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
ARMS = ("bf16", "ptq", "qat")
STAGES = {"bf16-checkpoint": "train", "qat-checkpoint": "train", "ptq-converted": "convert", "qat-converted": "convert",
          "study": "study"}
EVALUATION = "study-evaluation"  # the marker of edgeqat's evaluation cache files


def study_dirs(output_dir: Path) -> dict[str, Path]:
    return {
        "bf16-checkpoint": output_dir / "bf16-checkpoint",
        "qat-checkpoint": output_dir / "qat-checkpoint",
        "ptq-converted": output_dir / "ptq-converted",
        "qat-converted": output_dir / "qat-converted",
        "evaluations": output_dir / "evaluations",
        "study": output_dir / "study",
    }


def arm_config(config: RunConfig, mode: str, bf16_checkpoint: Path) -> RunConfig:
    """The config one arm trains with: the baseline never distils nor learns scales; with distillation and no
    teacher named, QAT's teacher is the baseline fine-tune."""
    tc = config.train
    if mode == "bf16":
        return dataclasses.replace(config, train=dataclasses.replace(tc, mode=mode, distill_weight=0.0, teacher=""),
                                   quant=dataclasses.replace(config.quant, range_learning=False))
    teacher = tc.teacher or (str(bf16_checkpoint) if tc.distill_weight else "")
    return dataclasses.replace(config, train=dataclasses.replace(tc, mode=mode, teacher=teacher))


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


def check_evaluation_cache(folder: Path) -> None:
    """The evaluations folder holds only edgeqat's cache files (or nothing yet): a file of the user's under
    one of its names is never overwritten."""
    if folder.exists() and not folder.is_dir():
        raise EdgeqatError(f"{folder} is a file; the study keeps its evaluations there: move it away or choose "
                           "another --output (nothing was changed)")
    for arm in ARMS:
        cache = folder / f"{arm}.json"
        if (cache.exists() or cache.is_symlink()) and _read_cached(cache).get("edgeqat") != EVALUATION:
            raise EdgeqatError(f"{cache} was not written by edgeqat; the study keeps its evaluation of {arm} there: "
                               "move it away or choose another --output (nothing was changed)")


def study(config: RunConfig, resume: bool = False) -> dict:
    """Runs (or resumes) the study into ``config.output_dir``; returns the study report (rank 0; {} elsewhere)."""
    require_lm_eval(config.study.lm_eval_tasks, config.study.lm_eval_include_path)
    dirs = study_dirs(Path(config.output_dir))
    check_outputs(dirs, STAGES, config)
    check_evaluation_cache(dirs["evaluations"])
    for mode in ("bf16", "qat"):
        mode_config, folder = arm_config(config, mode, dirs["bf16-checkpoint"]), dirs[f"{mode}-checkpoint"]
        if is_valid_artifact(folder, "train", stage_config(mode_config)):
            log.info("[train %s] up to date: %s", mode, folder)
        else:
            train(mode_config, folder, resume)
    if not is_main_process():
        return {}
    for source, dest, mode in (("bf16-checkpoint", "ptq-converted", "ptq"), ("qat-checkpoint", "qat-converted", "qat")):
        if is_valid_artifact(dirs[dest], "convert", converted_config(read_record(dirs[source]), mode)):
            log.info("[convert %s] up to date: %s", mode, dirs[dest])
        else:
            convert(dirs[source], dirs[dest], mode)

    device = resolve_device(config.train.device)
    arm_dirs = {"bf16": dirs["bf16-checkpoint"], "ptq": dirs["ptq-converted"], "qat": dirs["qat-converted"]}
    evaluations = {arm: evaluate_arm(arm, arm_dirs[arm], config, device, dirs["evaluations"]) for arm in ARMS}
    training = {"bf16": read_record(dirs["bf16-checkpoint"]), "qat": read_record(dirs["qat-checkpoint"])}
    report = build_report(config, evaluations, training, {arm: str(p) for arm, p in arm_dirs.items()})
    write_report(dirs["study"], report, training)
    return report
