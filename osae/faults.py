"""A test hook that kills the process at a named point, so crash-and-resume tests are deterministic.

`OSAE_KILL_AT="store-commit:3"` makes the process SIGKILL itself right after the 3rd time it reaches
`reached("store-commit")`. Unset (every user's case), `reached` only counts. Named points:
- `store-commit`: a writer's commit record is durable (rows, digests and statistics before it);
- `fit-checkpoint`: a training checkpoint (every SAE's state and the run state) is durable;
- `fit-step`: a training step (every SAE's micro-batch) is done.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from osae.errors import UsageError

_ENV = "OSAE_KILL_AT"
_counts: Counter[str] = Counter()


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(_ENV)
    if not spec:
        return None
    name, _, n = spec.rpartition(":")
    if not name or not n.isdigit() or int(n) < 1:
        raise UsageError(f"{_ENV} must look like NAME:N with N >= 1 (e.g. store-commit:2); got {spec!r}")
    return name, int(n)


def reached(point: str) -> None:
    """Count one arrival at `point`; SIGKILL this process if OSAE_KILL_AT names this arrival."""
    _counts[point] += 1
    target = _target()
    if target is not None and target == (point, _counts[point]):
        os.kill(os.getpid(), signal.SIGKILL)
