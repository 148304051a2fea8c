"""`osae toy`: write the synthetic toy data as a store."""

from __future__ import annotations

from pathlib import Path

import typer

from osae.cli_common import user_errors
from osae.synthetic.toy import ToyConfig, write_toy_store


@user_errors
def toy_cmd(
    out: Path = typer.Option(..., "--out", help="Store to write."),
    d: int = typer.Option(80, help="Activation width."),
    n_atoms: int = typer.Option(100, "--n-atoms", help="Ground-truth dictionary size K."),
    m: int = typer.Option(5, help="Active atoms per sample."),
    n: int = typer.Option(100_000, help="Training samples."),
    n_eval: int = typer.Option(10_000, "--n-eval", help="Held-out samples (the evaluation split)."),
    held_out: str = typer.Option(
        "validation",
        "--held-out",
        help="validation or test: which held-out rows (same atoms) form the evaluation split.",
    ),
    alpha: float = typer.Option(1.2, help="Zipf exponent of the atom frequencies."),
    seed: int = typer.Option(
        0, help="Seed (seed: atoms, seed+1: training codes, seed+2: validation codes, seed+3: test codes)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing store."),
) -> None:
    """Write the OSAE paper's Gaussian toy data (methods.md section 5) as a store with its ground truth.

    Examples:
      osae toy --out toy.zarr
      osae toy --out small.zarr --d 16 --n-atoms 32 --m 3 --n 50000
    """
    result = write_toy_store(
        out,
        ToyConfig(d=d, n_atoms=n_atoms, m=m, n=n, n_eval=n_eval, alpha=alpha, seed=seed, held_out=held_out),
        overwrite=overwrite,
        progress=True,
    )
    typer.echo(
        f"wrote {result['rows']:,} rows to {out} "
        f"(chunks of {result['chunk_rows']}, eval chunks {result['eval_chunks']})"
    )
