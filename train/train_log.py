"""Throughput and memory in the trainer's logs, and every log line appended to a JSON-lines file.

transformers logs loss, learning rate and grad norm; this adds tokens/s (from the trainer's own count of
input tokens seen, summed over ranks) and the GPU's peak allocated memory since the previous log line, so
they reach the progress bar, TensorBoard and ``train_log.jsonl`` alike.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

log = logging.getLogger("edgeqat")

TRAIN_LOG = "train_log.jsonl"
GIB = 1024**3


class ThroughputLog(TrainerCallback):
    def __init__(self, path: Path, device: torch.device):
        self.path = path
        self.device = device
        self._last_time: float | None = None
        self._last_tokens = 0
        self._last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_tokens = time.perf_counter(), state.num_input_tokens_seen
        self._last_step = state.global_step
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self._last_time is None:
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen
        steps = state.global_step - self._last_step
        if "loss" in logs and now > self._last_time and steps > 0:
            logs["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
            logs["step_seconds"] = round((now - self._last_time) / steps, 5)
        if self.device.type == "cuda":
            logs["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 3)
        self._last_time, self._last_tokens, self._last_step = now, tokens, state.global_step
        if state.is_world_process_zero and "loss" in logs:
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  %s tok/s%s", state.global_step, state.max_steps, logs["loss"],
                logs.get("learning_rate", 0.0), f"{logs.get('tokens_per_s', 0):,.0f}",
                f"  GPU peak {logs['gpu_peak_gib']:.2f} GiB" if "gpu_peak_gib" in logs else "",
            )
        if state.is_world_process_zero:
            # Appended line by line: a crash loses at most the line being written, never earlier ones.
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "time": round(time.time(), 3), **logs}) + "\n")


class ProgressBarOnly(ProgressCallback):
    """transformers' progress bar, without its printing of every log dict to stdout (stdout is for results)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet_trainer_output(trainer) -> None:
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBarOnly)


def steady_state(history: list[dict]) -> dict[str, float | None]:
    """Median step time and tokens/s over the logged intervals after the first (CUDA start-up, warm-up)."""
    rows = [e for e in history if "step_seconds" in e]
    rows = rows[1:] if len(rows) > 1 else rows
    if not rows:
        return {"step_seconds": None, "tokens_per_s": None}
    return {
        "step_seconds": statistics.median(e["step_seconds"] for e in rows),
        "tokens_per_s": statistics.median(e["tokens_per_s"] for e in rows),
    }


def read_train_log(path: Path) -> list[dict]:
    """The log's complete lines (a line cut short by a crash is skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
