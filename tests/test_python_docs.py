"""docs/python.md runs as written: in a fresh directory, its `bash` blocks (the CLI commands that make the
examples' toy store, run and export) run first, then its `python` blocks in order in one namespace, as a
reader following the page would run them. A failing example names its line of the page."""

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
RUN = ("bash", "python")
SHOWN_ONLY = ("text",)  # a fence of any other language fails the test, so no example is skipped silently


def blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line of the code in the page, code) for every fenced block."""
    return [(m.group(1), text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text)]


def test_the_block_reader_finds_languages_and_lines():
    text = "intro\n\n```bash\necho hi\n```\n\ntext\n```python\nx = 1\ny = 2\n```\n"
    assert blocks(text) == [("bash", 4, "echo hi\n"), ("python", 9, "x = 1\ny = 2\n")]


def test_python_md_examples_run(tmp_path, monkeypatch):
    found = blocks(DOC.read_text())
    odd = [(lang, line) for lang, line, _ in found if lang not in RUN + SHOWN_ONLY]
    assert not odd, f"docs/python.md: fences must be one of {RUN + SHOWN_ONLY}; found {odd}"
    python = [(line, code) for lang, line, code in found if lang == "python"]
    assert len(python) >= 6, "the page lost its examples"
    for name in ("osae.load_sae(", "osae.open_store(", "osae.evaluate_checkpoints(", "ShuffledLoader("):
        assert any(name in code for _, code in python), f"no example calls {name}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for lang, line, code in found:
        if lang == "bash":
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
            assert proc.returncode == 0, f"docs/python.md:{line}: {proc.stderr[-3000:]}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_python_md"}
    for line, code in python:
        # padded so that a traceback's line numbers are the page's
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), namespace)
    assert namespace["metrics"]["saes"].keys() == {"osae-K32-k3-s0", "osae-K32-k3-s1"}
