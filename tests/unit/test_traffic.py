"""domain/traffic.py and clients/request_log.py: the router's request records read back,
hostile or torn lines skipped and counted (never raised), and the per-version windows a
canary analyses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loradeploy.clients.request_log import RequestLog
from loradeploy.domain.traffic import RequestRecord, parse_line, parse_lines, windows
from loradeploy.errors import PermanentError


def record(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 1,
        "start": 100.0,
        "end": 100.5,
        "stable": "m-live",
        "entry": "m@v2#1",
        "name": "m@v2",
        "ok": True,
        "status": 200,
        "error": None,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "shadow": False,
        "key": "ab" * 32,
        "prompt": None,
        "answer": None,
    }
    base.update(changes)
    return base


def line(**changes: object) -> str:
    return json.dumps(record(**changes))


def test_a_record_reads_back() -> None:
    parsed = parse_line(line(prompt="q", answer="a"))
    assert parsed is not None
    assert (parsed.name, parsed.entry, parsed.ok, parsed.prompt_tokens, parsed.answer) == (
        "m@v2",
        "m@v2#1",
        True,
        7,
        "a",
    )
    assert parsed.latency_s == pytest.approx(0.5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "null",
        "[]",
        '"text"',
        line()[:-5],  # torn by a crash
        line(v=2),  # another record version
        line(v="1"),
        line(ok="yes"),
        line(ok=1),
        line(start="100"),
        line(end=float("nan")).replace("NaN", "1e400"),
        line(start=-1.0),
        line(end=99.0),  # ended before it started
        line(status=42),
        line(prompt_tokens=-1),
        line(prompt_tokens=1.5),
        line(shadow="false"),
        line(name=7),
        json.dumps({k: v for k, v in record().items() if k != "ok"}),
        "\x00\x01\x02",
        "x" * 100,
    ],
)
def test_a_bad_line_is_no_record(text: str) -> None:
    assert parse_line(text) is None


def test_unknown_fields_are_ignored() -> None:
    assert parse_line(line(extra={"nested": 1})) is not None


def test_blank_lines_are_not_counted_as_skipped() -> None:
    records, skipped = parse_lines([line(), "", "  ", "{", line(ok=False)])
    assert (len(records), skipped) == (2, 1)


@given(st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200)), max_size=20))
def test_hostile_lines_never_raise_and_are_counted(junk: list[str | bytes]) -> None:
    good = [line(end=100.0 + index) for index in range(3)]
    lines: list[str | bytes] = [*junk[:10], *good, *junk[10:]]
    records, skipped = parse_lines(lines)
    blank = sum(1 for text in junk if not text.strip())
    parsed_junk = sum(1 for text in junk if text.strip() and parse_line(text) is not None)
    assert len(records) == 3 + parsed_junk
    assert skipped == len(junk) - blank - parsed_junk
    assert [r.end for r in records if r.key == "ab" * 32][-3:] == [100.0, 101.0, 102.0]


def rec(name: str, end: float, *, ok: bool = True, shadow: bool = False, took: float = 0.2) -> RequestRecord:
    return RequestRecord.model_validate(
        record(name=name, entry=name, end=end, start=end - took, ok=ok, shadow=shadow)
    )


def test_windows_count_per_version_and_leave_out_shadow_requests() -> None:
    records = [
        rec("m@v1", 10.0),
        rec("m@v1", 11.0, took=0.4),
        rec("m@v2", 12.0, ok=False),
        rec("m@v2", 12.5, shadow=True),  # a mirrored request: no client saw it
        rec("m@v2", 13.0),
        rec("m@v3", 13.0),  # not asked for
        rec("m@v1", 20.0),  # ends when the window ends: the next window's
        rec("m@v1", 9.99),  # before it
    ]
    got = windows(records, ["m@v1", "m@v2", "m@v9"], 10.0, 20.0)
    assert set(got) == {"m@v1", "m@v2", "m@v9"}
    assert got["m@v1"].latencies_s == pytest.approx([0.2, 0.4])
    assert (got["m@v1"].errors, got["m@v2"].errors, got["m@v2"].requests) == (0, 1, 2)
    assert got["m@v9"].requests == 0
    assert got["m@v2"].name == "m@v2"


def test_a_record_belongs_to_the_window_its_end_falls_in() -> None:
    one = rec("m@v1", 10.5, took=2.0)  # started in the window before
    assert windows([one], ["m@v1"], 10.0, 20.0)["m@v1"].requests == 1
    assert windows([one], ["m@v1"], 0.0, 10.0)["m@v1"].requests == 0


def test_the_log_reads_a_time_range_and_counts_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(
        "\n".join([line(end=100.0), "garbage", line(end=200.0), line(end=300.0)])
        + "\n"
        + line(end=400.0)[:20],
        encoding="utf-8",
    )
    log = RequestLog(path)
    assert [r.end for r in log.read(since=150.0)] == [200.0, 300.0]  # the torn tail is not whole yet
    assert log.skipped == 1
    assert [r.end for r in log.read(since=0.0, until=300.0)] == [100.0, 200.0]


def test_a_missing_log_is_empty(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "none.jsonl")
    assert (log.read(since=0.0), log.skipped) == ([], 0)


def test_an_unreadable_log_is_a_permanent_error(tmp_path: Path) -> None:
    folder = tmp_path / "requests.jsonl"
    folder.mkdir()  # a folder where the file should be
    with pytest.raises(PermanentError, match=r"request log .*requests\.jsonl cannot be read"):
        RequestLog(folder).read(since=0.0)
