"""The one-line docstrings written under dataclass fields, read from the source (they become `--help` text).

Python keeps no trace of a string literal that follows `name: type = default` in a class body, so the
class source is parsed: a field's doc is the string expression right after its annotated assignment.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
    """Docs of the fields `cls` itself declares (not its bases)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (built in a REPL, frozen app): no docs rather than a crash
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (whitespace collapsed to single spaces), inherited fields included; a
    subclass that redeclares a field with its own docstring wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object:
            docs.update(_own_field_docs(klass))
    return docs
