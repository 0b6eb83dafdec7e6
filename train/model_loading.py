"""Loading a causal LM and its tokenizer from a hub id or a local folder, on the device the run asked for."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edgeqat.errors import EdgeqatError, first_line
from edgeqat.json_file import load_json
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


POSITIVE_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "head_dim", "max_position_embeddings")


def _check_sizes(values: dict, name: str) -> None:
    """A config.json whose sizes cannot make a model (zero heads, kv heads not dividing heads, ...)."""
    where = f"model {name!r}: config.json"
    for key in POSITIVE_SIZES:
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EdgeqatError(f"{where} has {key} = {value!r}; it must be a whole number of at least 1")
    heads, kv_heads, hidden = values.get("num_attention_heads"), values.get("num_key_value_heads"), values.get("hidden_size")
    if heads and kv_heads and heads % kv_heads:
        raise EdgeqatError(f"{where} has {heads} attention heads and {kv_heads} key/value heads; the key/value heads "
                           "must divide the attention heads")
    if heads and hidden and values.get("head_dim") is None and hidden % heads:
        raise EdgeqatError(f"{where} has hidden_size {hidden}, which {heads} attention heads do not divide")


def load_config_checked(name: str):
    from transformers import AutoConfig

    source = resolve_source(name, DEFAULT_MODEL, "model path", folder_only=True)
    local = Path(source) / "config.json"
    if local.is_file():  # before transformers reads it: its classes divide by the sizes they are given
        raw = load_json(local, "model config", "fix the model's config.json")
        _check_sizes(raw if isinstance(raw, dict) else {}, name)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as e:  # a config.json that is not JSON, or whose values its class refuses
        raise EdgeqatError(f"cannot load model {name!r}: {first_line(e)}") from None
    if config.model_type not in EXPORTABLE_MODEL_TYPES:
        raise EdgeqatError(
            f"model {name!r} is a {config.model_type!r} model; edgeqat exports decoder-only "
            f"{', '.join(EXPORTABLE_MODEL_TYPES)} models"
        )
    _check_sizes(config.to_dict(), name)
    return source, config


def model_skeleton(config, name: str = "") -> torch.nn.Module:
    """The model's modules with no memory behind them (meta tensors): enough to check layer shapes."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError, AttributeError) as e:  # sizes transformers refuses
        raise EdgeqatError(f"model {name or config.model_type!r}: its config.json does not make a model: "
                           f"{first_line(e)}") from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source, _ = load_config_checked(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # tokenizers' Rust errors (a damaged tokenizer.json) are plain Exceptions
        raise EdgeqatError(f"cannot load the tokenizer of {name!r}: {first_line(e)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype, device: torch.device | str = "cpu", attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    source, _ = load_config_checked(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation)
    except ImportError as e:  # a flash-attention kernel that is not installed
        raise EdgeqatError(f"cannot load model {name!r}: {first_line(e)}") from None
    except Exception as e:  # a damaged weights file: safetensors' own error type, or torch's
        raise EdgeqatError(f"cannot load the weights of model {name!r} ({first_line(e)}); a damaged or truncated "
                           "weights file? Copy or download it again") from None
    return model.to(device)


def load_model_and_tokenizer(name: str, dtype: torch.dtype, device: torch.device | str = "cpu", attn_implementation: str | None = None):
    return load_model(name, dtype, device, attn_implementation), load_tokenizer(name)
