"""A user error is one line and exit 1; a bug keeps its traceback and says it is one."""

import subprocess
import sys

SCRIPT = """
import sys
from osae.cli_common import user_errors
from osae.errors import UsageError

@user_errors
def user():
    raise UsageError("k must be in [1, 8]; got 9\\nsecond line")

@user_errors
def bug():
    return {}["missing"]

from osae.cli import app  # the real app: its exception settings decide what a user sees
app.command("user")(user)
app.command("bug")(bug)
app()
"""


def _run(which):
    return subprocess.run([sys.executable, "-c", SCRIPT, which], capture_output=True, text=True, timeout=60)


def test_a_user_error_is_one_line_with_exit_1():
    r = _run("user")
    assert r.returncode == 1 and r.stderr == "osae: error: k must be in [1, 8]; got 9\n"


def test_a_bug_keeps_its_traceback_and_asks_for_a_report():
    r = _run("bug")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "KeyError: 'missing'" in r.stderr
    assert r.stderr.rstrip().endswith("please report it with the command you ran")
