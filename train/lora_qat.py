"""LoRA-QAT that trains what is deployed: the fake quantizer sees the merged weight W + s·B·A.

peft's LoRA on a fake-quantized base layer computes fq(W)·x + s·B·A·x, but what ships is q(W + s·B·A)·x
(merge, then quantize). The adapter then learns to correct fq(W)'s rounding, and re-rounding the merged weight
throws that correction away (measured: LoRA-QAT recovered 10 % of PTQ's loss, full fine-tuning QAT 74 %).
Here each adapted linear computes linear(fq_act(x), fq_w(merged)), where ``merged`` is, to the bit, the weight
that ``merge_and_unload`` writes; `convert` then quantizes that weight with the same scales.

The weight's straight-through gradient is the identity (torchao's masks the clamped group maxima). That lets
the gradients into A and B go through the rank-r path, s·gradᵀ·(x̂·Aᵀ) and s·(grad·B)ᵀ·x̂ with x̂ the
fake-quantized input, instead of through an out × in weight gradient: a step costs about what a bf16 LoRA
step does. The merged weight's fake-quantized copy is made once per optimizer step and kept (as the fused
linear keeps a frozen weight's), so memory is that of LoRA-QAT on the base weights. W gets no gradient.

With range learning the weight's scales are trained too, and their gradient needs the merged weight's own
out × in gradient: that path computes it (one more matmul per linear, as full fine-tuning does) and sends
it into the scale, and into A and B through the merge, exactly as torchao's autograd would (the clamp's
mask included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeqat.errors import EdgeqatError
from edgeqat.train.fake_quant_delay import fake_quant_enabled
from edgeqat.train.fused_fake_quant import (
    FusedSpec,
    fake_quantized_weight_grad,
    input_backward,
    learned_scale_backward,
    linear_forward,
)
from edgeqat.train.fused_linear import cached_fake_quantized_weight, fused_spec, learned_scale


def _lora_linear_class():
    from peft.tuners.lora.layer import Linear

    return Linear


def merged_weight(base_weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + s·B·A as peft's merge writes it (``weight.data += (B @ A) * s``: computed in the promoted dtype,
    rounded once to W's), outside autocast so that training and merging compute the same numbers."""
    with torch.autocast(base_weight.device.type, enabled=False):
        delta = (lora_b @ lora_a) * scaling
        return (base_weight.to(delta.dtype) + delta).to(base_weight.dtype)


class _MergedLoraFakeQuantizedFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, lora_a, lora_b, bias, scale, base_weight, fq_merged, scaling: float, spec: FusedSpec):
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        out = linear_forward(x2d, fq_merged, bias, spec)
        ctx.spec, ctx.scaling, ctx.has_bias = spec, scaling, bias is not None
        ctx.save_for_backward(x2d, lora_a, lora_b, fq_merged, scale, base_weight if scale is not None else None)
        return out.view(*x.shape[:-1], fq_merged.shape[0])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        x2d, lora_a, lora_b, fq_merged, scale, base_weight = ctx.saved_tensors
        grad2d = grad_out.reshape(-1, grad_out.shape[-1]).contiguous()
        need_x, need_a, need_b, need_bias, need_scale = ctx.needs_input_grad[:5]
        grad_x, fq_x = input_backward(x2d, fq_merged, grad2d, ctx.spec, want_fq_x=need_a or need_b or need_scale)
        if not need_x:
            grad_x = None
        if ctx.spec.learned_scale:
            grad_a, grad_b, grad_scale = _learned_scale_backward(x2d, fq_x, grad2d, lora_a, lora_b, scale, base_weight,
                                                                 fq_merged, ctx.scaling, ctx.spec)
        else:  # the merged weight's gradient gradᵀ·x̂ (identity straight-through), taken into A and B through rank r
            grad_a = grad_b = grad_scale = None
            dtype = grad2d.dtype
            if need_b:
                grad_b = (ctx.scaling * (grad2d.t() @ (fq_x @ lora_a.to(dtype).t()))).to(lora_b.dtype)
            if need_a:
                grad_a = (ctx.scaling * ((grad2d @ lora_b.to(dtype)).t() @ fq_x)).to(lora_a.dtype)
        grad_bias = grad2d.sum(0) if need_bias and ctx.has_bias else None
        if grad_x is not None:
            grad_x = grad_x.view(*grad_out.shape[:-1], x2d.shape[-1])
        return (grad_x, grad_a if need_a else None, grad_b if need_b else None, grad_bias,
                grad_scale if need_scale else None, None, None, None, None)


def _learned_scale_backward(x2d, fq_x, grad2d, lora_a, lora_b, scale, base_weight, fq_merged, scaling: float, spec: FusedSpec):
    """(A's, B's and the scale's gradients) through the learned-scale fake quantizer on the merged weight and
    through the merge ``(W + (B @ A) · s)`` in A's dtype, as autograd takes them (outside autocast)."""
    grad_fq = fake_quantized_weight_grad(x2d, fq_x, fq_merged, grad2d, spec)
    merged = merged_weight(base_weight, lora_a, lora_b, scaling)  # the forward's weight, to the bit
    grad_merged, grad_scale = learned_scale_backward(merged, scale, grad_fq, spec)
    with torch.autocast(base_weight.device.type, enabled=False):
        grad_delta = grad_merged.to(torch.promote_types(lora_a.dtype, lora_b.dtype)) * scaling
        return (lora_b.t() @ grad_delta).to(lora_a.dtype), (grad_delta @ lora_a.t()).to(lora_b.dtype), grad_scale


class MergedLoraFakeQuantizedLinear(_lora_linear_class()):
    """peft's LoRA linear over a fake-quantized base layer, whose forward fake-quantizes the merged weight.

    Only its class differs from peft's (set by ``use_merged_lora_qat``): adapters save, load and resume as
    peft's, and ``merge`` writes exactly the weight the forward quantized.
    """

    merged_spec: FusedSpec | None  # None: torchao's quantizer modules on the merged weight (quantizers the fused path does not cover)

    def _adapter(self) -> str:
        (adapter,) = self.active_adapters
        return adapter

    def merged_weight(self) -> torch.Tensor:
        adapter = self._adapter()
        return merged_weight(self.get_base_layer().weight, self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                             self.scaling[adapter])

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.get_base_layer()
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None or not fake_quant_enabled(base):
            return super().forward(x, *args, **kwargs)  # (fake quantization off: plain LoRA on the plain base)
        adapter = self._adapter()
        lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        scale = learned_scale(base)
        if self.merged_spec is not None and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and \
                (scale is not None or not self.merged_spec.learned_scale):
            return _MergedLoraFakeQuantizedFunction.apply(x, lora_a, lora_b, base.bias, scale, base.weight, self._fq_merged(),
                                                          self.scaling[adapter], self.merged_spec)
        merged = merged_weight(base.weight, lora_a, lora_b, self.scaling[adapter])
        if base.activation_fake_quantizer is not None:
            x = base.activation_fake_quantizer(x)
        return F.linear(x, base.weight_fake_quantizer(merged), base.bias)

    def _fq_merged(self) -> torch.Tensor:
        """fq(merged), made again only when W, A, B or the learned scale may have changed (an optimizer step or an
        in-place edit)."""
        adapter, base = self._adapter(), self.get_base_layer()
        tensors = (base.weight, self.lora_A[adapter].weight, self.lora_B[adapter].weight)
        return cached_fake_quantized_weight(self, self.merged_spec, learned_scale(base), tensors, self.merged_weight)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        if self.merged:
            return
        adapter = self._adapter()
        if adapter_names is not None and list(adapter_names) != [adapter]:
            raise EdgeqatError(f"merged-weight LoRA-QAT merges its one adapter {adapter!r}, not {adapter_names}")
        with torch.no_grad():
            merged = self.merged_weight()
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
        self.get_base_layer().weight.data = merged
        self.merged_adapters.append(adapter)


def _refusal(layer) -> str | None:
    """Why this peft layer cannot train on its merged weight, or None."""
    if len(layer.active_adapters) != 1:
        return f"{len(layer.active_adapters)} active adapters"
    adapter = layer.active_adapters[0]
    if not isinstance(layer.lora_dropout[adapter], torch.nn.Identity):
        return "LoRA dropout (the dropped adapter path cannot be merged into the weight)"
    if adapter in layer.lora_variant or layer.lora_bias[adapter] or layer.fan_in_fan_out:
        return "a LoRA variant (DoRA), an adapter bias or fan_in_fan_out"
    return None


def use_merged_lora_qat(model: torch.nn.Module) -> int:
    """Turns every peft LoRA linear over a torchao fake-quantized linear into a MergedLoraFakeQuantizedLinear,
    in place; returns how many. Raises when a layer's LoRA setup cannot be merged."""
    from torchao.quantization.qat import FakeQuantizedLinear

    done = 0
    for name, module in model.named_modules():
        if not isinstance(module, _lora_linear_class()) or not isinstance(module.get_base_layer(), FakeQuantizedLinear):
            continue
        problem = _refusal(module)
        if problem:
            raise EdgeqatError(f"{name}: merged-weight LoRA-QAT cannot train with {problem}; "
                               "use --lora-fake-quant base")
        if not isinstance(module, MergedLoraFakeQuantizedLinear):
            module.__class__ = MergedLoraFakeQuantizedLinear
        base = module.get_base_layer()
        # fused_spec checks the quantizers, which the base layer carries whichever forward it has.
        module.merged_spec = fused_spec(base) if type(base) is FakeQuantizedLinear else getattr(base, "fused_spec", None)
        done += 1
    return done
