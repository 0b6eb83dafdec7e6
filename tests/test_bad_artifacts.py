"""Damaged, inconsistent or oversized inputs to convert / export / check, and a disk that fills up.

Each case goes through the real `edgeqat` command: one error line naming the problem and the fix, exit 2,
no traceback, and no new or half-written artifact (an older one is left as it was).
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from edgeqat.artifacts import hash_files, read_record, write_record
from edgeqat.manifest import MANIFEST

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("isolated")]


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def _rewrite_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    change(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_bundle_with_a_missing_file(capsys, isolated, made):
    bundle = _copy(made["bundle"], isolated / "bundle")
    (bundle / "tokenizer.json").unlink()
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "tokenizer.json" in line and "missing" in line
    assert not (isolated / "report").exists()


def test_bundle_with_a_changed_file(capsys, isolated, made):
    bundle = _copy(made["bundle"], isolated / "bundle")
    with open(bundle / "tokenizer.json", "a") as f:
        f.write(" ")
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "tokenizer.json" in line and "sha256" in line
    assert not (isolated / "report").exists()


def test_truncated_pte(capsys, isolated, made):
    bundle = _copy(made["bundle"], isolated / "bundle")
    pte = bundle / "model.pte"
    pte.write_bytes(pte.read_bytes()[: pte.stat().st_size // 3])
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "model.pte" in line and ("sha256" in line or "size" in line)
    assert not (isolated / "report").exists()


def test_truncated_pte_whose_manifest_was_rewritten_to_match(capsys, isolated, made):
    """Past the sha256 check (a bundle assembled by hand): ExecuTorch's loader must refuse it, not crash."""
    from edgeqat.artifacts import sha256_file

    bundle = _copy(made["bundle"], isolated / "bundle")
    pte = bundle / "model.pte"
    pte.write_bytes(pte.read_bytes()[: pte.stat().st_size // 3])
    _rewrite_manifest(bundle, lambda m: m["files"].update({"model.pte": sha256_file(pte)}))
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "cannot load" in line and "File size is too small" in line and "re-export" in line
    assert not (isolated / "report").exists()


def test_manifest_that_does_not_match_its_pte(capsys, isolated, made):
    from edgeqat.artifacts import sha256_file

    bundle = _copy(made["bundle"], isolated / "bundle")

    def shrink(manifest):
        manifest["model"]["max_seq_len"] = 32

    _rewrite_manifest(bundle, shrink)
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "max_seq_len" in line and "64" in line and "32" in line
    assert sha256_file(bundle / "model.pte") == read_manifest_files(made["bundle"])["model.pte"]
    assert not (isolated / "report").exists()


def read_manifest_files(bundle: Path) -> dict[str, str]:
    return json.loads((bundle / MANIFEST).read_text())["files"]


def test_tokenizer_larger_than_the_models_vocabulary(capsys, isolated, made):
    from transformers import AutoTokenizer

    conv = _copy(made["conv"], isolated / "conv")
    tokenizer = AutoTokenizer.from_pretrained(conv)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(10)])
    tokenizer.save_pretrained(conv)
    record = read_record(conv)
    write_record(conv, record["stage"], record["config"], **{k: v for k, v in record.items() if k not in ("stage", "config", "files", "versions")})
    line = run_cli(capsys, "export", str(conv), "--output", "bundle")
    assert "tokenizer has 2058 tokens" in line and "2048" in line
    assert not (isolated / "bundle").exists()


def test_golden_prompt_longer_than_max_seq_len(capsys, isolated, made):
    (isolated / "long.yaml").write_text("export:\n  golden_prompts: ['" + "wisdom " * 80 + "']\n")
    line = run_cli(capsys, "export", str(made["conv"]), "--output", "bundle", "--config", "long.yaml", "--max-seq-len", "64")
    assert "golden prompt" in line and "must be 1 to 63 tokens" in line and "--max-seq-len" in line
    assert not (isolated / "bundle").exists()


def test_max_seq_len_beyond_the_models_positions(capsys, isolated, made):
    line = run_cli(capsys, "export", str(made["conv"]), "--output", "bundle", "--max-seq-len", "4096")
    assert "4096" in line and "512" in line
    assert not (isolated / "bundle").exists()


def test_disk_full_while_converting_keeps_the_old_artifact(capsys, isolated, made, monkeypatch):
    import safetensors.torch

    old = _copy(made["conv"], isolated / "conv")
    before = hash_files(old, exclude=())

    def fill_up(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1024)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(safetensors.torch, "save_file", fill_up)
    line = run_cli(capsys, "convert", str(made["ckpt"]), "--output", str(old), after_progress=True)
    assert "no space left on the device" in line and "free some space" in line
    assert hash_files(old, exclude=()) == before
    assert not [p.name for p in isolated.iterdir() if p.name.startswith(".conv.")]


def test_disk_full_while_writing_the_report(capsys, isolated, made, monkeypatch):
    import edgeqat.runtime_check.check as check_module

    def fill_up(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(check_module, "write_json_atomic", fill_up)
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--min-golden-agreement", "0",
                   after_progress=True)
    assert "no space left on the device" in line
    assert not (isolated / "report").exists()


def test_check_prompt_longer_than_max_seq_len(capsys, isolated, made):
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--prompt", "wisdom " * 80)
    assert "prompt" in line and "the KV cache holds 64" in line and "--max-seq-len" in line
    assert not (isolated / "report").exists()


def test_check_with_device_results_for_another_bundle(capsys, isolated, made):
    example = Path(__file__).parent / "data" / "device_results_example.json"
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--device-results", str(example))
    assert "another bundle" in line and "sha256" in line
    assert not (isolated / "report").exists()


def test_check_with_a_device_results_file_missing_a_field(capsys, isolated, made):
    results = json.loads((Path(__file__).parent / "data" / "device_results_example.json").read_text())
    del results["runs"][0]["decode_tokens_per_s"]
    (isolated / "bad.json").write_text(json.dumps(results))
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--device-results", "bad.json")
    assert "runs[0]" in line and "decode_tokens_per_s" in line
    assert not (isolated / "report").exists()


# -- a manifest is validated completely before anything runs ----------------------------------------------


def _golden(manifest, **changes):
    manifest["golden"][0].update(changes)


@pytest.mark.parametrize("change,fragment", [
    (lambda m: _golden(m, prompt_ids=["33", "1524"]), "manifest golden[0].prompt_ids[0]: '33' is not of type 'integer'"),
    (lambda m: _golden(m, generated_ids=[]), "manifest golden[0].generated_ids: [] should be non-empty"),
    (lambda m: _golden(m, prompt_ids=[33, 99999]), "manifest golden[0].prompt_ids: 99999 is not below vocab_size 2048"),
    (lambda m: _golden(m, generated_ids=[-3]), "manifest golden[0].generated_ids[0]: -3 is less than the minimum of 0"),
    (lambda m: m.update(source=["not", "an", "object"]), "manifest source: ['not', 'an', 'object'] is not of type 'object'"),
    (lambda m: m.update(format_version=0), "bundle format version 0 never existed"),
    (lambda m: m["model"].update(vocab_size=0), "manifest model.vocab_size: 0 is less than the minimum of 1"),
    (lambda m: m.update(program="model\x00.pte"), "is not a path inside the bundle, without NUL bytes"),
])
def test_a_manifest_field_of_the_wrong_type_shape_or_range(capsys, isolated, made, change, fragment):
    bundle = _copy(made["bundle"], isolated / "bundle")
    _rewrite_manifest(bundle, change)
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert fragment in line and "re-export the bundle" in line


def test_a_manifest_naming_a_method_the_program_lacks(capsys, isolated, made):
    bundle = _copy(made["bundle"], isolated / "bundle")
    _rewrite_manifest(bundle, lambda m: m["export"].update(method="decode"))
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "the manifest names the method 'decode' but model.pte has only" in line and "forward" in line


def test_a_pathologically_nested_manifest(capsys, isolated, made):
    bundle = _copy(made["bundle"], isolated / "bundle")
    (bundle / MANIFEST).write_text('{"format": "edgeqat-bundle", "golden": ' + "[" * 100_000 + "]" * 100_000 + "}")
    line = run_cli(capsys, "check", str(bundle), "--output", "report")
    assert "manifest.json is nested too deeply" in line


# -- references and results named on the command line must be what they claim -----------------------------


def test_an_unquantized_path_that_does_not_exist(capsys, isolated, made):
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--unquantized", "no-such-ckpt")
    assert "--unquantized not found: no-such-ckpt" in line


def test_an_unquantized_folder_that_is_not_a_checkpoint(capsys, isolated, made):
    (isolated / "empty").mkdir()
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--unquantized", "empty")
    assert "--unquantized empty has no config.json" in line


def test_an_unquantized_checkpoint_with_damaged_weights(capsys, isolated, made):
    ckpt = _copy(made["ckpt"], isolated / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--unquantized", str(ckpt))
    assert f"cannot load the unquantized model {ckpt}" in line and "--unquantized" in line


def test_a_reference_that_is_missing_or_a_file(capsys, isolated, made):
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--reference", "no-such-conv")
    assert "--reference not found: no-such-conv" in line
    (isolated / "conv.txt").write_text("x")
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--reference", "conv.txt")
    assert "--reference conv.txt is a file, not a folder" in line


def test_device_results_that_are_a_folder(capsys, isolated, made):
    (isolated / "results").mkdir()
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--device-results", "results")
    assert "device results file results is a folder, not a file" in line


def test_an_evaluation_dataset_without_text_names_no_option_check_lacks(capsys, isolated, made):
    (isolated / "qa.jsonl").write_text('{"question": "why?", "answer": "because"}\n')
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", "report", "--eval-dataset", "qa.jsonl")
    assert "no 'text' or 'messages' column" in line and "give plain text in a 'text' column" in line
    assert "--text-column" not in line


# -- an output folder that is one of the inputs -----------------------------------------------------------


def test_convert_into_its_own_checkpoint(capsys, isolated, made):
    line = run_cli(capsys, "convert", str(made["ckpt"]), "--output", str(made["ckpt"]))
    assert "is the input checkpoint itself" in line


def test_export_into_its_own_converted_model(capsys, isolated, made):
    line = run_cli(capsys, "export", str(made["conv"]), "--output", str(made["conv"]))
    assert "is the input converted model itself" in line


def test_check_into_its_own_bundle_or_inside_it(capsys, isolated, made):
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", str(made["bundle"]))
    assert "is the input bundle itself" in line
    line = run_cli(capsys, "check", str(made["bundle"]), "--output", str(made["bundle"] / "report"))
    assert "is inside the input bundle" in line
