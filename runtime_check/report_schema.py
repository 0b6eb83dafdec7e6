"""Validating a report.json v2: the JSON Schema (schemas/report.schema.json) plus the cross-field rules a
schema cannot say (every reference has its comparison, ``passed`` agrees with the gates, curves span the
window, numbers are finite)."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

REPORT_SCHEMA_PATH = Path(__file__).with_name("schemas") / "report.schema.json"
REPORT_VERSION = 2
MAX_LISTED_PROBLEMS = 5
CURVES = ("cosine", "max_abs_diff", "kl", "top1_agreement")  # comparisons[*].per_position


class ReportSchemaError(ValueError):
    """A report that does not follow the v2 contract; the message lists where and what."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
        super().__init__(f"not a valid report.json v{REPORT_VERSION}: {shown}{more}")


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    return json.loads(REPORT_SCHEMA_PATH.read_text())


def _where(path: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else (f".{p}" if str(p).isidentifier() else f"[{p!r}]") for p in path]
    return ("report" + "".join(parts)) if parts else "report"


def _schema_problems(report: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_where(e.absolute_path)}: {e.message}" for e in errors]


def _non_finite(value: Any, path: tuple) -> Iterator[str]:
    # NaN and infinity are not JSON (json.dumps writes them anyway; jq and browsers then refuse the file).
    if isinstance(value, float) and not math.isfinite(value):
        yield f"{_where(path)}: {value} is not a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _non_finite(item, (*path, i))


def _consistency_problems(report: dict[str, Any]) -> list[str]:
    problems = list(_non_finite(report, ()))
    names = [ref["name"] for ref in report["references"]]
    if len(set(names)) != len(names):
        problems.append(f"report.references: names must be unique, got {names}")
    if set(names) != set(report["comparisons"]):
        problems.append(
            f"report.comparisons: keys {sorted(report['comparisons'])} differ from the reference names {sorted(names)}"
        )
    all_gates_passed = all(gate["passed"] for gate in report["gates"])
    if report["passed"] != all_gates_passed:
        problems.append(f"report.passed is {report['passed']} but the gates say {all_gates_passed}")
    positions = report["eval"]["tokens_per_window"]
    for name, comparison in report["comparisons"].items():
        curves = comparison.get("per_position") or {}
        for curve in CURVES:
            values = curves.get(curve)
            if isinstance(values, list) and len(values) != positions:
                problems.append(
                    f"{_where(('comparisons', name, 'per_position', curve))}: {len(values)} values, "
                    f"expected one per position ({positions})"
                )
    return problems


def validate_report(report: Any) -> dict[str, Any]:
    """Returns ``report`` when it follows the v2 contract; raises ReportSchemaError naming every problem."""
    problems = _schema_problems(report)
    if not problems:
        problems = _consistency_problems(report)
    if problems:
        raise ReportSchemaError(problems)
    return report
