"""The check's report for people: its content as plain-text sections and tables, shared by every format,
then the markdown file and the terminal summary (report_html.py renders the same sections as HTML).

The section builders read report.json v2 defensively (``.get`` and "-" for what is missing or null), so a
report without a GPU, device results or per-layer debugging renders with those parts left out or empty.
Cells are plain text; each renderer escapes them for its own format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NOT_APPLICABLE = "-"
# Sections the terminal shows; the text comparisons are too wide for it and stay in report.md / .html.
TERMINAL_SECTIONS = ("comparison", "gates", "latency", "devices", "layers")


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: str = ""
    # Indexes of columns holding generated text: HTML wraps them and marks where they part from the first.
    text_columns: tuple[int, ...] = ()


@dataclass(frozen=True)
class Section:
    key: str  # stable: HTML anchors and the plots placed under a section use it
    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)  # shown after the tables


def fmt(value: Any, spec: str = "") -> str:
    """A number as text, "-" for null; bools and strings as they are."""
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    try:
        return format(value + 0.0 if isinstance(value, float) else value, spec)  # + 0.0: no "-0.0000"
    except ValueError:  # a float where an int was expected ("d"): still show it
        return str(value)


def percent(share: Any, spec: str = ".2f") -> str:
    return NOT_APPLICABLE if share is None else f"{fmt(share * 100, spec)} %"


def _signed_percent(share: Any) -> str:
    return NOT_APPLICABLE if share is None else f"{fmt(share * 100, '+.2f')} %"


def _out_of(count: Any, total: Any) -> str:
    return f"{fmt(count, 'd')}/{fmt(total, 'd')}"


# --- verdict --------------------------------------------------------------------------------------------


def failed_gates(report: dict) -> list[dict]:
    return [g for g in report.get("gates") or [] if not g.get("passed")]


def gate_sentence(gate: dict) -> str:
    value, threshold = fmt(gate.get("value"), ".6g"), fmt(gate.get("threshold"), "g")
    return f"{gate.get('name')} = {value}, needs {gate.get('op')} {threshold}"


def verdict(report: dict) -> str:
    """"PASS: ..." or "FAIL: ..." with how many gates failed; the failed gates are in failed_gates()."""
    gates, failed = report.get("gates") or [], failed_gates(report)
    if report.get("passed"):
        return f"PASS: all {len(gates)} gates passed"
    if failed:
        return f"FAIL: {len(failed)} of {len(gates)} gates failed"
    return "FAIL"


# --- sections -------------------------------------------------------------------------------------------


def overview_section(report: dict) -> Section:
    q, model, host, ev = (report.get(k) or {} for k in ("quantization", "model", "host", "eval"))
    size = report.get("pte_bytes")
    rows = [
        ("bundle", str(report.get("bundle", NOT_APPLICABLE))),
        ("quantization", f"mode {q.get('mode')}, scheme {q.get('scheme')}, group size {fmt(q.get('group_size'))}, "
                         f"embedding bits {fmt(q.get('embedding_bits'))}"),
        ("model", f"{model.get('architecture')}: {fmt(model.get('num_hidden_layers'))} layers, hidden "
                  f"{fmt(model.get('hidden_size'))}, {fmt(model.get('num_key_value_heads'))} KV heads of "
                  f"{fmt(model.get('head_dim'))}, vocabulary {fmt(model.get('vocab_size'))}, "
                  f"max sequence {fmt(model.get('max_seq_len'))}"),
        (".pte", f"{fmt(None if size is None else size / 1e6, '.2f')} MB, sha256 {report.get('program_sha256', '-')}"),
        ("manifest sha256", str(report.get("manifest_sha256", NOT_APPLICABLE))),
        ("host", f"{host.get('cpu') or 'unknown CPU'} ({fmt(host.get('logical_cores'))} logical cores, .pte on "
                 f"{fmt(host.get('threads'))} threads); GPU: {host.get('gpu') or 'none'}"),
        ("held-out text", f"{fmt(ev.get('windows'))} windows of {fmt(ev.get('tokens_per_window'))} tokens "
                          f"from {ev.get('dataset')}"),
        ("perplexity of the .pte", fmt((report.get("perplexity") or {}).get("pte"), ".3f")),
    ]
    return Section("overview", "What was checked", tables=[Table(("item", "value"), rows)])


def references(report: dict) -> list[dict]:
    """The reference entries; anything else (a v1 report's {"converted": path} mapping) is skipped."""
    listed = report.get("references")
    return [ref for ref in listed if isinstance(ref, dict)] if isinstance(listed, list) else []


def reference_names(report: dict) -> list[str]:
    return [ref.get("name", "?") for ref in references(report)]


def summary_rows(report: dict) -> list[tuple[str, ...]]:
    """(metric, one value per reference) rows: the comparison table of the markdown, HTML and terminal."""
    refs = references(report)
    comparisons = report.get("comparisons") or {}
    per_ref = [comparisons.get(ref.get("name")) or {} for ref in refs]

    def row(label: str, key: str, spec: str = ".4f") -> tuple[str, ...]:
        return (label, *(fmt(c.get(key), spec) for c in per_ref))

    return [
        ("kind", *(str(ref.get("kind", NOT_APPLICABLE)) for ref in refs)),
        ("device, dtype", *(f"{ref.get('device')}, {ref.get('dtype')}" for ref in refs)),
        row("logits cosine, mean", "cosine_mean", ".6f"),
        row("logits cosine, worst position", "cosine_min", ".6f"),
        row("max abs logit difference", "max_abs_diff"),
        row("KL(reference ‖ .pte), mean (nats)", "kl_mean", ".2e"),
        row("KL(reference ‖ .pte), max (nats)", "kl_max", ".2e"),
        ("top-1 agreement", *(percent(c.get("top1_agreement")) for c in per_ref)),
        ("top-5 agreement", *(percent(c.get("top5_agreement")) for c in per_ref)),
        row("reference perplexity", "perplexity", ".3f"),
        ("perplexity, .pte − reference", *(_perplexity_change(c) for c in per_ref)),
    ]


def _perplexity_change(comparison: dict) -> str:
    """"+0.554 (+1.45 %)": the difference, and relative to the reference's perplexity."""
    delta = comparison.get("perplexity_delta")
    if delta is None:
        return NOT_APPLICABLE
    return f"{fmt(delta, '+.3f')} ({_signed_percent(comparison.get('perplexity_ratio'))})"


def comparison_section(report: dict) -> Section:
    notes = [
        "Each column compares the .pte's logits with one reference's on the same held-out windows "
        f"(the .pte's perplexity: {fmt((report.get('perplexity') or {}).get('pte'), '.3f')}).",
        "reference paths: " + "; ".join(f"{ref.get('name')} at {ref.get('path') or '(no path)'}"
                                        for ref in references(report)),
    ]
    table = Table(("metric", *reference_names(report)), summary_rows(report))
    return Section("comparison", ".pte vs references", notes, [table])


def gates_section(report: dict) -> Section:
    rows = [
        (str(g.get("name")), fmt(g.get("value"), ".6g"), f"{g.get('op')} {fmt(g.get('threshold'), 'g')}",
         "pass" if g.get("passed") else "FAIL")
        for g in report.get("gates") or []
    ]
    return Section("gates", "Gates", tables=[Table(("gate", "value", "threshold", "result"), rows)])


def latency_section(report: dict) -> Section:
    latency = report.get("latency") or {}
    # The ONNX model's timing (its own fresh process, the same prompt and threads) beside the .pte's.
    rows_in = [*(latency.get("rows") or []), *([report["onnx"]["latency"]] if (report.get("onnx") or {}).get("latency") else [])]
    with_gpu = any(r.get("peak_gpu_mib") is not None for r in rows_in)
    columns = ("timed", "device", "threads", "prefill tok/s", "decode tok/s", "time to first token (ms)",
               ".pte resident (MiB)", "process peak RSS (MiB)", *(("peak GPU (MiB)",) if with_gpu else ()))
    rows = []
    for r in rows_in:
        # A CPU row ran on the report's thread count unless it says otherwise; threads mean nothing on a GPU.
        threads = r.get("threads", latency.get("threads") if r.get("device") == "cpu" else None)
        rows.append((
            str(r.get("name")), str(r.get("device")), fmt(threads, "d"), fmt(r.get("prefill_tokens_per_s"), ",.0f"),
            fmt(r.get("decode_tokens_per_s"), ",.1f"), fmt(r.get("time_to_first_token_ms"), ".1f"),
            fmt(r.get("pte_rss_mib"), ",.1f"), fmt(r.get("peak_rss_mib"), ",.1f"),
            *((fmt(r.get("peak_gpu_mib"), ",.1f"),) if with_gpu else ()),
        ))
    caption = (f"prompt of {fmt(latency.get('prompt_tokens'), 'd')} tokens, {fmt(latency.get('decode_tokens'), 'd')} "
               f"decoded tokens, {fmt(latency.get('threads'), 'd')} CPU threads")
    notes = [] if rows else ["nothing was timed"]
    if any(r.get("pte_rss_mib") is not None for r in rows_in):
        notes.append(".pte resident: what the process holds once the program (the .pte, or the ONNX model) is "
                     "loaded and has run (weights, their packed copies, KV cache, activations) over what it held "
                     "before loading it; the process peak also counts Python, torch and the runtime's libraries")
    return Section("latency", "Latency on this host", notes, [Table(columns, rows, caption)] if rows else [])


def first_present(row: dict, *keys: str) -> Any:
    """The first non-null of ``keys``: device rows name some figures two ways (estimate_devices' and older)."""
    return next((row[k] for k in keys if row.get(k) is not None), None)


def device_estimate(device: dict) -> Any:
    return first_present(device, "tokens_per_s", "decode_tokens_per_s_estimate")


def _confidence(row: dict, whys: list[str]) -> str:
    """The confidence, pointing at its reason among the section's numbered notes (devices often share one)."""
    confidence = row.get("confidence")
    text = NOT_APPLICABLE if confidence is None else fmt(confidence, ".2f")
    why = row.get("why")
    if not why:
        return text
    if why not in whys:
        whys.append(why)
    return f"{text} (why: note {whys.index(why) + 1})"


def _estimate_notes(estimates: dict, results: list) -> list[str]:
    notes = [estimates.get("note") or "ESTIMATE from memory bandwidth, not measured on the devices."]
    if estimates.get("method"):
        notes.append(f"method: {estimates['method']}")
    if estimates.get("bytes_per_token") is not None:
        notes.append(f"bytes read per decoded token: {fmt(estimates['bytes_per_token'] / 2**20, ',.2f')} MiB")
    if estimates.get("host"):
        notes.append("host calibration: " + ", ".join(
            f"{k} {fmt(v, ',d' if isinstance(v, int) else '.4g')}" for k, v in estimates["host"].items()))
    if estimates.get("threads") is not None:
        notes.append(f"assumes the app runs {fmt(estimates['threads'])} threads on the device")
    if estimates.get("confidence") is not None or estimates.get("why"):
        notes.append(f"overall confidence: {fmt(estimates.get('confidence'))}"
                     + (f": {estimates['why']}" if estimates.get("why") else ""))
    notes.append(f"on-device results files: {len(results)}" if results else "no on-device results were given")
    return notes


def devices_section(report: dict) -> Section:
    estimates = report.get("device_estimates") or {}
    devices = estimates.get("devices") or []
    notes = _estimate_notes(estimates, report.get("device_results") or [])
    measured = [d.get("measured") or {} for d in devices]
    # (column, value per device, keep the column even when every value is null)
    candidates = [
        ("usable bandwidth (GB/s)", [fmt(first_present(d, "usable_bandwidth_gb_s", "bandwidth_gb_s"), ".1f")
                                     for d in devices], True),
        ("decode tok/s ESTIMATE", [fmt(device_estimate(d), ",.1f") for d in devices], True),
        ("memory-bound ceiling tok/s", [fmt(d.get("bandwidth_bound_tokens_per_s"), ",.1f") for d in devices], False),
        ("measured decode tok/s", [fmt(m.get("decode_tokens_per_s"), ",.1f") for m in measured], True),
        ("measured prefill tok/s", [fmt(m.get("prefill_tokens_per_s"), ",.0f") for m in measured], False),
        ("measured time to first token (ms)", [fmt(m.get("time_to_first_token_ms"), ".1f") for m in measured], False),
        ("measured / estimate", [fmt(m.get("measured_over_estimate"), ".2f") for m in measured], False),
    ]
    kept = [(title, values) for title, values, always in candidates
            if always or any(v != NOT_APPLICABLE for v in values)]
    whys: list[str] = []
    confidence = [_confidence(d, whys) for d in devices]
    rows = [(str(d.get("name")), *(values[i] for _, values in kept), confidence[i]) for i, d in enumerate(devices)]
    columns = ("device", *(title for title, _ in kept), "confidence")
    if not devices:
        notes.append("no device estimates in this report")
    footnotes = [f"note {i}: {why}" for i, why in enumerate(whys, 1)]
    return Section("devices", "Device estimates (ESTIMATE)", notes, [Table(columns, rows)] if rows else [], footnotes)


def golden_section(report: dict) -> Section:
    rows = [
        (str(g.get("prompt")), _out_of(g.get("pte_prefix_match"), g.get("tokens")),
         _out_of(g.get("pte_teacher_forced_match"), g.get("tokens")), str(g.get("eager_text", "")),
         str(g.get("pte_text", "")), fmt(g.get("runner_text")),
         {True: "yes", False: "no"}.get(g.get("runner_matches_golden"), NOT_APPLICABLE))
        for g in report.get("golden") or []
    ]
    columns = ("prompt", "greedy tokens before first divergence", "teacher-forced agreement", "golden (export)",
               ".pte via method", ".pte via LLM runner", "runner = golden")
    notes = [
        "The bundle's golden outputs (made at export) against the .pte run two ways: its forward method "
        "(as check.py drives it) and the LLM runner (as the apps drive it).",
        f"golden next-token agreement (teacher-forced): {percent(report.get('golden_token_agreement'))}",
    ]
    return Section("golden", "Golden prompts", notes, [Table(columns, rows, text_columns=(3, 4, 5))] if rows else [])


def greedy_section(report: dict) -> Section:
    comparisons = report.get("comparisons") or {}
    tables = []
    for name in reference_names(report):
        greedy = (comparisons.get(name) or {}).get("greedy") or []
        rows = [(str(g.get("prompt")), _out_of(g.get("tokens_until_divergence"), g.get("tokens")),
                 str(g.get("reference_text", "")), str(g.get("pte_text", ""))) for g in greedy]
        if rows:
            tables.append(Table(("prompt", "tokens until first divergence", "reference", ".pte"), rows,
                                caption=f"vs {name}", text_columns=(2, 3)))
    notes = ["Free-running greedy generation from each side; after the first differing token the texts drift apart."]
    return Section("greedy", "Greedy generation per reference", notes if tables else ["no greedy generations"], tables)


def layers_section(layer_debug: dict) -> Section:
    layers = layer_debug.get("layers") or []
    metric_keys = list(dict.fromkeys(k for layer in layers for k in layer if k != "name"))
    jump = layer_debug.get("first_jump") or {}
    rows = [
        (f"{layer.get('name')}{'  ◀ first jump' if jump and layer.get('name') == jump.get('name') else ''}",
         *(fmt(layer.get(k), ".6g") for k in metric_keys))
        for layer in layers
    ]
    notes = [
        f"method: {layer_debug.get('method') or NOT_APPLICABLE}",
        f"first jump: {jump.get('name')}" if jump else "first jump: none found",
        *([str(layer_debug["note"])] if layer_debug.get("note") else []),
    ]
    return Section("layers", "Per-layer debugging", notes, [Table(("layer", *metric_keys), rows)] if rows else [])


def versions_section(report: dict) -> Section:
    rows = [(str(k), fmt(v)) for k, v in (report.get("versions") or {}).items()]
    return Section("versions", "Versions", tables=[Table(("package", "version"), rows)] if rows else [])


def report_sections(report: dict) -> list[Section]:
    """Every section after the verdict, in reading order."""
    sections = [overview_section(report), comparison_section(report), gates_section(report),
                latency_section(report), devices_section(report), golden_section(report), greedy_section(report)]
    from edgeqat.runtime_check.report_onnx import onnx_section  # it builds on this module's helpers

    onnx = onnx_section(report)
    if onnx:
        sections.insert(3, onnx)  # after the .pte's gates, before the speeds
    if report.get("layer_debug"):
        sections.append(layers_section(report["layer_debug"]))
    return [*sections, versions_section(report)]


# --- markdown -------------------------------------------------------------------------------------------

# Characters markdown would read as formatting, HTML or math; a backslash makes each literal (CommonMark).
_MARKDOWN_SPECIAL = set("\\`*_[]<>|&#~$")  # "$": GitHub reads $...$ as math


def escape_markdown(text: str) -> str:
    escaped = "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in str(text))
    return escaped.replace("\r\n", "\n").replace("\n", "<br>")  # a cell is one line


def _markdown_table(table: Table) -> list[str]:
    lines = [f"*{escape_markdown(table.caption)}*", ""] if table.caption else []
    return [
        *lines,
        "| " + " | ".join(escape_markdown(c) for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(escape_markdown(cell) for cell in row) + " |" for row in table.rows),
        "",
    ]


def render_markdown(report: dict) -> str:
    lines = ["# edgeqat check report", "", f"**{escape_markdown(verdict(report))}**", ""]
    failed = failed_gates(report)
    if failed:
        lines += [*(f"- {escape_markdown(gate_sentence(g))}" for g in failed), ""]
    lines += ["The plots are in report.html, beside this file.", ""]
    for section in report_sections(report):
        lines += [f"## {escape_markdown(section.title)}", ""]
        for note in section.notes:
            lines += [escape_markdown(note), ""]
        for table in section.tables:
            lines += _markdown_table(table)
        for note in section.footnotes:
            lines += [escape_markdown(note), ""]
    return "\n".join(lines)


# --- terminal -------------------------------------------------------------------------------------------


def print_table(report: dict, console: Any = None) -> None:
    """The verdict and the numeric sections as rich tables (``console``: a rich Console, stdout by default)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table as RichTable

    console = console or Console()
    passed = bool(report.get("passed"))
    console.print(f"[bold {'green' if passed else 'red'}]edgeqat check: {escape(verdict(report))}[/]")
    for gate in failed_gates(report):
        console.print(f"  [red]✗[/] {escape(gate_sentence(gate))}")
    for section in report_sections(report):
        if section.key not in TERMINAL_SECTIONS:
            continue
        for note in section.notes if section.key in ("devices", "layers") else []:
            console.print(escape(note))
        for table in section.tables:
            title = section.title + (f" ({table.caption})" if table.caption else "")
            rich_table = RichTable(title=escape(title))
            for column in table.columns:
                rich_table.add_column(escape(column))
            for row in table.rows:
                rich_table.add_row(*(escape(cell) for cell in row))
            console.print(rich_table)
        for note in section.footnotes:
            console.print(escape(note))
    console.print("Golden prompts and generated text side by side: report.md and report.html.")
