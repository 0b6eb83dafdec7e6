"""User errors through the real `edgeqat` command, in process: one line on stderr, no traceback, exit 2.

Every case here must fail on its input before any training, conversion or export starts.
"""

from __future__ import annotations

import json

import pytest

# The libraries print their own import-time notices (torchao's optional kernels); import them before
# stderr is captured so the captured text is the command's alone.
import torch  # noqa: F401
import torchao  # noqa: F401
import transformers  # noqa: F401

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("isolated")


def test_unknown_scheme(capsys, isolated):
    line = run_cli(capsys, "run", "--scheme", "9bit", "--output", "out")
    assert "unknown scheme '9bit'" in line
    assert "8da4w" in line and "8da8w" in line and "4w" in line
    assert not (isolated / "out").exists()


def test_unknown_scheme_with_the_default_output(capsys, isolated):
    line = run_cli(capsys, "run", "--scheme", "9bit")
    assert "unknown scheme" in line
    assert not (isolated / "edgeqat-out").exists()


def test_unknown_config_key_in_a_yaml_file(capsys, isolated):
    (isolated / "c.yaml").write_text("train:\n  max_step: 3\n")
    line = run_cli(capsys, "run", "c.yaml")
    assert "train.max_step" in line and "did you mean 'max_steps'" in line
    line = run_cli(capsys, "train", "--config", "c.yaml", "--output", "ckpt")
    assert "did you mean 'max_steps'" in line
    assert not (isolated / "ckpt").exists()


def test_bad_yaml(capsys, isolated):
    (isolated / "bad.yaml").write_text("train:\n  max_steps: 3\n  mode: [qat\n")
    line = run_cli(capsys, "run", "--config", "bad.yaml")
    assert "bad.yaml is not valid YAML" in line
    assert "line 4" in line


def test_missing_config_file(capsys):
    line = run_cli(capsys, "run", "--config", "nope.yaml")
    assert "config file not found: nope.yaml" in line


def test_nonexistent_model_path(capsys, isolated):
    line = run_cli(capsys, "train", "--model", "./nope", "--output", "X")
    assert "model path not found: ./nope" in line
    assert not (isolated / "X").exists()
    assert [p.name for p in isolated.iterdir() if not p.name.startswith(".hf")] == []  # nothing half-written


def test_model_folder_that_is_not_a_model(capsys, isolated):
    (isolated / "empty-model").mkdir()
    line = run_cli(capsys, "train", "--model", "./empty-model", "--output", "X")
    assert "cannot load model './empty-model'" in line
    assert not (isolated / "X").exists()


def test_nonexistent_dataset_path(capsys, isolated):
    line = run_cli(capsys, "train", "--dataset", "./nope.jsonl", "--output", "X")
    assert "dataset not found: ./nope.jsonl" in line
    assert not (isolated / "X").exists()


def test_convert_of_a_folder_that_is_not_a_checkpoint(capsys, isolated):
    (isolated / "notckpt").mkdir()
    (isolated / "notckpt" / "config.json").write_text("{}")
    line = run_cli(capsys, "convert", "notckpt", "--output", "conv")
    assert "notckpt is not an edgeqat artifact" in line
    assert not (isolated / "conv").exists()


def test_convert_of_a_missing_folder(capsys, isolated):
    line = run_cli(capsys, "convert", "missing", "--output", "conv")
    assert "checkpoint not found: missing; run `edgeqat train` to make it first" in line
    assert not (isolated / "conv").exists()


def test_convert_of_the_wrong_stage(capsys, isolated):
    from edgeqat.artifacts import write_record

    (isolated / "bundle-ish").mkdir()
    write_record(isolated / "bundle-ish", "convert", {})
    line = run_cli(capsys, "convert", "bundle-ish", "--output", "conv")
    assert "is a 'convert' artifact, expected a 'train' one" in line


def test_export_of_a_missing_folder(capsys, isolated):
    line = run_cli(capsys, "export", "missing", "--output", "bundle")
    assert "converted model not found: missing; run `edgeqat convert` to make it first" in line
    assert not (isolated / "bundle").exists()


def test_export_of_a_damaged_checkpoint(capsys, isolated):
    from edgeqat.artifacts import write_record

    folder = isolated / "conv"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    write_record(folder, "convert", {})
    (folder / "model.safetensors").write_bytes(b"changed")
    line = run_cli(capsys, "export", "conv", "--output", "bundle")
    assert "is damaged" in line and "model.safetensors" in line
    assert not (isolated / "bundle").exists()


def test_check_of_a_folder_without_manifest(capsys, isolated):
    (isolated / "b").mkdir()
    (isolated / "b" / "model.pte").write_bytes(b"PTE")
    line = run_cli(capsys, "check", "b")
    assert "has no manifest.json" in line
    assert not (isolated / "report").exists()


def test_check_of_a_bundle_with_a_bad_manifest(capsys, isolated):
    (isolated / "b").mkdir()
    (isolated / "b" / "manifest.json").write_text(json.dumps({"format": "edgeqat-bundle", "format_version": 99}))
    line = run_cli(capsys, "check", "b", "--json")
    assert "upgrade edgeqat" in line
    assert not (isolated / "report").exists()


def test_unsupported_architecture(capsys, isolated):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained("bert")
    line = run_cli(capsys, "train", "--model", "./bert", "--output", "ckpt")
    assert "'bert'" in line and "llama" in line
    assert not (isolated / "ckpt").exists()


def test_group_size_that_does_not_divide_a_layer(capsys, isolated):
    line = run_cli(capsys, "train", "--group-size", "512", "--max-steps", "1", "--output", "ckpt")
    assert "in_features=256" in line and "group size 512" in line and "--skip-indivisible" in line
    assert not (isolated / "ckpt").exists()


def test_cuda_asked_for_where_none_is(capsys, isolated):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = run_cli(capsys, "train", "--device", "cuda", "--output", "ckpt")
    assert "no CUDA GPU" in line
    assert not (isolated / "ckpt").exists()


def test_output_folder_holding_something_else_is_refused_before_any_work(capsys, isolated):
    (isolated / "mine").mkdir()
    (isolated / "mine" / "notes.txt").write_text("keep me")
    line = run_cli(capsys, "train", "--output", "mine", "--max-steps", "1")
    assert "mine" in line and "not an edgeqat train output" in line
    assert (isolated / "mine" / "notes.txt").read_text() == "keep me"


def test_model_too_big_for_the_machine_fails_before_loading_with_the_estimate(capsys, isolated):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256).save_pretrained("llama-70b-shaped")  # config only: no weights
    line = run_cli(capsys, "train", "--model", "./llama-70b-shaped", "--output", "ckpt")
    assert "70.55 B parameters" in line and "GiB" in line and "--lora-rank" in line
    assert not (isolated / "ckpt").exists() and not (isolated / "ckpt.progress").exists()


def test_chat_data_for_a_tokenizer_without_a_chat_template(capsys, isolated):
    import shutil

    from edgeqat.paths import DEFAULT_MODEL

    shutil.copytree(DEFAULT_MODEL, "model")
    (isolated / "model" / "chat_template.jinja").unlink()
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    (isolated / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = run_cli(capsys, "train", "--model", "./model", "--dataset", "chat.jsonl", "--output", "ckpt")
    assert "chat data" in line and "no chat template" in line
    assert not (isolated / "ckpt").exists() and not (isolated / "ckpt.progress").exists()


def test_study_naming_lm_eval_tasks_without_the_harness(capsys, isolated, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    line = run_cli(capsys, "study", "--lm-eval-tasks", "hellaswag,arc_easy", "--output", "out")
    assert "lm-eval is not installed" in line and "hellaswag" in line
    assert not (isolated / "out").exists()


def test_unknown_lr_scheduler_suggests_the_close_one(capsys, isolated):
    line = run_cli(capsys, "train", "--lr-scheduler", "cosin", "--output", "ckpt")
    assert "unknown train.lr_scheduler 'cosin'" in line and "did you mean 'cosine'" in line


def test_resume_with_nothing_kept_but_one_checkpoint_is_refused(capsys, isolated):
    (isolated / "c.yaml").write_text("train:\n  save_total_limit: 1\n")
    line = run_cli(capsys, "train", "--config", "c.yaml", "--output", "ckpt")
    assert "save_total_limit must be at least 2" in line


def test_study_with_an_lm_eval_include_path_that_is_not_a_folder(capsys, isolated):
    (isolated / "c.yaml").write_text("study:\n  lm_eval_tasks: [mytask]\n  lm_eval_include_path: no-such-folder\n")
    line = run_cli(capsys, "study", "c.yaml", "--output", "out")
    assert "lm_eval_include_path no-such-folder is not a folder" in line
    assert not (isolated / "out").exists()


def test_empty_dataset(capsys, isolated):
    (isolated / "empty.jsonl").write_text("\n\n")
    line = run_cli(capsys, "train", "--dataset", "empty.jsonl", "--output", "ckpt")
    assert "no usable rows" in line and "empty.jsonl" in line
    assert not (isolated / "ckpt").exists() and not (isolated / "ckpt.progress").exists()


def test_dataset_without_a_text_or_messages_column(capsys, isolated):
    (isolated / "qa.jsonl").write_text('{"question": "why?", "answer": "because"}\n')
    line = run_cli(capsys, "train", "--dataset", "qa.jsonl", "--output", "ckpt")
    assert "no 'text' or 'messages' column" in line and "question, answer" in line and "--text-column" in line
    assert not (isolated / "ckpt").exists()


def test_malformed_jsonl_line_is_named_by_its_number(capsys, isolated):
    (isolated / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken}\n')
    line = run_cli(capsys, "train", "--dataset", "bad.jsonl", "--output", "ckpt")
    assert "bad.jsonl, line 3: malformed JSON" in line
    assert not (isolated / "ckpt").exists()
