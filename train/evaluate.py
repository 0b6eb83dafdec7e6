"""Held-out evaluation of a fine-tuned or converted model: perplexity, and lm-eval tasks where installed."""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeqat.errors import EdgeqatError, first_line
from edgeqat.paths import ASSETS

# lm-eval tasks shipped with edgeqat, always available by name (their data is in edgeqat/assets/lm_eval).
EMBEDDED_TASKS = {
    "edgeqat_proverbs_mc": """task: edgeqat_proverbs_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""".replace("{data}", str(ASSETS / "lm_eval" / "proverbs_mc.jsonl")),
}

log = logging.getLogger("edgeqat")


def require_lm_eval(tasks: list[str], include_path: str = "") -> None:
    """Fails before any training when the config names lm-eval tasks the harness cannot run."""
    if tasks and importlib.util.find_spec("lm_eval") is None:
        raise EdgeqatError(
            f"study.lm_eval_tasks names {', '.join(tasks)} but lm-eval is not installed; "
            "pip install 'edgeqat[eval]' (or lm-eval), or remove the tasks"
        )
    if include_path and not Path(include_path).is_dir():
        raise EdgeqatError(f"study.lm_eval_include_path {include_path} is not a folder of lm-eval task YAML files")


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


def lm_eval_scores(
    model, tokenizer, tasks: list[str], limit: int, batch_size: int, include_path: str = ""
) -> dict[str, dict[str, float]]:
    """Each task's metrics (accuracy etc., stderr left out) through lm-eval's own harness."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="edgeqat-lm-eval-") as embedded:
        for name, text in EMBEDDED_TASKS.items():
            (Path(embedded) / f"{name}.yaml").write_text(text)
        manager = TaskManager(include_path=[embedded, include_path] if include_path else embedded)
        try:
            output = lm_eval.simple_evaluate(
                model=harness_model, tasks=tasks, limit=limit or None, log_samples=False, task_manager=manager
            )
        except Exception as e:  # unknown task names, datasets the harness cannot fetch offline, ...
            raise EdgeqatError(f"lm-eval failed on {', '.join(tasks)}: {first_line(e)}") from None
    scores = {}
    for task, metrics in output["results"].items():
        # lm-eval names results "metric,filter"; other keys (alias, sample counts) are not scores
        scores[task] = {
            name.split(",")[0] if name.endswith(",none") else name: float(value)
            for name, value in metrics.items()
            if "," in name and "_stderr" not in name and isinstance(value, (int, float))
        }
    return scores
