"""Long work is visible: a live bar with rate and ETA in a terminal (a real pseudo-terminal here), one log
line per interval when the output goes to a file or a pipe."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

TOY = ["toy", "--d", "16", "--n-atoms", "32", "--m", "3", "--n", "60000", "--n-eval", "4000"]


def _fit(store, out):
    args = ["fit", "--store", str(store), "--arch", "topk", "--dict-size", "32", "--k", "3", "--tokens", "40960"]
    return [*args, "--batch-size", "256", "--out", str(out)]


def _in_terminal(args, env) -> str:
    """Run `python -m osae ARGS` with stdout and stderr on a pseudo-terminal; everything it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "osae", *args], stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "toy.zarr"
    subprocess.run([sys.executable, "-m", "osae", *TOY, "--out", str(path)], check=True, capture_output=True)
    return path


def test_a_terminal_gets_a_live_bar_with_rate_and_eta(toy_store, tmp_path):
    env = dict(os.environ)
    drawn = _in_terminal([*TOY, "--out", str(tmp_path / "t.zarr")], env)
    # tqdm redraws in place with carriage returns: "toy:  50%|...| 32.0k/64.0k [00:01<00:01, 30.1krow/s]"
    frames = [f for f in drawn.split("\r") if f.startswith("toy:")]
    assert len(frames) >= 2, drawn
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?row/s\]", drawn), drawn
    fitted = _in_terminal(_fit(toy_store, tmp_path / "run"), env)
    assert re.search(r"fit: +\d+%\|.*\| [\d.]+k?/41\.0k \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?tok/s\]", fitted), fitted


def test_off_a_terminal_progress_is_a_periodic_log_line(toy_store, tmp_path):
    env = {**os.environ, "OSAE_PROGRESS_SECONDS": "0"}
    args = _fit(toy_store, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "osae", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("INFO fit: ")]
    assert "\r" not in proc.stderr and len(lines) >= 10, proc.stderr  # one per step with a zero interval
    pattern = r"INFO fit: [\d.]+k?/40\.96k tok \(\d+%\), [\d.]+k? tok/s, elapsed \d+s(, ETA \d+s)?$"
    assert all(re.match(pattern, l) for l in lines), lines
    assert "ETA" in lines[0] and lines[-1].startswith("INFO fit: 40.96k/40.96k tok (100%)"), lines
    # The default interval is a minute: a short run logs its final line only.
    quiet = subprocess.run(
        [sys.executable, "-m", "osae", *args[:-1], str(tmp_path / "run2")], capture_output=True, text=True, timeout=300
    )
    assert len([l for l in quiet.stderr.splitlines() if l.startswith("INFO fit: ")]) == 1, quiet.stderr


def test_harvest_and_evaluate_draw_their_bars_in_a_terminal(tmp_path):
    """The embedded model: harvest's bar, then evaluate's bars over the SAEs and the CE and KL passes."""
    env = dict(os.environ)
    store = tmp_path / "s.zarr"
    drawn = _in_terminal(
        ["harvest", "--layer", "1", "--tokens", "6000", "--context-size", "64", "--out", str(store)], env
    )
    assert re.search(r"harvest: +\d+%\|.*\| [\d.]+k?/6\.0\dk \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?tok/s\]", drawn), drawn
    fit = [
        "fit",
        "--store",
        str(store),
        "--arch",
        "topk",
        "--dict-size",
        "64",
        "--k",
        "4",
        "--tokens",
        "4096",
        "--batch-size",
        "512",
    ]
    subprocess.run(
        [sys.executable, "-m", "osae", *fit, "--out", str(tmp_path / "run")], check=True, capture_output=True
    )
    drawn = _in_terminal(["evaluate", str(tmp_path / "run"), "--store", str(store), "--lm-tokens", "600"], env)
    assert re.search(r"evaluate SAEs: +100%\|.*\| 1/1 \[\d\d:\d\d<\d\d:\d\d", drawn), drawn
    assert re.search(r"CE and KL, \S+: +100%\|.*\| \d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(seq/s|s/seq)\]", drawn), drawn
