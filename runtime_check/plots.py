"""The report's figures, drawn from report.json v2 with matplotlib and returned as SVG text.

No pyplot: each figure is a bare ``Figure`` (no display, no global state), and the SVG is reproducible
(fixed hash salt for its ids, no date, text kept as text), so the same report gives the same bytes.
A figure whose data the report lacks is left out rather than drawn empty.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

import matplotlib
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from edgeqat.runtime_check.report import device_estimate, reference_names

# Text kept as <text>: small and selectable.
SVG_RC = {"svg.hashsalt": "edgeqat-check-report", "svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10}
SVG_METADATA = {"Date": None, "Creator": "edgeqat"}
LOG_SCALE_SPREAD = 20  # bars this far apart (max/min) get a log axis, or the small ones vanish
WIDTH_IN = 7.0


def _label(text: Any) -> str:
    """Report text as a matplotlib label: a "$" would otherwise start math (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def _legend_below(fig: Figure, columns: int) -> None:
    fig.legend(loc="outside lower center", ncols=max(1, min(columns, 3)), fontsize=8, frameon=False)


def _colors(report: dict) -> dict[str, str]:
    """One color per reference, the same in every figure."""
    palette = matplotlib.colormaps["tab10"].colors
    names = reference_names(report)
    return {name: to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}


def _curves(report: dict, key: str) -> list[tuple[str, list[float]]]:
    """(reference name, per-position values) for references whose comparison has this curve."""
    out = []
    for name in _colors(report):
        values = (((report.get("comparisons") or {}).get(name) or {}).get("per_position") or {}).get(key)
        if values:
            out.append((name, [float("nan") if v is None else v for v in values]))
    return out


def _spread_is_large(values: list[float]) -> bool:
    """All positive and far apart: only then is a log axis both possible and needed."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SCALE_SPREAD


def _plot_curves(ax: Any, report: dict, key: str, ylabel: str, log_if_spread: bool = False,
                 transform: Callable[[float], float] = lambda v: v, legend: bool = False) -> bool:
    curves, colors = _curves(report, key), _colors(report)
    for name, values in curves:
        ax.plot(range(len(values)), [transform(v) for v in values], label=_label(name) if legend else None,
                color=colors[name], linewidth=1.2, marker="." if len(values) <= 32 else None)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if log_if_spread and _spread_is_large([transform(v) for _, values in curves for v in values if v == v]):
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # cosines near 1 read as themselves, not "+9.999e-1"
    return bool(curves)


def logit_error_figure(report: dict) -> Figure | None:
    """Cosine (as 1 - cosine) and max abs logit difference against the position, one line per reference.

    1 - cosine on a log axis: cosines of 0.9997 and 0.95 side by side would otherwise be one flat line at
    the top and one wiggle below it.
    """
    fig = Figure(figsize=(WIDTH_IN, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    if not _plot_curves(top, report, "cosine", "1 − logits cosine\n(lower is closer)", log_if_spread=True,
                        transform=lambda v: 1 - v, legend=True):
        return None
    _plot_curves(bottom, report, "max_abs_diff", "max abs logit\ndifference", log_if_spread=True)
    top.set_title("Logit error of the .pte by position (mean over windows)")
    bottom.set_xlabel("position in the window (tokens)")
    _legend_below(fig, len(_curves(report, "cosine")))
    return fig


def agreement_figure(report: dict) -> Figure | None:
    """Top-1 agreement and KL(reference || .pte) against the position in the window."""
    fig = Figure(figsize=(WIDTH_IN, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    if not _plot_curves(top, report, "top1_agreement", "top-1 agreement", legend=True):
        return None
    top.set_ylim(top=1.01)
    _plot_curves(bottom, report, "kl", "KL(reference ‖ .pte)\n(nats)", log_if_spread=True)
    top.set_title("Agreement of the .pte by position (mean over windows)")
    bottom.set_xlabel("position in the window (tokens)")
    _legend_below(fig, len(_curves(report, "top1_agreement")))
    return fig


@dataclass(frozen=True)
class BarSeries:
    name: str
    values: list[float | None]
    style: dict[str, Any]
    missing: str  # written where a value is null, so an absent bar is not read as zero


def _grouped_bars(title: str, labels: list[str], series: list[BarSeries], xlabel: str) -> Figure:
    """Horizontal bars, one group per label (long names stay readable on a phone)."""
    fig = Figure(figsize=(WIDTH_IN, 1.5 + 0.45 * len(labels) * len(series)), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(series)
    values = [v for s in series for v in s.values if v is not None]
    for i, s in enumerate(series):
        ys = [row + (i - (len(series) - 1) / 2) * height for row in range(len(labels))]
        bars = ax.barh(ys, [v or 0 for v in s.values], height=height * 0.92, label=_label(s.name), **s.style)
        ax.bar_label(bars, labels=[s.missing if v is None else f"{v:,.0f}" for v in s.values], padding=3, fontsize=7)
    ax.set_yticks(range(len(labels)), [_label(label) for label in labels])
    ax.invert_yaxis()  # first row on top, as in the table
    if _spread_is_large(values):
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 2, max(values) * 6)  # room for the value labels
        xlabel += " (log scale)"
    elif values:
        ax.set_xlim(0, max(values) * 1.25)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _legend_below(fig, len(series))
    return fig


def latency_figure(report: dict) -> Figure | None:
    """Prefill and decode tokens/s per timed row of report["latency"]."""
    rows = (report.get("latency") or {}).get("rows") or []
    if not rows:
        return None
    labels = [f"{r.get('name')} [{r.get('device')}]" for r in rows]
    series = [
        BarSeries("prefill tokens/s", [r.get("prefill_tokens_per_s") for r in rows], {"color": "#4c72b0"}, "not measured"),
        BarSeries("decode tokens/s", [r.get("decode_tokens_per_s") for r in rows], {"color": "#dd8452"}, "not measured"),
    ]
    threads = (report.get("latency") or {}).get("threads")
    return _grouped_bars(f"Throughput on this host (CPU rows on {threads} threads)", labels, series, "tokens/s")


def device_figure(report: dict) -> Figure | None:
    """Estimated decode tokens/s per device, with the measured rate beside it where one was given."""
    devices = (report.get("device_estimates") or {}).get("devices") or []
    if not devices:
        return None
    labels = [str(d.get("name")) + ("\n(low confidence)" if d.get("confidence") == "low" else "") for d in devices]
    series = [BarSeries("ESTIMATE", [device_estimate(d) for d in devices],
                        {"color": "#bbbbbb", "hatch": "//", "edgecolor": "#666666"}, "no estimate")]
    measured = [(d.get("measured") or {}).get("decode_tokens_per_s") for d in devices]
    if any(v is not None for v in measured):
        series.append(BarSeries("measured on the device", measured, {"color": "#55a868"}, "not measured"))
    return _grouped_bars("Decode tokens/s on devices: ESTIMATE vs measured", labels, series, "decode tokens/s")


@dataclass(frozen=True)
class FigureSpec:
    section: str  # the report section (report.Section.key) it is shown under
    caption: str
    build: Callable[[dict], Figure | None]


FIGURES: dict[str, FigureSpec] = {
    "logit_error": FigureSpec("comparison", "Logit error of the .pte by position in the window, per reference",
                              logit_error_figure),
    "agreement": FigureSpec("comparison", "Top-1 agreement and KL divergence by position in the window, per reference",
                            agreement_figure),
    "latency": FigureSpec("latency", "Prefill and decode tokens/s of each timed row", latency_figure),
    "devices": FigureSpec("devices", "Decode tokens/s per device: ESTIMATE, and measured where given", device_figure),
}


def svg_text(fig: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        fig.savefig(buffer, format="svg", metadata=SVG_METADATA)
    return buffer.getvalue()


def report_figures(report: dict) -> dict[str, Figure]:
    """The figures this report has data for, by key of FIGURES."""
    with matplotlib.rc_context(SVG_RC):  # font size and math parsing apply when the text is made
        built = {key: spec.build(report) for key, spec in FIGURES.items()}
    return {key: fig for key, fig in built.items() if fig is not None}


def report_svgs(report: dict) -> dict[str, str]:
    """The figures as SVG documents, by key of FIGURES."""
    return {key: svg_text(fig) for key, fig in report_figures(report).items()}
