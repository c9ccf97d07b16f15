"""domain/report.py: the Markdown report and the hand-written SVG."""

from __future__ import annotations

import xml.dom.minidom

from loradeploy.domain.report import bar_chart_svg, markdown_report
from loradeploy.results import Check


def test_the_svg_is_well_formed_escaped_and_has_one_bar_per_value() -> None:
    svg = bar_chart_svg(
        "F1 <a & b>", ["q1", "q2", "q3"], {"candidate": [0.5, 1.0, 0.0], "live": [0.2, 0.4, 0.6]}
    )
    document = xml.dom.minidom.parseString(svg)
    bars = [r for r in document.getElementsByTagName("rect") if r.getElementsByTagName("title")]
    assert len(bars) == 6
    heights = [float(r.getAttribute("height")) for r in bars]
    assert heights[2] == max(heights)  # candidate q2, the largest value, is the tallest bar
    assert heights[4] == 0.0  # candidate q3 is 0
    assert "F1 &lt;a &amp; b&gt;" in svg


def test_the_svg_copes_with_no_values() -> None:
    xml.dom.minidom.parseString(bar_chart_svg("empty", [], {}))


def test_the_markdown_report_lists_every_check_with_value_and_threshold() -> None:
    checks = [
        Check(name="quality-floor", passed=True, value=0.74, threshold=0.5, detail="mean | F1"),
        Check(name="error-rate", passed=False, value=None, threshold=0.01),
    ]
    text = markdown_report(
        "Gate 1", passed=False, summary={"model": "m", "skip": None}, checks=checks, figures={"f1": 0.74}
    )
    assert text.startswith("# Gate 1: FAILED\n")
    assert "| quality-floor | 0.74 | 0.5 | pass | mean \\| F1 |" in text
    assert "| error-rate | - | 0.01 | FAIL |  |" in text
    assert "- **model**: m" in text and "skip" not in text
    assert "| f1 | 0.74 |" in text
