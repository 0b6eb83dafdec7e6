"""A tied int4 embedding that reads the output layer's weight bytes, so the `.pte` stores that table once.

A tied model's input embedding and output layer hold the same quantized table. XNNPACK stores the output
layer's int4 weight as ``(q[2k+1] + 8) << 4 | (q[2k] + 8)`` per byte (``NodeVisitor.convert_to_qc4w``);
ExecuTorch's ``embedding_4bit`` kernel reads the even element from the high nibble instead. Fed XNNPACK's
bytes, the kernel returns each row with its neighbouring pairs swapped, so one ``flip`` over pairs puts
them back: the values equal torchao's dequantized embedding exactly (the same ``(q - 0) * scale`` in fp32).
With the bytes equal, `export/shared_segments.py` points the delegate's copy at the embedding's.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def xnnpack_int4_bytes(qdata: torch.Tensor) -> torch.Tensor:
    """XNNPACK's serialized int4 weight ([rows, cols / 2] uint8, low nibble first) of int4 values in int8."""
    shifted = (qdata.to(torch.int16) + 8).to(torch.uint8)
    return (shifted[:, 1::2] << 4) | shifted[:, 0::2]


class OutputLayerBytesEmbedding(torch.nn.Module):
    """``embedding_4bit`` over XNNPACK's int4 bytes of a tied output layer, pairs flipped back."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  quantized_decomposed ops

        self.embedding_dim = qdata.shape[1]
        self.register_buffer("packed", xnnpack_int4_bytes(qdata).contiguous())
        self.register_buffer("scales", scale.detach().float().contiguous())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        packed, scales, rows = self.packed, self.scales, input_ids
        if not torch.compiler.is_exporting():
            # Eagerly (golden outputs), ExecuTorch's Python kernel would dequantize the whole table per call;
            # the looked-up rows alone give the same values (each row is dequantized on its own).
            packed, scales = packed[input_ids.flatten()], scales[input_ids.flatten()]
            rows = torch.arange(input_ids.numel()).view(input_ids.shape)
        swapped = torch.ops.quantized_decomposed.embedding_4bit.dtype(
            packed, scales, None, -8, 7, rows, dtype=torch.float32)
        pairs = swapped.unflatten(-1, (self.embedding_dim // 2, 2))
        return pairs.flip(-1).flatten(-2)


def _int4_symmetric(weight) -> bool:
    from torchao.quantization import IntxUnpackedToInt8Tensor

    if type(weight) is not IntxUnpackedToInt8Tensor or weight.qdata.dim() != 2 or weight.qdata.shape[1] % 2:
        return False
    in_range = weight.qdata.min() >= -8 and weight.qdata.max() <= 7
    return bool(in_range) and not weight.zero_point.any() and weight.block_size[0] == 1


def share_tied_embedding(model: torch.nn.Module) -> bool:
    """Swaps, in place, a tied int4 embedding for an ``OutputLayerBytesEmbedding``; whether it did.

    Only when the two tables are the same integers and scales (both int4, symmetric, grouped along a row):
    an output layer quantized differently from the embedding keeps its own copy.
    """
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embedding, torch.nn.Embedding) or head is None:
        return False
    table, head_weight = embedding.weight, head.weight
    if not (_int4_symmetric(table) and _int4_symmetric(head_weight)):
        return False
    if not (torch.equal(table.qdata, head_weight.qdata) and torch.equal(table.scale, head_weight.scale)):
        log.info("the tied embedding and output layer are quantized differently; each keeps its own table")
        return False
    model.set_input_embeddings(OutputLayerBytesEmbedding(table.qdata, table.scale))
    return True
