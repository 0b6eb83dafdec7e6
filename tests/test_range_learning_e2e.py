"""Range learning end to end: `edgeqat train --range-learning` saves the learned scales, `convert` quantizes with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch

from edgeqat.artifacts import read_record
from edgeqat.cli import main
from edgeqat.train.quantize import LEARNED_SCALES

pytestmark = pytest.mark.e2e
SHORT = ["--max-steps", "2", "--max-length", "64", "--batch-size", "2", "--device", "cpu"]


def test_the_converted_model_carries_the_learned_scales(tmp_path: Path):
    from edgeqat.export.tied_embedding import share_tied_embedding
    from edgeqat.train.convert import load_converted

    ckpt, converted = tmp_path / "ckpt", tmp_path / "converted"
    assert main(["train", "--output", str(ckpt), "--range-learning", "--range-learning-rate", "1e-3", *SHORT]) == 0
    record = read_record(ckpt)
    assert record["config"]["quant"]["range_learning"] and LEARNED_SCALES in record["files"]
    scales = safetensors.torch.load_file(ckpt / LEARNED_SCALES)
    # every linear of the embedded model's 4 layers; its output layer is tied to the int4 embedding and keeps
    # per-step scales like it, so that the .pte still stores the table once
    assert len(scales) == 4 * 7 and "lm_head" not in scales
    assert main(["convert", str(ckpt), "--output", str(converted)]) == 0
    model, _, _ = load_converted(converted)
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    learned = scales["model.layers.0.self_attn.q_proj"]
    assert q_proj.scale.float().flatten().tolist() == learned.flatten().tolist()
    assert share_tied_embedding(model)  # the same integers and scales in the embedding and the output layer


def test_range_learning_outside_qat_is_refused_in_one_line(tmp_path: Path, capsys):
    assert main(["train", "--output", str(tmp_path / "x"), "--mode", "ptq", "--range-learning", *SHORT]) == 2
    err = capsys.readouterr().err
    assert "range learning trains QAT's weight scales, and a 'ptq' run has none" in err and len(err.strip().splitlines()) == 1


def test_a_study_of_every_qat_arm(tmp_path: Path):
    out = tmp_path / "study-out"
    arms = ["qat", "qat-range", "qat-distill", "qat-range-distill"]
    assert main(["study", "--output", str(out), "--max-steps", "2", "--max-length", "64", "--arms", ",".join(arms)]) == 0
    assert not read_record(out / "bf16-checkpoint")["config"]["quant"]["range_learning"]
    for arm in arms:
        train_config = read_record(out / f"{arm}-checkpoint")["config"]
        assert train_config["quant"]["range_learning"] == ("range" in arm)
        assert train_config["train"]["distill_weight"] == (1.0 if "distill" in arm else 0.0)
        assert read_record(out / f"{arm}-converted")["mode"] == "qat"
    report = json.loads((out / "study" / "study.json").read_text())
    assert list(report["arms"]) == ["bf16", "ptq", *arms] and list(report["recovery_by_arm"]) == arms
    assert "QAT + range learning + distillation recovers" in (out / "study" / "study.md").read_text()
