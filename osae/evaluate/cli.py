"""`osae evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from osae.cli_common import user_errors


@user_errors
def evaluate_cmd(
    checkpoints: list[str] = typer.Argument(..., help="Checkpoint directories or run directories."),
    store: str = typer.Option(..., "--store", help="The store the SAEs were trained on (its evaluation split is used)."),
    out: str = typer.Option(None, "--out", help="Report directory: metrics.json/.csv/.parquet, PNG plots, report.md."),
    model: str = typer.Option(None, help="Model for CE/KL (default: the one recorded in the store)."),
    no_model: bool = typer.Option(False, "--no-model", help="Skip the model-level metrics."),
    require_model: bool = typer.Option(False, help="Fail if the model cannot be loaded instead of skipping CE/KL."),
    max_tokens: int = typer.Option(1_000_000, help="Held-out tokens for reconstruction metrics."),
    lm_tokens: int = typer.Option(200_000, help="Held-out tokens for CE/KL."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
) -> None:
    """Reconstruction, CE recovered and KL, power laws, and Stab/Ord between seeds of each configuration.

    Examples:
      osae evaluate runs/osae --store acts.zarr --out reports/osae
      osae evaluate runs/osae/osae-K4096-k32-s0 runs/osae/osae-K4096-k32-s1 --store acts.zarr --json
    """
    from osae.evaluate.run import _json_default, evaluate, public, write_outputs

    result = evaluate(checkpoints, store, use_model=not no_model, require_model=require_model, model=model,
                      max_tokens=max_tokens, lm_tokens=lm_tokens, device=device)
    if out:
        write_outputs(result, Path(out))
    if json_out:
        typer.echo(json.dumps(public(result), indent=1, default=_json_default))
        return
    for name, m in result["saes"].items():
        ce = f"{m['ce_loss_recovered']:.3f}" if m.get("ce_loss_recovered") is not None else "n/a"
        typer.echo(f"{name:32s} FVU {m['fvu']:.3f}  L0 {m['l0']:.1f}  CE recovered {ce}  dead {m['dead_fraction']:.3f}")
    for p in result["pairs"]:
        typer.echo(f"{p['a']} / {p['b']}: Stab {p['stab']:.3f}  Ord {p['ord']:.3f}")
    for key, note in result["notes"].items():
        typer.echo(f"note ({key}): {note}", err=True)


@user_errors
def permute_cmd(
    checkpoint: str = typer.Argument(..., help="Frozen checkpoint directory."),
    by: str = typer.Option("ea2", "--by", help="ea2 (E[z^2]) or freq (firing frequency)."),
    store: str = typer.Option(..., "--store", help="Store for the calibration tokens (its training split)."),
    out: str = typer.Option(..., "--out", help="New checkpoint directory."),
    tokens: int = typer.Option(1_000_000, help="Calibration tokens."),
) -> None:
    """Reorder a trained SAE's latents by importance, as a new frozen checkpoint (reconstructions unchanged).

    Examples:
      osae permute runs/topk/topk-K4096-k32-s0 --by ea2 --store acts.zarr --out runs/topk-ea2
    """
    from osae.evaluate.permute import permute_checkpoint

    result = permute_checkpoint(checkpoint, store, out, by=by, max_tokens=tokens)
    typer.echo(f"wrote {result['out']}: latents ordered by {result['by']} ({result['moved']} moved)")
