"""Fused fake quantization for QAT: torchao's numerics at a fraction of its cost.

torchao's fake-quantized linear runs each fake quantizer as a chain of eager ops (min, max, scale, round,
clamp, dequantize: about ten kernels each way) and autograd keeps their intermediates for the backward pass.
Here the same chain, written op for op as torchao writes it, is one autograd function per linear:

* forward: fake-quantize the activation per token and the weight per group, then the matmul (one compiled
  call on CUDA);
* backward: recompute both from the saved input and weight (cheaper than storing them), then the two
  matmuls and torchao's straight-through gradients, ``((grad * scale) * in_range) * (1 / scale)``.
  Scales and zero points carry no gradient (torchao computes them under ``no_grad``).

Only the input and the weight are saved, as for a plain linear, so QAT costs no extra activation memory.
On CPU the same functions run eagerly and match torchao bit for bit; on CUDA inductor compiles them with
``emulate_precision_casts`` so that bf16 intermediates round as they do in eager mode. A linear whose
quantizers this does not cover (range learning, float scales, other granularities) keeps torchao's module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Inductor rounds bf16 intermediates as eager does (else it keeps them in fp32 and scales drift by an ulp).
_COMPILE_OPTIONS = {"emulate_precision_casts": True}


class FusedSpec(NamedTuple):
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


# ---- the linear: one forward and one backward function, eager on CPU, compiled on CUDA ---------------------


def linear_forward(x2d, weight, bias, act_bounds, weight_bounds, group_size):
    fq_x = fake_quant_per_token(x2d, *act_bounds) if act_bounds else x2d
    return F.linear(fq_x, fake_quant_per_group(weight, group_size, *weight_bounds), bias)


def linear_backward(x2d, weight, grad2d, act_bounds, weight_bounds, group_size, need_x, need_weight, need_bias):
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_fq_x = grad2d @ fake_quant_per_group(weight, group_size, *weight_bounds)
        grad_x = fake_quant_per_token_backward(x2d, grad_fq_x, *act_bounds) if act_bounds else grad_fq_x
    if need_weight:  # False for LoRA's frozen base weights: no weight work at all
        fq_x = fake_quant_per_token(x2d, *act_bounds) if act_bounds else x2d
        grad_w = fake_quant_per_group_backward(weight, grad2d.t() @ fq_x, group_size, *weight_bounds)
    if need_bias:
        grad_b = grad2d.sum(0)
    return grad_x, grad_w, grad_b


_compiled: dict[str, object] = {}


def _on(tensor: torch.Tensor, fn):
    """``fn`` itself off CUDA and for fp32; for bf16/fp16 on CUDA, compiled once with rows (tokens, output
    features) as dynamic sizes.

    A whole linear's forward (and backward) is one compiled call: the step is often bound by the host
    launching kernels, so fewer, larger calls matter as much as fewer bytes. fp32 stays eager because
    inductor's fp32 division differs from eager's in the last bit, which moves values across rounding
    boundaries (measured: 1e-2 relative error against torchao on an H200, against 0 for bf16).
    """
    if tensor.device.type != "cuda" or tensor.dtype == torch.float32:
        return fn
    if fn.__name__ not in _compiled:
        # One graph per (in_features, spec, which gradients): a model has a handful, more than dynamo's default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        import os
        options = dict(_COMPILE_OPTIONS, cpp_wrapper=os.environ.get("EDGEQAT_CPP_WRAPPER") == "1")
        _compiled[fn.__name__] = torch.compile(fn, fullgraph=True, dynamic=False, options=options)
    return _compiled[fn.__name__]


def _dynamic_rows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        torch._dynamo.maybe_mark_dynamic(t, 0)


class _FakeQuantizedLinearFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, bias, spec: FusedSpec):
        # Plain tensors into the compiled graph: a Parameter's guards pin its shape and requires_grad.
        x2d, w = x.detach().reshape(-1, x.shape[-1]), weight.detach()
        b = None if bias is None else bias.detach()
        _dynamic_rows(x2d, w)
        out = _on(x, linear_forward)(x2d, w, b, *spec)
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x2d, w)  # what a plain linear keeps; the fake-quantized copies are recomputed
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x2d, w = ctx.saved_tensors
        grad2d = grad_out.reshape(-1, grad_out.shape[-1])
        _dynamic_rows(x2d, w, grad2d)
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        grad_x, grad_w, grad_b = _on(grad_out, linear_backward)(x2d, w, grad2d, *ctx.spec, need_x, need_w, need_b)
        if grad_x is not None:
            grad_x = grad_x.view(*grad_out.shape[:-1], x2d.shape[-1])
        return grad_x, grad_w, grad_b, None


def fused_fake_quantized_linear(x, weight, bias, spec: FusedSpec) -> torch.Tensor:
    return _FakeQuantizedLinearFunction.apply(x, weight, bias, spec)
