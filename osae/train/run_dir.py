"""A run directory's lifecycle: what `osae fit` does with the --out it is given, so no run is ever stranded.

- no run there (absent or empty): start it;
- the same run (same resolved configuration): resume it from its last checkpoint, or, with no checkpoint
  yet, start it again from scratch; a finished run is left as it is;
- another run (the configuration differs): refused with the differences, unless `overwrite`, which removes
  that run's own files (never anything else in the directory) and starts afresh.
A directory with files but no run.json is not a run: refused, nothing is touched.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from osae.errors import CheckpointError, UsageError

RUN_CONFIG = "run.json"
RUN_STATE = "run_state.json"
CURVES = "training_curves.png"


@dataclass
class RunPlan:
    action: str
    """fresh (start from step 0), resume (from the last checkpoint) or finished (nothing to do)."""
    note: str
    """One line for the log: why."""


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); it is not a {what} osae can read") from None


def config_differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def plan_run(
    out: Path, config: dict, *, overwrite: bool = False, resolve: Callable[[dict], dict] = lambda d: d
) -> RunPlan:
    """Decide what to do with run directory `out` for the resolved configuration `config` (TrainConfig.to_dict).
    `resolve` brings a saved configuration to today's resolved form (older osae versions saved fewer keys)."""
    if not (out / RUN_CONFIG).exists():
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file; give a directory for the run")
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"{out} holds files but no osae run ({RUN_CONFIG}); choose an empty or new --out")
        return RunPlan("fresh", f"starting a new run in {out}")
    saved = read_json(out / RUN_CONFIG, "run configuration")
    if overwrite:
        return RunPlan("fresh", f"--overwrite: removing the run in {out} and starting afresh")
    diff = config_differences({**resolve(saved), "out": None}, {**config, "out": None})
    if diff:
        raise UsageError(
            f"{out} holds a run with other settings ({'; '.join(diff)}); to resume it, run its original "
            f"command or `osae fit --resume {out}` (its saved settings, also after an osae upgrade changed a "
            f"default); add --overwrite to start afresh, or choose another --out"
        )
    if not (out / RUN_STATE).exists():
        return RunPlan("fresh", f"{out} has no checkpoint yet: starting it again from the beginning")
    if read_json(out / RUN_STATE, "run state").get("finished"):
        return RunPlan("finished", f"{out} has already finished")
    return RunPlan("resume", f"resuming {out} from its last checkpoint")


def saved_config(out: Path) -> dict:
    """The resolved configuration a run directory was started with."""
    if not (out / RUN_CONFIG).exists():
        raise CheckpointError(f"{out} is not an osae run directory (no {RUN_CONFIG})")
    return read_json(out / RUN_CONFIG, "run configuration")


def start_fresh(out: Path, config: dict, sae_names: list[str]) -> None:
    """Remove what an earlier attempt at a run in `out` wrote (the SAE directories `sae_names`, its state and
    configuration, nothing else), then write `config` as run.json atomically."""
    for name in sae_names:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (RUN_STATE, RUN_STATE + ".tmp", CURVES):
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (RUN_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, out / RUN_CONFIG)
