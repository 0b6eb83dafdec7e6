"""Fused fake quantization for QAT: torchao's numerics at a fraction of its cost.

torchao's fake-quantized linear runs each fake quantizer as a chain of eager ops (min, max, scale, round,
clamp, dequantize: about ten kernels each way) and autograd keeps their intermediates for the backward pass.
Here the same chain, written op for op as torchao writes it, is one autograd function per linear:

* forward: fake-quantize the activation per token and the weight per group (each one compiled kernel on
  CUDA), then the matmul;
* backward: recompute both from the saved input and weight (cheaper than storing them), then the two
  matmuls and torchao's straight-through gradients, ``((grad * scale) * in_range) * (1 / scale)``.
  Scales and zero points carry no gradient (torchao computes them under ``no_grad``).

Only the input and the weight are saved, as for a plain linear, so QAT costs no extra activation memory.
On CPU the same functions run eagerly and match torchao bit for bit; on CUDA inductor compiles them with
``emulate_precision_casts`` so that bf16 intermediates round as they do in eager mode. A linear whose
quantizers this does not cover (range learning, float scales, other granularities) keeps torchao's module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Inductor rounds bf16 intermediates as eager does (else it keeps them in fp32 and scales drift by an ulp).
_COMPILE_OPTIONS = {"emulate_precision_casts": True}


@dataclass(frozen=True)
class FusedSpec:
    """What one fused linear computes: activation bounds (None: weight-only) and weight bounds and group."""

    act_bounds: tuple[int, int] | None
    weight_bounds: tuple[int, int]
    group_size: int  # in_features for per-channel


# ---- the numerics, op for op as torchao 0.18 computes them -------------------------------------------------


def per_token_qparams(x: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric per-row scale (x's dtype) and int32 zero point: torchao's choose_qparams_affine."""
    min_neg = torch.clamp(x.amin(dim=-1, keepdim=True), max=0)
    max_pos = torch.clamp(x.amax(dim=-1, keepdim=True), min=0)
    scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=torch.finfo(x.dtype).smallest_normal)
    zero_point = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def per_group_scale(w: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    """Symmetric scale per group of ``group_size`` inputs, shape (out, in / group, 1): get_group_qparams_symmetric."""
    groups = w.view(w.shape[0], -1, group_size)
    min_neg = torch.clamp(groups.amin(dim=-1, keepdim=True), max=0)
    max_pos = torch.clamp(groups.amax(dim=-1, keepdim=True), min=0)
    max_abs = torch.maximum(-min_neg, max_pos)
    return torch.clamp(max_abs / (float(qmax - qmin) / 2), min=torch.finfo(w.dtype).smallest_normal)


def _quantize(x, scale, zero_point, qmin, qmax):
    """(fake-quantized x, in-range mask, 1 / scale); the zero point is None when symmetric (it is 0)."""
    inverse = 1.0 / scale
    unclamped = torch.round(x * inverse)
    if zero_point is not None:
        unclamped = unclamped + zero_point
    q = torch.clamp(unclamped, qmin, qmax)
    if zero_point is not None:
        q = q - zero_point.to(x.dtype)
    return (q * scale).to(x.dtype), (unclamped >= qmin) & (unclamped <= qmax), inverse


def _straight_through(grad, scale, in_range, inverse):
    """torchao's autograd through dequantize (× scale), clamp (× mask), STE round and quantize (× 1/scale)."""
    return (torch.where(in_range, grad * scale, 0) * inverse).to(grad.dtype)


def fake_quant_per_token(x: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    scale, zero_point = per_token_qparams(x, qmin, qmax)
    return _quantize(x, scale, zero_point, qmin, qmax)[0]


def fake_quant_per_token_backward(x: torch.Tensor, grad: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    scale, zero_point = per_token_qparams(x, qmin, qmax)
    _, in_range, inverse = _quantize(x, scale, zero_point, qmin, qmax)
    return _straight_through(grad, scale, in_range, inverse)


def fake_quant_per_group(w: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    scale = per_group_scale(w, group_size, qmin, qmax)
    groups = w.view(w.shape[0], -1, group_size)
    return _quantize(groups, scale, None, qmin, qmax)[0].view(w.shape)


def fake_quant_per_group_backward(w: torch.Tensor, grad: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    scale = per_group_scale(w, group_size, qmin, qmax)
    groups = w.view(w.shape[0], -1, group_size)
    _, in_range, inverse = _quantize(groups, scale, None, qmin, qmax)
    return _straight_through(grad.view(groups.shape), scale, in_range, inverse).view(w.shape)


# ---- eager on CPU, compiled on CUDA ------------------------------------------------------------------------

_EAGER = {
    "act": fake_quant_per_token,
    "act_backward": fake_quant_per_token_backward,
    "weight": fake_quant_per_group,
    "weight_backward": fake_quant_per_group_backward,
}
_compiled: dict[str, object] = {}


def _kernel(name: str, tensor: torch.Tensor):
    if tensor.device.type != "cuda":
        return _EAGER[name]
    if name not in _compiled:
        _compiled[name] = torch.compile(_EAGER[name], fullgraph=True, dynamic=False, options=_COMPILE_OPTIONS)
    # Rows vary with batch and sequence length; one kernel per in_features serves them all.
    torch._dynamo.maybe_mark_dynamic(tensor, 0)
    return _compiled[name]


def _fake_quant_act(x2d, spec: FusedSpec):
    return _kernel("act", x2d)(x2d, *spec.act_bounds) if spec.act_bounds else x2d


def _fake_quant_weight(weight, spec: FusedSpec):
    return _kernel("weight", weight)(weight, spec.group_size, *spec.weight_bounds)


class _FakeQuantizedLinearFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, spec: FusedSpec):
        x2d = x.reshape(-1, x.shape[-1])
        out = F.linear(_fake_quant_act(x2d, spec), _fake_quant_weight(weight, spec), bias)
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x2d, weight)  # the same tensors a plain linear keeps; fake-quant is recomputed
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x2d, weight = ctx.saved_tensors
        spec: FusedSpec = ctx.spec
        grad2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_fq_x = grad2d @ _fake_quant_weight(weight, spec)
            if spec.act_bounds:
                grad_fq_x = _kernel("act_backward", x2d)(x2d, grad_fq_x, *spec.act_bounds)
            grad_x = grad_fq_x.view(*grad_out.shape[:-1], x2d.shape[-1])
        if ctx.needs_input_grad[1]:  # False for LoRA's frozen base weights: no weight work at all
            grad_fq_w = grad2d.t() @ _fake_quant_act(x2d, spec)
            grad_w = _kernel("weight_backward", weight)(weight, grad_fq_w, spec.group_size, *spec.weight_bounds)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2d.sum(0)
        return grad_x, grad_w, grad_b, None


def fused_fake_quantized_linear(x, weight, bias, spec: FusedSpec) -> torch.Tensor:
    return _FakeQuantizedLinearFunction.apply(x, weight, bias, spec)
