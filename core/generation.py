"""Greedy decoding over any forward(tokens[1, T], positions[T]) -> logits[1, T, V] with a KV cache.

The eager model (through the export wrapper) and the `.pte` (through ExecuTorch's runtime) both
decode through this loop, so their golden outputs are comparable token by token.
"""

from __future__ import annotations

from typing import Callable

import torch

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def prefill_positions(start: int, length: int) -> torch.Tensor:
    return torch.arange(start, start + length, dtype=torch.long)


def prompt_ids(tokenizer, text: str, max_seq_len: int, what: str = "prompt") -> list[int]:
    """A prompt's token ids, refused when it has none or leaves no room in the KV cache for a new token."""
    from edgeqat.config import shown
    from edgeqat.errors import EdgeqatError

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise EdgeqatError(f"{what} {shown(text)} has no tokens; give it some text")
    if len(ids) >= max_seq_len:
        raise EdgeqatError(f"{what} {shown(text, 40)} is {len(ids)} tokens, but the KV cache holds {max_seq_len} "
                           f"(max_seq_len), so a prompt must be 1 to {max_seq_len - 1} tokens: shorten it or raise "
                           "--max-seq-len (re-export)")
    return ids


def greedy(forward: Forward, prompt_ids: list[int], new_tokens: int, max_seq_len: int) -> list[int]:
    """The ``new_tokens`` greedy continuation of ``prompt_ids`` (stops early only at max_seq_len)."""
    if not prompt_ids:
        raise ValueError("greedy decoding needs at least one prompt token")
    new_tokens = min(new_tokens, max_seq_len - len(prompt_ids))
    logits = forward(torch.tensor([prompt_ids], dtype=torch.long), prefill_positions(0, len(prompt_ids)))
    out: list[int] = []
    position = len(prompt_ids)
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if len(out) == new_tokens:
            break
        logits = forward(torch.tensor([[token]], dtype=torch.long), prefill_positions(position, 1))
        position += 1
    return out
