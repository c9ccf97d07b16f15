"""``support.stuck``: what the integration harness prints about a command that outlived
its deadline must show where a Python process waits (even one that never installed a
handler), the CPU it used, and the machine's load."""

from __future__ import annotations

import subprocess
import sys
import time

from support.stuck import cpu_seconds, describe_stuck

PROGRAM = """
import time
def waiting_in_startup():
    time.sleep(60)
waiting_in_startup()
"""


def test_a_waiting_process_is_described_with_its_python_stack_cpu_and_the_machine() -> None:
    child = subprocess.Popen([sys.executable, "-c", PROGRAM])
    try:
        time.sleep(1.0)
        text = describe_stuck(child.pid)
    finally:
        child.kill()
        child.wait()
    assert f"process {child.pid}: State:" in text
    assert "waiting_in_startup" in text, text  # py-spy read it without the process's help
    assert "cpu used: " in text and "load: " in text and "pressure: " in text
    assert "busiest processes:" in text and "PID" in text


def test_cpu_seconds_grows_with_work_and_is_none_for_a_gone_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "x = 0\nwhile True: x += 1"])
    try:
        time.sleep(1.5)
        used = cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()
    assert used is not None and used > 0.3
    assert cpu_seconds(child.pid) is None
