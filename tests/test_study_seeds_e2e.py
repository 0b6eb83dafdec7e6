"""End-to-end: `edgeqat study --seeds` runs one study per seed and reports every arm's spread; a rerun reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeqat.artifacts import read_record
from edgeqat.cli import main

pytestmark = pytest.mark.e2e


def test_a_study_over_two_seeds(tmp_path: Path, capsys):
    out = tmp_path / "study-out"
    argv = ["study", "--output", str(out), "--max-steps", "2", "--max-length", "64", "--seeds", "3,4"]
    assert main(argv) == 0
    assert "# edgeqat study over seeds" in capsys.readouterr().out
    for seed in (3, 4):
        assert read_record(out / f"seed-{seed}" / "qat-checkpoint")["config"]["train"]["seed"] == seed
        assert (out / f"seed-{seed}" / "study" / "study.json").is_file()
    summary = json.loads((out / "study" / "study.json").read_text())
    assert summary["format"] == "edgeqat-study-seeds" and summary["seeds"] == [3, 4]
    per_seed = [json.loads((out / f"seed-{s}" / "study" / "study.json").read_text())["recovery"]["perplexity"]
                for s in (3, 4)]
    assert summary["arms"]["qat"]["recovery"]["values"] == pytest.approx(per_seed)
    assert str(tmp_path) not in (out / "study" / "study.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "study" not in p.parts}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a rerun reuses every seed's artifacts"
