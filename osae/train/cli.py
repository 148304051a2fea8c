"""`osae fit` and `osae export`.

`osae fit` has one option per architecture setting, generated from the registry (osae.train.arch_settings):
its name from the field, its help from the field's docstring and the architectures that have it.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from osae.cli_common import print_json, user_errors
from osae.cli_config import given_options, merge_options, print_config, read_mapping
from osae.errors import UsageError
from osae.train.arch_settings import settings
from osae.train.architectures import ARCHITECTURES
from osae.train.config import SAESpec, TrainConfig, load_sweep
from osae.train.run_saes import override_specs, specs_from_options

# `osae fit` options that are TrainConfig fields of the same name (they override a --config file's values).
RUN_FIELDS = (
    "store",
    "out",
    "hook",
    "tokens",
    "batch_size",
    "normalization",
    "accum_steps",
    "lr_schedule",
    "lr_warmup_steps",
    "dead_window_tokens",
    "checkpoint_every",
    "nonfinite",
    "device",
    "autocast",
    "data_seed",
    "parallel",
    "optimizer",
    "loss_scale",
)
SETTINGS_PANEL = "Architecture settings"


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be a comma-separated list of integers; got {text!r}") from None


def _scalar(tp):
    """int, float or str of a field type `X` or `X | None`."""
    for t in (int, float, str):
        if tp is t or t in getattr(tp, "__args__", ()):
            return t
    raise TypeError(f"no command-line type for {tp}")


def with_setting_options(fn):
    """Give `fn` (which takes **settings) one keyword option per architecture setting, default None (not
    given); typer reads a command's parameters from its `__signature__`. List settings are comma-separated."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for s in settings():
        option = typer.Option(
            None,
            s.option,
            help=s.help(),
            show_default=False,
            rich_help_panel=SETTINGS_PANEL,
            metavar="<a,b,...>" if s.is_list else None,
        )
        annotation = str if s.is_list else _scalar(s.type)
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    fn.__signature__ = sig.replace(parameters=params)
    return fn


def _setting_values(values: dict) -> dict:
    """Field -> value of the settings options that were given (None: not given)."""
    return {s.name: s.from_text(values[s.name]) for s in settings() if values.get(s.name) is not None}


def run_config(
    values: dict, given: set[str], settings_given: dict, *, config: str | None, sweep: str | None
) -> TrainConfig:
    """The TrainConfig a command line means: the --config file's, with the options typed on the command line
    replacing its values. SAEs: --arch (with --seeds, --lr and the settings), else --sweep's or the file's
    list with the given settings, --lr and --seeds applied to it, else the default --arch."""
    base = read_mapping(config) if config else {}
    d = merge_options(base, values, given, {name: name for name in RUN_FIELDS})
    if "arch" in given and sweep:
        raise UsageError("give --arch or --sweep, not both")
    seeds = _seeds(values["seeds"])
    if "arch" in given or not (sweep or "saes" in base):
        saes = specs_from_options(values["arch"], seeds, values["lr"], settings_given)
    else:
        listed = (
            load_sweep(sweep)
            if sweep
            else [SAESpec.from_dict(s) if isinstance(s, dict) else s for s in _sae_list(base["saes"], config)]
        )
        saes = override_specs(listed, settings_given, lr=values["lr"], seeds=seeds if "seeds" in given else None)
    if not d.get("store") or not d.get("out"):
        raise UsageError("give --store and --out (or --resume RUN_DIR, or --config FILE holding them)")
    return TrainConfig.from_dict({**d, "saes": [s.to_dict() for s in saes]}, strict=True)


def _sae_list(saes, path: str) -> list:
    if not isinstance(saes, list):
        raise UsageError(f"config file {path}: saes must be a list of SAE entries; got {saes!r}")
    return saes


@user_errors
@with_setting_options
def fit_cmd(
    ctx: typer.Context,
    store: str = typer.Option(None, "--store", help="Activation store (path or URL)."),
    out: str = typer.Option(None, "--out", help="Run directory; the same command on it again resumes the run."),
    resume: str = typer.Option(None, "--resume", help="Continue this run directory exactly where it stopped."),
    config: str = typer.Option(
        None,
        "--config",
        help="A run's resolved config (RUN/run.json, or YAML) to start "
        "from; options given on the command line replace its values.",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Resolve and check everything (the store, its hook, every "
        "SAE's settings), print the resolved config as JSON and stop: nothing is written.",
    ),
    hook: str = typer.Option(None, help="Hook name or layer (default: the store's only hook)."),
    arch: str = typer.Option("osae", help=f"Architecture: {', '.join(ARCHITECTURES)}."),
    seeds: str = typer.Option("0", help="Comma-separated seeds: one SAE each, all on the same batches."),
    sweep: str = typer.Option(
        None, help="JSON/YAML file listing SAEs ({arch, seeds, d_sae, k, lr, ...}); replaces --arch."
    ),
    tokens: int = typer.Option(10_000_000, help="Training tokens."),
    batch_size: int = typer.Option(4096, help="Tokens per step (over all processes)."),
    lr: float = typer.Option(
        None,
        help="Peak learning rate (default: the optimizer's rule; adam-lazy's is 6e-3 * (rows per update / K)^0.87, "
        "adam's 5e-3 * (rows per update / K)^0.75, signum-sf's 5e-3 / sqrt(K / 2^14)).",
    ),
    normalization: str = typer.Option("scalar", help="none, scalar (E||x||^2 = d) or standardize."),
    accum_steps: int = typer.Option(1, help="Micro-batches per optimizer update."),
    lr_schedule: str = typer.Option("constant-decay", help="constant-decay (linear to 0 over the last 20%) or cosine."),
    lr_warmup_steps: int = typer.Option(
        None,
        help="Linear learning-rate warm-up, in steps (default: half the run under the Adams, 5% under "
        "signum-sf and adam-sf; at most 1000).",
    ),
    dead_window_tokens: int = typer.Option(
        None,
        help="Tokens without firing before a latent counts as dead (default, per SAE: a fortieth of the run "
        "but at least 200 K / k, at most 10M).",
    ),
    checkpoint_every: int = typer.Option(2000, help="Steps between checkpoints."),
    nonfinite: str = typer.Option("skip", help="A batch with NaN/Inf: skip (counted) or stop."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    autocast: str = typer.Option(
        "auto", help="bf16 autocast: auto (GPU; CPU with AMX or AVX512-BF16, SAEs of 256 x 4096 and up), bf16 or none."
    ),
    data_seed: int = typer.Option(0, help="Shuffle seed of the shared batch stream."),
    optimizer: str = typer.Option(
        "adam-lazy",
        help="adam-lazy (Adam that moves a latent only in steps where it has a gradient: as good an FVU as "
        "adam's, fewer dead latents), adam (torch's), signum-sf (sign descent under schedule-free averaging; "
        "better in runs of a few hundred steps, docs/fit.md) or adam-sf (schedule-free Adam).",
    ),
    loss_scale: str = typer.Option("mse", help="mse, or fvu (the loss divided by the batch's variance)."),
    parallel: str = typer.Option(
        "data",
        help="Several processes: data (each holds a slice of every batch) or sae (each trains its share of the "
        "SAEs on whole batches).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="--out holds a run with other settings: remove that run's files (nothing else) and start afresh.",
    ),
    log_to: str = typer.Option(
        None,
        "--log-to",
        help="wandb or tensorboard: stream loss, FVU, L0, dead fraction and lr (optional extras; not part of the "
        "run's identity, so a run resumes with or without it).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    **setting_options,
) -> None:
    """Train SAEs on one hook of a store; many seeds and architectures share one pass over the data.

    Every architecture setting has an option (--prefix-law, --l1-coef, ...); it applies to the architectures
    that have that field. With --sweep or --config, settings, --lr and --seeds given on the command line
    apply to every listed SAE that has them.

    Examples:
      osae fit --store acts.zarr --arch osae --dict-size 4096 --k 32 --seeds 0,1,2,3,4 --out runs/osae
      osae fit --store acts.zarr --sweep sweep.json --tokens 50000000 --out runs/compare
      osae fit --config runs/osae/run.json --out runs/osae-long --tokens 50000000 --dry-run
      osae fit --resume runs/osae
    """
    from osae.train.fit import fit

    given = given_options(ctx)
    values = dict(ctx.params)
    settings_given = _setting_values(setting_options)
    if resume and not (store or out or sweep or config or settings_given):
        if dry_run:  # the run directory's own config, checked against its store
            _dry_run(_saved_config(resume), overwrite=False)
            return
        summary = fit(resume=resume, progress=not json_out, log_to=log_to)
    else:
        if resume and not out:
            values["out"], given = resume, given | {"out"}
        cfg = run_config(values, given, settings_given, config=config, sweep=sweep)
        if dry_run:
            _dry_run(cfg, overwrite=overwrite)
            return
        summary = fit(cfg, resume=resume, overwrite=overwrite, progress=not json_out, log_to=log_to)
    if json_out:
        print_json(summary)
    elif summary.get("already_finished"):
        typer.echo(f"{summary['out']} has already finished")
    else:
        typer.echo(f"trained {len(summary['saes'])} SAE(s) for {summary['tokens']:,} tokens in {summary['out']}")


def _saved_config(run_dir: str) -> TrainConfig:
    from osae.train.run_dir import saved_config

    return TrainConfig.from_dict(saved_config(Path(run_dir)))


def _dry_run(cfg: TrainConfig, *, overwrite: bool) -> None:
    from osae.train.dry_run import check_run

    found = check_run(cfg, overwrite=overwrite)
    print_config(cfg.to_dict())
    typer.echo(
        f"dry run, nothing written: {len(found['saes'])} SAE(s) ({', '.join(found['saes'])}) on hook "
        f"{found['hook']} (d_in={found['d_in']}) of {found['store']}, {found['steps']:,} steps; without "
        f"--dry-run: {found['note']}",
        err=True,
    )


@user_errors
def export_cmd(
    checkpoint: str = typer.Argument(..., help="Frozen checkpoint directory (RUN/NAME)."),
    format: str = typer.Option("saelens", "--format", help="Target format: saelens or sparsify."),
    out: str = typer.Option(..., "--out", help="Directory to write."),
) -> None:
    """Write a checkpoint in another library's format (SAELens: cfg.json + sae_weights.safetensors;
    sparsify: cfg.json + sae.safetensors).

    Examples:
      osae export runs/osae/osae-K4096-k32-s0 --format saelens --out saelens/osae-s0
      osae export runs/topk/topk-K4096-k32-s0 --format sparsify --out sparsify/layers.3
    """
    from osae.train.export import export

    result = export(checkpoint, out, format)
    typer.echo(f"wrote a {format} '{result['architecture']}' SAE to {result['out']}")
