"""The `osae` command: mounts each stage's commands (docs/cli.md lists them; their names and flags are a contract)."""

from __future__ import annotations

import typer

from osae import __version__
from osae.cli_common import setup_logging
from osae.cli_help import use_osae_help
from osae.evaluate.cli import evaluate_cmd, inspect_cmd, permute_cmd
from osae.harvest.cli import harvest_cmd
from osae.store.cli import app as store_app
from osae.synthetic.cli import toy_cmd
from osae.train.cli import export_cmd, fit_cmd

app = typer.Typer(
    help="Ordered sparse autoencoders on language-model activations: harvest, store, fit, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: nothing in it is markup (E[z^2]), and it fits 80 columns (osae.cli_help)
)
app.command("harvest")(harvest_cmd)
app.command("fit")(fit_cmd)
app.command("export")(export_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("permute")(permute_cmd)
app.command("inspect")(inspect_cmd)
app.add_typer(store_app, name="store")
app.command("toy")(toy_cmd)
use_osae_help(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"osae {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    setup_logging(log_level)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
