"""report.md, report.html, the terminal table and the report.json v2 schema, from a sample report."""

from __future__ import annotations

import base64
import copy
import io
import math
import re
from html.parser import HTMLParser

import pytest
from report_sample import CPU_CONVERTED, CPU_UNQUANTIZED, CUDA_CONVERTED, SCRIPT_PROMPT, sample_report
from rich.console import Console

from edgeqat.runtime_check.plots import latency_figure, report_svgs
from edgeqat.runtime_check.report import print_table, render_markdown, summary_rows
from edgeqat.runtime_check.report_html import render_html
from edgeqat.runtime_check.report_schema import ReportSchemaError, report_schema, validate_report

SECTIONS = ["What was checked", ".pte vs references", "Gates", "Latency on this host", "Device estimates (ESTIMATE)",
            "Golden prompts", "Greedy generation per reference", "Per-layer debugging", "Versions"]
RENDERER_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "ul", "li", "nav", "a",
                 "section", "div", "table", "caption", "thead", "tbody", "tr", "th", "td", "mark", "figure", "img",
                 "figcaption"}
DATA_SVG = re.compile(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')


def failing_report() -> dict:
    report = sample_report()
    gate = report["gates"][1]
    gate.update(value=0.91, passed=False)
    report["passed"] = False
    return report


def bare_report() -> dict:
    """No GPU, no device estimates or results, no per-layer debugging, no curves, nothing measured twice."""
    report = sample_report(gpu=False)
    report.update(device_estimates=None, device_results=[], layer_debug=None, golden=[], golden_token_agreement=None)
    for comparison in report["comparisons"].values():
        comparison.update(per_position=None, greedy=[], top5_agreement=None, kl_mean=None, kl_max=None)
    row = report["latency"]["rows"][0]
    row.update(prefill_tokens_per_s=None, time_to_first_token_ms=None, peak_rss_mib=None)
    # A "$" would start matplotlib math; "\\" and "<" must pass through every format unharmed.
    report["latency"]["rows"].append({"name": "odd $x^ row \\ <i>", "device": "cpu", "prefill_tokens_per_s": 10.0,
                                      "decode_tokens_per_s": None, "time_to_first_token_ms": None, "peak_rss_mib": None})
    return report


def terminal_text(report: dict) -> str:
    console = Console(file=io.StringIO(), width=250, color_system=None)
    print_table(report, console)
    return console.file.getvalue()


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


@pytest.fixture(scope="module")
def html() -> str:
    return render_html(sample_report())


# --- markdown and terminal ------------------------------------------------------------------------------


def test_markdown_sections_in_order_with_verdict_first():
    text = render_markdown(sample_report())
    assert text.splitlines()[2] == "**PASS: all 4 gates passed**"
    positions = [text.index(f"## {title}") for title in SECTIONS]
    assert positions == sorted(positions)
    header = next(line for line in text.splitlines() if line.startswith("| metric |"))
    assert header == f"| metric | {CPU_CONVERTED} | {CUDA_CONVERTED} | unquantized (cuda) |"
    assert "*vs unquantized (cuda)*" in text  # a greedy table per reference
    assert "model.layers.2  ◀ first jump" in text


def test_markdown_escapes_every_cell():
    text = render_markdown(sample_report())
    assert "<script>" not in text and "\\<script\\>" in text
    assert "\\| then \\& stop" in text
    assert "a \\| b<br>the \\<b\\>words" in text  # a newline in generated text stays inside its cell
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) == 11  # 8 sections of one table, greedy with one per reference (3)
    for table in tables:  # every row has its header's column count: no "|" from the report split a cell
        assert {unescaped_pipes(line) for line in table} == {unescaped_pipes(table[0])}, table[0]


def test_failed_gates_lead_the_markdown_and_the_terminal():
    report = failing_report()
    text = render_markdown(report)
    lines = text.splitlines()
    assert lines[2] == "**FAIL: 1 of 4 gates failed**"
    assert lines[4].startswith("- top-1 agreement (.pte vs eager converted (cpu)) = 0.91, needs \\>= 0.95")
    assert "| **FAIL** |" not in text and "| FAIL |" in text
    terminal = terminal_text(report)
    assert terminal.splitlines()[0] == "edgeqat check: FAIL: 1 of 4 gates failed"
    assert "top-1 agreement (.pte vs eager converted (cpu)) = 0.91, needs >= 0.95" in terminal


def test_terminal_shows_the_same_numbers_as_the_markdown():
    report = sample_report()
    terminal, markdown = terminal_text(report), render_markdown(report)
    for row in summary_rows(report):
        assert all(cell in terminal for cell in row), row
        assert "| " + " | ".join(row) + " |" in markdown
    assert "ESTIMATE" in terminal and "239.4" in terminal and "1,865.3" in terminal  # measured beside estimated
    assert SCRIPT_PROMPT not in terminal  # the generated-text tables stay in the files


# --- HTML -----------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_escaped(html):
    parser = _Tags()
    parser.feed(html)
    # Only the renderer's own tags: any other (<script>, <b>, <i> from the sample's text) is unescaped input.
    assert {tag for tag, _ in parser.tags} <= RENDERER_TAGS
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:)?//", value), (tag, value)
            if name == "src" and name in attrs:
                assert value.startswith("data:image/svg+xml;base64,")
    assert not re.search(r"url\(|@import", html)
    assert 'Say &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; | then &amp; stop' in html
    assert "<script" not in html.lower()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert '<p class="verdict pass">PASS: all 4 gates passed</p>' in html
    assert html.index('id="comparison"') < html.index('id="gates"') < html.index('id="latency"') < html.index('id="layers"')


def test_html_inlines_every_plot_as_svg(html):
    images = DATA_SVG.findall(html)
    assert len(images) == 4
    for data in images:
        svg = base64.b64decode(data).decode()
        assert "<svg" in svg and "<script" not in svg
        assert "<dc:date>" not in svg  # no date: the same report gives the same file
    latency = html[html.index('id="latency"'):html.index('id="devices"')]
    assert len(DATA_SVG.findall(latency)) == 1


def test_html_marks_where_generated_text_diverges(html):
    golden = html[html.index('id="golden"'):html.index('id="greedy"')]
    assert "good<mark>, and the wicked shall not be ashamed.</mark>" in golden
    assert "a | b\nthe &lt;b&gt;words&lt;/b&gt;" in golden


def test_rendering_is_reproducible(html):
    assert render_html(sample_report()) == html


# --- plots ----------------------------------------------------------------------------------------------


def test_plots_cover_what_the_report_has():
    assert set(report_svgs(sample_report())) == {"logit_error", "agreement", "latency", "devices"}
    assert set(report_svgs(bare_report())) == {"latency"}


def test_latency_bars_use_a_log_axis_only_when_the_spread_is_large():
    report = sample_report()
    assert latency_figure(report).axes[0].get_xscale() == "log"  # 29 to 41,000 tokens/s
    for row in report["latency"]["rows"]:
        row.update(prefill_tokens_per_s=100.0, decode_tokens_per_s=50.0)
    assert latency_figure(report).axes[0].get_xscale() == "linear"


# --- nulls ----------------------------------------------------------------------------------------------


def test_renderers_tolerate_nulls_and_missing_parts():
    report = bare_report()
    validate_report(report)
    markdown = render_markdown(report)
    assert "Per-layer debugging" not in markdown and "converted (cuda)" not in markdown
    assert "no device estimates in this report" in markdown and "no on-device results were given" in markdown
    assert f"| metric | {CPU_CONVERTED} | {CPU_UNQUANTIZED} |" in markdown
    assert "| top-5 agreement | - | - |" in markdown
    assert "odd \\$x^ row \\\\ \\<i\\>" in markdown
    html = render_html(report)
    parser = _Tags()
    parser.feed(html)
    assert {tag for tag, _ in parser.tags} <= RENDERER_TAGS
    assert "odd $x^ row \\ &lt;i&gt;" in html and 'id="layers"' not in html
    terminal = terminal_text(report)
    assert "odd $x^ row \\ <i>" in terminal and "PASS" in terminal


def test_device_section_renders_what_device_estimate_writes():
    """The real estimate_devices + attach_measured output, with a device no profile matches."""
    from edgeqat.runtime_check.device_estimate import estimate_devices
    from edgeqat.runtime_check.device_profiles import BUILTIN_PROFILES
    from edgeqat.runtime_check.device_results import attach_measured

    report = sample_report()
    results = copy.deepcopy(report["device_results"][0])
    stranger = copy.deepcopy(results)
    stranger["device"].update(manufacturer="Acme", model="Phone 1")
    estimates = estimate_devices(2_412_544, 564.4, 12.4, BUILTIN_PROFILES, threads=2, host_cache_bytes=110100480)
    report["device_estimates"] = attach_measured(estimates, [results, stranger])
    report["device_results"] = [results, stranger]
    validate_report(report)
    markdown = render_markdown(report)
    for device in estimates["devices"]:
        assert f"| {device['name']} | {device['usable_bandwidth_gb_s']:.1f} | {device['tokens_per_s']:,.1f} |" in markdown
    assert "| Acme Phone 1 | - | - | - | 239.4 |" in markdown  # measured only: no estimate without a profile
    assert "Google Pixel 8 Pro" in markdown and "on-device results files: 2" in markdown
    assert "no estimate" in base64.b64decode(DATA_SVG.findall(render_html(report))[3]).decode()


@pytest.mark.parametrize("report", [
    {"passed": False, "references": [{"name": "r"}], "comparisons": {}, "gates": [], "latency": {}},
    # A version-1 report (an older report folder): other shapes under the same keys.
    {"report_version": 1, "passed": True, "references": {"converted": "/c", "unquantized": None},
     "perplexity": {"pte": 38.7, "eager": 38.7}, "golden": [], "gates": [], "speed": {}},
], ids=["sparse", "version-1"])
def test_renderers_survive_partial_and_older_reports(report):
    """No KeyError or TypeError on what a v2 report would have: dashes and the verdict."""
    verdict_word = "PASS" if report["passed"] else "FAIL"
    assert f"**{verdict_word}" in render_markdown(report)
    assert verdict_word in render_html(report)
    assert verdict_word in terminal_text(report)


# --- schema ---------------------------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(report_schema())
    assert report_schema()["properties"]["report_version"] == {"const": 2}


@pytest.mark.parametrize("gpu", [True, False])
def test_sample_reports_validate(gpu):
    report = sample_report(gpu=gpu)
    assert validate_report(report) is report


def _drop(path: tuple):
    def change(report: dict) -> None:
        target = report
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


def _set(path: tuple, value):
    def change(report: dict) -> None:
        target = report
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


BROKEN = {
    "missing top-level key": (_drop(("gates",)), "'gates' is a required property"),
    "missing comparison figure": (_drop(("comparisons", CPU_CONVERTED, "kl_mean")), "'kl_mean' is a required property"),
    "missing latency row field": (_drop(("latency", "rows", 0, "decode_tokens_per_s")), "report.latency.rows[0]"),
    "pte_bytes as text": (_set(("pte_bytes",), "4 MB"), "report.pte_bytes: '4 MB' is not of type 'integer'"),
    "cosine as text": (_set(("comparisons", CPU_CONVERTED, "cosine_mean"), "0.99"),
                       f"report.comparisons['{CPU_CONVERTED}'].cosine_mean"),
    "old version": (_set(("report_version",), 1), "report.report_version: 2 was expected"),
    "gate op": (_set(("gates", 0, "op"), ">"), "report.gates[0].op"),
    "short sha256": (_set(("program_sha256",), "abc"), "report.program_sha256"),
    "top-1 over 1": (_set(("comparisons", CPU_CONVERTED, "top1_agreement"), 99.0), "top1_agreement"),
    "passed disagrees": (_set(("passed",), False), "report.passed is False but the gates say True"),
    "comparison missing": (_drop(("comparisons", CUDA_CONVERTED)), "differ from the reference names"),
    "short curve": (_set(("comparisons", CPU_CONVERTED, "per_position", "kl"), [0.0] * 10), "expected one per position (63)"),
    "NaN": (_set(("comparisons", CPU_CONVERTED, "kl_max"), math.nan), "is not a finite number"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_reports_fail_with_a_clear_error(case):
    change, expected = BROKEN[case]
    report = copy.deepcopy(sample_report())
    change(report)
    with pytest.raises(ReportSchemaError) as raised:
        validate_report(report)
    message = str(raised.value)
    assert message.startswith("not a valid report.json v2: ")
    assert expected in message, message


def test_not_an_object_at_all():
    with pytest.raises(ReportSchemaError, match="is not of type 'object'"):
        validate_report([1, 2])
