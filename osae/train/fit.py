"""`fit`: train SAEs on one hook of a store through the shuffled loader (and resume such a run)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from osae.distributed import barrier, init_distributed
from osae.errors import CheckpointError
from osae.store.loader import LoaderConfig, ShuffledLoader, iter_split_rows
from osae.store.normalize import Normalizer
from osae.store.reader import ActivationStore, to_float32
from osae.store.tools import store_fingerprint
from osae.train.config import TrainConfig
from osae.train.trainer import RUN_CONFIG, RUN_STATE, Trainer

log = logging.getLogger(__name__)


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}")
        return torch.device("cpu")
    return torch.device(name)


def _init_rows(store: ActivationStore, hook: str, normalizer: Normalizer, n: int = 4096) -> torch.Tensor:
    rows = [r for _, r in iter_split_rows(store, hook, "train", max_rows=n)]
    x = torch.from_numpy(to_float32(np.concatenate(rows), store.dtype(hook)))
    return normalizer.forward(x)


def config_differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def fit(cfg: TrainConfig | None = None, *, resume: str | None = None, progress: bool = True) -> dict:
    """Train the run `cfg` from scratch, or continue the run directory `resume` (cfg, if given, must match)."""
    rank, world = init_distributed()
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / RUN_CONFIG).exists():
            raise CheckpointError(f"{run_dir} is not an osae run directory (no {RUN_CONFIG})")
        saved = json.loads((run_dir / RUN_CONFIG).read_text())
        if cfg is not None:
            diff = config_differences(saved, {**cfg.to_dict(), "out": saved["out"]})
            if diff:
                raise ValueError(f"--resume with changed arguments ({'; '.join(diff)}); resume without them or start a new run")
        cfg = TrainConfig.from_dict(saved)
        if not (run_dir / RUN_STATE).exists():
            raise CheckpointError(f"{run_dir} has no checkpoint yet; start it again without --resume")
        if json.loads((run_dir / RUN_STATE).read_text()).get("finished"):
            log.info("%s has already finished", run_dir)
            return {"out": str(run_dir), "already_finished": True}
    assert cfg is not None
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    store = ActivationStore(cfg.store)
    hook = store.resolve_hook(cfg.hook)
    d_in = store.d_model(hook)
    for spec in cfg.saes:
        if spec.config.get("k", 1) > spec.config.get("d_sae", 4096):
            raise ValueError(f"{spec.name}: k={spec.config.get('k')} is larger than the dictionary size {spec.config.get('d_sae')}")
    out = Path(cfg.out)
    if resume is None:
        exists = (out / RUN_CONFIG).exists()
        barrier(world)  # every process looks before process 0 writes
        if exists:
            raise ValueError(f"{out} already holds a run; resume it with `osae fit --resume {out}` or choose another --out")
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / RUN_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))
        barrier(world)
    normalizer = Normalizer.from_store(store, hook, cfg.normalization)
    stats = store.stats(hook)
    if cfg.normalization == "standardize":
        total_var = float((stats["var"] > 0).sum())  # every varying dimension has unit variance
    else:
        total_var = float(stats["var"].sum()) * (normalizer.scale ** 2 if cfg.normalization == "scalar" else 1.0)
    loader = ShuffledLoader(
        store, hook, LoaderConfig(batch_size=cfg.batch_size // world, buffer_bytes=cfg.buffer_bytes, seed=cfg.data_seed,
                                  rank_mode=cfg.rank_data),
        normalizer=normalizer, rank=rank, world_size=world)
    meta = {"store": store.loc.display, "store_fingerprint": store_fingerprint(store), "hook": hook,
            "hook_info": store.hooks[hook], "run": str(out)}
    trainer = Trainer(cfg, loader, d_in=d_in, normalizer=normalizer, meta=meta,
                      init_rows=_init_rows(store, hook, normalizer), device=_device(cfg.device, rank), rank=rank,
                      world=world, loader=loader, progress=progress, total_variance=total_var)
    if resume is not None:
        state = trainer.restore()
        if state.get("loader"):
            loader.load_state(state["loader"])
    return {"out": str(out), **trainer.run()}
