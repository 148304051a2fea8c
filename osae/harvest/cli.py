"""`osae harvest`."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from osae.cli_common import print_json, user_errors
from osae.cli_config import given_options, merge_options, print_config, read_mapping
from osae.harvest.config import HarvestConfig
from osae.harvest.hooks import HOOKS
from osae.harvest.models import EMBEDDED_NAME, resolve_model_name

# harvest_cmd parameter -> HarvestConfig field (the options a --config file's values yield to).
FIELDS = {
    "out": "out",
    "layer": "layers",
    **{
        name: name
        for name in (
            "hook",
            "model",
            "revision",
            "dtype",
            "device",
            "trust_remote_code",
            "dataset",
            "text_column",
            "split",
            "dataset_config",
            "tokens",
            "context_size",
            "batch_size",
            "windows",
            "include_bos",
            "store_dtype",
            "compressor",
            "eval_fraction",
            "overwrite",
        )
    },
}


@user_errors
def harvest_cmd(
    ctx: typer.Context,
    out: str = typer.Option(
        None, "--out", help="Store to write: a local path or s3:// URL (required unless --config gives it)."
    ),
    config: str = typer.Option(
        None,
        "--config",
        help="A harvest config (JSON or YAML, as --dry-run prints it) to "
        "start from; options given on the command line replace its values.",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Resolve and check the config (and the model name), print "
        "it as JSON and stop: no model is loaded and nothing is written.",
    ),
    layer: list[int] = typer.Option(
        [3], "--layer", help="Block index (0-based); repeat for several layers in one pass."
    ),
    hook: str = typer.Option("resid_post", help=f"Hook point: {', '.join(HOOKS)}."),
    model: str = typer.Option(
        None,
        help=f"Alias (pythia-70m, gemma-2-2b, ...), local directory or hub id; default: the embedded {EMBEDDED_NAME}.",
    ),
    revision: str = typer.Option(None, help="Hub revision (branch, tag or commit)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto (float32 on CPU), float32, float16, bfloat16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    trust_remote_code: bool = typer.Option(False, help="Run code from the model repository (off unless asked)."),
    dataset: str = typer.Option(
        "python-stdlib",
        help="Hub dataset id (streamed), local .txt/.jsonl/.parquet file or directory, or python-stdlib.",
    ),
    text_column: str = typer.Option("text", help="Column or field holding the text."),
    split: str = typer.Option("train", help="Dataset split (hub datasets)."),
    dataset_config: str = typer.Option(None, help="Dataset configuration name (hub datasets)."),
    tokens: int = typer.Option(1_000_000, help="Activations (tokens) to store per hook; whole windows, so a few more."),
    context_size: int = typer.Option(128, help="Tokens per window, BOS included."),
    batch_size: int = typer.Option(32, help="Windows per forward pass."),
    windows: str = typer.Option(
        "packed",
        help="packed (default): documents joined with EOS, every window full; "
        "document: one document per window, padding never stored.",
    ),
    include_bos: bool = typer.Option(False, help="Also store the BOS position (excluded by default: an outlier)."),
    store_dtype: str = typer.Option(
        "auto", help="Stored dtype: auto (bfloat16 for bfloat16 models, else float16), float16, bfloat16, float32."
    ),
    compressor: str = typer.Option("none", help="none, zstd, lz4 or blosc-zstd."),
    eval_fraction: float = typer.Option(0.02, help="Share of chunks held out as the evaluation split."),
    overwrite: bool = typer.Option(False, help="Replace an existing store made with other arguments."),
    num_processes: int = typer.Option(1, help="Run this many local processes (torchrun); or use accelerate launch."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Run a causal LM over text and store the activations of the chosen hook points.

    Re-running the same command after an interruption resumes; the result equals an uninterrupted run.

    Examples:
      osae harvest --layer 3 --out acts.zarr  # embedded model, offline
      osae harvest --config harvest.yaml --tokens 2000000 --dry-run
      osae harvest --model pythia-70m --layer 3 --dataset monology/pile-uncopyrighted --tokens 50000000 --out pile.zarr
      accelerate launch -m osae harvest --model gemma-2-2b --layer 12 --out gemma.zarr
    """
    base = read_mapping(config) if config else {}
    cfg = HarvestConfig.from_dict(merge_options(base, dict(ctx.params), given_options(ctx), FIELDS), strict=True)
    if dry_run:
        source = resolve_model_name(cfg.model)  # an unknown alias or missing directory fails here
        print_config(cfg.to_dict())
        typer.echo(
            f"dry run, nothing written: layers {cfg.layers} ({cfg.hook}) of {source}, {cfg.tokens:,} tokens "
            f"into {cfg.out}",
            err=True,
        )
        return
    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", 1)) == 1:
        args, skip = [], False
        for a in sys.argv[1:]:  # the same command without --num-processes, once per process
            if skip:
                skip = False
            elif a == "--num-processes":
                skip = True
            elif not a.startswith("--num-processes="):
                args.append(a)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={num_processes}",
            "-m",
            "osae",
            *args,
        ]
        raise typer.Exit(subprocess.call(cmd))
    from osae.harvest.runner import harvest

    summary = harvest(cfg, progress=not json_out)
    if summary and json_out:
        print_json(summary)
    elif summary:
        typer.echo(
            f"{summary['out']}: {summary['n_tokens']:,} tokens"
            + (" (already complete)" if summary.get("already_complete") else "")
        )
