"""The output layer fake-quantized under TRL's fused LM head, as it is everywhere else.

TRL's SFTTrainer computes the training loss with a fused LM head (trl.trainer.utils.add_fused_lm_head): it
runs the backbone, then multiplies the last hidden states by ``get_output_embeddings().weight`` itself, in
tiles, without calling the output layer. A fake-quantized output layer is therefore trained in float: its
int4 weight and int8 input quantization, which the `.pte` applies, never appear in the loss. On the
embedded model that left three quarters of QAT's remaining quantization loss (0.12 of 0.16 perplexity
points) in the output layer (benchmarks/quant_error_budget.py, docs/study.md).

``fake_quantize_fused_head`` wraps the forward TRL installed so that a fused call sees the output layer's
own fake quantizers: its input (the backbone's last hidden state) through the layer's activation quantizer,
its weight through the weight quantizer, both with their straight-through gradients. The loss is then the
one the model's own forward (logits through the fake-quantized layer) gives, and the fused head keeps its
memory saving (no full logits).
"""

from __future__ import annotations

import contextlib
import functools

import torch


def _fake_quantized_head(model: torch.nn.Module):
    from torchao.quantization.qat import FakeQuantizedLinear

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, FakeQuantizedLinear) else None


class _FakeQuantizedWeights:
    """What the fused LM head reads from the output layer, with the weight fake-quantized as the layer does."""

    def __init__(self, head: torch.nn.Module):
        self.weight = head.weight_fake_quantizer(head.weight)
        self.bias = head.bias


@contextlib.contextmanager
def _fused_call_sees_fake_quant(model: torch.nn.Module, head: torch.nn.Module):
    activation = head.activation_fake_quantizer

    def quantize_last_hidden_state(module, args, output):
        output.last_hidden_state = activation(output.last_hidden_state)
        return output

    hook = model.base_model.register_forward_hook(quantize_last_hidden_state) if activation is not None else None
    model.get_output_embeddings = lambda: _FakeQuantizedWeights(head)  # the fused forward asks for it once per call
    try:
        yield
    finally:
        del model.get_output_embeddings
        if hook is not None:
            hook.remove()


def fake_quantize_fused_head(model: torch.nn.Module) -> bool:
    """Makes TRL's fused LM head (already added to ``model``) see a fake-quantized output layer; False, and
    nothing changed, when the output layer is not fake-quantized."""
    head = _fake_quantized_head(model)
    if head is None:
        return False
    fused_forward = model.forward  # TRL's, bound to the model

    @functools.wraps(fused_forward)  # keeps the signature generate() validates its arguments against
    def forward(*args, fused_lm_head: bool = False, **kwargs):
        if not fused_lm_head:
            return fused_forward(*args, **kwargs)
        with _fused_call_sees_fake_quant(model, head):
            return fused_forward(*args, fused_lm_head=True, **kwargs)

    model.forward = forward
    return True
