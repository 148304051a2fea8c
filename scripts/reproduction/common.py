"""What every stage shares: a cache of stage results with their wall time, fits that continue where they
stopped, and the small statistics of the tables."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from osae.evaluate.permute import permute_checkpoint
from osae.evaluate.run import _json_default
from osae.train.config import TrainConfig
from osae.train.fit import fit

log = logging.getLogger("reproduce")
STAGES = "stages.json"


class Stages:
    """Each stage's result cached as OUT/<name>.json and its wall time in OUT/stages.json, so an interrupted
    reproduction continues with the first unfinished stage (a stage resumed after a kill reports the time of
    its last, completing part; its fits continue from their checkpoints)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / STAGES
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, compute: Callable[[], dict]) -> dict:
        cached = self.out / f"{name}.json"
        if cached.exists():
            return json.loads(cached.read_text())
        log.info("stage %s", name)
        t0 = time.perf_counter()
        result = json.loads(json.dumps(compute(), default=_json_default))  # what a cached re-run reads back
        self.seconds[name] = time.perf_counter() - t0
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cached)
        self.path.write_text(json.dumps(self.seconds, indent=1))
        return result


def train(cfg: TrainConfig) -> Path:
    """Run `cfg` to the end: the same configuration on the same directory resumes or returns at once."""
    fit(cfg)
    return Path(cfg.out)


def permuted(checkpoint: Path, store: Path, by: str, max_tokens: int) -> Path:
    """`checkpoint` re-ordered post hoc (by E[z^2] or firing frequency), as <run>-sorted/<name>-<by>: outside
    its run directory, so that evaluating the run never picks the copies up."""
    out = checkpoint.parent.with_name(f"{checkpoint.parent.name}-sorted") / f"{checkpoint.name}-{by}"
    if not (out / "config.json").exists():
        permute_checkpoint(checkpoint, str(store), out, by=by, max_tokens=max_tokens)
    return out


def mean_std(values) -> str:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "n/a"
    return f"{np.mean(v):.3f} ({np.std(v, ddof=1) if len(v) > 1 else 0:.3f})"


def metrics_curve(sae_dir: Path) -> tuple[list[int], list[float]]:
    """(tokens, training FVU) of one SAE, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (sae_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["tokens"] for r in rows], [r["fvu"] for r in rows]
