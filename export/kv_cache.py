"""The converted model as a KV-cached decoder, and its `torch.export` with a dynamic sequence length.

The exported method is ``forward(input_ids[1, T], cache_position[T]) -> logits[1, T, vocab]`` over a
static cache of ``max_seq_len`` positions: T > 1 is a prefill, T == 1 one decode step. This is the
signature ExecuTorch's LLM runner drives (``enable_dynamic_shape`` in the metadata).

Two decoders with that signature: ``program_decoder``, what the `.pte` runs (ExecuTorch's LLM ops, CPU;
export/llm_ops.py), and ``reference_decoder``, transformers' own static-cache recipe (any device), which
`edgeqat check` times and generates with beside the `.pte`: an independent implementation of the same model.
"""

from __future__ import annotations

import torch

from edgeqat.errors import EdgeqatError


def _prepare(model, max_seq_len: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_seq_len > limit:
        raise EdgeqatError(
            f"max_seq_len {max_seq_len} is larger than the model's {limit} positions; use --max-seq-len {limit} or less"
        )
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            # padding_idx only changes gradients; left in the graph it stops ExecuTorch from fusing a
            # quantized embedding into its embedding_4bit/byte kernels.
            module.padding_idx = None


def program_decoder(model, max_seq_len: int) -> torch.nn.Module:
    """The decoder the `.pte` is exported from (and golden outputs come from): ExecuTorch's cache and attention
    ops, RMSNorms that XNNPACK can run, and a tied int4 embedding that the `.pte` stores once."""
    from edgeqat.export.llm_ops import LlmOpsDecoder
    from edgeqat.export.rms_norm import delegate_rms_norms
    from edgeqat.export.tied_embedding import share_tied_embedding

    _prepare(model, max_seq_len)
    delegate_rms_norms(model)
    share_tied_embedding(model)
    return LlmOpsDecoder(model, max_seq_len).eval()


def reference_decoder(model, max_seq_len: int) -> torch.nn.Module:
    """Transformers' own export recipe: the model plus a static cache registered as buffers."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    _prepare(model, max_seq_len)
    model.config.use_cache = True
    model.generation_config.cache_implementation = "static"
    model.generation_config.use_cache = True
    # The outer wrapper's eager forward drops cache_position; its inner module is what it exports.
    return TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_seq_len).model.eval()


def eager_forward(decoder: torch.nn.Module):
    """forward(tokens, positions) -> logits over the decoder's cache (for golden outputs and timing)."""

    def forward(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return decoder(input_ids=tokens, cache_position=positions)

    return forward


def export_decoder(decoder: torch.nn.Module, max_seq_len: int) -> torch.export.ExportedProgram:
    from torchao.utils import unwrap_tensor_subclass

    unwrap_tensor_subclass(decoder)  # torchao tensors -> plain tensors + quant ops the partitioner matches
    seq_len = torch.export.Dim("seq_len", min=1, max=max_seq_len - 1)
    example = torch.tensor([[0, 1]], dtype=torch.long)
    with torch.no_grad():
        # Non-strict: Python runs the forward under fake tensors, without TorchDynamo's bytecode tracing and
        # guards (a 0.6 B decoder: 13 s against 47 s strict; the graph is the same but for one more runtime
        # assert on the sequence length).
        return torch.export.export(
            decoder,
            args=(),
            kwargs={"input_ids": example, "cache_position": torch.arange(2, dtype=torch.long)},
            dynamic_shapes={"input_ids": {1: seq_len}, "cache_position": {0: seq_len}},
            strict=False,
        )
