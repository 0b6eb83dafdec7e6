"""Will the model fit? A lower bound on training memory, checked before any weight is loaded.

Counts the bytes that do not depend on batch or sequence length: weights, gradients and AdamW's two
moment buffers (transformers keeps them in the parameters' dtype). Activations come on top, so the
estimate is a floor: a run it rejects cannot fit; a run it accepts may still need gradient checkpointing
or a smaller batch.
"""

from __future__ import annotations

import os

import torch

from edgeqat.errors import EdgeqatError

GIB = 1024**3


def parameter_count(skeleton: torch.nn.Module) -> int:
    return sum(p.numel() for p in skeleton.parameters())


def training_bytes(params: int, dtype: torch.dtype, lora: bool) -> int:
    """Weights + gradients + AdamW state; with LoRA only the (frozen) weights count: adapters are tiny.

    DDP keeps a full copy on every GPU, so this is per GPU however many there are.
    """
    width = torch.finfo(dtype).bits // 8
    per_param = width if lora else width * 4  # weight, gradient, exp_avg, exp_avg_sq
    return params * per_param


def device_capacity(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(skeleton: torch.nn.Module, dtype: torch.dtype, device: torch.device, lora: bool,
               teacher: torch.nn.Module | None = None) -> int:
    """Raises before loading when the model (and a distillation teacher, frozen weights in ``dtype``) cannot be
    trained on ``device``; returns the estimate in bytes."""
    params = parameter_count(skeleton)
    need = training_bytes(params, dtype, lora)
    teacher_bytes = training_bytes(parameter_count(teacher), dtype, lora=True) if teacher is not None else 0
    have = device_capacity(device)
    if need + teacher_bytes > 0.95 * have:
        where = "the GPU" if device.type == "cuda" else "this machine's RAM"
        fixes = "a smaller model" if lora else "LoRA (--lora-rank 16) or a smaller model"
        if teacher_bytes:
            fixes += ", or a smaller teacher (--teacher)"
        plus = f", plus {teacher_bytes / GIB:.1f} GiB for the distillation teacher's weights" if teacher_bytes else ""
        raise EdgeqatError(
            f"the model has {params / 1e9:.2f} B parameters: {'LoRA' if lora else 'full'} fine-tuning needs at "
            f"least {need / GIB:.1f} GiB for weights{'' if lora else ', gradients and AdamW state'}{plus} "
            f"(before activations), but {where} has {have / GIB:.1f} GiB; use {fixes}"
        )
    return need + teacher_bytes
