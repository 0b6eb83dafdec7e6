"""report.html: the report's sections (the same as report.md's, from report.report_sections) and its plots,
in one self-contained file: inline CSS, plots as data: URIs, no JavaScript and no external fetches.

Everything taken from the report is HTML-escaped (prompts and generated text can hold anything), and a
Content-Security-Policy forbids scripts and remote loads as a second line of defence.
"""

from __future__ import annotations

import base64
import os.path
import re
from html import escape

from edgeqat.runtime_check.plots import FIGURES, report_svgs
from edgeqat.runtime_check.report import Section, Table, failed_gates, gate_sentence, report_sections, verdict

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
:root { color-scheme: light; --pass: #1a7f37; --fail: #cf222e; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: 0.5rem 0; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; }
.verdict { font-size: 1.2rem; font-weight: 700; padding: 0.6rem 0.9rem; border-radius: 6px; color: #fff; }
.verdict.pass { background: var(--pass); }
.verdict.fail { background: var(--fail); }
.failed li { color: var(--fail); }
nav { font-size: 0.9rem; color: var(--muted); }
nav a { margin-right: 0.8rem; white-space: nowrap; }
.note { color: var(--muted); margin: 0.3rem 0; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
caption { text-align: left; font-style: italic; padding: 0.2rem 0; color: var(--muted); }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { white-space: pre-wrap; min-width: 14rem; max-width: 28rem; font-family: ui-monospace, monospace;
          font-size: 0.82rem; }
td.fail { color: var(--fail); font-weight: 700; }
mark { background: #ffebe9; color: inherit; }
figure { margin: 1rem 0; }
figure img { width: 100%; max-width: 46rem; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 0.85rem; }
@media (max-width: 40rem) { body { font-size: 14px; } main { padding: 0.6rem; } td.text { min-width: 11rem; } }
"""


# "1,750", "-0.010", "1.71e-05", "99.06 %", "13/24": right-aligned so digits line up.
NUMERIC_CELL = re.compile(r"[+-]?[\d,]*\.?\d+(e[+-]?\d+)?( %)?|\d+/\d+")


def _marked_text(text: str, base: str) -> str:
    """``text`` escaped, with the part after its common prefix with ``base`` marked (where it diverges)."""
    same = len(os.path.commonprefix([text, base]))
    rest = text[same:]
    return escape(text[:same]) + (f"<mark>{escape(rest)}</mark>" if rest else "")


def _cell(row: tuple[str, ...], index: int, table: Table) -> str:
    cell = row[index]
    if index in table.text_columns:
        base = row[table.text_columns[0]]
        content = escape(cell) if index == table.text_columns[0] else _marked_text(cell, base)
        return f'<td class="text">{content}</td>'
    css = "fail" if cell == "FAIL" else "num" if NUMERIC_CELL.fullmatch(cell) else ""
    return f'<td class="{css}">{escape(cell)}</td>' if css else f"<td>{escape(cell)}</td>"


def _table(table: Table) -> str:
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_cell(row, i, table) for i in range(len(row))) + "</tr>" for row in table.rows)
    return f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _figure(svg: str, caption: str) -> str:
    data = base64.b64encode(svg.encode()).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _section(section: Section, figures: list[str]) -> str:
    parts = [f'<section id="{escape(section.key)}"><h2>{escape(section.title)}</h2>']
    parts += [f'<p class="note">{escape(note)}</p>' for note in section.notes]
    if any(t.text_columns for t in section.tables):
        parts.append('<p class="note">Highlighted: where a text parts from the first text column.</p>')
    parts += [_table(table) for table in section.tables]
    parts += [f'<p class="note">{escape(note)}</p>' for note in section.footnotes]
    parts += figures
    parts.append("</section>")
    return "\n".join(parts)


def render_html(report: dict) -> str:
    svgs = report_svgs(report)
    sections = report_sections(report)
    passed = bool(report.get("passed"))
    failed = failed_gates(report)
    failed_list = (
        '<ul class="failed">' + "".join(f"<li>{escape(gate_sentence(g))}</li>" for g in failed) + "</ul>" if failed else ""
    )
    nav = "".join(f'<a href="#{escape(s.key)}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        _section(s, [_figure(svgs[key], spec.caption) for key, spec in FIGURES.items()
                     if spec.section == s.key and key in svgs])
        for s in sections
    )
    title = f"edgeqat check: {'PASS' if passed else 'FAIL'}: {report.get('bundle', '')}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>edgeqat check report</h1>
<p class="verdict {'pass' if passed else 'fail'}">{escape(verdict(report))}</p>
{failed_list}
<nav>{nav}</nav>
{body}
</main>
</body>
</html>
"""
