"""Weights fake-quantized in fp32, so that a bf16 run trains the integer codes that ship.

``convert`` loads the checkpoint in fp32 and quantizes it with torchao on the CPU. torchao's QAT fake
quantizer computes in the weight's dtype: in a bf16 run its per-group scales are rounded to bf16, and
0.66 % of the embedded model's weights (0.98 % without CUDA autocast) get another code during training
than the one convert gives them, each one quantization step away from what was trained
(benchmarks/fake_quant_codes.py measures it on any checkpoint). So every weight fake quantizer here
runs on the weight in fp32 and casts the result back; activations keep the training dtype (their
quantization happens at run time on the phone, in fp32, and cannot be matched by training in bf16).

A symmetric per-group or per-channel weight (every scheme's) takes the arithmetic of
fused_fake_quant.fake_quant_per_group, which is convert's to the bit on any device; anything else
(range learning's static scales, asymmetric weights) runs torchao's own quantizer on the fp32 weight.
"""

from __future__ import annotations

import torch

from edgeqat.train.fused_fake_quant import fake_quant_per_group, fake_quant_per_group_backward


def _intx_fake_quantizer_class():
    from torchao.quantization.qat import IntxFakeQuantizer

    return IntxFakeQuantizer


class _PerGroupWeightFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, group_size: int, qmin: int, qmax: int):
        ctx.save_for_backward(weight)
        ctx.args = (group_size, qmin, qmax)
        return fake_quant_per_group(weight, group_size, qmin, qmax)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return fake_quant_per_group_backward(weight, grad, *ctx.args), None, None, None


class WeightFakeQuantizer(_intx_fake_quantizer_class()):
    """torchao's IntxFakeQuantizer (same config, state and ``enabled`` switch), computing in fp32."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        group_size = symmetric_group_size(self, w)
        if group_size:
            from torchao.quantization.quant_primitives import _DTYPE_TO_QVALUE_BOUNDS

            return _PerGroupWeightFakeQuant.apply(w, group_size, *_DTYPE_TO_QVALUE_BOUNDS[self.config.dtype])
        if w.dtype == torch.float32:
            return super().forward(w)
        return super().forward(w.float()).to(w.dtype)


def symmetric_group_size(quantizer, w: torch.Tensor) -> int:
    """The group size when ``quantizer`` is a dynamic symmetric per-group (or per-channel) integer quantizer
    with torchao's default qparams, the case fake_quant_per_group computes; else 0."""
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import _DTYPE_TO_QVALUE_BOUNDS, MappingType, ZeroPointDomain

    c = quantizer.config
    if not (c.is_dynamic and not c.range_learning and c.eps is None and c.dtype in _DTYPE_TO_QVALUE_BOUNDS
            and c.mapping_type == MappingType.SYMMETRIC and c.zero_point_domain == ZeroPointDomain.INT
            and c.scale_precision in (None, torch.float32) and w.dim() == 2):
        return 0
    if isinstance(c.granularity, PerGroup):
        group_size = c.granularity.group_size
    elif isinstance(c.granularity, PerAxis) and c.granularity.axis == 0:
        group_size = w.shape[1]
    else:
        return 0
    return group_size if group_size > 1 and w.shape[1] % group_size == 0 else 0


def use_fp32_weight_quantizers(model: torch.nn.Module) -> int:
    """Turns the weight fake quantizer of every fake-quantized linear and embedding into a WeightFakeQuantizer,
    in place (only the class changes: config, scales and state dict stay torchao's); returns how many."""
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    done = 0
    for module in model.modules():
        if isinstance(module, (FakeQuantizedLinear, FakeQuantizedEmbedding)):
            quantizer = module.weight_fake_quantizer
            if type(quantizer) is _intx_fake_quantizer_class():
                quantizer.__class__ = WeightFakeQuantizer
            done += isinstance(quantizer, WeightFakeQuantizer)
    return done
