"""RMSNorm inside the XNNPACK delegate.

XNNPACK's mean only averages 4-D tensors over their two inner dimensions, so transformers' RMSNorm
(``x.pow(2).mean(-1)``) stays on ExecuTorch's portable kernels: two per layer (four with Qwen3's q/k norms)
and the final norm, each one splitting the delegate into another call. Here the mean over the last
dimension is a linear layer with a constant weight of 1/width, which XNNPACK runs; the rest (square,
rsqrt, scale) are ops it has. The result equals the module it replaces up to the order of the sum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# transformers' RMSNorm classes of the supported families, and the scale each applies after normalizing.
SCALES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    **{name: lambda weight: weight for name in (
        "LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm", "Phi3RMSNorm", "SmolLM3RMSNorm",
        "Olmo2RMSNorm")},
    "Gemma3RMSNorm": lambda weight: 1.0 + weight,  # Gemma stores the scale as an offset from 1
}


class DelegatedRMSNorm(torch.nn.Module):
    """x * rsqrt(mean(x², last dim) + eps) * scale, the mean as a linear layer (fp32, as the export runs)."""

    def __init__(self, scale: torch.Tensor, eps: float):
        super().__init__()
        width = scale.shape[-1]
        self.eps = eps
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("inverse_width", torch.full((1, width), 1.0 / width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = torch.nn.functional.linear(x * x, self.inverse_width)
        return x * torch.rsqrt(variance + self.eps) * self.scale


def _epsilon(module: torch.nn.Module) -> float:
    eps = getattr(module, "variance_epsilon", None)
    return float(module.eps if eps is None else eps)


def delegate_rms_norms(model: torch.nn.Module) -> int:
    """Replaces, in place, every RMSNorm of a known class with a ``DelegatedRMSNorm``; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            scale = SCALES.get(type(child).__name__)
            if scale is not None and getattr(child, "weight", None) is not None and child.weight.dim() == 1:
                setattr(parent, name, DelegatedRMSNorm(scale(child.weight), _epsilon(child)))
                replaced += 1
    return replaced
