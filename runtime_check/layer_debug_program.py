"""The debug `.pte`: the converted model exported the bundle's way, each layer's output an extra output.

ExecuTorch's ETDump cannot be recorded by the pip wheel's runtime (built without the event tracer), and
an XNNPACK delegate is opaque to it anyway (only whole delegate calls are visible). Making the layer
outputs program outputs works through any delegate: XNNPACK hands each one out of the subgraph that
computes it, with the same kernels the bundle's program runs.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.generation import prefill_positions
from edgeqat.native_output import native_errors
from edgeqat.runtime_check.layer_debug_points import in_order, logits_name, recording, tap_points

log = logging.getLogger("edgeqat")
DEBUG_PROGRAM = "layer_debug.pte"


class _WithLayerOutputs(torch.nn.Module):
    """forward(input_ids, cache_position) -> (logits, *layer outputs) of a KV-cached decoder.

    ``outputs`` is filled by hooks registered outside forward: torch.export cannot trace registering one.
    """

    def __init__(self, decoder: torch.nn.Module, outputs: dict[str, torch.Tensor], names: list[str]):
        super().__init__()
        self.decoder = decoder
        self._outputs = outputs
        self._names = names

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._outputs.clear()
        logits = self.decoder(input_ids=input_ids, cache_position=cache_position)
        return (logits, *in_order(self._outputs, self._names))


class LayerProgram:
    """The debug program, lowered and loaded; `run(window)` -> {name: output[T, ...]} with the logits last."""

    def __init__(self, model: torch.nn.Module, max_seq_len: int, work_dir: str | Path):
        from edgeqat.export.kv_cache import export_decoder, program_decoder
        from edgeqat.export.lower import lower_to_xnnpack
        from edgeqat.export.rope import rotation_as_linear

        # program_decoder and export_decoder change the model they are given (cache config, unwrapped
        # quantized tensors); the caller's model stays the eager reference.
        model = copy.deepcopy(model)
        decoder = program_decoder(model, max_seq_len)  # swaps modules in place (same names): tap after it
        points = tap_points(model)
        self.names = [*points, logits_name(model)]
        self.max_seq_len = max_seq_len
        log.info("layer debug: exporting %d layer outputs (max_seq_len %d)", len(points), max_seq_len)
        with recording(points) as outputs, rotation_as_linear(decoder, model.config):  # as export_bundle does
            program = export_decoder(_WithLayerOutputs(decoder, outputs, list(points)).eval(), max_seq_len)
        lowered = lower_to_xnnpack(program, {})
        self.path = Path(work_dir) / DEBUG_PROGRAM
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(lowered.program)
        self._method = self._load(self.path)

    @staticmethod
    def _load(path: Path):
        from executorch.runtime import Runtime

        from edgeqat.export.llm_ops import load_kernels

        load_kernels()
        with native_errors(lambda why: f"ExecuTorch cannot load the layer-debug program {path}: {why}",
                           (RuntimeError, ValueError)):
            return Runtime.get().load_program(path).load_method("forward")

    def run(self, window: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(window) >= self.max_seq_len:
            raise EdgeqatError(f"a window of {len(window)} tokens does not fit max_seq_len {self.max_seq_len}")
        with native_errors(lambda why: f"the layer-debug program failed to run: {why}", (RuntimeError, ValueError)):
            outputs = self._method.execute([window[None], prefill_positions(0, len(window))])
        if len(outputs) != len(self.names):
            raise EdgeqatError(f"the layer-debug program returned {len(outputs)} outputs, expected {len(self.names)}")
        logits, *layers = outputs
        return {name: value[0] for name, value in zip(self.names, [*layers, logits])}


def eager_layer_outputs(model: torch.nn.Module, window: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The same outputs from the eager model (no KV cache, as check.py's logits reference runs it)."""
    points = tap_points(model)
    if [*points, logits_name(model)] != names:
        raise EdgeqatError("the eager reference's layers differ from the debug program's; use the same architecture")
    with torch.no_grad(), recording(points) as outputs:
        logits = model(input_ids=window[None]).logits
    return {name: value[0] for name, value in zip(names, [*in_order(outputs, list(points)), logits])}
