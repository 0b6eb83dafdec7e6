"""Throughput and memory in the trainer's logs, and every log line appended to a JSON-lines file.

transformers logs loss, learning rate and grad norm; this adds tokens/s (from the trainer's own count of
input tokens seen, summed over ranks) and the GPU's peak allocated memory since the previous log line, so
they reach the progress bar, TensorBoard and ``train_log.jsonl`` alike.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

TRAIN_LOG = "train_log.jsonl"
GIB = 1024**3


class ThroughputLog(TrainerCallback):
    def __init__(self, path: Path, device: torch.device):
        self.path = path
        self.device = device
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time, self._last_tokens = time.perf_counter(), state.num_input_tokens_seen
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self._last_time is None:
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen
        if "loss" in logs and now > self._last_time:
            logs["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_time), 1)
        if self.device.type == "cuda":
            logs["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 3)
        self._last_time, self._last_tokens = now, tokens
        if state.is_world_process_zero:
            # Appended line by line: a crash loses at most the line being written, never earlier ones.
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "time": round(time.time(), 3), **logs}) + "\n")


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
