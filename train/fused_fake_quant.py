"""Fused fake quantization for QAT: torchao's numerics at a fraction of its cost.

torchao's fake-quantized linear runs each fake quantizer as a chain of eager ops (min, max, scale, round,
clamp, dequantize: about ten kernels each way) and autograd keeps their intermediates for the backward pass.
Here the same chain, written op for op as torchao writes it, is one autograd function per linear:

* forward: fake-quantize the activation per token and the weight per group, then the matmul;
* backward: recompute the activation's copy from the saved input (cheaper than storing it), then the two
  matmuls and torchao's straight-through gradients, ``((grad * scale) * in_range) * (1 / scale)``.
  Scales and zero points carry no gradient (torchao computes them under ``no_grad``).

Only the input and the weight are saved, as for a plain linear, so QAT costs no extra activation memory.
The weight's fake-quantized copy is made once per optimizer step (FusedFakeQuantizedLinear keeps it while
the weight is unchanged: across gradient accumulation, checkpointing's recomputation and the backward
pass, and for LoRA's frozen weights for the whole run); that copy, 2 bytes per weight, is the only extra
memory. torchao holds the same copy through each step (F.linear saves it for the backward).
In bf16 on CUDA each fake quantization is one Triton kernel (fake_quant_triton.py); elsewhere the
functions below run eagerly and match torchao bit for bit. A linear whose quantizers this does not
cover (float scales, asymmetric weights, other granularities) keeps torchao's module.

Range learning's weights have a static scale that is itself trained (an fp32 parameter, one per group).
Their fake quantization and its gradients, into the weight and into the scale, are torchao's autograd
written out (``fake_quant_learned*``), in fp32; in bf16 on CUDA one kernel computes them in one pass over
the weight (the scale's gradient then sums each group in another order than eager, within fp32 rounding).
The scale's gradient needs the weight's full out × in gradient, so a layer that learns its scales
computes that matmul even where the weight itself is frozen (LoRA).

One deliberate difference from torchao: the weight is fake-quantized in fp32 whatever its dtype, with
the arithmetic of ``convert`` (torchao on the CPU, on the checkpoint loaded in fp32), so that a bf16 run
trains the integer codes that ship. torchao's bf16 fake quantizer computes its scales in bf16 and gives
0.7-1.0 % of a model's weights another code than convert does (weight_fake_quant.py).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F


class FusedSpec(NamedTuple):
    """What one fused linear computes: activation bounds (None: weight-only) and weight bounds and group."""

    act_bounds: tuple[int, int] | None
    weight_bounds: tuple[int, int]
    group_size: int  # in_features for per-channel
    learned_scale: bool = False  # range learning: the weight's scale is a trained parameter, not its absmax


# ---- the numerics, op for op as torchao 0.18 computes them -------------------------------------------------


def per_token_qparams(x: torch.Tensor, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric per-row scale (x's dtype) and int32 zero point: torchao's choose_qparams_affine."""
    min_neg = torch.clamp(x.amin(dim=-1, keepdim=True), max=0)
    max_pos = torch.clamp(x.amax(dim=-1, keepdim=True), min=0)
    scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=torch.finfo(x.dtype).smallest_normal)
    zero_point = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def per_group_scale(w: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    """Symmetric fp32 scale per group of ``group_size`` inputs, shape (out, in / group, 1), as convert's
    get_group_qparams_symmetric computes it on the CPU from the fp32 weight."""
    groups = w.float().view(w.shape[0], -1, group_size)
    min_neg = torch.clamp(groups.amin(dim=-1, keepdim=True), max=0)
    max_pos = torch.clamp(groups.amax(dim=-1, keepdim=True), min=0)
    max_abs = torch.maximum(-min_neg, max_pos)
    # Divided by a tensor: CUDA divides by a Python number through its reciprocal, which can land one ulp
    # away from the CPU's correctly rounded division, and then a weight on a rounding boundary flips code.
    half_range = max_abs.new_tensor(float(qmax - qmin) / 2)
    return torch.clamp(max_abs / half_range, min=torch.finfo(torch.float32).smallest_normal)


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
    """The weight's fake-quantized copy in its own dtype, computed in fp32 (the codes convert gives it)."""
    scale = per_group_scale(w, group_size, qmin, qmax)
    groups = w.float().view(w.shape[0], -1, group_size)
    return _quantize(groups, scale, None, qmin, qmax)[0].view(w.shape).to(w.dtype)


def fake_quant_per_group_backward(w: torch.Tensor, grad: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    scale = per_group_scale(w, group_size, qmin, qmax)
    groups = w.float().view(w.shape[0], -1, group_size)
    _, in_range, inverse = _quantize(groups, scale, None, qmin, qmax)
    return _straight_through(grad.float().view(groups.shape), scale, in_range, inverse).view(w.shape).to(grad.dtype)


def fake_quant_learned(w: torch.Tensor, scale: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    """The weight fake-quantized with its learned fp32 scale (one per group), in fp32, cast to the weight's dtype:
    torchao's range-learning forward on the fp32 weight (``round(w * (1 / s))``, clamp, ``× s``; zero point 0)."""
    groups = w.float().view(w.shape[0], -1, group_size)
    return _quantize(groups, scale.view(*groups.shape[:2], 1), None, qmin, qmax)[0].view(w.shape).to(w.dtype)


def fake_quant_learned_backward(w: torch.Tensor, scale: torch.Tensor, grad: torch.Tensor, group_size: int, qmin: int,
                                qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weight's gradient in its dtype, the scale's in fp32) from the gradient of ``fake_quant_learned``'s
    output: torchao's autograd op for op. Dequantize (codes × s) sends ``grad · codes`` to s and ``grad · s``
    to the codes; the clamp masks that, round passes it straight through, and ``w · (1 / s)`` sends it × 1/s
    to w and, summed with w, through the reciprocal to s (× −1/s²)."""
    groups = w.float().view(w.shape[0], -1, group_size)
    s = scale.view(*groups.shape[:2], 1)
    g = grad.float().view(groups.shape)
    inverse = 1.0 / s
    unclamped = torch.round(groups * inverse)
    codes = torch.clamp(unclamped, qmin, qmax)
    grad_codes = torch.where((unclamped >= qmin) & (unclamped <= qmax), g * s, 0)
    grad_w = (grad_codes * inverse).view(w.shape).to(w.dtype)
    # each part in the scale's dtype, as autograd casts a gradient to its input's (fp32 scales: no-ops)
    grad_inverse = (grad_codes * groups).sum(-1, keepdim=True).to(s.dtype)
    grad_scale = (g * codes).sum(-1, keepdim=True).to(s.dtype) + -grad_inverse * (inverse * inverse)
    return grad_w, grad_scale.view(scale.shape)


# ---- the linear: Triton kernels for bf16 on CUDA, the functions above elsewhere -----------------------------


_kernel_module: list = []  # [module or None] once looked up: this runs on every linear's forward and backward


def triton_kernels(x: torch.Tensor, weight: torch.Tensor, spec: FusedSpec):
    """The Triton kernel module when it applies to this call, else None (then the eager functions run)."""
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1") or weight.dtype != x.dtype:
        return None
    if not _kernel_module:
        try:
            from edgeqat.train import fake_quant_triton
        except ImportError:  # no Triton (CPU-only torch)
            fake_quant_triton = None
        _kernel_module.append(fake_quant_triton)
    kernels = _kernel_module[0]
    return kernels if kernels is not None and kernels.applies(x.dtype, weight.shape[1], spec.group_size) else None


def fp32_inverse(t: torch.Tensor) -> bool:
    """Whether torchao's ``1.0 / scale`` runs in fp32 here: CUDA autocast puts reciprocals on its fp32 list.
    The eager functions follow autocast by themselves; the kernels are told."""
    return t.is_cuda and torch.is_autocast_enabled("cuda")


def fake_quantized_weight(weight: torch.Tensor, spec: FusedSpec, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The weight's fake-quantized copy (no autograd history: its gradient is taken in linear_backward);
    ``scale``: the learned scale, when ``spec.learned_scale``."""
    kernels = triton_kernels(weight, weight, spec)
    with torch.no_grad():
        if spec.learned_scale and kernels is None:
            return fake_quant_learned(weight.detach(), scale.detach(), spec.group_size, *spec.weight_bounds)
        if spec.learned_scale:
            return kernels.learned(weight.detach(), scale.detach(), spec.group_size, *spec.weight_bounds)
        if kernels is None:
            return fake_quant_per_group(weight.detach(), spec.group_size, *spec.weight_bounds)
        return kernels.per_group(weight.detach(), spec.group_size, *spec.weight_bounds)


def fake_quantized_input(x2d, spec: FusedSpec, kernels, autocast: bool):
    if not spec.act_bounds:
        return x2d
    if kernels is None:
        return fake_quant_per_token(x2d, *spec.act_bounds)
    return kernels.per_token(x2d, *spec.act_bounds, fp32_inverse=autocast)[0]


def linear_forward(x2d, fq_weight, bias, spec: FusedSpec):
    fq_x = fake_quantized_input(x2d, spec, triton_kernels(x2d, fq_weight, spec), fp32_inverse(x2d))
    return F.linear(fq_x, fq_weight, bias)


def input_backward(x2d, fq_weight, grad2d, spec: FusedSpec, want_fq_x: bool):
    """(the input's gradient, the input's fake-quantized copy if ``want_fq_x`` else None). On the kernels' path
    one pass over the input writes both."""
    kernels = triton_kernels(grad2d, fq_weight, spec)
    autocast = fp32_inverse(grad2d)  # the backward runs under the forward's autocast state (custom_bwd)
    grad_fq_x = grad2d @ fq_weight
    if not spec.act_bounds:
        return grad_fq_x, (x2d if want_fq_x else None)
    if kernels is None:
        grad_x = fake_quant_per_token_backward(x2d, grad_fq_x, *spec.act_bounds)
        return grad_x, (fake_quantized_input(x2d, spec, None, autocast) if want_fq_x else None)
    fq_x, grad_x = kernels.per_token(x2d, *spec.act_bounds, grad=grad_fq_x, want_fq=want_fq_x, fp32_inverse=autocast)
    return grad_x, fq_x


def fake_quantized_weight_grad(x2d, fq_x, fq_weight, grad2d, spec: FusedSpec) -> torch.Tensor:
    """The gradient of the fake-quantized weight, ``gradᵀ · x̂``; ``fq_x`` is x̂ when the caller has it, else None."""
    if fq_x is None:
        fq_x = fake_quantized_input(x2d, spec, triton_kernels(grad2d, fq_weight, spec), fp32_inverse(grad2d))
    return grad2d.t() @ fq_x


def learned_scale_backward(weight, scale, grad_fq_w, spec: FusedSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weight's gradient, the learned scale's) from the fake-quantized weight's: the kernel in bf16 on CUDA."""
    kernels = triton_kernels(weight, weight, spec)
    if kernels is None:
        return fake_quant_learned_backward(weight, scale, grad_fq_w, spec.group_size, *spec.weight_bounds)
    grad_w, grad_s = kernels.learned(weight, scale, spec.group_size, *spec.weight_bounds, grad=grad_fq_w)
    return grad_w, grad_s.view(scale.shape).to(scale.dtype)


def linear_backward(x2d, weight, fq_weight, grad2d, spec: FusedSpec, need_x: bool, need_weight: bool, need_bias: bool,
                    scale: torch.Tensor | None = None, need_scale: bool = False):
    """Gradients of input, weight, bias and learned scale; ``weight`` is None when nothing needs it (frozen, and
    no scale to learn), ``x2d`` likewise."""
    grad_x = grad_w = grad_b = grad_s = fq_x = None
    if need_x:
        grad_x, fq_x = input_backward(x2d, fq_weight, grad2d, spec, want_fq_x=need_weight or need_scale)
    if spec.learned_scale and (need_weight or need_scale):
        grad_fq_w = fake_quantized_weight_grad(x2d, fq_x, fq_weight, grad2d, spec)
        grad_w, grad_s = learned_scale_backward(weight, scale, grad_fq_w, spec)
    elif need_weight:
        kernels = triton_kernels(grad2d, fq_weight, spec)
        grad_fq_w = fake_quantized_weight_grad(x2d, fq_x, fq_weight, grad2d, spec)
        if kernels is None:
            grad_w = fake_quant_per_group_backward(weight, grad_fq_w, spec.group_size, *spec.weight_bounds)
        else:
            grad_w = kernels.per_group(weight, spec.group_size, *spec.weight_bounds, grad=grad_fq_w)
    if need_bias:
        grad_b = grad2d.sum(0)
    return grad_x, (grad_w if need_weight else None), grad_b, (grad_s if need_scale else None)


class _FakeQuantizedLinearFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, weight, fq_weight, bias, scale, spec: FusedSpec):
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        out = linear_forward(x2d, fq_weight, bias, spec)
        ctx.spec = spec
        ctx.has_bias = bias is not None
        need_w = ctx.needs_input_grad[1] or (scale is not None and ctx.needs_input_grad[4])
        # What a plain linear keeps, and no fake-quantized activations (they are recomputed). The input is
        # needed for the weight's gradient and the activation quantizer's mask, the weight for its own (and
        # a learned scale's).
        ctx.save_for_backward(x2d if need_w or spec.act_bounds else None, weight if need_w else None, fq_weight, scale)
        ctx.x_shape = x2d.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x2d, weight, fq_weight, scale = ctx.saved_tensors
        grad2d = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # need_w is False for LoRA's frozen base
        grad_x, grad_w, grad_b, grad_s = linear_backward(x2d, weight, fq_weight, grad2d, ctx.spec, need_x, need_w,
                                                         ctx.has_bias and ctx.needs_input_grad[3], scale,
                                                         scale is not None and ctx.needs_input_grad[4])
        if grad_x is not None:
            grad_x = grad_x.view(*grad_out.shape[:-1], ctx.x_shape[-1])
        return grad_x, grad_w, None, grad_b, grad_s, None


def fused_fake_quantized_linear(x, weight, fq_weight, bias, spec: FusedSpec, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``fq_weight`` is ``fake_quantized_weight(weight, spec, scale)``, which callers may keep while the weight
    (and the learned ``scale``, with range learning) is unchanged."""
    return _FakeQuantizedLinearFunction.apply(x, weight, fq_weight, bias, scale, spec)
