"""The command line as users and scripts see it: real `osae` processes, exit codes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.store.helpers import HOOK, make_store

OSAE = [sys.executable, "-m", "osae.cli"]


def run(*args, ok=True):
    proc = subprocess.run([*OSAE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OSAE_DEBUG": ""})
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("osae: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "toy.zarr"
    run("toy", "--out", path, "--n", "20000", "--n-eval", "2000")
    return path


def test_help_works_for_every_command():
    for args in ([], ["store"], ["store", "info"], ["store", "verify"], ["store", "copy"], ["toy"]):
        proc = run(*args, "--help")
        assert "Usage" in proc.stdout


def test_info_json_has_the_contract_keys(toy):
    info = json.loads(run("store", "info", toy, "--json").stdout)
    for key in ("format_version", "n_tokens", "complete", "hooks", "model", "dataset", "context_size",
                "nbytes", "nbytes_stored", "fingerprint"):
        assert key in info
    assert info["n_tokens"] == 22000 and info["complete"] is True
    assert info["hooks"]["toy"] == {"layer": None, "hook": "synthetic", "d_model": 80, "dtype": "float32"}
    assert info["ground_truth"]["arrays"] == ["codes", "dictionary", "prior"]
    assert info["split"]["eval_tokens"] == 2000 and info["split"]["train_tokens"] == 20000
    assert len(info["fingerprint"]) == 32


def test_verify_passes_then_fails_on_a_corrupt_chunk(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=100)
    report = json.loads(run("store", "verify", tmp_path / "s.zarr", "--json").stdout)
    assert report["ok"] and report["checked_chunks"] > 0 and report["bad_chunks"] == []
    shard = tmp_path / "s.zarr" / "acts" / HOOK / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0x55
    shard.write_bytes(bytes(raw))
    proc = run("store", "verify", tmp_path / "s.zarr", "--json", ok=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"] and report["bad_chunks"][0]["chunk"] == 0


def test_copy_recompresses_and_keeps_the_fingerprint(toy, tmp_path):
    proc = run("store", "copy", toy, tmp_path / "z.zarr", "--compressor", "zstd", "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] and report["same_content"]
    proc = run("store", "copy", toy, tmp_path / "z.zarr", ok=False)
    assert_one_line_error(proc, "already exists")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["store", "info", "/definitely/not/here.zarr"], "does not exist"),
        (["store", "verify", "{tmp}"], "not an osae store"),
        (["store", "copy", "{toy}", "{tmp}/x.zarr", "--compressor", "brotli"], "--compressor must be one of"),
        (["toy", "--out", "{tmp}/t.zarr", "--m", "200"], "m must be in [1, n_atoms=100]"),
        (["toy", "--out", "{tmp}/t.zarr", "--n", "0"], "n must be positive"),
    ],
)
def test_bad_input_gets_one_clear_line(args, pattern, toy, tmp_path):
    args = [a.format(tmp=tmp_path, toy=toy) for a in args]
    assert_one_line_error(run(*args, ok=False), pattern)


def test_another_format_version_is_refused(tmp_path):
    make_store(tmp_path / "s.zarr", n_seqs=5)
    meta_path = Path(tmp_path / "s.zarr" / "zarr.json")
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["osae"]["format_version"] = 2
    meta_path.write_text(json.dumps(meta))
    assert_one_line_error(run("store", "info", tmp_path / "s.zarr", ok=False), "format version 2")
