"""Rotary embeddings inside the XNNPACK delegate.

transformers' ``rotate_half`` slices each head in two and concatenates the halves swapped, one negated.
With a dynamic sequence length XNNPACK takes no slice (its partitioner wants static shapes), so each
rotation left four slices on the portable kernels and split every layer's delegate into more calls. The
same rotation is a linear layer with a constant signed permutation matrix, which XNNPACK runs; every
output is one input times ±1 plus zeros, so the values are exactly the sliced ones.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def rotation_matrix(width: int) -> torch.Tensor:
    """R with linear(x, R) == cat(-x[..., half:], x[..., :half])."""
    half = width // 2
    rotation = torch.zeros(width, width)
    rows = torch.arange(half)
    rotation[rows, rows + half] = -1.0
    rotation[rows + half, rows] = 1.0
    return rotation


class Rotations(torch.nn.Module):
    """The rotation matrices, as buffers of the exported module (torch.export lifts them as its constants)."""

    def rotate_half(self, x: torch.Tensor) -> torch.Tensor:
        rotation = getattr(self, f"rotation_{x.shape[-1]}", None)
        if rotation is None:  # a width not registered (a partial rotary dimension): transformers' slices
            half = x.shape[-1] // 2
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return torch.nn.functional.linear(x, rotation.to(x.dtype))


def head_dim_of(config) -> int:
    config = config.get_text_config()
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@contextmanager
def rotation_as_linear(decoder: torch.nn.Module, config) -> Iterator[int]:
    """Within the block, the decoder's modeling modules rotate with a linear layer; yields how many modules.

    The head dimension's matrix becomes a buffer of ``decoder`` before tracing (torch.export takes a tensor
    only from the module it traces).
    """
    rotations = getattr(decoder, "rotations", None)
    if rotations is None:
        rotations = decoder.rotations = Rotations()
    width = head_dim_of(config)
    rotations.register_buffer(f"rotation_{width}", rotation_matrix(width), persistent=False)
    modules = {sys.modules[type(m).__module__] for m in decoder.modules()}
    patched = {m: m.rotate_half for m in modules if callable(getattr(m, "rotate_half", None))}
    for module in patched:
        module.rotate_half = rotations.rotate_half
    try:
        yield len(patched)
    finally:
        for module, original in patched.items():
            module.rotate_half = original
