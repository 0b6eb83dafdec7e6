"""The check's report for people: a markdown file and the same table in the terminal."""

from __future__ import annotations


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, .pte, eager converted, unquantized) rows shared by the markdown and the terminal table."""
    ppl = report["perplexity"]
    vs_eager, vs_float = report["pte_vs_eager"], report["pte_vs_unquantized"] or {}
    speed = report["speed"]
    dash = "-"

    def f(value, fmt="{:.4f}"):
        return dash if value is None else fmt.format(value)

    return [
        ("perplexity (held-out)", f(ppl["pte"], "{:.3f}"), f(ppl["eager"], "{:.3f}"), f(ppl.get("unquantized"), "{:.3f}")),
        (".pte logits cosine vs", dash, f(vs_eager["cosine_mean"]), f(vs_float.get("cosine_mean"))),
        (".pte max abs logit diff vs", dash, f(vs_eager["max_abs_diff"]), f(vs_float.get("max_abs_diff"))),
        (".pte top-1 agreement vs", dash, f(vs_eager["top1_agreement"]), f(vs_float.get("top1_agreement"))),
        ("prefill tokens/s (CPU)", f(speed["pte"]["prefill_tokens_per_s"], "{:.0f}"), f(speed["eager"]["prefill_tokens_per_s"], "{:.0f}"), dash),
        ("decode tokens/s (CPU)", f(speed["pte"]["decode_tokens_per_s"], "{:.1f}"), f(speed["eager"]["decode_tokens_per_s"], "{:.1f}"), dash),
    ]


def render_markdown(report: dict) -> str:
    q = report["quantization"]
    lines = [
        "# edgeqat check report",
        "",
        f"Bundle `{report['bundle']}`: mode **{q['mode']}**, scheme **{q['scheme']}**, group size {q['group_size']}, "
        f"`.pte` {report['pte_bytes'] / 1e6:.2f} MB. Result: **{'PASS' if report['passed'] else 'FAIL'}**.",
        "",
        f"Held-out text: {report['eval']['windows']} windows of {report['eval']['tokens_per_window']} tokens.",
        "",
        "| metric | .pte (ExecuTorch) | eager converted | unquantized |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)),
        "",
        "## Gates",
        "",
        "| gate | value | threshold | result |",
        "|---|---|---|---|",
        *(
            f"| {g['name']} | {g['value']:.4f} | {g['op']} {g['threshold']} | {'pass' if g['passed'] else '**FAIL**'} |"
            for g in report["gates"]
        ),
        "",
        "## Golden prompts (greedy)",
        "",
        "| prompt | greedy tokens before first divergence | teacher-forced agreement | eager | .pte (runtime) "
        "| .pte (LLM runner) | runner decode tok/s |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {_cell(g['prompt'])} | {g['pte_prefix_match']}/{g['tokens']} | {g['pte_teacher_forced_match']}/{g['tokens']} "
            f"| {_cell(g['eager_text'])} | "
            f"{_cell(g['pte_text'])} | {_cell(g['runner_text'])} | {g['runner']['decode_tokens_per_s']:.0f} |"
            for g in report["golden"]
        ),
        "",
        "Tokens/s are measured on this host's CPU (the `.pte` through ExecuTorch with XNNPACK, the eager model "
        "through PyTorch); the LLM runner's own rates have millisecond resolution.",
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"edgeqat check: {'PASS' if report['passed'] else 'FAIL'}")
    for column in ("metric", ".pte (ExecuTorch)", "eager converted", "unquantized"):
        table.add_column(column)
    for row in summary_rows(report):
        table.add_row(*row)
    for g in report["gates"]:
        table.add_row(f"gate: {g['name']}", f"{g['value']:.4f}", f"{g['op']} {g['threshold']}", "pass" if g["passed"] else "FAIL")
    Console().print(table)
