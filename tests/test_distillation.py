"""Distillation: the loss against a hand computation, the teacher checks, and a tiny distilled LoRA-QAT study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from edgeqat.artifacts import read_record
from edgeqat.cli import main
from edgeqat.errors import EdgeqatError
from edgeqat.train.distillation import IGNORE, check_teacher, distillation_loss
from edgeqat.train.memory_estimate import check_fits


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    total = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - total for v in row]


def test_loss_is_cross_entropy_plus_weighted_scaled_kl_per_predicted_token():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, IGNORE, 4], [0, 3, 1, IGNORE]])
    weight, temperature = 0.7, 2.0
    ce_sum = kl_sum = 0.0
    count = 0
    for b in range(2):
        for i in range(3):  # position i predicts label i + 1
            target = labels[b, i + 1].item()
            if target == IGNORE:
                continue
            count += 1
            ce_sum -= _log_softmax(student[b, i].tolist())[target]
            log_t = _log_softmax((teacher[b, i] / temperature).tolist())
            log_s = _log_softmax((student[b, i] / temperature).tolist())
            kl_sum += sum(math.exp(t) * (t - s) for t, s in zip(log_t, log_s, strict=True))
    loss, ce, kl = distillation_loss(student, teacher, labels, weight, temperature)
    assert count == 4
    assert loss.item() == pytest.approx((ce_sum + weight * temperature**2 * kl_sum) / count, rel=1e-5)
    assert (ce.item(), kl.item()) == pytest.approx((ce_sum / count, kl_sum / count), rel=1e-5)
    # divided by the accumulated batch's token count when the Trainer passes it
    loss_accumulated, _, _ = distillation_loss(student, teacher, labels, weight, temperature, num_items=8)
    assert loss_accumulated.item() == pytest.approx(loss.item() * count / 8, rel=1e-5)


def test_the_cross_entropy_weight_scales_the_sft_term_alone():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, IGNORE, 4], [0, 3, 1, IGNORE]])
    full, ce, kl = distillation_loss(student, teacher, labels, 0.7, 2.0)
    alone, _, _ = distillation_loss(student, teacher, labels, 0.7, 2.0, ce_weight=0.0)
    half, _, _ = distillation_loss(student, teacher, labels, 0.7, 2.0, ce_weight=0.5)
    assert alone.item() == pytest.approx(0.7 * 4.0 * kl.item(), rel=1e-5)  # the teacher's distributions alone
    assert half.item() == pytest.approx(alone.item() + 0.5 * ce.item(), rel=1e-5)
    assert full.item() == pytest.approx(alone.item() + ce.item(), rel=1e-5)


def test_a_cross_entropy_weight_without_distillation_is_refused_in_one_line(tmp_path: Path):
    from edgeqat.config import load_config
    from edgeqat.train.finetune import train

    config = load_config(None, {"train.distill_ce_weight": 0.0, "train.max_steps": 1, "train.device": "cpu"})
    with pytest.raises(EdgeqatError, match="--distill-ce-weight 0 weighs the cross-entropy.*add --distill-weight W"):
        train(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_teacher_equal_to_the_student_adds_nothing():
    logits = torch.randn(1, 6, 11)
    labels = torch.randint(0, 11, (1, 6))
    loss, ce, kl = distillation_loss(logits, logits.clone(), labels, 1.0, 1.0)
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:])
    assert kl.abs().item() < 1e-6 and loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_a_teacher_with_another_vocabulary_is_refused():
    from transformers import LlamaConfig

    with pytest.raises(EdgeqatError, match="vocabulary of 300 tokens and the model 256: distillation needs the same"):
        check_teacher(LlamaConfig(vocab_size=300), LlamaConfig(vocab_size=256), "big-teacher")


def test_the_memory_floor_counts_the_teacher():
    from transformers import LlamaConfig

    from edgeqat.train.model_loading import model_skeleton

    small = model_skeleton(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    huge = model_skeleton(LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                      num_attention_heads=64, num_key_value_heads=8, vocab_size=128256))
    with pytest.raises(EdgeqatError, match=r"plus 26\d\.\d GiB for the distillation teacher's weights.*--teacher"):
        check_fits(small, torch.float32, torch.device("cpu"), lora=False, teacher=huge)


@pytest.mark.e2e
def test_a_distilled_lora_qat_study_learns_from_its_baseline(tmp_path: Path):
    """The QAT arm's teacher is the study's own bf16 fine-tune; the baseline itself is not distilled."""
    out = tmp_path / "study-out"
    argv = ["study", "--output", str(out), "--max-steps", "3", "--max-length", "64", "--lora-rank", "4",
            "--distill-weight", "0.5", "--distill-temperature", "2"]
    assert main(argv) == 0
    bf16, qat = read_record(out / "bf16-checkpoint"), read_record(out / "qat-checkpoint")
    assert bf16["config"]["train"]["distill_weight"] == 0 and "teacher_files" not in bf16["config"]
    assert qat["config"]["train"]["distill_weight"] == 0.5 and qat["config"]["train"]["lora_fake_quant"] == "merged"
    assert qat["config"]["train"]["teacher"] == "../bf16-checkpoint"  # relative: no machine path in a record
    assert qat["config"]["teacher_files"] == bf16["files"]  # a retrained baseline retrains the student
    rows = [json.loads(line) for line in (out / "qat-checkpoint" / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "distill_kl" in r]
    assert logged and all(r["distill_kl"] >= 0 and r["cross_entropy"] > 0 for r in logged)
    report = json.loads((out / "study" / "study.json").read_text())
    assert set(report["arms"]) == {"bf16", "ptq", "qat"}
