"""`osae store ...` commands: info, verify, copy, import, export."""

from __future__ import annotations

from pathlib import Path

import typer

from osae.cli_common import fail, print_json, user_errors
from osae.store import tools
from osae.store.core.format import COMPRESSORS
from osae.store.integrity import finding_line

app = typer.Typer(help="Inspect, verify and copy activation stores.", no_args_is_help=True)


def _human(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@app.command("info")
@user_errors
def info_cmd(
    store: str = typer.Argument(..., help="Store path or URL (s3://, gs://, http(s)://)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Hooks, shape, dtype, committed tokens, size, compression, provenance and the content fingerprint.

    Examples:
      osae store info acts.zarr
      osae store info s3://team-bucket/pythia-70m-l3.zarr --json
    """
    meta = tools.info(store)
    if json_out:
        print_json(meta)
        return
    typer.echo(f"store        {meta['location']}  (format {meta['format_version']}, osae {meta['osae_version']})")
    state = "complete" if meta["complete"] else "NOT complete (being written or interrupted)"
    typer.echo(f"tokens       {meta['n_tokens']:,} in {meta['n_sequences']:,} sequences, {state}")
    for name, h in meta["hooks"].items():
        typer.echo(f"hook         {name}: layer {h['layer']}, d_model {h['d_model']}, {h['dtype']}")
    typer.echo(f"model        {meta['model']}")
    typer.echo(f"dataset      {meta['dataset']}")
    typer.echo(f"context      {meta['context_size']}  token ids: {'yes' if meta['has_tokens'] else 'no'}")
    ratio = f"{meta['compression_ratio']:.3f}" if meta["compression_ratio"] else "unknown"
    typer.echo(
        f"size         {_human(meta['nbytes'])} of rows, {_human(meta['nbytes_stored'])} stored "
        f"(ratio {ratio}, compressor {meta['compressor']})"
    )
    typer.echo(f"layout       chunks of {meta['chunk_rows']} rows, shards of {meta['shard_rows']} rows")
    split = meta["split"]
    typer.echo(
        f"split        train {split['train_tokens']:,} / eval {split['eval_tokens']:,} tokens; "
        f"{split['straddling_tokens']:,} in sequences across a train/eval boundary, in neither"
    )
    typer.echo(f"fingerprint  {meta['fingerprint'] or meta.get('fingerprint_error', 'none (no digests)')}")


@app.command("verify")
@user_errors
def verify_cmd(
    store: str = typer.Argument(..., help="Store path or URL."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Read every chunk of every array: checksums, digests, NaN/Inf and statistics. Exits 1 listing bad chunks.

    Examples:
      osae store verify acts.zarr
      osae store verify https://example.org/stores/acts.zarr --json
    """
    report = tools.verify(store, progress=not json_out)
    if json_out:
        print_json(report)
    else:
        for finding in report["bad_chunks"]:
            typer.echo(f"bad   {finding_line(finding)}", err=True)
        verdict = "ok" if report["ok"] else f"{len(report['bad_chunks'])} problem(s)"
        # The row chunks are the count users relate to the tokens; the other arrays' chunks are named after it.
        groups = sorted({p.split("/", 1)[0] for p in report["checked_other_arrays"]})
        others = f" (and {report['checked_other_chunks']} chunks of {', '.join(groups)})" if groups else ""
        typer.echo(f"checked {report['checked_chunks']} chunks of {report['n_tokens']:,} tokens: {verdict}{others}")
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("copy")
@user_errors
def copy_cmd(
    src: str = typer.Argument(..., help="Source store path or URL."),
    dst: str = typer.Argument(..., help="Destination path or s3:// URL."),
    compressor: str = typer.Option(None, help=f"Recompress with one of {list(COMPRESSORS)} (default: keep)."),
    chunks_per_shard: int = typer.Option(
        None,
        help="Chunks in each shard file or object (default: keep). Fewer means smaller objects, for servers "
        "that handle a byte range by reading its whole object.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing destination."),
    json_out: bool = typer.Option(False, "--json", help="Print the verification report as JSON."),
) -> None:
    """Copy committed rows between locations, recompressing or resharding if asked, then verify the copy.

    Examples:
      osae store copy acts.zarr s3://team-bucket/acts.zarr
      osae store copy s3://team-bucket/acts.zarr local.zarr --compressor zstd
    """
    if compressor is not None and compressor not in COMPRESSORS:
        fail(f"--compressor must be one of {list(COMPRESSORS)}; got {compressor!r}")
    if chunks_per_shard is not None and chunks_per_shard < 1:
        fail(f"--chunks-per-shard must be a positive integer; got {chunks_per_shard}")
    report = tools.copy(
        src, dst, compressor=compressor, chunks_per_shard=chunks_per_shard, overwrite=overwrite, progress=not json_out
    )
    if json_out:
        print_json(report)
    else:
        same = "same content" if report["same_content"] else "CONTENT DIFFERS"
        typer.echo(
            f"copied {report['n_tokens']:,} tokens to {dst}: verify {'ok' if report['ok'] else 'FAILED'}, {same} "
            f"(fingerprint {report['fingerprint']})"
        )
    if not report["ok"] or not report["same_content"]:
        raise typer.Exit(1)


@app.command("import")
@user_errors
def import_cmd(
    src: Path = typer.Argument(
        ..., help=".npy, .safetensors, a directory of either, or a saved dataset / Arrow directory."
    ),
    out: str = typer.Option(..., "--out", help="Store to write (path or s3:// URL)."),
    hook: str = typer.Option(None, help="Hook name in the store (default: the tensor or column name)."),
    layer: int = typer.Option(None, help="Layer to record for the hook (default: read from blocks.L.hook_X names)."),
    dtype: str = typer.Option(
        "auto", help="Storage dtype: auto (the source's; float64 -> float32), float16, float32, bfloat16."
    ),
    column: str = typer.Option(None, help="Activation column of an Arrow dataset (needed when it has several)."),
    tokens_column: str = typer.Option(
        None, "--tokens-column", help="Token id column (default: tokens, token_ids or input_ids if present)."
    ),
    tensor: str = typer.Option(None, help="Import only this tensor of .safetensors files."),
    drop_nonfinite: bool = typer.Option(
        False, "--drop-nonfinite", help="Drop rows with NaN/Inf (counted) instead of stopping."
    ),
    append: bool = typer.Option(False, help="Add the rows to an existing store with the same hook and width."),
    compressor: str = typer.Option("none", help=f"One of {list(COMPRESSORS)}."),
    model: str = typer.Option(
        None, help="The model the activations came from (recorded; lets evaluate compute CE/KL)."
    ),
    eval_fraction: float = typer.Option(0.02, help="Fraction of chunks held out for evaluation."),
) -> None:
    """Bring activations from other tools into a store (resumable: re-run the same command after a crash).

    Examples:
      osae store import acts.npy --out acts.zarr --hook blocks.3.hook_resid_post
      osae store import saelens_cache/ --out acts.zarr --model pythia-70m
      osae store import more.npy --out acts.zarr --hook blocks.3.hook_resid_post --append
    """
    from osae.store.interchange.importer import import_activations

    if compressor not in COMPRESSORS:
        fail(f"--compressor must be one of {list(COMPRESSORS)}; got {compressor!r}")
    if not 0 <= eval_fraction < 1:
        fail(f"--eval-fraction must be in [0, 1); got {eval_fraction}")
    r = import_activations(
        src,
        out,
        hook=hook,
        layer=layer,
        dtype=dtype,
        column=column,
        tokens_column=tokens_column,
        tensor=tensor,
        drop_nonfinite=drop_nonfinite,
        append=append,
        compressor=compressor,
        model=model,
        eval_fraction=eval_fraction,
    )
    dropped = f", {r['dropped']:,} non-finite rows dropped" if r["dropped"] else ""
    resumed = f" (resumed after {r['resumed_at']:,})" if r["resumed_at"] else ""
    tokens = "with token ids" if r["has_tokens"] else "without token ids (CE metrics and inspect need them)"
    typer.echo(f"imported {r['rows']:,} rows{resumed} into {out} as {', '.join(r['hooks'])}, {tokens}{dropped}")


@app.command("export")
@user_errors
def export_cmd(
    store: str = typer.Argument(..., help="Store path or URL."),
    out: Path = typer.Option(..., "--out", help="FILE.npy, FILE.safetensors, or a new directory for part files."),
    hook: str = typer.Option(None, help="Hook name or layer (default: the store's only hook)."),
    rows: str = typer.Option(None, help="Rows A:B of the committed rows (B exclusive; negative from the end)."),
    dtype: str = typer.Option("auto", help="auto (as stored) or float32 (exact widening)."),
    tokens: bool = typer.Option(True, help="Include token ids, positions and sequence ids in .safetensors output."),
    part_rows: int = typer.Option(None, help="Rows per part file when --out is a directory (default: one shard)."),
) -> None:
    """Stream a hook's rows out as .npy or .safetensors.

    Examples:
      osae store export acts.zarr --hook 3 --out acts.npy
      osae store export acts.zarr --out first-100k.safetensors --rows 0:100000
    """
    from osae.store.interchange.exporter import export_rows

    r = export_rows(store, hook, out, rows=rows, dtype=dtype, tokens=tokens, part_rows=part_rows)
    typer.echo(f"exported {r['rows']:,} rows of {r['hook']} ({r['dtype']}) to {len(r['files'])} file(s) under {out}")
