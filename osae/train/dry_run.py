"""`osae fit --dry-run`: check a run against its store as `fit` would before writing, and write nothing."""

from __future__ import annotations

from pathlib import Path

from osae.train.config import TrainConfig
from osae.train.run_dir import plan_run


def check_run(cfg: TrainConfig, *, overwrite: bool = False) -> dict:
    """Open the store, resolve the hook, build every SAE's config for the store's d_in, and decide what `fit`
    would do with --out (start, resume, nothing; or refuse). Raises what `fit` would refuse; returns
    {"store", "hook", "d_in", "saes" (run-directory names), "steps", "action", "note"}."""
    from osae.store import ActivationStore

    store = ActivationStore(cfg.store)
    hook = store.resolve_hook(cfg.hook)
    d_in = store.d_model(hook)
    cfg.check_width(d_in)
    plan = plan_run(Path(cfg.out), cfg.to_dict(), overwrite=overwrite)
    return {
        "store": store.loc.display,
        "hook": hook,
        "d_in": d_in,
        "saes": [s.name for s in cfg.saes],
        "steps": cfg.n_steps,
        "action": plan.action,
        "note": plan.note,
    }
