"""Per-layer debugging (runtime_check/layer_debug.py): the jump rule on its own, then one real debug `.pte`.

The end-to-end tests share one debug program (its export and lowering take about a minute and a half
on 2 cores): the embedded default model cut to 3 layers, quantized 8da4w. It is compared with the same
model in eager (healthy: no jump) and with an eager twin whose layer 2 MLP output is scaled (the error
must first jump at model.layers.2).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from edgeqat.errors import EdgeqatError
from edgeqat.runtime_check.layer_debug_metrics import ERROR_FLOOR, first_jump, layer_errors

MAX_SEQ_LEN = 32
LAYERS = 3
EXPECTED_NAMES = ["model.embed_tokens", *[f"model.layers.{i}" for i in range(LAYERS)], "model.norm", "lm_head"]


def _row(name: str, error: float | None, nonfinite: int = 0) -> dict:
    return {"name": name, "relative_error": error, "nonfinite": nonfinite}


def test_healthy_errors_do_not_jump():
    rows = [_row("embed", 0.0), _row("l0", 0.011), _row("l1", 0.013), _row("l2", 0.014), _row("logits", 0.008)]
    assert first_jump(rows) is None


def test_slow_accumulation_past_the_floor_is_not_a_jump():
    rows = [_row("embed", 0.0)] + [_row(f"l{i}", 0.01 * 1.4**i) for i in range(10)]
    assert rows[-1]["relative_error"] > ERROR_FLOOR
    assert first_jump(rows) is None


def test_the_first_layer_that_multiplies_the_error_is_named():
    rows = [_row("embed", 0.0), _row("l0", 0.011), _row("l1", 0.013), _row("l2", 0.29), _row("l3", 0.9)]
    jump = first_jump(rows)
    assert jump["name"] == "l2"
    assert jump["previous_relative_error"] == 0.013
    assert jump["factor"] == pytest.approx(0.29 / 0.013)


def test_a_broken_first_layer_is_named_though_its_input_was_exact():
    jump = first_jump([_row("embed", 0.0), _row("l0", 0.4), _row("l1", 0.5)])
    assert jump["name"] == "l0" and jump["previous_relative_error"] == 0.0 and jump["factor"] is None


def test_non_finite_outputs_are_a_jump():
    jump = first_jump([_row("embed", 0.0), _row("l0", 0.01), _row("l1", None, nonfinite=12), _row("l2", None, 40)])
    assert jump["name"] == "l1" and jump["nonfinite"] == 12 and jump["factor"] is None


def test_layer_errors_are_per_position_and_json_ready():
    reference = torch.ones(4, 8)
    candidate = reference.clone()
    candidate[2] *= 1.5  # one position off by 50%: the mean over 4 positions is 12.5%
    candidate[3, 0] = float("nan")
    rows = layer_errors(["h"], [{"h": candidate}], [{"h": reference}])
    assert rows[0]["nonfinite"] == 1 and rows[0]["relative_error"] is None and rows[0]["cosine"] is None
    rows = layer_errors(["h"], [{"h": candidate[:3]}], [{"h": reference[:3]}])
    assert rows[0]["relative_error"] == pytest.approx(0.5 / 3)
    assert rows[0]["max_abs_diff"] == pytest.approx(0.5)
    json.dumps(rows, allow_nan=False)


def test_windows_that_do_not_fit_are_refused_before_any_export(tmp_path):
    from edgeqat.runtime_check.layer_debug import debug_layers

    with pytest.raises(EdgeqatError, match="does not fit"):
        debug_layers(torch.nn.Linear(2, 2), [list(range(MAX_SEQ_LEN))], MAX_SEQ_LEN, tmp_path)
    with pytest.raises(EdgeqatError, match="at least one window"):
        debug_layers(torch.nn.Linear(2, 2), [], MAX_SEQ_LEN, tmp_path)
    assert not any(tmp_path.iterdir())


def _default_model(scale_layer_2_mlp: float = 1.0):
    """The embedded default model's first LAYERS layers, quantized the way `edgeqat convert` does (PTQ)."""
    from transformers import AutoModelForCausalLM

    from edgeqat.config import QuantConfig
    from edgeqat.paths import DEFAULT_MODEL
    from edgeqat.train.quantize import quantize_ptq

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32, num_hidden_layers=LAYERS)
    model.eval().requires_grad_(False)
    model.model.layers[2].mlp.down_proj.weight.mul_(scale_layer_2_mlp)
    quantize_ptq(model, QuantConfig())
    return model


@pytest.fixture(scope="module")
def debug_program(tmp_path_factory):
    from edgeqat.paths import DEFAULT_EVAL_DATA, DEFAULT_MODEL
    from edgeqat.runtime_check.layer_debug_program import LayerProgram
    from edgeqat.train.data import token_windows
    from transformers import AutoTokenizer

    model = _default_model()
    windows = token_windows(AutoTokenizer.from_pretrained(DEFAULT_MODEL), "default", DEFAULT_EVAL_DATA, 2, MAX_SEQ_LEN - 1)
    weight_type = type(model.model.layers[0].mlp.down_proj.weight)
    program = LayerProgram(model, MAX_SEQ_LEN, tmp_path_factory.mktemp("layer-debug"))
    # The export works on a copy: the caller's model keeps its quantized tensors, and stays the reference.
    assert type(model.model.layers[0].mlp.down_proj.weight) is weight_type
    return program, model, windows


@pytest.mark.e2e
def test_a_healthy_program_reports_small_errors_and_no_jump(debug_program):
    from edgeqat.runtime_check.layer_debug import compare_layers

    program, model, windows = debug_program
    report = compare_layers(program, model, windows)
    json.dumps(report, allow_nan=False)
    assert [row["name"] for row in report["layers"]] == EXPECTED_NAMES
    assert report["tokens"] == sum(len(w) for w in windows)
    assert report["first_jump"] is None, report["layers"]
    assert report["layers"][0]["relative_error"] < 1e-5  # the float embedding is exact
    for row in report["layers"]:
        assert row["relative_error"] < ERROR_FLOOR and row["cosine"] > 0.999 and row["nonfinite"] == 0, row
    assert "accumulates" in report["note"]


@pytest.mark.e2e
def test_a_layer_that_computes_something_else_is_named(debug_program):
    from edgeqat.runtime_check.layer_debug import compare_layers

    program, _, windows = debug_program
    report = compare_layers(program, _default_model(scale_layer_2_mlp=3.0), windows)
    errors = {row["name"]: row["relative_error"] for row in report["layers"]}
    assert errors["model.layers.1"] < ERROR_FLOOR < errors["model.layers.2"], errors
    assert report["first_jump"]["name"] == "model.layers.2", report["layers"]
    assert report["first_jump"]["previous_relative_error"] == errors["model.layers.1"]
    assert "model.layers.2" in report["note"]


@pytest.mark.e2e
def test_the_report_says_whether_the_debug_program_reproduces_the_bundle(debug_program):
    from edgeqat.runtime_check.layer_debug import compare_layers

    program, model, windows = debug_program
    same = compare_layers(program, model, windows, bundle_forward=lambda t, p: program.run(t[0])["lm_head"][None])
    assert same["bundle"] == {"logits_max_abs_diff": 0.0, "reproduces_bundle": True}

    def another_bundle(tokens, positions):
        return program.run(tokens[0])["lm_head"][None] + 0.5

    other = compare_layers(program, model, windows, bundle_forward=another_bundle)
    assert not other["bundle"]["reproduces_bundle"]
    assert math.isclose(other["bundle"]["logits_max_abs_diff"], 0.5, rel_tol=1e-3)
    assert "not necessarily the bundle" in other["note"]
