"""Loading a causal LM and its tokenizer from a hub id or a local folder, on the device the run asked for."""

from __future__ import annotations

import os

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.paths import DEFAULT_MODEL, resolve_source

# Decoder-only families whose Hugging Face implementation exports with a static KV cache.
EXPORTABLE_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3", "gemma3_text", "olmo2")


def resolve_device(requested: str) -> torch.device:
    """The device of this process; under torchrun/accelerate each process takes the GPU of its LOCAL_RANK."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise EdgeqatError("the config asks for device cuda, but no CUDA GPU is available; use device: auto or cpu")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(requested)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def load_config_checked(name: str):
    from transformers import AutoConfig

    source = resolve_source(name, DEFAULT_MODEL, "model path")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise EdgeqatError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if config.model_type not in EXPORTABLE_MODEL_TYPES:
        raise EdgeqatError(
            f"model {name!r} is a {config.model_type!r} model; edgeqat exports decoder-only "
            f"{', '.join(EXPORTABLE_MODEL_TYPES)} models"
        )
    return source, config


def model_skeleton(config) -> torch.nn.Module:
    """The model's modules with no memory behind them (meta tensors): enough to check layer shapes."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source, _ = load_config_checked(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise EdgeqatError(f"cannot load the tokenizer of {name!r}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype, device: torch.device | str = "cpu", attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    source, _ = load_config_checked(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError, ImportError) as e:  # ImportError: a flash-attention kernel that is not installed
        raise EdgeqatError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    return model.to(device)


def load_model_and_tokenizer(name: str, dtype: torch.dtype, device: torch.device | str = "cpu", attn_implementation: str | None = None):
    return load_model(name, dtype, device, attn_implementation), load_tokenizer(name)
