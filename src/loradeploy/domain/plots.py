"""The release report's figures, drawn with matplotlib: numbers in, SVG text out, pure.

matplotlib (with numpy) costs about half a second of CPU to import, so it is imported
inside ``_figure``, only when a figure is drawn: ``loradeploy --help`` never pays for
it. Figures use matplotlib's object interface (no pyplot, no global figure state), SVG
text stays text (``svg.fonttype`` none, so a page stays small and searchable) and ids
and metadata are fixed, so the same numbers give the same SVG.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from loradeploy.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CANDIDATE_COLOUR = "#4c72b0"
LIVE_COLOUR = "#dd8452"
LIMIT_COLOUR = "#c44e52"
NEUTRAL_COLOUR = "#8c8c8c"
GOOD_COLOUR = "#55a868"

_STYLE: dict[Any, Any] = {  # matplotlib types keys as a Literal of every name
    "svg.fonttype": "none",
    "svg.hashsalt": "loradeploy",
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


@contextmanager
def _figure(width: float = 7.0, height: float = 3.0) -> Iterator[tuple[Axes, io.StringIO]]:
    """One axes to draw on; its SVG is in the buffer after the block."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError(
            f"the release report needs matplotlib, which is not installed ({exc.name})",
            hint="pip install 'loradeploy[report]'",
        ) from exc

    buffer = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(width, height), layout="constrained")
        axes = figure.subplots()
        yield axes, buffer
        figure.savefig(buffer, format="svg", metadata={"Date": None})


def _legend(axes: Axes) -> None:
    """A legend at the lower right, when something labelled was drawn (no empty box)."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize=8)


def _svg(buffer: io.StringIO) -> str:
    """The ``<svg>`` element alone (no XML declaration or doctype)."""
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def bootstrap_distribution(
    means: Sequence[float],
    *,
    observed: float,
    low: float,
    high: float,
    margin: float,
    confidence: float,
) -> str:
    """Histogram of the bootstrap means of the paired F1 difference, with the interval,
    the observed difference, zero and the non-inferiority bound ``-margin`` marked."""
    with _figure() as (axes, buffer):
        if means:
            axes.hist(means, bins=40, color=CANDIDATE_COLOUR, alpha=0.75, label="bootstrap means")
        axes.axvspan(low, high, color=CANDIDATE_COLOUR, alpha=0.12, label=f"{confidence:.0%} interval")
        axes.axvline(observed, color=CANDIDATE_COLOUR, linewidth=2, label=f"observed {observed:+.3f}")
        axes.axvline(0.0, color=NEUTRAL_COLOUR, linewidth=1)
        axes.axvline(
            -margin, color=LIMIT_COLOUR, linestyle="--", linewidth=2, label=f"-margin {-margin:+.3f}"
        )
        axes.set_xlabel("mean token F1 difference, candidate - live")
        axes.set_ylabel("resamples")
        axes.set_title(f"Non-inferiority: interval [{low:+.3f}, {high:+.3f}] against -margin {-margin:+.3f}")
        axes.legend(loc="upper left", fontsize=8)
    return _svg(buffer)


def paired_differences(labels: Sequence[str], candidate: Sequence[float], live: Sequence[float]) -> str:
    """Per question: candidate F1 - live F1, one horizontal bar each (green when the
    candidate did better, red when worse)."""
    diffs = [c - b for c, b in zip(candidate, live, strict=True)]
    height = max(2.0, 0.6 + 0.22 * len(diffs))
    with _figure(height=height) as (axes, buffer):
        colours = [GOOD_COLOUR if d > 0 else LIMIT_COLOUR if d < 0 else NEUTRAL_COLOUR for d in diffs]
        positions = list(range(len(diffs)))
        axes.barh(positions, diffs, color=colours)
        axes.set_yticks(positions, [label[:24] for label in labels])
        axes.invert_yaxis()
        axes.axvline(0.0, color=NEUTRAL_COLOUR, linewidth=1)
        axes.set_xlim(-1.05, 1.05)
        axes.set_xlabel("token F1 difference, candidate - live")
        better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        axes.set_title(
            f"Per question: candidate better on {better}, worse on {worse}, equal on "
            f"{len(diffs) - better - worse}"
        )
    return _svg(buffer)


def judge_verdicts(counts: Mapping[str, int], *, min_win_rate: float, win_rate: float) -> str:
    """The judge's verdicts from the candidate's side (win, tie, loss, unreadable)."""
    with _figure(height=2.4) as (axes, buffer):
        names = list(counts)
        colours = {"win": GOOD_COLOUR, "tie": NEUTRAL_COLOUR, "loss": LIMIT_COLOUR}
        axes.bar(names, [counts[n] for n in names], color=[colours.get(n, "#bbbbbb") for n in names])
        axes.set_ylabel("questions")
        axes.set_title(f"Judge verdicts: win rate {win_rate:.3f} (floor {min_win_rate:g})")
    return _svg(buffer)


def _ecdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    count = len(ordered)
    return ordered, [(i + 1) / count for i in range(count)]


def latency_ecdf(
    candidate: Sequence[float],
    live: Sequence[float],
    *,
    p50_limit: float | None,
    p95_limit: float | None,
) -> str:
    """Empirical CDFs of both slots' latencies; the candidate's p50 and p95 limits
    (live's percentile times the allowed ratio) drawn where the candidate must stay left."""
    with _figure() as (axes, buffer):
        for name, values, colour in (("candidate", candidate, CANDIDATE_COLOUR), ("live", live, LIVE_COLOUR)):
            if values:
                xs, ys = _ecdf(values)
                axes.step(xs, ys, where="post", color=colour, linewidth=2, label=f"{name} ({len(xs)})")
        for quantile, limit in ((0.5, p50_limit), (0.95, p95_limit)):
            if limit is not None:
                axes.plot([limit], [quantile], marker="|", markersize=18, color=LIMIT_COLOUR)
                axes.axvline(limit, color=LIMIT_COLOUR, linestyle="--", linewidth=1)
                axes.annotate(
                    f"p{quantile * 100:g} limit {limit:.3f}s",
                    (limit, quantile),
                    textcoords="offset points",
                    xytext=(4, -12),
                    color=LIMIT_COLOUR,
                )
        axes.axhline(0.5, color=NEUTRAL_COLOUR, linewidth=0.8)
        axes.axhline(0.95, color=NEUTRAL_COLOUR, linewidth=0.8)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("request latency (s)")
        axes.set_ylabel("share of requests")
        axes.set_title("Latency distributions, with the candidate's p50/p95 limits")
        _legend(axes)
    return _svg(buffer)


def throughput_rounds(rounds: Sequence[Mapping[str, object]]) -> str:
    """Completion tokens per second of each slot in each round of the load."""
    with _figure(height=2.6) as (axes, buffer):
        for name, colour in (("candidate", CANDIDATE_COLOUR), ("live", LIVE_COLOUR)):
            points = [
                (int(str(r["round"])), float(str(r["completion_tokens"])) / float(str(r["busy_s"])))
                for r in rounds
                if r.get("slot") == name and float(str(r.get("busy_s") or 0)) > 0
            ]
            if points:
                axes.plot(
                    [p[0] + 1 for p in points], [p[1] for p in points], marker="o", color=colour, label=name
                )
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("round")
        axes.set_ylabel("completion tokens/s")
        axes.set_ylim(bottom=0)
        axes.set_title("Throughput per round (each round at both slots, same prompts)")
        _legend(axes)
    return _svg(buffer)


def traffic_timeline(
    requests: Sequence[tuple[float, float, bool]], windows: Sequence[tuple[str, float, float]]
) -> str:
    """Requests (start s, latency s, ok) against time, failed ones as red crosses on the
    axis, with each swap step's window shaded; times in seconds from the plot's start."""
    with _figure() as (axes, buffer):
        good = [(t, latency) for t, latency, ok in requests if ok]
        bad = [t for t, _, ok in requests if not ok]
        if good:
            axes.scatter(
                [t for t, _ in good],
                [x for _, x in good],
                s=6,
                color=CANDIDATE_COLOUR,
                label=f"served ({len(good)})",
            )
        if bad:
            axes.scatter(
                bad, [0.0] * len(bad), s=30, marker="x", color=LIMIT_COLOUR, label=f"failed ({len(bad)})"
            )
        for index, (name, start, end) in enumerate(windows):
            axes.axvspan(
                start,
                max(end, start + 0.5),
                color=LIVE_COLOUR,
                alpha=0.25,
                label="swap step" if index == 0 else None,
            )
            axes.annotate(
                name,
                (start, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -10),
                textcoords="offset points",
                color="#8a4b20",
            )
        axes.set_xlabel("seconds")
        axes.set_ylabel("request latency (s)")
        axes.set_ylim(bottom=0)
        axes.set_title("Live-slot requests around this version's swaps")
        _legend(axes)
    return _svg(buffer)
