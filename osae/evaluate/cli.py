"""`osae evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from osae.cli_common import user_errors
from osae.errors import UsageError

FORMAT_HELP = "Checkpoint format: osae, saelens, sparsify or dictionary_learning (default: detected from the files)."


SAE_COLUMNS = ("fvu", "l0", "dead_fraction", "ce_loss_recovered", "kl", "power_law_exponent")
PAIR_COLUMNS = ("stab", "ord")


def log_tables(result: dict, tracker) -> None:
    """The evaluation's tables, one row per SAE and one per pair, to a tracker (osae.tracking)."""
    rows = [[name, *(m.get(c) for c in SAE_COLUMNS)] for name, m in result["saes"].items()]
    tracker.log_table("evaluate/saes", ["sae", *SAE_COLUMNS], rows)
    if result["pairs"]:
        pairs = [[f"{p['a']} / {p['b']}", *(p.get(c) for c in PAIR_COLUMNS)] for p in result["pairs"]]
        tracker.log_table("evaluate/pairs", ["pair", *PAIR_COLUMNS], pairs)


def _device(name: str) -> str:
    """auto: cuda when available, else cpu (as fit and harvest choose)."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@user_errors
def evaluate_cmd(
    checkpoints: list[str] = typer.Argument(
        ..., help="Checkpoint or run directories: osae, SAELens, sparsify or dictionary_learning."
    ),
    store: str = typer.Option(
        ..., "--store", help="The store the SAEs were trained on (its evaluation split is used)."
    ),
    out: str = typer.Option(None, "--out", help="Report directory: metrics.json/.csv/.parquet, PNG plots, report.md."),
    model: str = typer.Option(None, help="Model for CE/KL (default: the one recorded in the store)."),
    no_model: bool = typer.Option(False, "--no-model", help="Skip the model-level metrics."),
    require_model: bool = typer.Option(False, help="Fail if the model cannot be loaded instead of skipping CE/KL."),
    max_tokens: int = typer.Option(1_000_000, help="Held-out tokens for reconstruction metrics."),
    lm_tokens: int = typer.Option(200_000, help="Held-out tokens for CE/KL."),
    progressive_ce: bool = typer.Option(
        True, help="CE of the first G latents for G = 16, 32, ... K (one model pass per G)."
    ),
    device: str = typer.Option("auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    pairs: str = typer.Option(
        "seeds", help="seeds: compare seeds of one configuration; all: every pair of the same width and hook."
    ),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    log_to: str = typer.Option(
        None, "--log-to", help="wandb or tensorboard: log the tables of SAEs and pairs (needs --out for its files)."
    ),
) -> None:
    """Reconstruction, CE recovered and KL, power laws, and Stab/Ord between seeds of each configuration
    (or, with --pairs all, between any two SAEs of one hook, from any library).

    Examples:
      osae evaluate runs/osae --store acts.zarr --out reports/osae
      osae evaluate runs/osae/osae-K4096-k32-s0 saelens/blocks.8.hook_resid_post --store acts.zarr --pairs all
    """
    from osae.evaluate.run import _json_default, evaluate, public, write_outputs
    from osae.tracking import check_tracker, open_tracker

    check_tracker(log_to)
    if log_to and not out:
        raise UsageError(f"--log-to {log_to} writes its files beside the report: give --out too")
    result = evaluate(
        checkpoints,
        store,
        use_model=not no_model,
        require_model=require_model,
        model=model,
        max_tokens=max_tokens,
        lm_tokens=lm_tokens,
        progressive_ce=progressive_ce,
        device=_device(device),
        pairs=pairs,
        format=format,
    )
    if out:
        write_outputs(result, Path(out))
    if log_to:
        tracker = open_tracker(log_to, Path(out), f"evaluate {Path(out).name}", {"checkpoints": checkpoints})
        try:
            log_tables(result, tracker)
        finally:
            tracker.close()
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
    checkpoint: str = typer.Argument(..., help="Checkpoint directory (osae, SAELens, sparsify, dictionary_learning)."),
    by: str = typer.Option("ea2", "--by", help="ea2 (E[z^2]) or freq (firing frequency)."),
    store: str = typer.Option(..., "--store", help="Store for the calibration tokens (its training split)."),
    out: str = typer.Option(..., "--out", help="New checkpoint directory."),
    tokens: int = typer.Option(1_000_000, help="Calibration tokens."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Reorder a trained SAE's latents by importance, as a new frozen checkpoint (reconstructions unchanged).

    Examples:
      osae permute runs/topk/topk-K4096-k32-s0 --by ea2 --store acts.zarr --out runs/topk-ea2
    """
    from osae.evaluate.permute import permute_checkpoint

    result = permute_checkpoint(checkpoint, store, out, by=by, max_tokens=tokens, format=format)
    typer.echo(f"wrote {result['out']}: latents ordered by {result['by']} ({result['moved']} moved)")


@user_errors
def inspect_cmd(
    checkpoint: str = typer.Argument(..., help="Checkpoint directory (osae, SAELens, sparsify, dictionary_learning)."),
    store: str = typer.Option(..., "--store", help="A store with token ids (harvested by osae)."),
    out: Path = typer.Option(..., "--out", help="HTML page to write."),
    latents: str = typer.Option("0:128", help="Latents to show, in index order: A:B (B exclusive) or one index."),
    tokens: int = typer.Option(200_000, help="Tokens of the split to scan for top activations."),
    top: int = typer.Option(10, help="Examples per latent."),
    before: int = typer.Option(12, help="Context tokens shown before the activating token."),
    after: int = typer.Option(4, help="Context tokens shown after it."),
    split: str = typer.Option("eval", help="eval (held-out) or train."),
    tokenizer: str = typer.Option(None, help="Tokenizer to decode ids with (default: the store's model)."),
    format: str = typer.Option(None, "--format", help=FORMAT_HELP),
    no_model: bool = typer.Option(
        False, "--no-model", help="Skip the output tokens (they load the store's model for its unembedding)."
    ),
    match_with: str = typer.Option(
        None, "--match", help="Another checkpoint: show each latent's Hungarian-matched partner and cosine."
    ),
) -> None:
    """An HTML page of latents in index order: firing rate, activation histogram, top-activating contexts and
    examples from several activation quantiles (highlighted), the output tokens each latent promotes and
    suppresses, and optionally its matched latent in another SAE.

    Examples:
      osae inspect runs/osae/osae-K4096-k32-s0 --store acts.zarr --out osae-s0.html
      osae inspect runs/topk/topk-K4096-k32-s0 --store acts.zarr --out late.html --latents 4000:4096 --top 5
    """
    from osae.evaluate.latent_page import inspect_checkpoint

    if split not in ("eval", "train"):
        raise UsageError(f"--split must be eval or train; got {split!r}")
    if top < 1 or tokens < 1 or before < 0 or after < 0:
        raise UsageError("--top and --tokens must be positive, --before and --after non-negative")
    result = inspect_checkpoint(
        checkpoint,
        store,
        out,
        latents=latents,
        max_tokens=tokens,
        top=top,
        before=before,
        after=after,
        split=split,
        tokenizer=tokenizer,
        format=format,
        use_model=not no_model,
        match_with=match_with,
    )
    typer.echo(
        f"wrote {result['out']}: {result['latents']} latents ({result['dead']} never fired) "
        f"over {result['scanned']:,} tokens"
    )
