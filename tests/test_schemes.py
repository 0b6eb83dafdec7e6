"""The scheme registry (core/schemes.py) and applying it with torchao (train/quantize.py), on a tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
from torchao.quantization.granularity import PerAxis, PerGroup
from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear
from transformers import LlamaConfig, LlamaForCausalLM

from edgeqat import schemes
from edgeqat.config import QuantConfig
from edgeqat.errors import EdgeqatError
from edgeqat.train.quantize import convert_qat, count_fake_quantized, prepare_qat, quantize_ptq, strip_fake_quant

# -- the registry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["8da4w", "8da8w", "4w"])
def test_every_scheme_resolves(name):
    scheme = schemes.get_scheme(name)
    assert scheme.name == name
    assert scheme is schemes.SCHEMES[name]
    assert scheme.weight_bits in (4, 8)


def test_registry_holds_the_documented_schemes():
    assert set(schemes.SCHEMES) == {"8da4w", "8da8w", "4w"}


def test_the_export_refuses_what_xnnpack_cannot_run_and_says_what_to_do():
    eight_bit = schemes.get_scheme("8da8w")
    assert schemes.export_blocker(eight_bit, schemes.PER_CHANNEL) is None
    assert schemes.export_blocker(schemes.get_scheme("8da4w"), 32) is None
    reason = schemes.export_blocker(eight_bit, 32)
    assert "per output channel" in reason and "--group-size 0" in reason
    assert schemes.export_blocker(schemes.get_scheme("4w"), 32) == schemes.get_scheme("4w").export_blocker


def test_unknown_scheme_names_the_choices():
    with pytest.raises(EdgeqatError) as e:
        schemes.get_scheme("9bit")
    message = str(e.value)
    assert "'9bit'" in message
    for name in schemes.SCHEMES:
        assert name in message


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_base_config_8da4w_per_group(group_size):
    config = schemes.base_config(schemes.get_scheme("8da4w"), group_size)
    assert type(config) is Int8DynamicActivationIntxWeightConfig
    assert config.weight_dtype == torch.int4
    assert config.weight_granularity == PerGroup(group_size)


def test_base_config_8da8w_per_channel():
    scheme = schemes.get_scheme("8da8w")
    config = schemes.base_config(scheme, scheme.default_group_size)
    assert scheme.default_group_size == 0
    assert type(config) is Int8DynamicActivationIntxWeightConfig
    assert config.weight_dtype == torch.int8
    assert config.weight_granularity == PerAxis(0)


@pytest.mark.parametrize("group_size", [0, 32, 64, 128, 256])
def test_base_config_4w_is_weight_only(group_size):
    config = schemes.base_config(schemes.get_scheme("4w"), group_size)
    assert type(config) is IntxWeightOnlyConfig
    assert config.weight_dtype == torch.int4
    assert config.granularity == (PerAxis(0) if group_size == 0 else PerGroup(group_size))


def test_group_size_zero_is_per_channel_for_8da4w():
    config = schemes.base_config(schemes.get_scheme("8da4w"), 0)
    assert config.weight_granularity == PerAxis(0)


def test_negative_group_size_is_an_error():
    with pytest.raises(EdgeqatError, match="group size"):
        schemes.base_config(schemes.get_scheme("8da4w"), -32)


@pytest.mark.parametrize("bits,dtype", [(4, torch.int4), (8, torch.int8)])
def test_embedding_config(bits, dtype):
    config = schemes.embedding_config(bits, 32)
    assert type(config) is IntxWeightOnlyConfig
    assert config.weight_dtype == dtype
    assert config.granularity == PerGroup(32)


def test_embedding_config_rejects_other_bits():
    with pytest.raises(EdgeqatError, match="embedding bits"):
        schemes.embedding_config(2, 32)


# -- linear_filter ------------------------------------------------------------------------------------


class _Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.good = torch.nn.Linear(64, 8)
        self.odd = torch.nn.Linear(48, 8)  # 32 does not divide 48
        self.emb = torch.nn.Embedding(10, 64)


def test_linear_filter_indivisible_names_the_layer_and_the_fix():
    warnings = []
    with pytest.raises(EdgeqatError) as e:
        schemes.linear_filter(_Mixed(), 32, skip_indivisible=False, warn=warnings.append)
    message = str(e.value)
    assert "'odd'" in message
    assert "in_features=48" in message
    assert "group size 32" in message
    assert "--skip-indivisible" in message
    assert "'good'" not in message
    assert warnings == []


def test_linear_filter_skip_indivisible_warns_and_excludes():
    model = _Mixed()
    warnings = []
    keep = schemes.linear_filter(model, 32, skip_indivisible=True, warn=warnings.append)
    assert len(warnings) == 1
    assert "odd" in warnings[0] and "good" not in warnings[0]
    assert keep(model.good, "good") is True
    assert keep(model.odd, "odd") is False
    assert keep(model.emb, "emb") is False


def test_linear_filter_per_channel_takes_every_linear():
    model = _Mixed()
    warnings = []
    keep = schemes.linear_filter(model, 0, skip_indivisible=False, warn=warnings.append)
    assert warnings == []
    assert keep(model.good, "good") and keep(model.odd, "odd")


def test_linear_filter_divisible_model_does_not_warn():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 128))
    warnings = []
    keep = schemes.linear_filter(model, 32, skip_indivisible=True, warn=warnings.append)
    assert warnings == []
    assert keep(model[0], "0") and keep(model[1], "1")


# -- applying the schemes to a tiny Llama ---------------------------------------------------------------


def tiny_llama(intermediate_size: int = 128, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def _linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 17, 42, 99, 200, 3, 128, 255]])
LINEARS_PER_TINY_LLAMA = 2 * 7 + 1  # q k v o gate up down per layer, plus lm_head


def test_prepare_qat_fake_quantizes_every_linear_and_by_default_the_embedding():
    model = tiny_llama()
    prepare_qat(model, QuantConfig())
    linears = _linears(model)
    assert len(linears) == LINEARS_PER_TINY_LLAMA
    assert all(isinstance(m, FakeQuantizedLinear) for m in linears.values())
    assert isinstance(model.model.embed_tokens, FakeQuantizedEmbedding)
    config = model.model.embed_tokens.weight_fake_quantizer.config
    assert (config.dtype, config.granularity) == (torch.int4, PerGroup(32))
    assert count_fake_quantized(model) == LINEARS_PER_TINY_LLAMA + 1


@pytest.mark.parametrize("bits,linear_group,expected", [(4, 32, 32), (4, 64, 64), (4, 0, 32), (8, 0, 0), (8, 32, 32),
                                                        (0, 32, None), (None, 0, None)])
def test_the_embedding_group_size_follows_the_linears_except_int4_per_channel(bits, linear_group, expected):
    assert schemes.embedding_group_size(bits, linear_group) == expected


def test_a_per_channel_scheme_still_groups_a_4_bit_embedding():
    model = tiny_llama()
    prepare_qat(model, QuantConfig(scheme="8da8w"))
    assert model.model.embed_tokens.weight_fake_quantizer.config.granularity == PerGroup(32)


@pytest.mark.parametrize("scheme", ["8da4w", "8da8w", "4w"])
def test_fake_quant_forward_equals_converted_forward(scheme):
    model = tiny_llama()
    float_logits = _logits(model, IDS)
    quant = QuantConfig(scheme=scheme)
    prepare_qat(model, quant)
    fake = _logits(model, IDS)
    assert not torch.equal(fake, float_logits)  # fake quantization changes the numbers...
    convert_qat(model, quant)
    for name, linear in _linears(model).items():
        assert type(linear) is torch.nn.Linear, name
        assert type(linear.weight) is not torch.nn.Parameter and type(linear.weight) is not torch.Tensor, name
    converted = _logits(model, IDS)
    assert (fake - converted).abs().max().item() == 0  # ...and convert reproduces them exactly


def test_strip_fake_quant_gives_back_plain_modules_with_the_same_weights():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quant = QuantConfig(embedding_bits=4)
    prepare_qat(model, quant)
    assert count_fake_quantized(model) == LINEARS_PER_TINY_LLAMA + 1
    stripped = strip_fake_quant(model)
    assert stripped is model
    assert count_fake_quantized(model) == 0
    for name, linear in _linears(model).items():
        assert type(linear) is torch.nn.Linear, name
    assert type(model.model.embed_tokens) is torch.nn.Embedding
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert type(after[key]) is torch.Tensor, key
        assert torch.equal(after[key], value), key


def test_strip_fake_quant_keeps_tied_embeddings_tied():
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    prepare_qat(model, QuantConfig(embedding_bits=8))
    strip_fake_quant(model)
    assert type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_bits_quantizes_the_embedding(bits):
    model = tiny_llama()
    float_embedding = model.model.embed_tokens.weight.detach().clone()
    quant = QuantConfig(embedding_bits=bits)
    prepare_qat(model, quant)
    assert isinstance(model.model.embed_tokens, FakeQuantizedEmbedding)
    fake = _logits(model, IDS)
    convert_qat(model, quant)
    embedding = model.model.embed_tokens
    assert type(embedding) is torch.nn.Embedding
    assert type(embedding.weight) is not torch.nn.Parameter and type(embedding.weight) is not torch.Tensor
    assert embedding.weight.dequantize().shape == float_embedding.shape
    assert not torch.equal(embedding.weight.dequantize(), float_embedding)
    assert (fake - _logits(model, IDS)).abs().max().item() == 0


@pytest.mark.parametrize("bits", [0, None])
def test_no_embedding_bits_leaves_the_embedding_float(bits):
    model = tiny_llama()
    quantize_ptq(model, QuantConfig(embedding_bits=bits))
    assert type(model.model.embed_tokens.weight) is torch.nn.Parameter
    assert all(type(m.weight) is not torch.nn.Parameter for m in _linears(model).values())


def test_quantize_ptq_is_close_to_float():
    model = tiny_llama()
    reference = _logits(copy.deepcopy(model), IDS)
    quantize_ptq(model, QuantConfig(scheme="8da8w"))
    quantized = _logits(model, IDS)
    assert not torch.equal(quantized, reference)
    cosine = torch.nn.functional.cosine_similarity(quantized.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.99


def test_indivisible_layer_is_an_error_without_skip():
    model = tiny_llama(intermediate_size=96)  # down_proj has in_features 96; 64 does not divide it
    with pytest.raises(EdgeqatError, match="down_proj"):
        prepare_qat(model, QuantConfig(group_size=64), warn=lambda m: None)
    assert count_fake_quantized(model) == 0  # the check runs before anything is changed


def test_skip_indivisible_leaves_those_layers_float():
    model = tiny_llama(intermediate_size=96)
    warnings = []
    quantize_ptq(model, QuantConfig(group_size=64, skip_indivisible=True), warn=warnings.append)
    assert len(warnings) == 1
    assert "model.layers.0.mlp.down_proj" in warnings[0] and "model.layers.1.mlp.down_proj" in warnings[0]
    for name, linear in _linears(model).items():
        if name.endswith("down_proj"):
            assert type(linear.weight) is torch.nn.Parameter, name
        else:
            assert type(linear.weight) is not torch.nn.Parameter, name


def test_embedding_dim_indivisible_by_group_size_is_an_error():
    model = tiny_llama()  # hidden 64
    with pytest.raises(EdgeqatError, match="embedding dimension 64"):
        prepare_qat(model, QuantConfig(group_size=128, embedding_bits=4, skip_indivisible=True), warn=lambda m: None)
