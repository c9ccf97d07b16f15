"""The release report from a short real release, opened in a real browser.

v1 goes live; v2 is loaded beside it while a client keeps asking the live slot (its
requests recorded as the demo records them), staged, and goes through Gate 1 (4
questions) and Gate 2 (4 requests per slot): cheap on a 2-core machine, and enough for
every figure. ``loradeploy report``
builds v2's page from the registry and the steps' result.json files; headless Chromium
(Debian's package, installed by 'make browser') opens it offline, takes a screenshot,
and the page must have rendered its plots without a single console message.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import numpy
import pytest
from PIL import Image

from support.browser import INSTALL_HINT, Shot, chromium, screenshot

from .conftest import DEMO_ADAPTERS, Stack

MODEL = "it-report"
LIVE = "report-live"
CANDIDATE = "report-candidate"
EVAL = Path(__file__).resolve().parents[2] / "data" / "aws-rag-qa" / "eval.jsonl"
SLOTS = [f"--candidate-slot={CANDIDATE}", f"--live-slot={LIVE}"]
FIGURES = {"bootstrap", "paired", "judge", "latency", "throughput", "traffic"}
CANDIDATE_BLUE, LIVE_ORANGE = (0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52)  # domain/plots.py


def ok(stack: Stack, out: Path, *args: str, codes: tuple[int, ...] = (0,)) -> dict[str, object]:
    clock = time.time()
    done = stack.run(*args, output_dir=out)
    # shown with a failure (pytest prints a fixture's output): on a slow machine the steps'
    # wall times say whether the live client still ran when a swap happened
    print(f"{out.relative_to(out.parents[1])}: {args[0]} exit {done.code}, {clock:.0f} to {time.time():.0f}")
    assert done.code in codes, (args, done.stderr, done.stdout[-2000:])
    assert done.result is not None
    return done.result


def register(stack: Stack, adapter: str, out: Path) -> str:
    registered = ok(
        stack,
        out / "register",
        "register",
        f"--model-name={MODEL}",
        f"--adapter-dir={DEMO_ADAPTERS / adapter}",
        "--reuse-identical",
        "--alias=candidate",
    )
    return str(registered["version"])


def stage(stack: Stack, out: Path) -> None:
    source = ["--source=alias:candidate", f"--slot-name={CANDIDATE}"]
    ok(stack, out / "load", "load-adapter", f"--model-name={MODEL}", *source)
    ok(stack, out / "staged", "set-staged-alias", f"--model-name={MODEL}", *source)


class LiveClient:
    """One client asking the live slot while v2 is loaded beside it, recording every
    request as the demo does (``--traffic``); stopped by the fixture. Its deadline only
    guards against a fixture that never stops it: a shorter one ended the traffic before
    v2's load on a slow CI machine, and the report then rightly drew no swap figure.
    It pauses between requests: the figure needs requests around the swap, not a vLLM
    kept busy on both cores of a 2-core machine while the steps start."""

    PAUSE_S = 0.2

    def __init__(self, url: str, deadline_s: float = 3600.0) -> None:
        self.url, self.deadline = url, time.monotonic() + deadline_s
        self.requests: list[dict[str, float | bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": LIVE, "prompt": "What does Amazon S3 store?", "max_tokens": 4, "temperature": 0}
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                started, clock = time.time(), time.perf_counter()
                try:
                    ok = http.post("/v1/completions", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.requests.append({"start": started, "latency_s": time.perf_counter() - clock, "ok": ok})
                self.stop.wait(self.PAUSE_S)

    def __enter__(self) -> LiveClient:
        self.thread.start()
        time.sleep(2.0)  # some requests before the swap
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2.0)  # and some after it
        self.stop.set()
        self.thread.join(timeout=90)

    def save(self, path: Path) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in self.requests), encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def release(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A short release of v2 over v1, then its report; what the test needs to check it."""
    out = tmp_path_factory.mktemp("report")
    eval4 = out / "eval4.jsonl"
    eval4.write_text("".join(EVAL.read_text(encoding="utf-8").splitlines(keepends=True)[:4]))
    register(stack, "aws-rag-qa-v1", out / "v1")
    stage(stack, out / "v1")
    promote = ["promote-adapter", f"--model-name={MODEL}", f"--live-slot={LIVE}"]
    ok(stack, out / "v1" / "promote", *promote, "--source-alias=staged", "--reason=report test v1")
    # registering touches no server the client asks, so it runs before the traffic; the
    # steps that swap what vLLM serves run during it
    v2 = register(stack, "aws-rag-qa-v2", out / "v2")
    with LiveClient(stack.info.vllm_url) as client:
        stage(stack, out / "v2")
    assert client.requests and all(r["ok"] for r in client.requests)
    began = client.requests[0]["start"]
    print(f"live client: {len(client.requests)} requests, {began:.0f} to {time.time():.0f}")
    gate1 = ok(
        stack,
        out / "v2" / "gate1",
        "compare-decision",
        f"--model-name={MODEL}",
        *SLOTS,
        f"--eval-data={eval4}",
        "--min-win-rate=0.25",
        "--max-tokens=32",
        codes=(0, 1),  # 4 questions make a wide interval: either verdict makes a report
    )
    gate2 = ok(
        stack,
        out / "v2" / "gate2",
        "perf-decision",
        f"--model-name={MODEL}",
        *SLOTS,
        f"--eval-data={eval4}",
        "--requests=4",
        "--concurrency=2",
        "--max-tokens=8",
        codes=(0, 1),  # latency on a shared CPU is noisy
    )
    if gate1["exit_code"] == 0 and gate2["exit_code"] == 0:
        ok(stack, out / "v2" / "promote", *promote, "--source-alias=perf-passed", "--reason=report test")
    done = stack.run(
        "report",
        f"--model-name={MODEL}",
        f"--version={v2}",
        f"--results-dir={out / 'v1'}",
        f"--results-dir={out / 'v2'}",
        f"--traffic={client.save(out / 'traffic.jsonl')}",
        output_dir=out / "report",
    )
    assert done.code == 0, (done.stderr, done.stdout[-2000:])
    assert done.result is not None
    return {
        "out": out,
        "v2": v2,
        "gate1": gate1,
        "gate2": gate2,
        "report": done.result,
        "stdout": done.stdout,
    }


def test_the_report_holds_every_step_of_the_version_and_every_figure(release: dict[str, object]) -> None:
    result = release["report"]
    assert isinstance(result, dict)
    page_path = Path(result["details"]["report"])
    assert page_path.name == f"{MODEL}-v{release['v2']}.html"
    assert str(page_path) in str(release["stdout"])
    page = page_path.read_text(encoding="utf-8")
    assert result["details"]["bytes"] == len(page.encode("utf-8"))
    found = {Path(p).parent.relative_to(release["out"]).as_posix() for p in result["details"]["step_results"]}  # type: ignore[arg-type]
    assert {"v2/register", "v2/load", "v2/staged", "v2/gate1", "v2/gate2"} <= found
    assert not any(p.startswith("v1/") for p in found)  # v1's steps are not v2's
    shown = set(re.findall(r'<img data-figure="([^"]+)"', page))
    said = re.findall(r'<p class="missing">([^<]*)</p>', page)
    assert shown == FIGURES, ("the page says", said, "step times are in the fixture's output")
    for verdict, gate in (("Gate 1", release["gate1"]), ("Gate 2", release["gate2"])):
        assert isinstance(gate, dict)
        assert f"{verdict}: {'passed' if gate['exit_code'] == 0 else 'failed'}" in page
    assert "judge calibration accuracy" in page and "not recorded" in page
    assert "sha256" in page and "adapter_model.safetensors" in page
    assert re.search(rf"<td>staged</td><td>[^<]*</td><td>{release['v2']}</td>", page)  # an audit move
    assert re.search(r"<td>load-adapter</td><td>\d+</td><td>[1-9]\d*</td><td>0</td>", page)  # traffic


def test_the_page_renders_in_chromium_with_its_plots_and_no_console_message(
    release: dict[str, object], tmp_path: Path
) -> None:
    if chromium() is None:
        pytest.fail(f"Chromium is not installed: {INSTALL_HINT}")
    result = release["report"]
    assert isinstance(result, dict)
    page = Path(result["details"]["report"])
    shot: Shot = screenshot(page, tmp_path / "report.png", width=1100, height=4200)
    assert shot.console == [], shot.console
    pixels = numpy.asarray(Image.open(shot.png).convert("RGB"), dtype=numpy.int16)
    assert pixels.shape == (4200, 1100, 3)
    assert (pixels.min(axis=2) < 235).mean() > 0.03, "the page looks blank"
    for name, colour in (("candidate blue", CANDIDATE_BLUE), ("live orange", LIVE_ORANGE)):
        drawn = int((numpy.abs(pixels - numpy.array(colour)) <= 10).all(axis=2).sum())
        assert drawn > 200, f"only {drawn} pixels of {name}: the plots did not render"


def test_the_browser_check_sees_a_console_error(release: dict[str, object], tmp_path: Path) -> None:
    """The control: the same page with one script that fails is reported, so an empty
    console above means something."""
    if chromium() is None:
        pytest.fail(f"Chromium is not installed: {INSTALL_HINT}")
    result = release["report"]
    assert isinstance(result, dict)
    page = Path(result["details"]["report"]).read_text(encoding="utf-8")
    broken = page.replace("default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'").replace(
        "</body>", "<script>undefinedReportFunction()</script></body>"
    )
    broken = broken.replace("</body>", '<img src="https://example.invalid/pixel.png"></body>')
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")
    shot = screenshot(tmp_path / "broken.html", tmp_path / "broken.png", width=800, height=600)
    assert any("undefinedReportFunction" in line for line in shot.console), shot.console
    assert any("Content Security Policy" in line for line in shot.console), shot.console
