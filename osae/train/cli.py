"""`osae fit`."""

from __future__ import annotations

import typer

from osae.cli_common import print_json, user_errors
from osae.train.architectures import ARCHITECTURES
from osae.train.config import SAESpec, TrainConfig, load_sweep


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be a comma-separated list of integers; got {text!r}") from None


@user_errors
def fit_cmd(
    store: str = typer.Option(None, "--store", help="Activation store (path or URL)."),
    out: str = typer.Option(None, "--out", help="Run directory to create."),
    resume: str = typer.Option(None, "--resume", help="Continue this run directory exactly where it stopped."),
    hook: str = typer.Option(None, help="Hook name or layer (default: the store's only hook)."),
    arch: str = typer.Option("osae", help=f"Architecture: {', '.join(ARCHITECTURES)}."),
    dict_size: int = typer.Option(4096, "--dict-size", help="Dictionary size K (latents)."),
    k: int = typer.Option(32, help="Active latents per token (m); ignored by relu and hybridorder."),
    seeds: str = typer.Option("0", help="Comma-separated seeds: one SAE each, all on the same batches."),
    sweep: str = typer.Option(None, help="JSON file listing SAEs ({arch, seeds, d_sae, k, lr, ...}); replaces --arch."),
    tokens: int = typer.Option(10_000_000, help="Training tokens."),
    batch_size: int = typer.Option(4096, help="Tokens per step (over all processes)."),
    lr: float = typer.Option(None, help="Learning rate (default 2e-4 / sqrt(K / 16384))."),
    normalization: str = typer.Option("scalar", help="none, scalar (E||x||^2 = d) or standardize."),
    prefix_law: str = typer.Option(None, help="osae: uniform, geometric, zipf, piecewise, matryoshka-marginal."),
    k_init: int = typer.Option(None, help="osae: first k of the warm-up (default: no warm-up)."),
    k_warmup_steps: int = typer.Option(0, help="osae: warm-up length in steps."),
    accum_steps: int = typer.Option(1, help="Micro-batches per optimizer update."),
    lr_schedule: str = typer.Option("constant-decay", help="constant-decay (linear to 0 over the last 20%) or cosine."),
    lr_warmup_steps: int = typer.Option(1000, help="Linear learning-rate warm-up, in steps."),
    checkpoint_every: int = typer.Option(2000, help="Steps between checkpoints."),
    nonfinite: str = typer.Option("skip", help="A batch with NaN/Inf: skip (counted) or stop."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    autocast: str = typer.Option("auto", help="bf16 autocast: auto (GPU only), bf16 or none."),
    data_seed: int = typer.Option(0, help="Shuffle seed of the shared batch stream."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Train SAEs on one hook of a store; many seeds and architectures share one pass over the data.

    Examples:
      osae fit --store acts.zarr --arch osae --dict-size 4096 --k 32 --seeds 0,1,2,3,4 --out runs/osae
      osae fit --store acts.zarr --sweep sweep.json --tokens 50000000 --out runs/compare
      osae fit --resume runs/osae
    """
    from osae.train.fit import fit

    if resume and not (store or out or sweep):
        summary = fit(resume=resume, progress=not json_out)
    else:
        if not store or not (out or resume):
            raise ValueError("give --store and --out (or --resume RUN_DIR)")
        if sweep:
            specs = load_sweep(sweep)
        else:
            config = {"d_sae": dict_size, "k": k}
            if arch == "osae":
                config.update({key: v for key, v in (("prefix_law", prefix_law), ("k_init", k_init)) if v is not None})
                if k_warmup_steps:
                    config["k_warmup_steps"] = k_warmup_steps
            specs = [SAESpec(arch=arch, seed=s, config=dict(config), lr=lr) for s in _seeds(seeds)]
        cfg = TrainConfig(store=store, out=out or resume, saes=specs, hook=hook, tokens=tokens, batch_size=batch_size,
                          normalization=normalization, accum_steps=accum_steps, checkpoint_every=checkpoint_every,
                          lr_schedule=lr_schedule, lr_warmup_steps=lr_warmup_steps,
                          nonfinite=nonfinite, device=device, autocast=autocast, data_seed=data_seed)
        summary = fit(cfg, resume=resume, progress=not json_out)
    if json_out:
        print_json(summary)
    elif summary.get("already_finished"):
        typer.echo(f"{summary['out']} has already finished")
    else:
        typer.echo(f"trained {len(summary['saes'])} SAE(s) for {summary['tokens']:,} tokens in {summary['out']}")


@user_errors
def export_cmd(
    checkpoint: str = typer.Argument(..., help="Frozen checkpoint directory (RUN/NAME)."),
    format: str = typer.Option("saelens", "--format", help="Target format: saelens."),
    out: str = typer.Option(..., "--out", help="Directory to write."),
) -> None:
    """Write a checkpoint in another library's format (SAELens: cfg.json + sae_weights.safetensors).

    Examples:
      osae export runs/osae/osae-K4096-k32-s0 --format saelens --out saelens/osae-s0
    """
    from osae.train.export import export_saelens

    if format != "saelens":
        raise ValueError(f"--format must be saelens; got {format!r}")
    result = export_saelens(checkpoint, out)
    typer.echo(f"wrote a SAELens '{result['architecture']}' SAE to {result['out']}")
