"""Merged-weight LoRA-QAT: the model trained is the model converted, to the bit; gradients as the eager reference."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from test_schemes import IDS, _logits, tiny_llama

from edgeqat.config import QuantConfig
from edgeqat.errors import EdgeqatError
from edgeqat.train.finetune import _add_lora
from edgeqat.train.lora_qat import MergedLoraFakeQuantizedLinear, merged_weight, use_merged_lora_qat
from edgeqat.train.quantize import convert_qat, prepare_qat, strip_fake_quant

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _lora_qat_model(scheme: str, merged: bool, fused: bool = False, rank: int = 8):
    model = tiny_llama()
    prepare_qat(model, QuantConfig(scheme=scheme, embedding_bits=4), fused=fused)
    model = _add_lora(model, rank, 16)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapters something to merge
            torch.nn.init.normal_(p, std=0.05)
    if merged:
        assert use_merged_lora_qat(model) == 14  # peft's all-linear leaves out lm_head
    return model


def _deployed_logits(model, scheme: str) -> torch.Tensor:
    """What `edgeqat train` saves and `edgeqat convert` makes of it: merge, strip, prepare + convert."""
    quant = QuantConfig(scheme=scheme, embedding_bits=4)
    plain = strip_fake_quant(model.merge_and_unload())
    prepare_qat(plain, quant)
    convert_qat(plain, quant)
    return _logits(plain, IDS)


@pytest.mark.parametrize("scheme", ["8da4w", "8da8w", "4w"])
@pytest.mark.parametrize("fused", [False, True])
def test_the_fake_quantized_lora_model_is_the_converted_model_to_the_bit(scheme, fused):
    model = _lora_qat_model(scheme, merged=True, fused=fused)
    trained = _logits(model, IDS)
    assert torch.equal(trained, _deployed_logits(model, scheme))


def test_fake_quantizing_the_base_weight_alone_is_not_what_ships():
    """The old way (Unsloth's, torchtune's): fq(W)·x + s·B·A·x in training, q(W + s·B·A)·x deployed."""
    model = _lora_qat_model("8da4w", merged=False)
    trained = _logits(model, IDS)
    assert (trained - _deployed_logits(model, "8da4w")).abs().max() > 1e-3


def _reference(base, lora_a, lora_b, scaling, x):
    """The eager definition: torchao's quantizers on W + s·B·A, identity straight-through for the weight."""
    merged = merged_weight(base.weight, lora_a, lora_b, scaling)
    fq = base.weight_fake_quantizer(merged.detach())
    w = merged + (fq - merged).detach()
    x_q = base.activation_fake_quantizer(x) if base.activation_fake_quantizer is not None else x
    return F.linear(x_q, w, base.bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme,dtype", [("8da4w", torch.float32), ("4w", torch.float32), ("8da4w", torch.bfloat16)])
def test_output_and_gradients_match_the_eager_reference(device, scheme, dtype):
    model = _lora_qat_model(scheme, merged=True, fused=True).to(device=device, dtype=dtype)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, MergedLoraFakeQuantizedLinear) and layer.merged_spec is not None
    lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.manual_seed(2)
    x = torch.randn(2, 5, 64, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 5, 128, device=device, dtype=dtype)

    ours = layer(x)
    ours.backward(grad)
    ours_grads = [t.grad.clone() for t in (x, lora_a, lora_b)]
    for t in (x, lora_a, lora_b):
        t.grad = None
    theirs = _reference(layer.get_base_layer(), lora_a, lora_b, layer.scaling["default"], x)
    theirs.backward(grad)
    assert torch.equal(ours, theirs)  # the forward is torchao's arithmetic op for op
    assert layer.get_base_layer().weight.grad is None  # W is frozen: nothing flows into it
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # the rank-r association rounds differently
    for name, mine, reference in zip(("x", "A", "B"), ours_grads, (t.grad for t in (x, lora_a, lora_b))):
        assert torch.allclose(mine, reference, rtol=tolerance, atol=tolerance * reference.abs().max()), name


def test_training_steps_refresh_the_quantized_merged_weight():
    model = _lora_qat_model("8da4w", merged=True)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    before = _logits(model, IDS)
    for _ in range(2):
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = _logits(model, IDS)
    assert not torch.equal(before, after)
    # the same adapters in a model that never cached anything: the same logits
    reference.load_state_dict(model.state_dict())
    assert torch.equal(after, _logits(reference, IDS))
    assert torch.equal(after, _deployed_logits(model, "8da4w"))


def test_lora_dropout_is_refused_in_one_line():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    prepare_qat(model, QuantConfig())
    model = get_peft_model(model, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    with pytest.raises(EdgeqatError, match="LoRA dropout.*--lora-fake-quant base"):
        use_merged_lora_qat(model)


# -- range learning --------------------------------------------------------------------------------------


def _range_learning_model(lora: bool):
    from edgeqat.train.quantize import initialize_range_learning, learned_scale_parameters

    model = tiny_llama()
    quant = QuantConfig(embedding_bits=4, range_learning=True)
    prepare_qat(model, quant, fused=True)
    assert initialize_range_learning(model, torch.device("cpu")) == 15
    if lora:
        model = _add_lora(model, 4, 16)
        use_merged_lora_qat(model)
    scales = learned_scale_parameters(model)
    assert len(scales) == 15 and all(isinstance(s, torch.nn.Parameter) and s.requires_grad for s in scales)
    return model, quant, scales


@pytest.mark.parametrize("lora", [False, True])
def test_range_learning_trains_the_scales_and_convert_quantizes_with_them(lora):
    from edgeqat.train.quantize import learned_scales, load_learned_scales

    model, quant, scales = _range_learning_model(lora)
    before = [s.detach().clone() for s in scales]
    optimizer = torch.optim.AdamW(scales + [p for p in model.parameters() if p.requires_grad and
                                            all(p is not s for s in scales)], lr=1e-2)
    for _ in range(2):
        model(input_ids=IDS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(b, s) for b, s in zip(before, scales, strict=True))  # the scales learned
    trained = _logits(model, IDS)

    plain = model.merge_and_unload() if lora else model
    saved = learned_scales(plain)
    strip_fake_quant(plain)
    prepare_qat(plain, quant)  # what `edgeqat convert` does with the checkpoint and its learned_scales file
    load_learned_scales(plain, saved)
    convert_qat(plain, quant)
    assert torch.equal(_logits(plain, IDS), trained)  # deployed with the learned scales, to the bit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme,dtype", [("8da4w", torch.float32), ("4w", torch.float32), ("8da4w", torch.bfloat16)])
def test_range_learning_lora_matches_torchaos_autograd_on_the_merged_weight(device, scheme, dtype):
    """With learned scales the merged layer's forward and its gradients into x, A, B and the scale are what
    torchao's range-learning quantizer computes on W + s·B·A under autograd (the clamp's mask included)."""
    from edgeqat.train.quantize import initialize_range_learning, learned_scale_parameters

    model = tiny_llama().to(device, dtype)  # on the device before range learning starts, as in training
    prepare_qat(model, QuantConfig(scheme=scheme, embedding_bits=4, range_learning=True), fused=True)
    initialize_range_learning(model, torch.device(device))
    model = _add_lora(model, 4, 16)
    assert use_merged_lora_qat(model) == 14
    for scale in learned_scale_parameters(model):
        with torch.no_grad():  # off the absmax it starts at: some weights clamp
            scale.mul_(torch.rand(scale.shape, generator=torch.Generator().manual_seed(3)).to(device) * 0.6 + 0.6)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    assert layer.merged_spec.learned_scale
    reference = copy.deepcopy(layer)
    reference.merged_spec = None  # torchao's quantizer modules on the merged weight, under autograd
    torch.manual_seed(2)
    x = torch.randn(2, 5, 64, device=device, dtype=dtype)
    grad = torch.randn(2, 5, 128, device=device, dtype=dtype)
    runs = []
    for module in (layer, reference):
        x_ = x.clone().requires_grad_()
        out = module(x_)
        out.backward(grad)
        runs.append((out, x_.grad, module.lora_A["default"].weight.grad, module.lora_B["default"].weight.grad,
                     module.get_base_layer().weight_fake_quantizer.scale.grad))
        assert module.get_base_layer().weight.grad is None
    for name, ours, theirs in zip(("output", "x", "A", "B", "scale"), *runs):
        if device == "cpu" and not (name == "scale" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"):
            assert torch.equal(ours, theirs), name
        else:  # cuBLAS may pick other kernels for the two paths' matmuls
            assert ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item() < 1e-2, name


def test_a_tied_output_layer_keeps_per_step_scales_like_its_embedding():
    from edgeqat.train.quantize import initialize_range_learning, learned_scales

    model = tiny_llama(tie=True)
    prepare_qat(model, QuantConfig(embedding_bits=4, range_learning=True))
    assert initialize_range_learning(model, torch.device("cpu")) == 14
    assert "lm_head" not in learned_scales(model) and model.lm_head.weight_fake_quantizer.config.is_dynamic
    untied = tiny_llama()
    prepare_qat(untied, QuantConfig(embedding_bits=0, range_learning=True))
    assert initialize_range_learning(untied, torch.device("cpu")) == 15  # nothing to share: it learns too


def test_learned_scales_that_do_not_match_the_model_are_refused():
    from edgeqat.train.quantize import learned_scales, load_learned_scales

    model, quant, _ = _range_learning_model(lora=False)
    saved = learned_scales(model)
    saved.pop("lm_head")
    fresh = tiny_llama()
    prepare_qat(fresh, quant)
    with pytest.raises(EdgeqatError, match="does not match the model.*missing \\['lm_head'\\]"):
        load_learned_scales(fresh, saved)
