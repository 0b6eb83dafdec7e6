"""Per-layer error of the debug `.pte` against the eager model, and the first layer where it jumps.

Errors are per position (one token's hidden state or logits), then averaged over positions: a few
positions with outsized activations (the first token, say) then weigh no more than any other.

An error *jumps* at a layer when its relative error is at least ``ERROR_FLOOR`` and at least
``JUMP_FACTOR`` times the previous layer's, i.e. the error on this layer's input. A healthy quantized
program differs from eager by ~1e-3 to 1e-2 per layer (activation-quantization rounding, summation
order), growing slowly with depth; a layer computing something else adds an error of its own output's
order. The floor keeps jumps among round-off (1e-6 -> 1e-4 in a float program) out of the report; the
factor keeps a slow accumulation that crosses the floor from being pinned on one layer. A layer with
non-finite outputs (NaN/inf) where the previous one had none is a jump.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgeqat.errors import EdgeqatError

ERROR_FLOOR = 0.05
JUMP_FACTOR = 3.0


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def layer_errors(names: list[str], pte_runs: list[dict], eager_runs: list[dict]) -> list[dict]:
    """One row per layer: cosine (mean and min over positions), max abs diff, relative L2 error (mean)."""
    rows = []
    for name in names:
        cosines, relative, max_abs, nonfinite = [], [], 0.0, 0
        for pte, eager in zip(pte_runs, eager_runs):
            candidate, reference = pte[name].float(), eager[name].float()
            if candidate.shape != reference.shape:
                raise EdgeqatError(
                    f"{name}: the debug program's output is {tuple(candidate.shape)} but eager's is {tuple(reference.shape)}"
                )
            candidate, reference = candidate.reshape(len(candidate), -1), reference.reshape(len(reference), -1)
            nonfinite += int((~torch.isfinite(candidate)).sum())
            difference = candidate - reference
            cosines.append(F.cosine_similarity(candidate, reference, dim=-1))
            relative.append(difference.norm(dim=-1) / reference.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny))
            max_abs = max(max_abs, float(difference.abs().max()))
        cosine, error = torch.cat(cosines), torch.cat(relative)
        rows.append(
            {
                "name": name,
                "cosine": _json_number(float(cosine.mean())),
                "cosine_min": _json_number(float(cosine.min())),
                "max_abs_diff": _json_number(max_abs),
                "relative_error": _json_number(float(error.mean())),
                "nonfinite": nonfinite,
            }
        )
    return rows


def _error_of(row: dict) -> float:
    """The row's relative error, infinite where the program's output is not finite."""
    if row["nonfinite"] or row["relative_error"] is None:
        return math.inf
    return row["relative_error"]


def first_jump(rows: list[dict], floor: float = ERROR_FLOOR, factor: float = JUMP_FACTOR) -> dict | None:
    """The first row whose error jumps (see the module's docstring), or None when none does.

    The first row's input is the token ids, which both sides share exactly: its previous error is 0.
    """
    previous = 0.0
    for row in rows:
        error = _error_of(row)
        if error >= floor and error >= factor * previous and not math.isinf(previous):
            return {
                "name": row["name"],
                "relative_error": row["relative_error"],
                "previous_relative_error": previous,
                "factor": _json_number(error / previous) if previous > 0 else None,
                "nonfinite": row["nonfinite"],
            }
        previous = error
    return None
