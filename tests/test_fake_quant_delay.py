"""QAT after N plain steps: the fake quantizers are off, then on; off, the model is the plain model exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_lora_qat import _lora_qat_model
from test_schemes import IDS, _logits, tiny_llama
from transformers import TrainerControl, TrainerState, TrainingArguments

from edgeqat.cli import main
from edgeqat.config import QuantConfig
from edgeqat.train.fake_quant_delay import FakeQuantAfterSteps, set_fake_quant
from edgeqat.train.quantize import prepare_qat, strip_fake_quant


@pytest.mark.parametrize("fused", [False, True])
def test_with_fake_quantization_off_a_qat_model_computes_the_plain_model(fused):
    plain = tiny_llama(tie=False)
    qat = tiny_llama(tie=False)
    prepare_qat(qat, QuantConfig(scheme="8da4w", embedding_bits=4), fused=fused)
    quantized = _logits(qat, IDS)
    assert set_fake_quant(qat, False) == 2 * 15 + 1  # 15 linears (weights and activations), the embedding
    assert torch.equal(_logits(qat, IDS), _logits(plain, IDS))
    set_fake_quant(qat, True)
    assert torch.equal(_logits(qat, IDS), quantized)


def test_merged_lora_qat_off_is_plain_lora():
    model = _lora_qat_model("8da4w", merged=True, fused=True)
    quantized = _logits(model, IDS)
    set_fake_quant(model, False)
    plain = strip_fake_quant(model.merge_and_unload())
    assert not torch.equal(quantized, _logits(plain, IDS))
    model2 = _lora_qat_model("8da4w", merged=True, fused=True)
    set_fake_quant(model2, False)
    with torch.no_grad():
        assert torch.allclose(_logits(model2, IDS), _logits(plain, IDS), atol=1e-5)


def test_the_callback_turns_it_on_at_its_step_and_on_resume(tmp_path: Path):
    model = tiny_llama()
    prepare_qat(model, QuantConfig(scheme="8da4w", embedding_bits=4))
    callback = FakeQuantAfterSteps(model, steps=3)
    args, control = TrainingArguments(output_dir=str(tmp_path), report_to=[]), TrainerControl()
    quantizer = model.model.layers[0].self_attn.q_proj.weight_fake_quantizer
    state = TrainerState(global_step=0)
    callback.on_train_begin(args, state, control)
    seen = []
    for step in range(5):
        state.global_step = step
        callback.on_step_begin(args, state, control)
        seen.append(quantizer.enabled)
    assert seen == [False, False, False, True, True]
    callback.on_train_begin(args, TrainerState(global_step=4), control)  # resumed past the switch
    assert quantizer.enabled


def test_train_with_a_delay_and_its_bad_values(capsys, isolated):
    assert main(["train", "--output", "ckpt", "--max-steps", "3", "--max-length", "32", "--device", "cpu",
                 "--fake-quant-after-steps", "2"]) == 0
    assert json.loads(Path("ckpt/edgeqat.json").read_text())["config"]["train"]["fake_quant_after_steps"] == 2
    assert "QAT starts after 2 steps without fake quantization" in capsys.readouterr().err
    line = run_cli(capsys, "train", "--output", "c2", "--max-steps", "3", "--device", "cpu", "--fake-quant-after-steps", "3")
    assert "--fake-quant-after-steps 3: the run has 3 steps, so fake quantization would never start" in line
    line = run_cli(capsys, "train", "--output", "c3", "--max-steps", "3", "--device", "cpu", "--mode", "bf16",
                   "--fake-quant-after-steps", "1")
    assert "a 'bf16' run has no fake quantization" in line


def test_a_study_delays_its_qat_arms_only():
    import dataclasses

    from edgeqat.config import RunConfig
    from edgeqat.train.study import arm_config

    config = RunConfig()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, fake_quant_after_steps=5))
    assert arm_config(config, "bf16", Path("b")).train.fake_quant_after_steps == 0  # the baseline has no fake quantization
    assert arm_config(config, "qat", Path("b")).train.fake_quant_after_steps == 5
    assert arm_config(config, "qat-range", Path("b")).train.fake_quant_after_steps == 5
