"""``loradeploy`` prints every thread's stack on SIGUSR1 and goes on (README, Exit codes;
the integration harness relies on it to show where a stuck command waits)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_sigusr1_prints_the_stacks_and_the_process_goes_on() -> None:
    program = textwrap.dedent(
        """
        import os, signal, sys, time
        from loradeploy.cli import main
        sys.argv = ["loradeploy", "version"]
        try:
            main()
        except SystemExit:
            pass
        def waiting_here():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.2)
        waiting_here()
        print("still running")
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "still running" in done.stdout
    assert "waiting_here" in done.stderr and "most recent call first" in done.stderr
