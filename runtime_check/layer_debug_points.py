"""Where a causal LM's per-layer outputs are read: the token embedding, each decoder layer, the final norm.

The names are the model's own module names (``model.layers.2``), so a report points at the module a
user would inspect. The logits are read from the model's output, not from a hook.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from edgeqat.errors import EdgeqatError

FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm")


def _decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    count = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and name:
            return name, module
    raise EdgeqatError(
        f"cannot find the {count} decoder layers of {type(model).__name__} (no module list of that length); "
        f"per-layer debugging supports Hugging Face causal LMs"
    )


def tap_points(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> module, in the order the forward pass runs them."""
    names = {id(module): name for name, module in model.named_modules()}
    points: dict[str, torch.nn.Module] = {}
    embedding = model.get_input_embeddings()
    if id(embedding) in names:
        points[names[id(embedding)]] = embedding
    layers_name, layers = _decoder_layers(model)
    for index, layer in enumerate(layers):
        points[f"{layers_name}.{index}"] = layer
    parent = model.get_submodule(layers_name.rpartition(".")[0])
    for attribute in FINAL_NORM_NAMES:
        norm = getattr(parent, attribute, None)
        if isinstance(norm, torch.nn.Module) and id(norm) in names:
            points[names[id(norm)]] = norm
            break
    return points


def logits_name(model: torch.nn.Module) -> str:
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if module is head and name:
            return name
    return "logits"


@contextmanager
def recording(points: dict[str, torch.nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store each point's output under its name while the block runs.

    The same hooks serve the eager reference and, traced by torch.export, the debug program's extra
    outputs, so both sides read the very same tensors.
    """
    outputs: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module, args, output):
            # Some decoder layers return (hidden_states, attention weights, ...).
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in points.items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def in_order(outputs: dict[str, torch.Tensor], names: list[str]) -> list[torch.Tensor]:
    missing = [name for name in names if name not in outputs]
    if missing:
        raise EdgeqatError(f"the forward pass never ran {', '.join(missing)}; this architecture's layers cannot be tapped")
    return [outputs[name] for name in names]
