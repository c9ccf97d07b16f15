"""Headless Chromium (Debian's package) as a person's browser: open a local page, take a
screenshot, and collect what the page wrote to its console.

No DevTools protocol: ``--enable-logging=stderr --v=0`` makes Chromium print every
console message (errors, uncaught exceptions, Content-Security-Policy violations) on
stderr as ``INFO:CONSOLE...`` lines, which are read back here. The resolver maps every
host to nothing, so a page that tried to fetch something from the network would fail
to (and log the failure) rather than reach out.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install it with 'make browser' (apt-get install -y chromium)"
FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)


@dataclass(frozen=True)
class Shot:
    png: Path
    console: list[str]  # every console message the page produced
    seconds: float


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, *, width: int, height: int, timeout_s: float = 90.0) -> Shot:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError(f"Chromium is not installed: {INSTALL_HINT}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"Chromium exited {done.returncode} without a screenshot: {done.stderr[-2000:]}")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Shot(png=png, console=console, seconds=time.monotonic() - started)
