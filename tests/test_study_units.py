"""The study's arithmetic and report, the memory floor, resumable-progress bookkeeping and the throughput log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeqat.config import RunConfig, load_config
from edgeqat.errors import EdgeqatError
from edgeqat.train.checkpointing import COMPLETE, PROGRESS, drop_progress_without_checkpoints, progress_dir, start_progress
from edgeqat.train.evaluate import perplexity, require_lm_eval
from edgeqat.train.memory_estimate import check_fits, training_bytes
from edgeqat.train.study_report import build_report, recovery, render_markdown
from edgeqat.train.train_log import read_train_log, steady_state


def test_recovery_is_the_share_of_ptq_loss_won_back_for_perplexity_and_accuracy():
    assert recovery(baseline=10.0, ptq=12.0, qat=10.5) == pytest.approx(0.75)  # perplexity: lower is better
    assert recovery(baseline=0.60, ptq=0.50, qat=0.57) == pytest.approx(0.70)  # accuracy: higher is better
    assert recovery(baseline=10.0, ptq=12.0, qat=12.5) == pytest.approx(-0.25)  # QAT worse than PTQ
    assert recovery(baseline=10.0, ptq=10.0, qat=10.1) is None  # nothing to recover


def _training(mode: str, seconds: float, step: float) -> dict:
    return {"mode": mode, "train_seconds": seconds, "step_seconds": step, "tokens_per_s": 1000.0 / step,
            "peak_gpu_memory_gib": 2.0, "final_loss": 2.5, "gpus": 1, "gpu_name": "H100", "device": "cuda",
            "loss_curve": [[1, 3.0], [2, 2.5]]}


def _evaluation(ppl: float, acc: float) -> dict:
    return {"device": "cuda", "held_out": {"windows": 4, "tokens": 1020, "perplexity": ppl},
            "lm_eval": {"hellaswag": {"acc": acc, "acc_norm": acc + 0.01}}}


def test_report_table_and_recoveries():
    evaluations = {"bf16": _evaluation(20.0, 0.60), "ptq": _evaluation(22.0, 0.50), "qat": _evaluation(20.5, 0.58)}
    training = {"bf16": _training("bf16", 100.0, 0.2), "qat": _training("qat", 150.0, 0.3)}
    report = build_report(RunConfig(), evaluations, training, {"bf16": "a", "ptq": "b", "qat": "c"})
    assert report["recovery"]["perplexity"] == pytest.approx(0.75)
    assert report["recovery"]["lm_eval"]["hellaswag/acc"] == pytest.approx(0.8)
    assert report["qat_step_time_ratio"] == pytest.approx(1.5)
    assert report["arms"]["ptq"]["trained_as"] == "bf16"
    text = render_markdown(report)
    assert "| QAT | 20.500 | +2.50 % | 0.5800 | 0.5900 | 150 s | 0.300 |" in text
    assert "QAT recovers 75.0 %" in text and "hellaswag/acc: recovery 80.0 %" in text
    json.dumps(report)  # the report is plain JSON


def test_every_qat_arm_gets_its_row_recovery_and_step_time():
    evaluations = {"bf16": _evaluation(20.0, 0.60), "ptq": _evaluation(22.0, 0.50), "qat": _evaluation(21.0, 0.55),
                   "qat-range": _evaluation(20.5, 0.58)}
    training = {"bf16": _training("bf16", 100.0, 0.2), "qat": _training("qat", 150.0, 0.3),
                "qat-range": _training("qat", 200.0, 0.4)}
    folders = {"bf16": "a", "ptq": "b", "qat": "c", "qat-range": "d"}
    report = build_report(RunConfig(), evaluations, training, folders)
    assert report["recovery"]["perplexity"] == pytest.approx(0.5)  # the first arm's, as study.json always had it
    assert report["recovery_by_arm"]["qat-range"]["perplexity"] == pytest.approx(0.75)
    assert report["arms"]["qat-range"]["step_time_ratio"] == pytest.approx(2.0)
    text = render_markdown(report)
    assert "| QAT + range learning | 20.500 | +2.50 % |" in text
    assert "QAT recovers 50.0 %" in text and "QAT + range learning recovers 75.0 %" in text


def test_study_arms_are_checked_by_name():
    from edgeqat.config import StudyConfig, validate

    with pytest.raises(EdgeqatError, match="unknown study.arms\[1\] 'qat-rnage'; did you mean 'qat-range'"):
        validate(RunConfig(study=StudyConfig(arms=["qat", "qat-rnage"])))
    with pytest.raises(EdgeqatError, match="study.arms lists 'qat' twice"):
        validate(RunConfig(study=StudyConfig(arms=["qat", "qat"])))


def test_perplexity_of_a_model_that_always_predicts_uniformly_is_the_vocab_size():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 50)})()

    windows = [torch.randint(0, 50, (16,)) for _ in range(5)]
    result = perplexity(Uniform(), windows, torch.device("cpu"), batch_size=2)
    assert result["perplexity"] == pytest.approx(50.0) and result["tokens"] == 5 * 15


def test_lm_eval_tasks_without_the_harness_fail_before_training(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EdgeqatError, match="lm-eval is not installed"):
        require_lm_eval(["hellaswag"])
    require_lm_eval([])  # no tasks: nothing needed


def test_memory_floor_counts_weights_gradients_and_adam_state():
    assert training_bytes(1_000, torch.bfloat16, lora=False) == 8_000
    assert training_bytes(1_000, torch.float32, lora=False) == 16_000
    assert training_bytes(1_000, torch.bfloat16, lora=True) == 2_000


def test_a_model_too_big_for_the_machine_is_refused_with_the_estimate():
    from transformers import LlamaConfig

    from edgeqat.train.model_loading import model_skeleton

    huge = model_skeleton(LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                      num_attention_heads=64, num_key_value_heads=8, vocab_size=128256))
    with pytest.raises(EdgeqatError, match=r"70\.55 B parameters: full fine-tuning needs at least 1\d\d\d\.\d GiB"):
        check_fits(huge, torch.float32, torch.device("cpu"), lora=False)


def _checkpoint(progress: Path, step: int, complete: bool) -> Path:
    folder = progress / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    if complete:
        (folder / COMPLETE).write_text(json.dumps({"step": step}))
    return folder


def test_resume_takes_the_newest_complete_checkpoint_and_removes_partial_ones(tmp_path: Path):
    out = tmp_path / "ckpt"
    assert start_progress(out, {"lr": 1}, resume=False, is_main=True) is None
    progress = progress_dir(out)
    _checkpoint(progress, 2, complete=True)
    _checkpoint(progress, 4, complete=True)
    partial = _checkpoint(progress, 6, complete=False)
    assert start_progress(out, {"lr": 1}, resume=True, is_main=True) == progress / "checkpoint-4"
    assert not partial.exists()


def test_resume_under_another_config_is_refused_naming_the_difference(tmp_path: Path):
    out = tmp_path / "ckpt"
    start_progress(out, {"train": {"lr": 1, "steps": 5}}, resume=False, is_main=True)
    _checkpoint(progress_dir(out), 2, complete=True)
    with pytest.raises(EdgeqatError, match=r"train\.lr: 1 then, 2 now"):
        start_progress(out, {"train": {"lr": 2, "steps": 5}}, resume=True, is_main=True)


def test_without_resume_an_earlier_run_is_discarded(tmp_path: Path):
    out = tmp_path / "ckpt"
    start_progress(out, {"lr": 1}, resume=False, is_main=True)
    _checkpoint(progress_dir(out), 2, complete=True)
    assert start_progress(out, {"lr": 1}, resume=False, is_main=True) is None
    assert [p.name for p in progress_dir(out).iterdir()] == [PROGRESS]


def test_a_failure_before_any_checkpoint_leaves_no_progress_folder(tmp_path: Path):
    out = tmp_path / "ckpt"
    start_progress(out, {"lr": 1}, resume=False, is_main=True)
    drop_progress_without_checkpoints(out)
    assert not progress_dir(out).exists()
    start_progress(out, {"lr": 1}, resume=False, is_main=True)
    _checkpoint(progress_dir(out), 2, complete=True)
    drop_progress_without_checkpoints(out)  # a checkpoint is worth keeping for --resume
    assert (progress_dir(out) / "checkpoint-2").is_dir()


def test_steady_state_leaves_out_the_first_interval(tmp_path: Path):
    log = tmp_path / "train_log.jsonl"
    rows = [{"step": 1, "loss": 3.0, "step_seconds": 9.0, "tokens_per_s": 10.0},
            {"step": 2, "loss": 2.9, "step_seconds": 0.2, "tokens_per_s": 500.0},
            {"step": 3, "loss": 2.8, "step_seconds": 0.3, "tokens_per_s": 400.0},
            {"step": 4, "loss": 2.7, "step_seconds": 0.25, "tokens_per_s": 450.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')  # the last line cut by a crash
    read = read_train_log(log)
    assert [r["step"] for r in read] == [1, 2, 3, 4]
    assert steady_state(read) == {"step_seconds": 0.25, "tokens_per_s": 450.0}
    assert steady_state([]) == {"step_seconds": None, "tokens_per_s": None}


def test_seeds_are_summarized_per_arm_with_their_spread():
    from edgeqat.train.study_seeds import render_seeds_markdown, summarize_seeds

    def report(qat_ppl: float) -> dict:
        evaluations = {"bf16": _evaluation(20.0, 0.6), "ptq": _evaluation(22.0, 0.5), "qat": _evaluation(qat_ppl, 0.55)}
        training = {"bf16": _training("bf16", 100.0, 0.2), "qat": _training("qat", 150.0, 0.3)}
        return build_report(RunConfig(), evaluations, training, {"bf16": "a", "ptq": "b", "qat": "c"})

    summary = summarize_seeds(RunConfig(), {0: report(20.5), 1: report(21.0), 2: report(21.5)})
    recovery_qat = summary["arms"]["qat"]["recovery"]
    assert recovery_qat["values"] == pytest.approx([0.75, 0.5, 0.25])
    assert (recovery_qat["mean"], recovery_qat["std"], recovery_qat["min"]) == pytest.approx((0.5, 0.25, 0.25))
    assert summary["arms"]["ptq"]["perplexity"]["mean"] == pytest.approx(22.0) and "recovery" not in summary["arms"]["ptq"]
    assert summary["studies"] == {"0": "seed-0", "1": "seed-1", "2": "seed-2"}
    text = render_seeds_markdown(summary)
    assert "| QAT | 21.000 ± 0.500 | 50.0 ± 25.0 % | 25.0 % – 75.0 % | 75.0 % / 50.0 % / 25.0 % |" in text
    json.dumps(summary)


def test_seeds_are_checked():
    from edgeqat.config import StudyConfig, validate

    with pytest.raises(EdgeqatError, match="study.seeds\\[1\\] must be at least 0, got -1"):
        validate(RunConfig(study=StudyConfig(seeds=[0, -1])))
    with pytest.raises(EdgeqatError, match="study.seeds lists 2 twice"):
        validate(RunConfig(study=StudyConfig(seeds=[2, 2])))


def test_each_qat_arm_says_what_it_trained_with():
    from edgeqat.train.study_report import _trained_with, _trained_with_text

    lora_range = _trained_with({"quant": {"range_learning": True},
                                "train": {"range_learning_rate": 1e-4, "distill_weight": 0.0, "lora_rank": 16,
                                          "lora_fake_quant": "merged"}})
    assert _trained_with_text(lora_range) == ("LoRA fake-quantizes the merged weight; learned weight scales "
                                              "(scale learning rate 0.0001)")
    full_distilled = _trained_with({"quant": {"range_learning": False}, "train": {"distill_weight": 1.0, "lora_rank": 0}})
    assert _trained_with_text(full_distilled) == "absmax weight scales; distilled from the baseline (weight 1)"


def test_study_arms_that_would_train_the_same_model_are_refused_before_training(tmp_path: Path):
    from edgeqat.train.study import study

    config = load_config(None, {"output_dir": str(tmp_path / "out"), "train.lora_rank": 4, "study.arms": ["qat", "qat-range"]})
    with pytest.raises(EdgeqatError, match="study arms qat and qat-range would train the same model.*--no-range-learning"):
        study(config)
    assert not (tmp_path / "out").exists()
    absmax = load_config(None, {"output_dir": str(tmp_path / "out"), "train.lora_rank": 4, "quant.range_learning": False,
                                "study.arms": ["qat", "qat-range"], "train.max_steps": 1})
    from edgeqat.train.study import check_distinct_arms, study_dirs

    check_distinct_arms(absmax, study_dirs(tmp_path / "out", ("qat", "qat-range")))  # distinct: nothing raised
