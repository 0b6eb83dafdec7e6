"""Applying a scheme to a model with torchao: fake quantization for QAT, real quantization to convert.

The order matters for LoRA: fake quantization goes on the base linears first, and peft adds its
adapters after, so the rank-r adapter layers (in_features = r) are never group-quantized.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from edgeqat import schemes
from edgeqat.config import QuantConfig, group_size_of
from edgeqat.errors import EdgeqatError

log = logging.getLogger("edgeqat")


def _configs(quant: QuantConfig):
    """(linear config, linear filter builder, embedding config or None) for a quant config."""
    scheme = schemes.get_scheme(quant.scheme)
    group_size = group_size_of(quant)
    linear = schemes.base_config(scheme, group_size)
    embedding = None
    if quant.embedding_bits:
        embedding = schemes.embedding_config(
            quant.embedding_bits, schemes.embedding_group_size(quant.embedding_bits, group_size))
    return linear, group_size, embedding


def check_quantizable(model: torch.nn.Module, quant: QuantConfig, warn: Callable[[str], None] = log.warning):
    """The linear filter for ``quant`` on ``model``; raises before any work when the group size does not fit."""
    _, group_size, embedding = _configs(quant)
    linear_filter = schemes.linear_filter(model, group_size, quant.skip_indivisible, warn)
    # Any nn.Embedding is quantized (schemes.embedding_filter); a module without one has nothing to check.
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)] if embedding is not None else []
    embedding_group = schemes.embedding_group_size(quant.embedding_bits, group_size) if embeddings else 0
    for embedding_dim in sorted({m.embedding_dim for m in embeddings}):
        if embedding_group and embedding_dim % embedding_group:
            raise EdgeqatError(
                f"the embedding dimension {embedding_dim} is not divisible by group size {embedding_group}; "
                f"choose a group size that divides it, or --embedding-bits 0 for a float embedding"
            )
    return linear_filter


def _apply(model: torch.nn.Module, quant: QuantConfig, wrap: Callable, warn: Callable[[str], None],
           range_learning: bool = False) -> None:
    """``wrap`` of the scheme's configs over the embedding and the linears. With ``range_learning`` the linears
    learn their scales, except a tied output layer: it keeps per-step scales, as its embedding does, so the
    two quantize to the same table, which the `.pte` stores once (export/tied_embedding.py); learned scales
    of its own would cost a second copy of the vocabulary table."""
    from torchao.quantization import quantize_

    linear, _, embedding = _configs(quant)
    linear_filter = check_quantizable(model, quant, warn)
    if embedding is not None:
        quantize_(model, wrap(embedding), filter_fn=schemes.embedding_filter)
    if not range_learning:
        quantize_(model, wrap(linear), filter_fn=linear_filter)
        return
    head = _tied_quantized_head(model, quant)
    quantize_(model, schemes.qat_prepare_config(linear, range_learning=True),
              filter_fn=lambda m, fqn: linear_filter(m, fqn) and m is not head)
    if head is not None:  # still the plain nn.Linear: the call above left it out
        quantize_(model, wrap(linear), filter_fn=lambda m, fqn: m is head and linear_filter(m, fqn))


def _tied_quantized_head(model: torch.nn.Module, quant: QuantConfig) -> torch.nn.Module | None:
    """The output layer when it shares its weight with a quantized embedding, else None."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    get_head = getattr(model, "get_output_embeddings", None)
    return get_head() if tied and quant.embedding_bits and get_head is not None else None


def wants_fused(kernels: str, device: torch.device) -> bool:
    """Whether ``train.fake_quant_kernels`` asks for the fused fake-quantized linears on ``device``."""
    return kernels == "fused" or (kernels == "auto" and device.type == "cuda")


def prepare_qat(
    model: torch.nn.Module, quant: QuantConfig, warn: Callable[[str], None] = log.warning, fused: bool = False
) -> None:
    """Inserts torchao fake quantizers (QATConfig step="prepare") in place, their weights fake-quantized in fp32
    (weight_fake_quant.py); ``fused`` swaps in the fused fake-quantized linears (same numerics, see
    fused_fake_quant.py) wherever they apply."""
    # range learning is the linears' (the embedding's scales stay per-step absmax)
    _apply(model, quant, schemes.qat_prepare_config, warn, range_learning=quant.range_learning)
    from edgeqat.train.weight_fake_quant import use_fp32_weight_quantizers

    use_fp32_weight_quantizers(model)  # the codes convert ships, in a bf16 run too
    if fused:
        from edgeqat.train.fused_linear import use_fused

        done, kept = use_fused(model)
        if kept:
            warn(f"{kept} fake-quantized linear(s) keep torchao's eager quantizers (not covered by the fused kernels)")
        log.debug("fused fake quantization on %d linear layer(s)", done)


def convert_qat(model: torch.nn.Module, quant: QuantConfig, warn: Callable[[str], None] = log.warning) -> None:
    """Turns a QAT-prepared model's fake quantization into real quantized weights (step="convert"); range-learned
    linears are quantized with their learned scales (torchao passes them as ``custom_scale``)."""
    _apply(model, quant, schemes.qat_convert_config, warn)


# -- range learning: the learned scales, set up, saved beside the checkpoint and loaded again to convert ------

LEARNED_SCALES = "learned_scales.safetensors"  # in a range-learning QAT checkpoint: {linear name: scale}


def _range_learning_quantizers(model: torch.nn.Module) -> dict:
    from torchao.quantization.qat import FakeQuantizedLinear

    return {name: m.weight_fake_quantizer for name, m in model.named_modules()
            if isinstance(m, FakeQuantizedLinear) and m.weight_fake_quantizer.config.range_learning}


def initialize_range_learning(model: torch.nn.Module, device: torch.device) -> int:
    """Sets every range-learning scale from its weight's absmax (torchao's initialize_fake_quantizers: one
    forward) and makes it a trainable fp32 parameter; returns how many."""
    from torchao.quantization.qat import initialize_fake_quantizers

    initialize_fake_quantizers(model, (torch.zeros(1, 1, dtype=torch.long, device=device),))
    return len(_range_learning_quantizers(model))


def learned_scale_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The learned scales, trainable again (peft freezes every parameter it did not add)."""
    scales = [q.scale for q in _range_learning_quantizers(model).values()]
    for scale in scales:
        scale.requires_grad_(True)
    return scales


def learned_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{linear name: learned scale} of a range-learning model, for LEARNED_SCALES."""
    return {name: q.scale.detach().float().contiguous() for name, q in _range_learning_quantizers(model).items()}


def load_learned_scales(model: torch.nn.Module, scales: dict[str, torch.Tensor]) -> None:
    """Puts the learned scales into a freshly prepared range-learning model, so that convert quantizes with them."""
    quantizers = _range_learning_quantizers(model)
    if set(quantizers) != set(scales):
        missing, extra = sorted(set(quantizers) - set(scales)), sorted(set(scales) - set(quantizers))
        raise EdgeqatError(f"the checkpoint's {LEARNED_SCALES} does not match the model (missing {missing[:3]}, "
                           f"unexpected {extra[:3]}); train it again")
    for name, quantizer in quantizers.items():
        scale = scales[name]
        quantizer.scale = torch.nn.Parameter(scale.clone(), requires_grad=False)
        quantizer.zero_point = torch.zeros_like(scale, dtype=torch.int32)  # symmetric: zero points are 0
        quantizer._initialized = True


def quantize_ptq(model: torch.nn.Module, quant: QuantConfig, warn: Callable[[str], None] = log.warning) -> None:
    """Post-training quantization with the scheme's base config."""
    _apply(model, quant, lambda config: config, warn)


def strip_fake_quant(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps fake-quantized modules back to plain ones (same weights), so a checkpoint saves as plain HF."""
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FakeQuantizedLinear):
                setattr(module, child_name, child.to_linear())
            elif isinstance(child, FakeQuantizedEmbedding):
                setattr(module, child_name, child.to_embedding())
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.tie_weights()
    return model


def count_fake_quantized(model: torch.nn.Module) -> int:
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    return sum(isinstance(m, (FakeQuantizedLinear, FakeQuantizedEmbedding)) for m in model.modules())
