"""ExecuTorch's LLM ops in a Hugging Face decoder: what the `.pte` runs for attention and its KV cache.

The way ExecuTorch's own LLM export and optimum-executorch do it: the static cache lives in [B, S, H, D]
buffers written in place with ``llama::update_cache`` (only the new rows), and attention is
``llama::custom_sdpa``, causal over the positions filled so far, with grouped-query heads. transformers'
StaticCache instead copies the whole cache with ``index_copy_`` and attends over all ``max_seq_len``
positions at every step, which made decode slow and lowering take minutes.

The ops' kernels (CPU) are in the executorch wheel's ``libcustom_ops_aot_lib.so``: every process that runs
such a program, or this decoder eagerly, calls ``load_kernels()`` first. The Android and iOS runtimes link
them (``llama::`` ops and the quantized embedding kernels).
"""

from __future__ import annotations

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.export.rope import head_dim_of

ATTENTION = "edgeqat_executorch_sdpa"  # the attention implementation registered with transformers
START = "edgeqat_start_pos"  # the forward's first position, handed to the attention as a model keyword


def load_kernels() -> None:
    """Registers the `.pte`'s non-core kernels in this process: the LLM ops and the quantized embeddings."""
    import executorch.kernels.quantized  # noqa: F401  embedding_4bit, embedding_byte
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  llama::custom_sdpa, update_cache


def _custom_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface over ``llama::custom_sdpa``: query [B, H, T, D] in, [B, T, H, D] out.

    ``key`` and ``value`` are the whole cache as ``UpdateCacheLayer`` returns it ([B, S, H_kv, D]); the op
    attends causally to the first ``start + T`` positions only."""
    out = torch.ops.llama.custom_sdpa(query.transpose(1, 2).float(), key, value, kwargs[START], None, 0.0, True, scaling)
    return out.to(query.dtype), None


def _no_mask(*args, **kwargs):
    return None  # custom_sdpa masks causally itself, from the start position


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    load_kernels()
    AttentionInterface.register(ATTENTION, _custom_sdpa)
    AttentionMaskInterface.register(ATTENTION, _no_mask)


class _Start:
    """The first position of the forward in progress, shared by the decoder and its cache layers."""

    value: int | torch.SymInt = 0


def _update_cache_layer(max_cache_len: int, start: _Start):
    from transformers.cache_utils import StaticLayer

    class UpdateCacheLayer(StaticLayer):
        """A static layer whose [B, S, H, D] buffers ``llama::update_cache`` writes at the forward's start."""

        def lazy_initialization(self, key_states, value_states):
            batch, heads, _, _ = key_states.shape
            self.batch_size, self.num_heads, self.device = batch, heads, key_states.device
            self.k_head_dim, self.v_head_dim = key_states.shape[-1], value_states.shape[-1]
            self.keys = torch.zeros(batch, self.max_cache_len, heads, self.k_head_dim, dtype=key_states.dtype)
            self.values = torch.zeros(batch, self.max_cache_len, heads, self.v_head_dim, dtype=value_states.dtype)
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, start.value)
            torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, start.value)
            return self.keys, self.values

    return UpdateCacheLayer(max_cache_len)


def _check_attention_span(config, max_seq_len: int) -> None:
    """custom_sdpa attends to every earlier position: a model with sliding-window layers is exact only while
    the whole cache fits in the window."""
    window = getattr(config, "sliding_window", None)
    sliding = [t for t in (getattr(config, "layer_types", None) or []) if t == "sliding_attention"]
    if window and sliding and max_seq_len > window:
        raise EdgeqatError(f"max_seq_len {max_seq_len} is larger than the model's sliding window ({window} positions, "
                           f"{len(sliding)} layers); use --max-seq-len {window} or less")


class LlmOpsDecoder(torch.nn.Module):
    """``forward(input_ids[1, T], cache_position[T]) -> logits[1, T, V]`` over a static cache of
    ``max_seq_len`` positions, with ExecuTorch's LLM ops for the cache and attention (CPU only)."""

    def __init__(self, model: torch.nn.Module, max_seq_len: int):
        from transformers.cache_utils import StaticCache

        super().__init__()
        config = model.config.get_text_config()
        _check_attention_span(config, max_seq_len)
        register_attention()
        model.set_attn_implementation(ATTENTION)
        self.model, self.max_seq_len, self._start = model, max_seq_len, _Start()
        self.cache = StaticCache(config=config, max_cache_len=max_seq_len)
        self.cache.layers = [_update_cache_layer(max_seq_len, self._start) for _ in self.cache.layers]
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = head_dim_of(config)
        self.cache.early_initialization(1, heads, head_dim, next(model.parameters()).dtype, "cpu")
        for i, layer in enumerate(self.cache.layers):  # buffers, so that torch.export sees the cache as state
            self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
            self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        start = cache_position[0].item()
        torch._check(start >= 0)
        torch._check(start + input_ids.shape[1] <= self.max_seq_len)
        self._start.value = start
        for i, layer in enumerate(self.cache.layers):
            # The buffers as this call sees them: torch.export's non-strict tracer swaps a module's buffers for
            # its own tensors while it traces, and the cache must write those, not the tensors it was built with.
            layer.keys, layer.values = getattr(self, f"key_cache_{i}"), getattr(self, f"value_cache_{i}")
        out = self.model(input_ids=input_ids, position_ids=cache_position[None], cache=self.cache, use_cache=True,
                         **{START: start})
        return out.logits
