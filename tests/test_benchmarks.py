"""The benchmark scripts run (one tiny step on CPU) and write the JSON they promise; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_qat_overhead_runs_and_writes_its_table(tmp_path: Path):
    out = tmp_path / "qat_overhead.json"
    command = [sys.executable, str(BENCHMARKS / "qat_overhead.py"), "--model", "default", "--device", "cpu",
               "--batch", "1", "--seq-len", "32", "--steps", "1", "--warmup", "0", "--fine-tuning", "full,lora",
               "--schemes", "8da4w", "--lora-fake-quant", "merged", "--json", str(out), "--profile", str(tmp_path / "profile")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| full | 8da4w | fused |" in result.stdout and "| lora | bf16 | - |" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["fine_tuning"], r["run"], r["kernels"], r["lora_fake_quant"]) for r in rows] == [
        (ft, run, kernels, "merged" if ft == "lora" and kernels else None)
        for ft in ("full", "lora") for run, kernels in (("bf16", None), ("8da4w", "torchao"), ("8da4w", "fused"))
    ]
    assert all(r["s_per_step"] > 0 for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == rows[1]["s_per_step"] / rows[0]["s_per_step"]
    assert "Self CPU" in (tmp_path / "profile" / "full-8da4w-fused.txt").read_text()


def test_study_sweep_runs_a_study_per_cell_and_summarizes(tmp_path: Path):
    out = tmp_path / "sweep.json"
    command = [sys.executable, str(BENCHMARKS / "study_sweep.py"), "--work", str(tmp_path / "work"), "--lora-rank", "4",
               "--learning-rates", "1e-3", "--seeds", "0", "--lora-fake-quant", "merged", "--json", str(out),
               "--", "--device", "cpu", "--max-steps", "1", "--max-length", "64"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["recovery"] == (cell["ptq_ppl"] - cell["qat_ppl"]) / (cell["ptq_ppl"] - cell["bf16_ppl"])
    assert "| QAT | merged | 0.001 | 1 |" in result.stdout


def test_fake_quant_codes_counts_what_training_would_ship_differently(tmp_path: Path):
    out = tmp_path / "codes.json"
    model = Path(__file__).resolve().parents[1] / "core" / "assets" / "default_model"
    command = [sys.executable, str(BENCHMARKS / "fake_quant_codes.py"), str(model), "--scheme", "8da4w", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["weights"] == 4_194_304  # every quantized linear and the embedding of the embedded model
    assert row["codes_differ"]["edgeqat (fp32)"] == 0 and row["values_differ"]["edgeqat (fp32)"] == 0
    assert row["codes_differ"]["torchao bf16"] > 1e-3


def test_shaped_model_configs_have_the_published_sizes():
    sys.path.insert(0, str(BENCHMARKS))
    from shaped_model import shaped_config

    from edgeqat.train.memory_estimate import parameter_count
    from edgeqat.train.model_loading import model_skeleton

    assert round(parameter_count(model_skeleton(shaped_config("qwen3-0.6b"))) / 1e6) == 596
    assert round(parameter_count(model_skeleton(shaped_config("gemma3-270m"))) / 1e6) == 268


def test_decode_speed_and_its_llama_cpp_worker_load_without_llama_cpp():
    """decode_speed.py needs llama-cpp-python (the benchmark extra, never in CI) only to time; its options and
    the worker's usage line come without it."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "decode_speed.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--gguf-type" in result.stdout, result.stderr
    result = subprocess.run([sys.executable, str(BENCHMARKS / "llama_cpp_worker.py")], capture_output=True, text=True)
    assert result.returncode == 1 and "usage: llama_cpp_worker.py {convert|quantize|time}" in result.stderr


def test_onnx_speed_times_both_programs_of_a_bundle(made, tmp_path: Path):
    out = tmp_path / "onnx_speed.json"
    command = [sys.executable, str(BENCHMARKS / "onnx_speed.py"), str(made["bundle"]), "--reference", str(made["conv"]),
               "--threads", "1", "--rounds", "1", "--levels", "1,4", "--windows", "1", "--prompt-tokens", "8",
               "--decode-tokens", "4", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| threads | .pte prefill | .pte decode | ONNX L1 prefill" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["agreement"]) == {"1", "4"} and data["agreement"]["4"]["cosine_mean"] > 0.99
    (row,) = data["table"]
    assert row["threads"] == 1 and row["pte_decode"] > 0 and row["onnx_level1_decode"] > 0 and row["onnx_level4_decode"] > 0


def test_quant_error_budget_parts_add_up_to_real_ptq(tmp_path: Path):
    """All parts on is the PTQ model (real torchao quantization) to within float rounding; each part is listed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeqat.config import QuantConfig
    from edgeqat.paths import ASSETS, DEFAULT_EVAL_DATA
    from edgeqat.train.data import token_windows
    from edgeqat.train.evaluate import perplexity
    from edgeqat.train.quantize import quantize_ptq

    out, model_dir = tmp_path / "budget.json", ASSETS / "default_model"
    command = [sys.executable, str(BENCHMARKS / "quant_error_budget.py"), str(model_dir), "--windows", "2",
               "--length", "64", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (budget,) = json.loads(out.read_text())["results"]
    assert set(budget["parts"]) == {"embedding", "head weight", "head input", "linear weights", "linear inputs"}
    assert "| linear weights |" in result.stdout

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    windows = token_windows(AutoTokenizer.from_pretrained(model_dir), "default", DEFAULT_EVAL_DATA, 2, 64)
    assert budget["float_perplexity"] == pytest.approx(perplexity(model, windows, torch.device("cpu"))["perplexity"])
    quantize_ptq(model, QuantConfig(scheme="8da4w", embedding_bits=4))
    ptq = perplexity(model, windows, torch.device("cpu"))["perplexity"]
    assert budget["quantized_perplexity"] == pytest.approx(ptq, rel=1e-4)
    assert budget["quantized_perplexity"] != pytest.approx(budget["float_perplexity"], rel=1e-4)
