"""The report's ONNX section: the bundle's ONNX model beside the `.pte`, against the same references."""

from __future__ import annotations

from edgeqat.runtime_check.report import NOT_APPLICABLE, Section, Table, _out_of, fmt, percent, summary_rows


def onnx_section(report: dict) -> Section | None:
    onnx = report.get("onnx")
    if not onnx:
        return None
    size, pte = onnx.get("bytes"), report.get("pte_bytes")
    notes = [
        f"{onnx.get('file')} in ONNX Runtime's CPU execution provider: {fmt(None if size is None else size / 1e6, '.2f')} MB "
        f"({fmt(size / pte if size and pte else None, '.2f')}x the .pte), MatMulNBits accuracy_level "
        f"{fmt(onnx.get('accuracy_level'))} (4: int8 activations), perplexity {fmt(onnx.get('perplexity'), '.3f')} "
        f"(the .pte's: {fmt((report.get('perplexity') or {}).get('pte'), '.3f')}).",
        f"golden next-token agreement (teacher-forced): {percent(onnx.get('golden_token_agreement'))}",
    ]
    mirrored = {"references": report.get("references"), "comparisons": onnx.get("comparisons")}
    compared = Table(("metric", *(f"ONNX vs {r.get('name', '?')}" for r in report.get("references") or [])),
                     [(label.replace(".pte", "ONNX"), *values) for label, *values in summary_rows(mirrored)])
    golden = Table(("prompt", "greedy tokens before first divergence", "teacher-forced agreement", "ONNX text"),
                   [(str(g.get("prompt")), _out_of(g.get("prefix_match"), g.get("tokens")),
                     _out_of(g.get("teacher_forced_match"), g.get("tokens")), str(g.get("text", NOT_APPLICABLE)))
                    for g in onnx.get("golden") or []], text_columns=(3,))
    return Section("onnx", "ONNX model vs references", notes, [compared, golden])
