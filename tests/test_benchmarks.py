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
    assert "| qat | merged | 0.001 | 1 |" in result.stdout
    assert cell["arms"]["qat"]["recovery"] == cell["recovery"]


def test_study_sweep_compares_every_arm_with_the_best_baseline_seed_by_seed():
    sys.path.insert(0, str(BENCHMARKS))
    from study_sweep import against_best_baseline, summarize

    def cell(lr, seed, bf16, ptq, qat, rng):
        arms = {"qat": {"ppl": qat, "recovery": (ptq - qat) / (ptq - bf16)},
                "qat-range": {"ppl": rng, "recovery": (ptq - rng) / (ptq - bf16)}}
        return {"way": "full", "lr": lr, "seed": seed, "bf16_ppl": bf16, "ptq_ppl": ptq, "recovery": arms["qat"]["recovery"],
                "qat_ppl": qat, "arms": arms}

    cells = [cell(3e-4, 0, 30.0, 31.0, 30.5, 30.4), cell(3e-4, 1, 30.2, 31.2, 30.7, 30.6),
             cell(6e-4, 0, 30.5, 31.5, 30.1, 30.3), cell(6e-4, 1, 30.7, 31.7, 30.3, 30.5),
             {"way": "full", "lr": 1e-3, "seed": 0, "error": "exit 1"}]
    rows = {(r["lr"], r["arm"]): r for r in summarize(cells)}
    assert rows[(3e-4, "qat-range")]["recovery_mean"] == pytest.approx(0.6) and len(rows) == 4
    best = {(r["lr"], r["arm"]): r for r in against_best_baseline(cells)}
    assert {r["baseline_lr"] for r in best.values()} == {3e-4}  # the lower bf16 perplexity
    # QAT at 6e-4 against the 3e-4 baseline, seed by seed: (31.0 - 30.1) / 1.0 and (31.2 - 30.3) / 1.0
    assert best[(6e-4, "qat")]["recovery_mean"] == pytest.approx(0.9)
    assert best[(3e-4, "qat")]["recovery_mean"] == rows[(3e-4, "qat")]["recovery_mean"]


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
