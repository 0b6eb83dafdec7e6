"""`edgeqat run`: every stage in order, each skipped when its artifact already exists and is valid.

    OUTPUT/checkpoint  (train)   -> OUTPUT/converted (convert) -> OUTPUT/bundle (export) -> OUTPUT/report (check)

A stage's artifact is reused only when its record says it was made from the same config and the same
input files, and every file still matches its sha256; otherwise the stage runs again and replaces it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from edgeqat.artifacts import is_valid_artifact, read_record
from edgeqat.config import RunConfig, to_dict
from edgeqat.errors import EdgeqatError
from edgeqat.ownership import check_output, removed_if_left_empty
from edgeqat.paths import local_path

log = logging.getLogger("edgeqat")


def stage_dirs(output_dir: str | Path) -> dict[str, Path]:
    root = Path(output_dir)
    return {name: root / name for name in ("checkpoint", "converted", "bundle", "report")}


STAGES = {"checkpoint": "train", "converted": "convert", "bundle": "export", "report": "check"}


def check_outputs(dirs: dict[str, Path], stages: dict[str, str], config: RunConfig) -> None:
    """Refuses, before any stage runs, a run whose output folders (or the training's progress folders) it
    may not replace, or that hold one of its inputs."""
    from edgeqat.train.checkpointing import ensure_progress_is_ours

    inputs = {"--model": local_path(config.train.model), "--dataset": local_path(config.train.dataset),
              "--eval-dataset": local_path(config.check.eval_dataset)}
    for name, stage in stages.items():
        check_output(dirs[name], stage, inputs)
        if stage == "train":
            ensure_progress_is_ours(dirs[name])


# How the export runs, not what it makes: a bundle exported with another value is still current.
EXPORT_SETTINGS_NOT_IN_THE_PTE = ("lowering_workers",)


def _bundle_is_current(bundle: Path, converted: Path, config: RunConfig) -> bool:
    from edgeqat.manifest import load_bundle

    try:
        manifest = load_bundle(bundle)
    except EdgeqatError:
        return False

    def made_the_same(export: dict) -> dict:
        return {key: value for key, value in export.items() if key not in EXPORT_SETTINGS_NOT_IN_THE_PTE}

    return (
        manifest["source"]["converted_files"] == read_record(converted)["files"]
        and made_the_same(manifest["export"]["config"]) == made_the_same(to_dict(config.export))
    )


def run(config: RunConfig, resume: bool = False) -> dict:
    """Runs (or resumes) the pipeline; returns the check report. ``resume`` continues an interrupted training."""
    dirs = stage_dirs(config.output_dir)
    check_outputs(dirs, STAGES, config)
    with removed_if_left_empty(Path(config.output_dir)):
        return _run_stages(config, dirs, resume)


def _run_stages(config: RunConfig, dirs: dict[str, Path], resume: bool) -> dict:
    from edgeqat.export.bundle import export_bundle
    from edgeqat.runtime_check.check import check, is_report_for, raise_on_failure
    from edgeqat.train.convert import convert, converted_config
    from edgeqat.train.finetune import stage_config, train

    timings: dict[str, float] = {}

    def stage(name: str, current: bool, work) -> None:
        if current:
            log.info("[%s] up to date: %s", name, dirs[name])
            return
        log.info("[%s] running -> %s", name, dirs[name])
        start = time.perf_counter()
        work()
        timings[name] = time.perf_counter() - start

    stage("checkpoint", is_valid_artifact(dirs["checkpoint"], "train", stage_config(config, dirs["checkpoint"])),
          lambda: train(config, dirs["checkpoint"], resume))
    ckpt = read_record(dirs["checkpoint"])
    stage("converted", is_valid_artifact(dirs["converted"], "convert", converted_config(ckpt, ckpt["mode"])),
          lambda: convert(dirs["checkpoint"], dirs["converted"]))
    stage("bundle", _bundle_is_current(dirs["bundle"], dirs["converted"], config),
          lambda: export_bundle(dirs["converted"], dirs["bundle"], config.export))
    report_file = dirs["report"] / "report.json"
    report_current = is_report_for(dirs["report"], dirs["bundle"]) and (
        json.loads(report_file.read_text()).get("config") == to_dict(config.check)
    )
    stage("report", report_current, lambda: check(dirs["bundle"], dirs["report"], config.check))

    report = json.loads(report_file.read_text())
    report["stage_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    raise_on_failure(report)
    return report
