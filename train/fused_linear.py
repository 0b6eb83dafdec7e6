"""Swapping torchao's fake-quantized linears for fused ones, where the fused kernels compute the same thing.

The swapped module is still a torchao ``FakeQuantizedLinear`` (same weight, bias and quantizer configs;
``to_linear`` and QAT convert work unchanged); only its forward differs. A layer whose quantizers the
fused path does not cover is left as it is, so every scheme keeps working through torchao.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from edgeqat.train.fake_quant_delay import fake_quant_enabled
from edgeqat.train.fused_fake_quant import FusedSpec, fake_quantized_weight, fused_fake_quantized_linear

_FLOATS = (torch.bfloat16, torch.float16, torch.float32)
# Optimizer steps so far, of any optimizer. Fused optimizers (AdamW(fused=True), the Trainer's default on
# CUDA) update weights in place without bumping their version counter, so a cached fake-quantized weight
# is also keyed by this.
_optimizer_steps = [0]


def _count_step(optimizer, args, kwargs) -> None:
    _optimizer_steps[0] += 1


register_optimizer_step_post_hook(_count_step)


def _fake_quantized_linear_class():
    from torchao.quantization.qat import FakeQuantizedLinear

    return FakeQuantizedLinear


def _is_plain_intx(quantizer, learned_scale: bool = False) -> bool:
    """An integer fake quantizer with torchao's default qparams (the numerics the fused kernels reproduce), or
    with ``learned_scale`` edgeqat's range-learning weight quantizer (static fp32 scales, schemes.qat_prepare_config)."""
    from torchao.quantization.qat import IntxFakeQuantizer
    from torchao.quantization.quant_primitives import _DTYPE_TO_QVALUE_BOUNDS, ZeroPointDomain

    from edgeqat.train.weight_fake_quant import WeightFakeQuantizer

    if type(quantizer) not in ((WeightFakeQuantizer,) if learned_scale else (IntxFakeQuantizer, WeightFakeQuantizer)):
        return False
    c = quantizer.config
    return (
        c.dtype in _DTYPE_TO_QVALUE_BOUNDS and c.zero_point_precision == torch.int32 and c.eps is None
        and c.zero_point_domain == ZeroPointDomain.INT and c.is_dynamic != learned_scale and c.range_learning == learned_scale
        and c.scale_precision == (torch.float32 if learned_scale else None)
    )


def fused_spec(module: torch.nn.Module) -> FusedSpec | None:
    """What the fused linear must compute for ``module``, or None when it cannot stand in for torchao's."""
    from torchao.quantization.granularity import PerAxis, PerGroup, PerToken
    from torchao.quantization.quant_primitives import _DTYPE_TO_QVALUE_BOUNDS, MappingType

    if type(module) is not _fake_quantized_linear_class():
        return None
    weight_q, act_q = module.weight_fake_quantizer, module.activation_fake_quantizer
    learned = _is_plain_intx(weight_q, learned_scale=True)
    if not (learned or _is_plain_intx(weight_q)) or weight_q.config.mapping_type != MappingType.SYMMETRIC:
        return None
    granularity = weight_q.config.granularity
    if isinstance(granularity, PerGroup):
        group_size = granularity.group_size
    elif isinstance(granularity, PerAxis) and granularity.axis == 0:
        group_size = module.in_features
    else:
        return None
    if group_size < 2 or module.in_features % group_size:
        return None
    act_bounds = None
    if act_q is not None:
        if not (_is_plain_intx(act_q) and isinstance(act_q.config.granularity, PerToken)
                and act_q.config.mapping_type == MappingType.ASYMMETRIC):
            return None
        act_bounds = _DTYPE_TO_QVALUE_BOUNDS[act_q.config.dtype]
    return FusedSpec(act_bounds, _DTYPE_TO_QVALUE_BOUNDS[weight_q.config.dtype], group_size, learned)


class FusedFakeQuantizedLinear(_fake_quantized_linear_class()):
    """torchao's FakeQuantizedLinear with the fused forward and backward; ``fused_spec`` set by ``use_fused``."""

    fused_spec: FusedSpec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fake_quant_enabled(self) or x.dtype not in _FLOATS or self.weight.dtype not in _FLOATS:
            return super().forward(x)
        scale = learned_scale(self)
        if self.fused_spec.learned_scale and scale is None:  # not initialized yet: torchao's forward sets it
            return super().forward(x)
        return fused_fake_quantized_linear(x, self.weight, self._fake_quantized_weight(), self.bias, self.fused_spec, scale)

    def _fake_quantized_weight(self) -> torch.Tensor:
        """Made again only when the weight (or its learned scale) may have changed: an optimizer step, or any
        in-place change."""
        return cached_fake_quantized_weight(self, self.fused_spec, learned_scale(self), (self.weight,), lambda: self.weight)


def learned_scale(linear: torch.nn.Module) -> torch.Tensor | None:
    """The range-learned scale of a fused linear's weight (an fp32 parameter), or None (dynamic scales, or
    range learning not initialized yet)."""
    quantizer = linear.weight_fake_quantizer
    scale = quantizer.scale if quantizer.config.range_learning else None
    return scale if isinstance(scale, torch.nn.Parameter) else None


def cached_fake_quantized_weight(owner: torch.nn.Module, spec: FusedSpec, scale: torch.Tensor | None,
                                 sources: tuple[torch.Tensor, ...], weight_of: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fake_quantized_weight(weight_of(), spec, scale)``, kept on ``owner`` until an optimizer step or an in-place
    change of the scale or of any of ``sources`` (the tensors the weight is made of)."""
    key = (_optimizer_steps[0], *((t._version, t.data_ptr(), t.dtype, t.device) for t in sources),
           None if scale is None else (scale._version, scale.data_ptr()))
    if getattr(owner, "_fq_weight_key", None) != key:
        with torch.no_grad():
            owner._fq_weight = fake_quantized_weight(weight_of(), spec, scale)
        owner._fq_weight_key = key
    return owner._fq_weight


def use_fused(model: torch.nn.Module) -> tuple[int, int]:
    """Turns every fake-quantized linear the fused path covers into a FusedFakeQuantizedLinear, in place.

    Returns (fused, left to torchao). The module keeps its parameters, hooks and quantizers: only its
    class changes, so a fused model saves, loads and converts exactly as torchao's.
    """
    fused = kept = 0
    for module in model.modules():
        if isinstance(module, FusedFakeQuantizedLinear):
            fused += 1
            continue
        if not isinstance(module, _fake_quantized_linear_class()):
            continue
        spec = fused_spec(module)
        if spec is None:
            kept += 1
            continue
        module.__class__ = FusedFakeQuantizedLinear
        module.fused_spec = spec
        fused += 1
    return fused, kept

