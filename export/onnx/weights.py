"""torchao's quantized tensors as ONNX Runtime's block-quantized initializers, integer for integer.

MatMulNBits (com.microsoft) holds a weight [N, K] as B uint8 [N, k_blocks, block_size * bits / 8] and scales
[N, k_blocks]; it dequantizes (q_u - zero_point) * scale, the zero point defaulting to 2^(bits - 1). torchao's
symmetric int4 (or int8) values q in [-8, 7] (or [-128, 127]) are stored as q_u = q + 2^(bits - 1), two 4-bit
values to a byte, the first in the low nibble. GatherBlockQuantized reads the same bytes for an embedding table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgeqat.errors import EdgeqatError


@dataclass
class BlockQuantized:
    """One weight as MatMulNBits / GatherBlockQuantized initializers."""

    packed: np.ndarray  # uint8 [N, k_blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [N, k_blocks]
    bits: int
    block_size: int

    @property
    def shape(self) -> tuple[int, int]:
        n, k_blocks, _ = self.packed.shape
        return n, k_blocks * self.block_size


def _block_size(group: int, k: int) -> int:
    """MatMulNBits' block: the group size, or for one scale per row the largest power of two of 16 to 256 that
    divides K (each block then repeats the row's scale, which dequantizes to the same values)."""
    if group != k:
        return group
    for block in (256, 128, 64, 32, 16):
        if k % block == 0:
            return block
    raise EdgeqatError(f"a per-channel weight with {k} input features has no block of 16 to 256 that divides it, "
                       "which ONNX Runtime's MatMulNBits needs; use a group size for this model")


def block_quantized(weight) -> BlockQuantized | None:
    """``weight`` (torchao's IntxUnpackedToInt8Tensor, symmetric) as block-quantized initializers; None if float."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    if not isinstance(weight, IntxUnpackedToInt8Tensor):
        return None
    qdata, scale, zero_point = weight.qdata, weight.scale, weight.zero_point
    n, k = qdata.shape
    if weight.block_size[0] != 1 or k % weight.block_size[1] or zero_point.any():
        raise EdgeqatError(f"a quantized weight of block {list(weight.block_size)} with zero points has no ONNX "
                           "Runtime form here (MatMulNBits takes symmetric row-wise groups)")
    low, high = int(qdata.min()), int(qdata.max())
    bits = 4 if low >= -8 and high <= 7 else 8
    block = _block_size(weight.block_size[1], k)
    scales = scale.to(torch.float32).repeat_interleave(weight.block_size[1] // block, dim=1)
    unsigned = (qdata.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8).reshape(n, k // block, block)
    if bits == 4:
        unsigned = unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)
    return BlockQuantized(unsigned.contiguous().numpy(), scales.contiguous().numpy(), bits, block)


def unpack(weight: BlockQuantized) -> np.ndarray:
    """The signed integers [N, K] that ``weight`` holds (the inverse of block_quantized's packing)."""
    n, k = weight.shape
    data = weight.packed.astype(np.int16)
    if weight.bits == 4:
        data = np.stack([data & 0x0F, data >> 4], axis=-1).reshape(n, -1, weight.block_size)
    return (data - (1 << (weight.bits - 1))).reshape(n, k).astype(np.int8)
