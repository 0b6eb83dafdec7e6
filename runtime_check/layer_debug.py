"""Per-layer debugging: which layer's output is the first to drift when the `.pte` disagrees with eager.

`debug_layers` re-exports the converted model through the bundle's own export and lowering
(`export_decoder` + `lower_to_xnnpack`) with each layer's output as an extra program output, runs that
program with ExecuTorch's runtime on held-out tokens, and compares every layer with the eager model.
See layer_debug_program.py for why not ETDump, and layer_debug_metrics.py for what "jumps" means.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.generation import prefill_positions
from edgeqat.runtime_check.layer_debug_metrics import ERROR_FLOOR, JUMP_FACTOR, first_jump, layer_errors
from edgeqat.runtime_check.layer_debug_program import LayerProgram, eager_layer_outputs

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The debug program's logits count as the bundle's when no position differs by more than this (the
# two are the same graph and kernels; only the extra outputs can move XNNPACK's subgraph boundaries).
BUNDLE_LOGITS_TOLERANCE = 1e-3


def _token_windows(windows: Sequence, max_seq_len: int) -> list[torch.Tensor]:
    tensors = [torch.as_tensor(w, dtype=torch.long).reshape(-1) for w in windows]
    if not tensors:
        raise EdgeqatError("layer debugging needs at least one window of tokens")
    for window in tensors:
        if not 1 <= len(window) < max_seq_len:
            raise EdgeqatError(f"a window of {len(window)} tokens does not fit: it must be 1 to {max_seq_len - 1} (max_seq_len)")
    return tensors


def _bundle_agreement(program_logits: list[torch.Tensor], bundle_forward: Forward, windows: list[torch.Tensor]) -> dict:
    """How close the debug program's logits are to the bundle's own `.pte` on the same windows."""
    worst = 0.0
    for logits, window in zip(program_logits, windows):
        bundle = bundle_forward(window[None], prefill_positions(0, len(window)))[0]
        worst = max(worst, float((bundle.float() - logits.float()).abs().max()))
    return {"logits_max_abs_diff": worst, "reproduces_bundle": worst <= BUNDLE_LOGITS_TOLERANCE}


def compare_layers(
    program: LayerProgram, reference: torch.nn.Module, windows: Sequence, bundle_forward: Forward | None = None
) -> dict:
    """The report for an already built debug program against an eager ``reference`` (see debug_layers)."""
    windows = _token_windows(windows, program.max_seq_len)
    pte_runs = [program.run(window) for window in windows]
    eager_runs = [eager_layer_outputs(reference, window, program.names) for window in windows]
    layers = layer_errors(program.names, pte_runs, eager_runs)
    jump = first_jump(layers)
    report = {
        "method": (
            "the converted model re-exported with torch.export and lowered to XNNPACK exactly as the bundle "
            "(export_decoder + lower_to_xnnpack), each layer's output added as an extra program output, run "
            "with the ExecuTorch runtime (one prefill per window) and compared with the eager model on the "
            "same tokens; per position, then averaged"
        ),
        "tokens": sum(len(w) for w in windows),
        "windows": len(windows),
        "layers": layers,
        "first_jump": jump,
        "jump_rule": {"min_relative_error": ERROR_FLOOR, "min_factor_over_previous": JUMP_FACTOR},
        "bundle": _bundle_agreement([r[program.names[-1]] for r in pte_runs], bundle_forward, windows)
        if bundle_forward is not None
        else None,
    }
    report["note"] = _note(jump, layers, report["bundle"])
    return report


def _note(jump: dict | None, layers: list[dict], bundle: dict | None) -> str:
    source = (
        "The debug program is a re-export of the same converted model with the same lowering; its only "
        "change is that layer outputs leave their XNNPACK subgraphs as program outputs."
    )
    if bundle is not None and not bundle["reproduces_bundle"]:
        source += (
            f" Its logits differ from the bundle's by up to {bundle['logits_max_abs_diff']:.3g}: the bundle was not "
            f"exported from this model this way (another model, ExecuTorch version or export), so this per-layer "
            f"answer describes a fresh export, not necessarily the bundle."
        )
    if jump is not None:
        return f"{source} The error first jumps at {jump['name']}: start there."
    worst = max(layers, key=lambda row: float("inf") if row["relative_error"] is None else row["relative_error"])
    return (
        f"{source} No layer's error jumps (largest relative error {worst['relative_error']} at {worst['name']}): "
        f"the difference accumulates across layers rather than coming from one."
    )


def debug_layers(
    model: torch.nn.Module,
    windows: Sequence,
    max_seq_len: int,
    work_dir: str | Path,
    bundle_forward: Forward | None = None,
) -> dict:
    """Per-layer comparison of the model's `.pte` with the eager model; a JSON-ready dict.

    model: the converted model the bundle was exported from (`load_converted`); it is not modified.
    windows: token-id windows (1-D tensors or lists), each shorter than ``max_seq_len``.
    work_dir: where the debug program (layer_debug.pte) is written; the caller owns and removes it.
    bundle_forward: the bundle's `.pte` forward (PteProgram.forward); when given, the report says whether
        the debug program reproduces the bundle's logits, i.e. whether its per-layer answer is the bundle's.
    """
    windows = _token_windows(windows, max_seq_len)
    start = time.perf_counter()
    program = LayerProgram(model, max_seq_len, work_dir)
    report = compare_layers(program, model, windows, bundle_forward)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report
