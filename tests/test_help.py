"""`--help` of every command renders at 80 columns: no cut option names, no type on flags, no {placeholders},
nothing taken for markup."""

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from osae.cli import app
from osae.cli_help import shell_lines


def _commands(prefix, group):
    if hasattr(group, "commands"):
        yield prefix
        for name in sorted(group.commands):
            yield from _commands([*prefix, name], group.commands[name])
    else:
        yield prefix


COMMANDS = list(_commands([], typer.main.get_command(app)))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "osae")
def test_help_renders_at_80_columns(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Usage:" in text
    assert "…" not in text, text
    assert "<bool>" not in text, text
    usage = text.split("\n\n")[0]
    assert "{" not in usage and "}" not in usage, usage
    for line in text.splitlines():  # only an unbreakable word (a long path in an example) may overflow
        assert len(line) <= 80 or " " not in line.strip(), line


def test_permute_help_keeps_the_brackets_of_its_text():
    text = CliRunner().invoke(app, ["permute", "--help"], terminal_width=80).output
    assert "E[z^2]" in text and "Usage: root permute [OPTIONS] CHECKPOINT" in " ".join(text.split())


def test_fit_help_lists_every_architecture_setting_with_its_architectures():
    text = " ".join(CliRunner().invoke(app, ["fit", "--help"], terminal_width=80).output.split())
    for option, archs in (
        ("--prefix-law", "(osae)"),
        ("--k-init", "(osae)"),
        ("--k-warmup-steps", "(osae)"),
        ("--threshold-window", "(batchtopk, matryoshka, matryoshka-random)"),
        ("--l1-coef", "(relu, hybridorder)"),
        ("--widths", "(matryoshka)"),
    ):
        assert option in text and archs in text, option
    assert "Architecture settings:" in text


def test_a_real_process_at_80_columns_cuts_no_option_name():
    proc = subprocess.run(
        [sys.executable, "-m", "osae", "harvest", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--trust-remote-code" in proc.stdout and "…" not in proc.stdout


def test_long_examples_wrap_as_shell_continuations():
    command = "osae fit --store acts.zarr --sweep sweep.json --tokens 50000000 --out runs/compare"
    lines = shell_lines(command + "  # go", 40)
    assert all(len(l) <= 40 for l in lines) and lines[0] == "# go"
    assert all(l.endswith(" \\") for l in lines[1:-1])
    assert " ".join(l.rstrip(" \\").strip() for l in lines[1:]) == command
    assert shell_lines("osae store info acts.zarr  # short", 80) == ["osae store info acts.zarr  # short"]
