"""TRL's fused LM head trains the output layer fake-quantized, as the model's own forward and the `.pte` run it."""

from __future__ import annotations

import pytest
import torch
from test_schemes import IDS, tiny_llama
from trl.trainer.utils import add_fused_lm_head

from edgeqat.config import QuantConfig
from edgeqat.train.finetune import _add_lora
from edgeqat.train.fused_head_qat import fake_quantize_fused_head
from edgeqat.train.quantize import prepare_qat

LABELS = IDS.clone()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _qat_model(scheme: str = "8da4w", tie: bool = False, fused: bool = False, device: str = "cpu"):
    model = tiny_llama(tie=tie).train().to(device)
    prepare_qat(model, QuantConfig(scheme=scheme, embedding_bits=4), fused=fused)
    add_fused_lm_head(model, outputs=("log_probs",))  # what SFTTrainer does to the model it trains
    return model


def _loss_and_head_grad(model, fused: bool):
    model.zero_grad()
    kwargs = {"fused_lm_head": True} if fused else {}
    device = model.lm_head.weight.device
    loss = model(input_ids=IDS.to(device), labels=LABELS.to(device), **kwargs).loss
    loss.backward()
    head = model.get_output_embeddings().weight
    return loss.detach(), head.grad.clone()


def test_without_it_the_fused_head_trains_a_float_output_layer():
    """The bug this module exists for: TRL's fused loss is not the fake-quantized model's loss."""
    model = _qat_model()
    fused, _ = _loss_and_head_grad(model, fused=True)
    own, _ = _loss_and_head_grad(model, fused=False)
    assert abs(float(fused - own)) > 1e-4


@pytest.mark.parametrize("scheme", ["8da4w", "4w", "8da8w"])
@pytest.mark.parametrize("tie", [False, True])
def test_the_fused_loss_and_gradients_are_the_fake_quantized_models(scheme, tie):
    model = _qat_model(scheme, tie)
    assert fake_quantize_fused_head(model)
    fused_loss, fused_grad = _loss_and_head_grad(model, fused=True)
    own_loss, own_grad = _loss_and_head_grad(model, fused=False)
    torch.testing.assert_close(fused_loss, own_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_grad, own_grad, rtol=1e-4, atol=1e-6)
    assert model.get_output_embeddings() is model.lm_head  # nothing left patched after the call


@pytest.mark.parametrize("device", DEVICES)
def test_the_fused_kernels_head_too(device):
    model = _qat_model(fused=True, device=device)
    assert fake_quantize_fused_head(model)
    fused_loss, _ = _loss_and_head_grad(model, fused=True)
    own_loss, _ = _loss_and_head_grad(model, fused=False)
    torch.testing.assert_close(fused_loss, own_loss, rtol=1e-5, atol=1e-6)


def test_a_lora_model_whose_base_is_fake_quantized():
    model = _add_lora(_qat_model(), 8, 16)
    assert fake_quantize_fused_head(model.get_base_model())
    fused = model(input_ids=IDS, labels=LABELS, fused_lm_head=True).loss
    own = model(input_ids=IDS, labels=LABELS).loss
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)


def test_fake_quantization_switched_off_is_float_in_both():
    from edgeqat.train.fake_quant_delay import set_fake_quant

    model = _qat_model()
    fake_quantize_fused_head(model)
    set_fake_quant(model, False)
    fused, _ = _loss_and_head_grad(model, fused=True)
    own, _ = _loss_and_head_grad(model, fused=False)
    torch.testing.assert_close(fused, own, rtol=1e-5, atol=1e-6)


def test_a_float_output_layer_is_left_alone():
    model = tiny_llama()
    add_fused_lm_head(model)
    forward = model.forward
    assert not fake_quantize_fused_head(model)
    assert model.forward == forward


def test_sft_trainers_loss_is_the_fake_quantized_models(tmp_path):
    """Through TRL's own compute_loss, as `edgeqat train` calls it."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from edgeqat.paths import ASSETS

    folder = ASSETS / "default_model"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prepare_qat(model, QuantConfig(scheme="8da4w", embedding_bits=4))
    rows = Dataset.from_dict({"text": ["A wise son maketh a glad father.", "The fear of the LORD is the beginning."]})
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_length=32, use_cpu=True,
                     report_to="none", dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=AutoTokenizer.from_pretrained(folder))
    batch = next(iter(trainer.get_train_dataloader()))
    own = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"]).loss
    before = trainer.compute_loss(model, dict(batch))
    assert abs(float(before - own)) > 1e-4  # TRL's fused head alone trains the output layer in float
    assert fake_quantize_fused_head(model)
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), own, rtol=1e-5, atol=1e-6)
