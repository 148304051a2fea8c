"""docs/cli.md, generated from the typer app itself: `python -m osae.cli_reference > docs/cli.md`.

A test regenerates it and compares, so the reference cannot drift from the commands.
"""

from __future__ import annotations

import typer

from osae.cli import app

HEADER = """# Command-line reference

Generated from the commands themselves by `python -m osae.cli_reference > docs/cli.md`; a test keeps it
current. Every command also has `--help`. Exit status: 0 success, 1 the work failed (one line on stderr,
`OSAE_DEBUG=1` shows the traceback), 2 bad usage.
"""


def _param_row(p) -> str:
    if p.param_type_name == "argument":
        name = f"`{p.name.upper()}`"
        kind = "argument" + (", one or more" if p.nargs == -1 else "")
    else:
        name = " / ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
        kind = "flag" if p.is_flag else p.bare_type()
    default = p.default
    if p.param_type_name == "option" and p.is_flag and p.secondary_opts:
        default = p.opts[0] if p.default else p.secondary_opts[0]
    shown = "required" if p.required else ("" if default in (None, False, ()) else f"`{default}`")
    help_text = (p.help or "").replace("|", "\\|").replace("\n", " ")
    return f"| {name} | {kind} | {shown} | {help_text} |"


def _command_section(path: str, cmd) -> list[str]:
    doc = (cmd.help or "").strip()
    summary, _, rest = doc.partition("\n")
    lines = [f"## `{path}`", "", summary.strip(), ""]
    if rest.strip():
        body = [ln[2:] if ln.startswith("  ") else ln for ln in rest.strip("\n").splitlines()]
        text = "\n".join(body).strip()
        if "Examples:" in text:
            before, _, examples = text.partition("Examples:")
            if before.strip():
                lines += [before.strip(), ""]
            lines += ["```", *[e.strip() for e in examples.strip().splitlines()], "```", ""]
        else:
            lines += [text, ""]
    params = [p for p in cmd.params if p.name != "help" and not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument / option | type | default | meaning |", "|---|---|---|---|"]
        lines += [_param_row(p) for p in params] + [""]
    return lines


def _walk(prefix: str, group) -> list:
    if hasattr(group, "commands"):
        out = []
        for name in sorted(group.commands):
            out += _walk(f"{prefix} {name}", group.commands[name])
        return out
    return [(prefix, group)]


def reference() -> str:
    root = typer.main.get_command(app)
    commands = _walk("osae", root)
    toc = [f"- [`{path}`](#{path.replace(' ', '-')})" for path, _ in commands]
    lines = [HEADER, *toc, ""]
    for path, cmd in commands:
        lines += _command_section(path, cmd)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
