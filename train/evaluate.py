"""Held-out evaluation of a fine-tuned or converted model: perplexity, and lm-eval tasks where installed."""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F

from edgeqat.errors import EdgeqatError

log = logging.getLogger("edgeqat")


def require_lm_eval(tasks: list[str]) -> None:
    """Fails before any training when the config names lm-eval tasks but the harness is missing."""
    if tasks and importlib.util.find_spec("lm_eval") is None:
        raise EdgeqatError(
            f"study.lm_eval_tasks names {', '.join(tasks)} but lm-eval is not installed; "
            "pip install 'edgeqat[eval]' (or lm-eval), or remove the tasks"
        )


@torch.no_grad()
def perplexity(model, windows: list[torch.Tensor], device: torch.device, batch_size: int = 4) -> dict[str, float]:
    """Perplexity of equal-length token windows; every token after the first of a window is predicted."""
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.stack(windows[i : i + batch_size]).to(device)
        logits = model(input_ids=batch).logits
        nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"))
        count += batch[:, 1:].numel()
    return {"perplexity": float(torch.exp(torch.tensor(nll / count))), "tokens": count}


def lm_eval_scores(model, tokenizer, tasks: list[str], limit: int, batch_size: int) -> dict[str, dict[str, float]]:
    """Each task's metrics (accuracy etc., stderr left out) through lm-eval's own harness."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        output = lm_eval.simple_evaluate(model=harness_model, tasks=tasks, limit=limit or None, log_samples=False)
    except Exception as e:  # unknown task names, datasets the harness cannot fetch offline, ...
        raise EdgeqatError(f"lm-eval failed on {', '.join(tasks)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    scores = {}
    for task, metrics in output["results"].items():
        scores[task] = {
            name.split(",")[0]: float(value)
            for name, value in metrics.items()
            if isinstance(value, (int, float)) and "stderr" not in name and name != "alias"
        }
    return scores
