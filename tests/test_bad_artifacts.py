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
