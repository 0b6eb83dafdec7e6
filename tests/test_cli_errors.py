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


# -- config files: one line naming the file, whatever is wrong with it --------------------------------------


@pytest.mark.parametrize("content,fragment", [
    (b"train:\n  max_steps: 3\n  max_steps: 4\n", "line 3, column 3: the key 'max_steps' appears twice (first on line 2)"),
    (b"train: {mode: qat, mode: bf16}\n", "the key 'mode' appears twice"),
    ("train:\n  model: caf\xe9\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 19); save it as UTF-8"),
    (b"[" * 5000 + b"]" * 5000, "is nested too deeply to be a config file"),
    (json.dumps(list(range(5000))).encode(), "the top level must be a mapping of sections (train:, quant:, ...), not a list"),
])
def test_a_config_file_that_cannot_be_read(capsys, isolated, content, fragment):
    (isolated / "c.yaml").write_bytes(content)
    line = run_cli(capsys, "train", "--config", "c.yaml", "--output", "ckpt")
    assert "c.yaml" in line and fragment in line and len(line) < 300


def test_a_config_path_that_is_a_folder(capsys, isolated):
    (isolated / "configs").mkdir()
    line = run_cli(capsys, "run", "configs")
    assert "config file configs is a folder, not a file" in line


def test_a_huge_wrong_value_is_shortened_so_the_problem_shows(capsys, isolated):
    (isolated / "c.yaml").write_text("train:\n  max_steps: " + json.dumps(list(range(2000))) + "\n")
    line = run_cli(capsys, "train", "--config", "c.yaml", "--output", "ckpt")
    assert "train.max_steps: expected int, got [0, 1, 2" in line and "(list, " in line and len(line) < 200


# -- values: every field's type and range, checked before any work ------------------------------------------


@pytest.mark.parametrize("argv,fragment", [
    (["--learning-rate", "-1"], "train.learning_rate must be more than 0, got -1.0"),
    (["--learning-rate", "0"], "train.learning_rate must be more than 0"),
    (["--learning-rate", "nan"], "train.learning_rate must be a finite number, got nan"),
    (["--learning-rate", "inf"], "train.learning_rate must be a finite number, got inf"),
    (["--learning-rate", "5"], "train.learning_rate must be at most 1"),
    (["--seed", "-1"], "train.seed must be at least 0, got -1"),
    (["--seed", str(2**40)], "train.seed must be at most 4294967295"),
    (["--max-length", "1"], "train.max_length must be at least 2, got 1"),
    (["--batch-size", "0"], "train.batch_size must be at least 1"),
    (["--gradient-accumulation-steps", "-2"], "train.gradient_accumulation_steps must be at least 1"),
    (["--lora-rank", "-4"], "train.lora_rank must be at least 0"),
    (["--save-steps", "-1"], "train.save_steps must be at least 0"),
    (["--group-size", "-32"], "quant.group_size must be at least 0"),
    (["--max-seq-len", "1"], "export.max_seq_len must be at least 2"),
    (["--min-cosine", "1.5"], "check.thresholds.min_logits_cosine must be at most 1, got 1.5"),
    (["--min-cosine", "-2"], "check.thresholds.min_logits_cosine must be at least -1"),
    (["--min-top1", "-0.1"], "check.thresholds.min_top1_agreement must be at least 0"),
    (["--min-top1", "1.01"], "check.thresholds.min_top1_agreement must be at most 1"),
    (["--max-ppl-increase", "-0.5"], "check.thresholds.max_perplexity_increase must be at least 0"),
    (["--min-golden-agreement", "2"], "check.thresholds.min_golden_token_agreement must be at most 1"),
    (["--threads", "10000"], "check.threads must be at most"),
    (["--threads", "0"], "check.threads must be at least 1"),
    (["--prompt", ""], "check.prompts[0] is empty; give it some text"),
    (["--model", ""], "train.model is empty"),
])
def test_a_value_out_of_range_is_refused_before_any_work(capsys, isolated, argv, fragment):
    line = run_cli(capsys, "run", "--output", "out", *argv)
    assert fragment in line
    assert not (isolated / "out").exists()


@pytest.mark.parametrize("yaml_text,fragment", [
    ("train:\n  learning_rate: .inf\n", "train.learning_rate must be a finite number, got inf"),
    ("train:\n  warmup_ratio: 1\n", "train.warmup_ratio must be less than 1, got 1.0"),
    ("train:\n  lora_alpha: 0\n", "train.lora_alpha must be at least 1"),
    ("train:\n  attn_implementation: flash\n", "unknown train.attn_implementation 'flash'; choose one of: sdpa, eager"),
    ("export:\n  golden_new_tokens: 0\n", "export.golden_new_tokens must be at least 1, got 0"),
    ("export:\n  golden_new_tokens: -5\n", "export.golden_new_tokens must be at least 1"),
    ("export:\n  golden_prompts: ['A wise son', '']\n", "export.golden_prompts[1] is empty; give it some text"),
    ("export:\n  golden_prompts: []\n", "export.golden_prompts must list at least 1 item"),
    ("check:\n  eval_windows: 0\n", "check.eval_windows must be at least 1"),
    ("study:\n  lm_eval_batch_size: 0\n", "study.lm_eval_batch_size must be at least 1"),
    ("output_dir: ''\n", "output_dir is empty"),
])
def test_a_config_value_out_of_range_is_refused_before_any_work(capsys, isolated, yaml_text, fragment):
    (isolated / "c.yaml").write_text(yaml_text)
    line = run_cli(capsys, "run", "c.yaml")
    assert fragment in line
    assert not (isolated / "edgeqat-out").exists()


def test_a_bad_device_profiles_file_is_refused_before_training(capsys, isolated):
    (isolated / "phones.yaml").write_text("profiles:\n  - name: My Phone\n")
    line = run_cli(capsys, "run", "--device-profiles", "phones.yaml", "--output", "out")
    assert "phones.yaml: profiles[0]: missing 'soc'" in line
    line = run_cli(capsys, "run", "--device-profiles", "nope.yaml", "--output", "out")
    assert "device profiles file not found: nope.yaml" in line
    (isolated / "dup.yaml").write_text("include_builtin: true\ninclude_builtin: false\nprofiles: []\n")
    line = run_cli(capsys, "run", "--device-profiles", "dup.yaml", "--output", "out")
    assert "the key 'include_builtin' appears twice" in line
    assert not (isolated / "out").exists()


def test_a_missing_evaluation_dataset_is_refused_before_training(capsys, isolated):
    line = run_cli(capsys, "run", "--eval-dataset", "./held-out.jsonl", "--output", "out")
    assert "evaluation dataset not found: ./held-out.jsonl" in line
    assert not (isolated / "out").exists()


# -- paths: a file where a folder is expected (or the other way round) is not "not found" -----------------


def test_a_model_path_that_is_a_file(capsys, isolated):
    (isolated / "model.safetensors").write_bytes(b"weights")
    line = run_cli(capsys, "train", "--model", "./model.safetensors", "--output", "ckpt")
    assert "model path ./model.safetensors is a file; give the model's folder" in line


def test_a_checkpoint_or_bundle_path_that_is_a_file(capsys, isolated):
    (isolated / "thing").write_text("x")
    assert "checkpoint thing is a file, not a folder" in run_cli(capsys, "convert", "thing", "--output", "conv")
    assert "converted model thing is a file, not a folder" in run_cli(capsys, "export", "thing", "--output", "b")
    assert "bundle thing is a file, not a folder" in run_cli(capsys, "check", "thing", "--output", "report")


# -- models whose files are damaged or whose config cannot make a model ---------------------------------------


def _model_copy(isolated, name="model"):
    import shutil

    from edgeqat.paths import DEFAULT_MODEL

    shutil.copytree(DEFAULT_MODEL, isolated / name)
    return isolated / name


def _edit_config(folder, **values):
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("values,fragment", [
    ({"num_attention_heads": 0}, "config.json has num_attention_heads = 0; it must be a whole number of at least 1"),
    ({"num_hidden_layers": -1}, "config.json has num_hidden_layers = -1"),
    ({"hidden_size": "256"}, "config.json has hidden_size = '256'"),
    ({"num_key_value_heads": 3}, "has 8 attention heads and 3 key/value heads; the key/value heads must divide"),
])
def test_a_model_config_whose_sizes_cannot_make_a_model(capsys, isolated, values, fragment):
    _edit_config(_model_copy(isolated), **values)
    line = run_cli(capsys, "train", "--model", "./model", "--output", "ckpt")
    assert "model './model'" in line and fragment in line


def test_a_model_config_that_is_not_json(capsys, isolated):
    (_model_copy(isolated) / "config.json").write_text("{not json")
    line = run_cli(capsys, "train", "--model", "./model", "--output", "ckpt")
    assert "model/config.json is not valid JSON (line 1, column 2" in line


def test_truncated_model_weights(capsys, isolated):
    weights = _model_copy(isolated) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = run_cli(capsys, "train", "--model", "./model", "--output", "ckpt", "--max-steps", "1", after_progress=True)
    assert "cannot load the weights of model './model'" in line and "truncated" in line
    assert not (isolated / "ckpt").exists() and not (isolated / "ckpt.progress").exists()


def test_a_damaged_tokenizer(capsys, isolated):
    (_model_copy(isolated) / "tokenizer.json").write_text("{garbage")
    line = run_cli(capsys, "train", "--model", "./model", "--output", "ckpt")
    assert "cannot load the tokenizer of './model'" in line


# -- datasets: the file, the line and the cause -------------------------------------------------------------


@pytest.mark.parametrize("name,content,fragment", [
    ("rows.csv", b"text,b\nhello,1\nworld,2,3\n", "ParserError: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3"),
    ("rows.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "rows.jsonl, line 2: not UTF-8 text (byte 0xe9)"),
    ("rows.txt", b"hello\ncaf\xe9\n", "rows.txt, line 2: not UTF-8 text (byte 0xe9)"),
    ("rows.json", json.dumps([{"text": "a"}, {"text": 5}]).encode(), "row 2: the text 5 is of type int, not a string"),
    ("rows.parquet", b"not parquet at all", "is not a readable parquet file (Parquet magic bytes not found"),
    ("rows.xml", b"<rows/>", "unsupported file type '.xml'"),
    ("rows.jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "rows.jsonl, line 1: JSON nested too deeply"),
])
def test_a_dataset_file_that_cannot_be_read(capsys, isolated, name, content, fragment):
    (isolated / name).write_bytes(content)
    line = run_cli(capsys, "train", "--dataset", name, "--output", "ckpt")
    assert name in line and fragment in line
    assert "An error occurred while generating the dataset" not in line


def test_an_empty_dataset_folder(capsys, isolated):
    (isolated / "data").mkdir()
    line = run_cli(capsys, "train", "--dataset", "./data", "--output", "ckpt")
    assert "dataset folder data holds no data files" in line


# -- where the output goes --------------------------------------------------------------------------------


def test_an_output_under_a_regular_file(capsys, isolated):
    (isolated / "notes.txt").write_text("mine")
    line = run_cli(capsys, "train", "--output", "notes.txt/ckpt")
    assert "output notes.txt/ckpt is under notes.txt, which is a file, not a folder" in line


def test_an_output_that_is_a_symbolic_link(capsys, isolated):
    (isolated / "real").mkdir()
    (isolated / "link").symlink_to("real")
    line = run_cli(capsys, "train", "--output", "link")
    assert "output link is a symbolic link" in line


def test_an_output_equal_to_the_model(capsys, isolated):
    _model_copy(isolated)
    line = run_cli(capsys, "train", "--model", "./model", "--output", "./model")
    assert "the output model is the input --model itself" in line


def test_an_output_holding_the_dataset(capsys, isolated):
    (isolated / "data").mkdir()
    (isolated / "data" / "train.jsonl").write_text('{"text": "hello"}\n')
    line = run_cli(capsys, "train", "--dataset", "data/train.jsonl", "--output", "data")
    assert "the output data holds the input --dataset (data/train.jsonl): replacing it would delete the input" in line


def test_a_training_that_diverges_writes_no_checkpoint(capsys, isolated, monkeypatch):
    """NaN or infinite weights after training (a learning rate too high) are an error, never a checkpoint."""
    import edgeqat.train.finetune as finetune

    strip = finetune.strip_fake_quant

    def diverged(model):
        strip(model)
        with torch.no_grad():
            model.get_input_embeddings().weight[0, 0] = float("nan")

    monkeypatch.setattr(finetune, "strip_fake_quant", diverged)
    line = run_cli(capsys, "train", "--output", "ckpt", "--max-steps", "1", "--max-length", "16", after_progress=True)
    assert "training diverged: 1 weight tensors hold NaN or infinity" in line and "lower --learning-rate" in line
    assert not (isolated / "ckpt").exists() and not (isolated / "ckpt.progress").exists()
