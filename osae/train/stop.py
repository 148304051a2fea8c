"""Stopping a run cleanly: SIGINT/SIGTERM ask the trainer to checkpoint at the next update and stop."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """While active (a `with` block in the main thread), SIGINT and SIGTERM set `signum` instead of killing the
    process; a second signal of the same kind falls back to the default behaviour (an impatient user wins)."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum == signum:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
