"""The live view of a running build on a terminal: phase, elapsed time, last line.

One status line on stderr, redrawn in place; nothing at all when stderr is not
a terminal (the logs hold everything).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO

__all__ = ["LiveView"]


class LiveView:
    """Redraws ``[phase mm:ss] last line`` a few times a second."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.interval = interval
        self._phase = ""
        self._line = ""
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="fruix-live", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def on_output(self, phase: str, line: str) -> None:
        with self._lock:
            if phase != self._phase:
                self._phase = phase
                self._started = time.monotonic()
            self._line = line

    def _render(self) -> str:
        with self._lock:
            elapsed = int(time.monotonic() - self._started)
            head = f"[{self._phase or 'starting'} {elapsed // 60:02d}:{elapsed % 60:02d}] "
            line = self._line.replace("\t", " ")
        width = shutil.get_terminal_size((100, 20)).columns
        return (head + line)[: max(width - 1, 10)]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.stream.write("\r\x1b[K" + self._render())
            self.stream.flush()
