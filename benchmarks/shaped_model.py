"""Models with the shapes of real ones and random weights, built from a config: for speed and memory.

    python benchmarks/shaped_model.py qwen3-0.6b --out /tmp/qwen3-0.6b-shaped

writes a Hugging Face folder (bf16 safetensors) with the embedded default model's tokenizer: its 2,048
token ids are a subset of the model's vocabulary, so training and evaluation run and cost what the real
model costs. Quality numbers from such a model mean nothing; use a real checkpoint for those.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# Hugging Face config fields of the public checkpoints (config.json), with nothing downloaded.
SHAPES = {
    "qwen3-0.6b": dict(
        model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    "qwen3-1.7b": dict(
        model_type="qwen3", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    "gemma3-270m": dict(
        model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
        max_position_embeddings=32768, tie_word_embeddings=True,
    ),
}


def shaped_config(preset: str):
    from transformers import AutoConfig

    if preset not in SHAPES:
        raise SystemExit(f"unknown preset {preset!r}; choose one of: {', '.join(SHAPES)}")
    fields = dict(SHAPES[preset])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build_model(preset: str, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(shaped_config(preset), dtype=dtype)


def save_shaped_model(preset: str, out: Path) -> Path:
    from transformers import AutoTokenizer

    from edgeqat.paths import DEFAULT_MODEL

    model = build_model(preset)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(DEFAULT_MODEL).save_pretrained(out)
    print(f"{preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters -> {out}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    save_shaped_model(args.preset, args.out)
