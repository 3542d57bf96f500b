"""Reading a child process's output line by line while it runs, with a deadline.

Tests that drive two real processes (`btard run` and `btard join`, as a user would in two
terminals) wait for a line of one before acting with the other; a reader thread keeps a
stalled child from blocking the test past its deadline.
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time


class Lines:
    """Collects the lines of ``proc.stdout`` (text mode) in a background thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, seconds: float) -> re.Match[str]:
        """The first line (from now on) matching ``pattern``; AssertionError with all output
        so far if the process ends or ``seconds`` pass first."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
            if line is None:
                self._queue.put(None)  # stays ended for the next caller
                raise AssertionError(f"the process ended before {pattern!r}:\n" + self.text())
            if line:
                self.seen.append(line)
                found = re.search(pattern, line)
                if found:
                    return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no line {pattern!r} within {seconds:.0f} s:\n" + self.text())

    def rest(self, seconds: float) -> str:
        """Everything the process still prints until it exits (within ``seconds``)."""
        self.proc.wait(timeout=seconds)
        while True:
            line = self._queue.get(timeout=seconds)
            if line is None:
                self._queue.put(None)
                return self.text()
            self.seen.append(line)

    def text(self) -> str:
        return "".join(self.seen)
