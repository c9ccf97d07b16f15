"""Gate reports as text: a Markdown summary and a small SVG bar chart, both pure.

The SVG is written by hand (a few rectangles and labels), so no plotting library is
needed in the project's environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

from loradeploy.results import Check

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def markdown_report(
    title: str,
    *,
    passed: bool,
    summary: Mapping[str, object],
    checks: Sequence[Check],
    figures: Mapping[str, object],
    notes: Sequence[str] = (),
    plot: str | None = None,
) -> str:
    lines = [f"# {title}: {'PASSED' if passed else 'FAILED'}", ""]
    lines += [f"- **{key}**: {value}" for key, value in summary.items() if value is not None]
    lines += ["", "| check | value | threshold | result | detail |", "|---|---|---|---|---|"]
    for check in checks:
        value = "-" if check.value is None else f"{check.value:g}"
        threshold = "-" if check.threshold is None else f"{check.threshold:g}"
        detail = check.detail.replace("|", "\\|")
        lines.append(
            f"| {check.name} | {value} | {threshold} | {'pass' if check.passed else 'FAIL'} | {detail} |"
        )
    lines += ["", "| figure | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in figures.items()]
    if plot:
        lines += ["", f"![plot]({plot})"]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def bar_chart_svg(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    unit: str = "",
    width: int = 720,
    height: int = 300,
) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    names = list(series)
    top = max([v for values in series.values() for v in values] + [1e-9])
    left, right, upper, lower = 50, 10, 40, 60
    plot_w, plot_h = width - left - right, height - upper - lower
    group_w = plot_w / max(len(labels), 1)
    bar_w = group_w * 0.8 / max(len(names), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<line x1="{left}" y1="{upper + plot_h}" x2="{width - right}" y2="{upper + plot_h}" stroke="#333"/>',
        f'<text x="{left - 4}" y="{upper + 4}" text-anchor="end">{top:.3g}{escape(unit)}</text>',
        f'<text x="{left - 4}" y="{upper + plot_h}" text-anchor="end">0</text>',
    ]
    for g, label in enumerate(labels):
        x0 = left + g * group_w + group_w * 0.1
        for s, name in enumerate(names):
            values = series[name]
            value = values[g] if g < len(values) else 0.0
            bar_h = plot_h * max(value, 0.0) / top
            parts.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{upper + plot_h - bar_h:.1f}" width="{bar_w:.1f}" '
                f'height="{bar_h:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                f"<title>{escape(name)} {escape(label)}: {value:.4g}{escape(unit)}</title></rect>"
            )
        x, y = x0 + group_w * 0.4, upper + plot_h + 12
        turn = f' transform="rotate(-35 {x:.1f} {y})"' if len(labels) > 6 else ""
        anchor = "end" if turn else "middle"
        parts.append(f'<text x="{x:.1f}" y="{y}" text-anchor="{anchor}"{turn}>{escape(label[:12])}</text>')
    for s, name in enumerate(names):
        x = left + s * 160
        parts.append(
            f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{COLOURS[s % len(COLOURS)]}"/>'
        )
        parts.append(f'<text x="{x + 16}" y="{height - 12}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
