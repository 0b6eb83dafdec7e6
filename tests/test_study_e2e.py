"""End-to-end: `edgeqat study` on the embedded model trains both arms, quantizes, evaluates and reports; a rerun reuses it all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import plant_lookalikes, tree_state
from edgeqat.artifacts import read_record
from edgeqat.cli import main

pytestmark = pytest.mark.e2e
FAST = ["--max-steps", "4", "--max-length", "64"]


def test_study_trains_quantizes_evaluates_and_reports(tmp_path: Path, capsys):
    out = tmp_path / "study-out"
    planted = {}  # a user's look-alikes of the temporary siblings of every output (test_data_safety.py)
    for name in ("bf16-checkpoint", "qat-checkpoint", "ptq-converted", "qat-converted", "study"):
        planted.update(plant_lookalikes(out / name))
    assert main(["study", "--output", str(out), *FAST, "--lm-eval-tasks", "edgeqat_proverbs_mc"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# edgeqat study") and "QAT recovers" in printed  # stdout is the report alone

    report = json.loads((out / "study" / "study.json").read_text())
    assert report["format"] == "edgeqat-study" and set(report["arms"]) == {"bf16", "ptq", "qat"}
    for artifact in ("study/study.json", "study/edgeqat.json", "qat-checkpoint/edgeqat.json", "qat-converted/edgeqat.json"):
        assert str(tmp_path.resolve()) not in (out / artifact).read_text(), artifact  # no path of this machine
    assert report["arms"]["qat"]["folder"] == "../qat-converted" and report["config"]["output_dir"] == ".."
    ppl = {arm: a["held_out"]["perplexity"] for arm, a in report["arms"].items()}
    assert all(1 < p < 1000 for p in ppl.values())
    assert ppl["ptq"] != ppl["bf16"], "PTQ must change the model"
    expected = (ppl["ptq"] - ppl["qat"]) / (ppl["ptq"] - ppl["bf16"])
    assert report["recovery"]["perplexity"] == pytest.approx(expected)
    # accuracy through lm-eval's harness on the embedded multiple-choice task (60 items, 4 choices)
    accuracy = {arm: a["lm_eval"]["edgeqat_proverbs_mc"]["acc"] for arm, a in report["arms"].items()}
    assert all(0.0 <= acc <= 1.0 and (acc * 60) == pytest.approx(round(acc * 60)) for acc in accuracy.values())
    assert "edgeqat_proverbs_mc/acc" in report["recovery"]["lm_eval"]
    assert (out / "study" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bf16, qat = read_record(out / "bf16-checkpoint"), read_record(out / "qat-checkpoint")
    assert bf16["mode"] == "bf16" and qat["mode"] == "qat"
    assert bf16["config"]["quant"] == qat["config"]["quant"]
    assert {**bf16["config"]["train"], "mode": "-"} == {**qat["config"]["train"], "mode": "-"}  # only the mode differs
    assert len(bf16["loss_curve"]) == 4 and bf16["tokens_seen"] > 0
    ptq = read_record(out / "ptq-converted")
    assert ptq["mode"] == "ptq" and ptq["quantized"] and ptq["config"]["checkpoint"] == bf16["files"]

    assert {path: tree_state(path) for path in planted} == planted, "a user's folders beside the outputs are untouched"

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "study" not in p.parts}
    assert main(["study", "--output", str(out), *FAST, "--lm-eval-tasks", "edgeqat_proverbs_mc"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a rerun reuses every valid artifact"
