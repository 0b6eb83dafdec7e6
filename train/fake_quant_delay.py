"""QAT that starts after a number of plain steps (torchtune's ``fake_quant_after_n_steps``): the first
``train.fake_quant_after_steps`` optimizer steps fine-tune without fake quantization, the rest with it. The
fake quantizers stay in the model throughout; only their ``enabled`` flag changes, so the checkpoint, the
learned scales and `convert` are those of any QAT run."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

QUANTIZERS = ("weight_fake_quantizer", "activation_fake_quantizer")


def set_fake_quant(model: torch.nn.Module, enabled: bool) -> int:
    """Turns every fake quantizer of ``model`` on or off; returns how many there are."""
    count = 0
    for module in model.modules():
        for name in QUANTIZERS:
            quantizer = getattr(module, name, None)
            if quantizer is not None and hasattr(quantizer, "enabled"):
                quantizer.enabled = enabled
                count += 1
    return count


def fake_quant_enabled(linear: torch.nn.Module) -> bool:
    """Whether a fake-quantized linear quantizes now (its weight quantizer, and its activations' if any)."""
    activation = getattr(linear, "activation_fake_quantizer", None)
    return linear.weight_fake_quantizer.enabled and (activation is None or activation.enabled)


class FakeQuantAfterSteps(TrainerCallback):
    """Fake quantization off before optimizer step ``steps`` and on from it, also when training resumes."""

    def __init__(self, model: torch.nn.Module, steps: int):
        self.model, self.steps = model, steps

    def on_train_begin(self, args, state, control, **kwargs):
        set_fake_quant(self.model, state.global_step >= self.steps)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.steps:
            set_fake_quant(self.model, True)
