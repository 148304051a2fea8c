"""`fit`: train SAEs on one hook of a store through the shuffled loader (and resume such a run)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from osae.distributed import Collective, barrier, init_distributed
from osae.errors import OsaeError, UsageError
from osae.store import ActivationStore, LoaderConfig, Normalizer, ShuffledLoader, load_rows, store_fingerprint
from osae.tracking import check_tracker, open_tracker
from osae.train.config import RESOLVED_KEY, TrainConfig
from osae.train.run_dir import config_differences, plan_run, saved_config, start_fresh
from osae.train.trainer import Trainer

log = logging.getLogger(__name__)


def _device(name: str, rank: int) -> torch.device:
    """auto: this process's GPU if there is one, else the CPU. A bare `cuda` also means this process's GPU
    (LOCAL_RANK), so that several processes never pile onto GPU 0."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}")
    if name == "auto":
        return torch.device("cpu")
    return torch.device(name)


def _init_rows(store: ActivationStore, hook: str, normalizer: Normalizer, n: int = 4096) -> torch.Tensor:
    """The first n training rows in training units, for the data-dependent initialisation."""
    x = load_rows(store, hook, "train", max_tokens=n)
    if not len(x):
        raise UsageError(f"{store.loc.display} has no training rows for hook '{hook}'; fit needs some")
    return normalizer.forward(x)


def _open_and_check(cfg: TrainConfig, world: int) -> tuple[ActivationStore, str, int]:
    """Everything that can be checked before a file is written: the store, the hook, the batch split over
    processes and every SAE's configuration at the store's width."""
    if cfg.parallel == "data" and cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    if cfg.parallel == "sae" and world > len(cfg.saes):
        raise UsageError(
            f"--parallel sae gives each of the {world} processes its own SAEs, but the run has {len(cfg.saes)}: "
            f"train more SAEs, use fewer processes, or use --parallel data"
        )
    store = ActivationStore(cfg.store)
    hook = store.resolve_hook(cfg.hook)
    d_in = store.d_model(hook)
    for spec in cfg.saes:
        try:
            spec.build_config(d_in, cfg.n_steps)
        except UsageError:
            raise  # already names the SAE
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{spec.name}: {str(exc).splitlines()[0]}") from None
    return store, hook, d_in


def _resolved(saved: dict) -> dict:
    """A saved run configuration in today's resolved form (as it would be written now), for comparisons."""
    try:
        return TrainConfig.from_dict(saved).to_dict()
    except (OsaeError, ValueError, TypeError):  # unreadable by this version: compared as it is, so it differs
        return saved


def _as_started(cfg: TrainConfig, out: Path, d_in: int, device_type: str) -> TrainConfig:
    """The run `cfg` resumes with the values it derived when it started (run.json's record), where this
    osae's rules derive others (its defaults changed since, or this machine picks another autocast): a run
    never changes recipe halfway."""
    then = saved_config(out).get(RESOLVED_KEY)
    if not isinstance(then, dict):  # started by an osae that kept no record
        return cfg
    now = _flat(cfg.resolved(d_in, device_type))
    recorded = _flat(then)  # a value the record lacks (an older osae derived none) takes today's
    diff = config_differences(recorded, {k: v for k, v in now.items() if k in recorded})
    if not diff:
        return cfg
    log.warning(
        "the osae that started %s derived other values than this one (%s); the run keeps its own",
        out,
        "; ".join(diff),
    )
    return cfg.as_resolved(then)


def _flat(resolved: dict) -> dict:
    """A resolved record as one level: run-wide keys, then '<sae> <key>'."""
    flat = {k: v for k, v in resolved.items() if k != "saes"}
    for name, vals in resolved.get("saes", {}).items():
        flat.update({f"{name} {k}": v for k, v in vals.items()})
    return flat


def _describe(resolved: dict) -> str:
    """One line of the resolved values: run-wide ones, then each SAE's."""
    run = ", ".join(f"{k}={v}" for k, v in resolved.items() if k != "saes")
    per_sae = "; ".join(
        f"{name}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in vals.items())
        for name, vals in resolved["saes"].items()
    )
    return f"{run}; {per_sae}"


def _old_sae_names(out: Path) -> list[str]:
    """Names of the SAEs an earlier run in `out` had (to remove them on --overwrite or a restart)."""
    try:
        return [spec.name for spec in TrainConfig.from_dict(saved_config(out)).saes]
    except (OsaeError, ValueError, TypeError):  # not a run, or one this version cannot parse: remove only ours
        return []


def fit(
    cfg: TrainConfig | None = None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log_to: str | None = None,
) -> dict:
    """Train the run `cfg`, or continue it: the same configuration on the same --out resumes from the last
    checkpoint (osae.train.run_dir). `resume` names a run directory to continue with its saved configuration.
    `log_to` streams the metrics to wandb or tensorboard (osae.tracking); it is not part of the run's identity."""
    check_tracker(log_to)
    rank, world = init_distributed()
    if resume is not None:
        saved = saved_config(Path(resume))
        if cfg is not None:
            diff = config_differences({**_resolved(saved), "out": None}, {**cfg.to_dict(), "out": None})
            if diff:
                raise UsageError(
                    f"--resume with changed arguments ({'; '.join(diff)}); resume without them or start a new run"
                )
        cfg = TrainConfig.from_dict({**saved, "out": str(resume)})  # a moved or copied run resumes where it is
    assert cfg is not None
    store, hook, d_in = _open_and_check(cfg, world)
    out = Path(cfg.out)
    plan = plan_run(out, cfg.to_dict(), overwrite=overwrite, resolve=_resolved)
    barrier(world)  # every process has looked before process 0 changes anything
    log.info("%s", plan.note)
    if plan.action == "finished":
        return {"out": str(out), "already_finished": True}
    device = _device(cfg.device, rank)
    if plan.action == "resume":
        cfg = _as_started(cfg, out, d_in, device.type)
    resolved = cfg.resolved(d_in, device.type)
    log.info("derived from the run's length, width and machine: %s", _describe(resolved))
    if plan.action == "fresh" and rank == 0:
        record = {**cfg.to_dict(), RESOLVED_KEY: resolved}
        start_fresh(out, record, sorted({*_old_sae_names(out), *(s.name for s in cfg.saes)}))
    barrier(world)
    normalizer = Normalizer.from_store(store, hook, cfg.normalization)
    stats = store.stats(hook)
    if cfg.normalization == "standardize":
        total_var = float((stats["var"] > 0).sum())  # every varying dimension has unit variance
    else:
        total_var = float(stats["var"].sum()) * (normalizer.scale**2 if cfg.normalization == "scalar" else 1.0)
    # --parallel sae: every process reads the whole batches, as one process would.
    shards = (rank, world) if cfg.parallel == "data" else (0, 1)
    loader = ShuffledLoader(
        store,
        hook,
        LoaderConfig(
            batch_size=cfg.batch_size // shards[1],
            buffer_bytes=cfg.buffer_bytes,
            seed=cfg.data_seed,
            rank_mode=cfg.rank_data,
        ),
        normalizer=normalizer,
        rank=shards[0],
        world_size=shards[1],
    )
    meta = {
        "store": store.loc.display,
        "store_fingerprint": store_fingerprint(store),
        "hook": hook,
        "hook_info": store.hooks[hook],
        "run": str(out),
    }
    tracker = open_tracker(log_to, out, out.name, cfg.to_dict()) if rank == 0 else None
    trainer = Trainer(
        cfg,
        loader,
        d_in=d_in,
        normalizer=normalizer,
        meta=meta,
        init_rows=_init_rows(store, hook, normalizer),
        device=device,
        collective=Collective(rank, world, device),
        progress=progress,
        total_variance=total_var,
        tracked=log_to is not None,
        tracker=tracker,
    )
    try:
        if plan.action == "resume":
            trainer.restore()
        return {"out": str(out), **trainer.run()}
    finally:
        if tracker is not None:
            tracker.close()
