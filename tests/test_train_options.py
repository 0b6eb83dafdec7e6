"""Training options end to end on the embedded model: chat data, LoRA with gradient checkpointing, packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import safetensors

from edgeqat.artifacts import read_record
from edgeqat.cli import main

pytestmark = pytest.mark.e2e
SHORT = ["--max-steps", "2", "--max-length", "64", "--batch-size", "2", "--device", "cpu"]


def test_chat_data_with_lora_and_gradient_checkpointing(tmp_path: Path):
    conversations = [
        {"messages": [{"role": "user", "content": f"Say proverb {i}."},
                      {"role": "assistant", "content": "A soft answer turneth away wrath."}]}
        for i in range(8)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    out = tmp_path / "ckpt"
    argv = ["train", "--output", str(out), "--dataset", str(data), "--lora-rank", "8", "--gradient-checkpointing", *SHORT]
    assert main(argv) == 0
    record = read_record(out)
    assert record["config"]["train"]["lora_rank"] == 8 and record["config"]["train"]["gradient_checkpointing"]
    assert len(record["loss_curve"]) == 2 and all(loss > 0 for _, loss in record["loss_curve"])
    with safetensors.safe_open(out / "model.safetensors", "pt") as weights:
        assert not [name for name in weights.keys() if "lora" in name]  # adapters merged: a plain model


def test_packing_fills_every_sequence(tmp_path: Path):
    out = tmp_path / "ckpt"
    assert main(["train", "--output", str(out), "--packing", "--mode", "bf16", *SHORT]) == 0
    record = read_record(out)
    assert record["tokens_seen"] == 2 * 2 * 64  # steps x batch x max_length: packed rows have no padding


def test_throughput_reaches_the_log_file_and_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "ckpt"
    assert main(["train", "--output", str(out), *SHORT]) == 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    (run,) = (out / "tensorboard").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("train/tokens_per_s")] == [1, 2]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_lora_rank_that_does_not_divide_the_group_size_trains_and_converts(tmp_path: Path):
    """Rank 5 against group size 32: QAT fake-quantizes the base linears before peft adds adapters, and the
    adapters are merged into those base weights before conversion, so the rank never meets the group size."""
    from edgeqat.train.convert import load_converted

    ckpt, converted = tmp_path / "ckpt", tmp_path / "converted"
    assert main(["train", "--output", str(ckpt), "--lora-rank", "5", "--group-size", "32", *SHORT]) == 0
    record = read_record(ckpt)
    assert record["config"]["train"]["lora_rank"] == 5 and all(loss > 0 for _, loss in record["loss_curve"])
    assert main(["convert", str(ckpt), "--output", str(converted)]) == 0
    model, _, converted_record = load_converted(converted)
    assert converted_record["group_size"] == 32
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == 29 and all(type(w).__name__ == "IntxUnpackedToInt8Tensor" for w in weights)
    assert {w.block_size[-1] for w in weights} == {32}
