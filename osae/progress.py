"""Progress of long work: a live bar with rate and ETA on a terminal, a periodic log line everywhere else.

A job under nohup, slurm or CI writes to a file, where a redrawn bar is noise and no bar at all looks like a
hang. So off a terminal `progress` logs one INFO line every `OSAE_PROGRESS_SECONDS` (default 60) seconds,
and one at the end:

    INFO fit: 1.23M/8.00M tok (15%), 41.0k tok/s, elapsed 30s, ETA 2m45s

Both kinds have tqdm's `update`, `n`, `total`, `close` and context-manager interface.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("osae.progress")

DEFAULT_SECONDS = 60.0


def progress(
    total: float | None,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    initial: float = 0,
    unit_scale: bool = False,
    smoothing: float = 0.3,
):
    """A bar on a terminal (stderr), a `LogProgress` elsewhere, or a silent one when not `enabled`."""
    if enabled and not sys.stderr.isatty():
        return LogProgress(total, desc, unit, initial=initial, unit_scale=unit_scale)
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        smoothing=smoothing,
        disable=not enabled,
        file=sys.stderr,
    )


def _seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _amount(x: float, scale: bool) -> str:
    if not scale:
        return f"{x:,.0f}"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.2f}{suffix}"
    return f"{x:.0f}"


class LogProgress:
    """Counts like tqdm and logs a line at most every `OSAE_PROGRESS_SECONDS` seconds, and once when closed.
    Rate and ETA count only this run's work (`initial` is what an earlier run did)."""

    def __init__(self, total, desc: str, unit: str, *, initial: float = 0, unit_scale: bool = False):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.initial = initial
        self.every = float(os.environ.get("OSAE_PROGRESS_SECONDS", DEFAULT_SECONDS))
        self.start = self.last = time.monotonic()
        self.closed = False
        self.leave = True

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._log(now)

    def _log(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        done = _amount(self.n, self.unit_scale)
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] = f"{self.desc}: {done}/{_amount(self.total, self.unit_scale)} {self.unit} "
            parts[0] += f"({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_amount(rate, True)} {self.unit}/s")
        parts.append(f"elapsed {_seconds(elapsed)}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_seconds((self.total - self.n) / rate)}")
        log.info(", ".join(parts))

    def close(self) -> None:
        """The final line, unless nothing was done or the work failed (`leave` False, as tqdm's erased bar)."""
        if not self.closed:
            self.closed = True
            if self.n > self.initial and self.leave:
                self._log(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:
            self.leave = False  # the error is the last word
        self.close()


def tracked(items, desc: str, unit: str = "it", *, enabled: bool = True, total: int | None = None):
    """Iterate `items` with progress (tqdm(iterable) for both kinds)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress(total, desc, unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)
