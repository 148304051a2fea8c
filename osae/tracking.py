"""Experiment tracking: `--log-to wandb` or `--log-to tensorboard` (both optional extras).

A tracker is presentation, not configuration: it is not part of a run's identity, so a run resumes with or
without it. TensorBoard event files go to DIR/tensorboard; a wandb run keeps its id in DIR/wandb_id, so a
resumed fit continues the same wandb run (WANDB_PROJECT names the project, default "osae"; WANDB_MODE=offline
works without a network).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

from osae.errors import UsageError

TRACKERS = {"wandb": "wandb", "tensorboard": "tensorboard"}  # --log-to value -> the package it needs


def check_tracker(kind: str | None) -> None:
    """Refuse an unknown tracker, or one whose package is missing, before any work starts."""
    if kind is None:
        return
    if kind not in TRACKERS:
        raise UsageError(f"--log-to must be one of {', '.join(TRACKERS)}; got {kind!r}")
    if importlib.util.find_spec(TRACKERS[kind]) is None:
        raise UsageError(f"--log-to {kind} needs the {TRACKERS[kind]} package: pip install 'osae[{kind}]'")


class TensorBoardTracker:
    def __init__(self, directory: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory / "tensorboard"))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text(name, "\n".join(lines), 0)
        for row in rows:  # numbers also as scalars, one tag per column and row, for the charts
            for col, value in zip(columns[1:], row[1:]):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{name}/{row[0]}/{col}", value, 0)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, directory: Path, name: str, config: dict):
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / "wandb_id"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:16])
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "osae"),
            name=name,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(directory),
            config=config,
        )

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=[[_plain(v) for v in r] for r in rows])})

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str | None, directory: Path, name: str, config: dict):
    """A tracker writing under `directory`, or None for no tracking."""
    check_tracker(kind)
    if kind == "tensorboard":
        return TensorBoardTracker(directory)
    if kind == "wandb":
        return WandbTracker(directory, name, config)
    return None


def _plain(v):
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
