"""How `osae ... --help` renders: plain text that fits 80 columns.

The root app turns rich markup off (`rich_markup_mode=None`), so help is click's plain layout: option names
are never cut, flags show no type, and text like `E[z^2]` is not taken for markup. `OsaeCommand` adds
the usage line with upper-case argument names (`CHECKPOINT`, `CHECKPOINTS...`), a section per help panel
an option names, and prints the "Examples:" block of a docstring as commands, one per line, wrapping a long
one with shell line continuations so it can still be pasted.
"""

from __future__ import annotations

import textwrap

import typer
from typer.core import TyperCommand

EXAMPLES = "Examples:"


def split_examples(doc: str) -> tuple[str, list[str]]:
    """(description, example lines) of a command docstring whose examples follow a line "Examples:"."""
    text = textwrap.dedent(doc or "").strip("\n")
    before, found, after = text.partition(EXAMPLES)
    if not found:
        return text.strip(), []
    return before.strip(), [line.strip() for line in after.strip("\n").splitlines() if line.strip()]


def shell_lines(example: str, width: int) -> list[str]:
    """One example command in lines of at most `width` (when its words allow): continued lines end with
    " \\" and are indented; a trailing "# comment" that does not fit goes on its own line first."""
    command, hash_, comment = example.partition("  #")
    command, comment = command.rstrip(), ("#" + comment).strip() if hash_ else ""
    lines = [comment] if comment and len(command) + 2 + len(comment) > width else []
    out, line = [], ""
    for word in command.split(" "):
        if line and len(line) + 1 + len(word) > width - 2:  # room for " \"
            out.append(line + " \\")
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    if comment and not lines:
        out[-1] += "  " + comment
    return lines + out


class OsaeCommand(TyperCommand):
    """A typer command whose help prints arguments as NAME and examples verbatim (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if p.param_type_name == "argument" and p.metavar is None:
                p.metavar = p.name.upper()  # usage, the Arguments list and error messages say CHECKPOINT

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        """Arguments, Options, then one section per `rich_help_panel` the options name (e.g. the generated
        architecture settings of `osae fit`)."""
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                title = "Arguments" if p.param_type_name == "argument" else getattr(p, "rich_help_panel", None)
                sections.setdefault(title or "Options", []).append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def format_help_text(self, ctx, formatter) -> None:
        description, examples = split_examples((self.help or "").partition("\f")[0])
        if description:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(description)
        if examples:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(EXAMPLES)
                with formatter.indentation():
                    indent = " " * formatter.current_indent
                    for example in examples:
                        for line in shell_lines(example, formatter.width - formatter.current_indent):
                            formatter.write(f"{indent}{line}\n")


def use_osae_help(app: typer.Typer) -> None:
    """Render every command of `app` (and of the typer apps mounted in it) with `OsaeCommand`."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):  # typer's default; a command that chose its own class keeps it
            info.cls = OsaeCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            use_osae_help(group.typer_instance)
